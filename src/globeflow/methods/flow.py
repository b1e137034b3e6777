"""Flow matching in R³ (Sec. 3.2, Eqs. 5–8): Gaussian noise, straight paths, final projection.

Training regresses dx_t/dκ = ε − x₀ (Eq. 6 per unit κ, loss Eq. 7); sampling integrates
x ← x − |Δκ| ψ(x) (Eq. 8) from ε ~ N(0, I) and projects the end point onto S².

Likelihood (Prop. 1): the density in R³ of the flow's end point, by the ODE from the point to
the standard Gaussian with the full 3-D trace of J_ψ. It is a density per unit *volume* of a
distribution concentrated near the unit sphere, so it is not comparable with densities on S²
(per steradian): it grows without bound as the model's radial spread shrinks (Sec. 4.2).
"""

from __future__ import annotations

import math

from torch import Tensor

from globeflow.geometry.sphere import project
from globeflow.methods.generative import GenerativeMethod
from globeflow.paths.noising import FlowPath
from globeflow.solvers.fixed_step import ODE_SOLVERS, integrate
from globeflow.solvers.likelihood import DivergenceField
from globeflow.solvers.manifolds import Euclidean

__all__ = ["FlowMatching"]


class FlowMatching(GenerativeMethod):
    name = "flow"
    path_cls = FlowPath
    solvers = ODE_SOLVERS
    default_solver = "euler"
    manifold = Euclidean()
    density_space = "R3"

    def _denoise(self, field, noise: Tensor, *, num_steps: int, solver: str, trajectory) -> Tensor:
        x0 = integrate(
            field, noise, self.schedule, self.manifold, num_steps=num_steps, method=solver, trajectory=trajectory
        )
        return project(x0)

    def _divergence_field(self, field_jvp) -> DivergenceField:
        def f(x: Tensor, s: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
            kappa = s.reshape(1).to(device=x.device, dtype=x.dtype)  # integrated in κ, as for RFM (see rfm.py)
            psi, jvp = field_jvp(x, probes, kappa)
            return psi, (probes * jvp).sum(dim=(-1, -2))

        return f

    def _base_log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * x.pow(2).sum(dim=-1) - 1.5 * math.log(2.0 * math.pi)
