"""Riemannian flow matching on S² (Sec. 3.2): uniform noise on the sphere, geodesic paths.

Training: x_t = exp_{x₀}(κ log_{x₀} ε) (Eq. 9), target D(x_t) (Eq. 10 per unit κ), loss Eq. 11
on the tangent projection of ψ. Sampling: x ← exp_x(−Δκ ψ(x)) (Eq. 12) from ε ~ U(S²), so every
iterate stays on the sphere; Heun and midpoint give second-order variants.
"""

from __future__ import annotations

from torch import Tensor

from globeflow.methods.base import GenerativeMethod
from globeflow.paths.noising import GeodesicPath
from globeflow.solvers.fixed_step import ODE_SOLVERS, integrate
from globeflow.solvers.manifolds import Sphere

__all__ = ["RiemannianFlowMatching"]


class RiemannianFlowMatching(GenerativeMethod):
    name = "rfm"
    path_cls = GeodesicPath
    solvers = ODE_SOLVERS
    default_solver = "euler"
    manifold = Sphere()

    def _denoise(self, field, noise: Tensor, *, num_steps: int, solver: str, trajectory) -> Tensor:
        # The network output is projected onto T_xS² inside the sphere's step.
        return integrate(
            field, noise, self.schedule, self.manifold, num_steps=num_steps, method=solver, trajectory=trajectory
        )
