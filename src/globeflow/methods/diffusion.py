"""Diffusion in R³ (Sec. 3.1): ε-prediction (Eqs. 1–2), DDIM sampling (Eqs. 3–4), projection.

κ is capped at :data:`~globeflow.solvers.ddim.KAPPA_MAX` in training and sampling: at κ = 1
the signal term vanishes and Eq. 4 is undefined.
"""

from __future__ import annotations

from torch import Tensor

from globeflow.geometry.sphere import project
from globeflow.methods.base import GenerativeMethod
from globeflow.paths.noising import DiffusionPath
from globeflow.solvers.ddim import DIFFUSION_SOLVERS, KAPPA_MAX, diffusion_sample

__all__ = ["Diffusion"]


class Diffusion(GenerativeMethod):
    name = "diffusion"
    path_cls = DiffusionPath
    solvers = DIFFUSION_SOLVERS
    default_solver = "ddim"

    def _train_kappa(self, t: Tensor) -> Tensor:
        return self.schedule.kappa(t).clamp(max=KAPPA_MAX)

    def _denoise(self, field, noise: Tensor, *, num_steps: int, solver: str, trajectory) -> Tensor:
        x0 = diffusion_sample(field, noise, self.schedule, num_steps=num_steps, method=solver, trajectory=trajectory)
        return project(x0)
