"""Flow matching in R³ (Sec. 3.2, Eqs. 5–8): Gaussian noise, straight paths, final projection.

Training regresses dx_t/dκ = ε − x₀ (Eq. 6 per unit κ, loss Eq. 7); sampling integrates
x ← x − |Δκ| ψ(x) (Eq. 8) from ε ~ N(0, I) and projects the end point onto S².
"""

from __future__ import annotations

from torch import Tensor

from globeflow.geometry.sphere import project
from globeflow.methods.base import GenerativeMethod
from globeflow.paths.noising import FlowPath
from globeflow.solvers.fixed_step import ODE_SOLVERS, integrate
from globeflow.solvers.manifolds import Euclidean

__all__ = ["FlowMatching"]


class FlowMatching(GenerativeMethod):
    name = "flow"
    path_cls = FlowPath
    solvers = ODE_SOLVERS
    default_solver = "euler"
    manifold = Euclidean()

    def _denoise(self, field, noise: Tensor, *, num_steps: int, solver: str, trajectory) -> Tensor:
        x0 = integrate(
            field, noise, self.schedule, self.manifold, num_steps=num_steps, method=solver, trajectory=trajectory
        )
        return project(x0)
