"""Diffusion in R³ (Sec. 3.1): ε-prediction (Eqs. 1–2), DDIM sampling (Eqs. 3–4), projection.

κ is capped at :data:`~globeflow.solvers.ddim.KAPPA_MAX` in training and sampling: at κ = 1
the signal term vanishes and Eq. 4 is undefined.

Likelihood: through the probability-flow ODE of the variance-preserving process
x = √(1−κ) x₀ + √κ ε, whose exact velocity per unit κ is
v = −(x − ε̂/√κ) / (2(1−κ))  (Song et al. 2021; the paper's Eq. W writes β(t) = d log κ/dt and
drops the 1/√κ of the score −ε̂/√κ, which we do not follow). It is singular at both ends in κ, so
the ODE is integrated in the half log-SNR λ = ½ log(κ/(1−κ)), where κ = sigmoid(2λ) and
dx/dλ = √κ ε̂ − κ x, bounded. λ runs from the data end κ = ``likelihood_kappa_min`` to
κ = KAPPA_MAX, where x is standard Gaussian up to a 1e-4 signal. The result is the density in R³
of the model's x at κ_min (a shell of radial width √κ_min around the data): not comparable with
densities on S² (Sec. 4.2), and dependent on κ_min.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from globeflow.geometry.sphere import project
from globeflow.methods.generative import GenerativeMethod
from globeflow.paths.noising import DiffusionPath
from globeflow.solvers.ddim import DIFFUSION_SOLVERS, KAPPA_MAX, diffusion_sample
from globeflow.solvers.likelihood import DivergenceField

#: Data end of the likelihood ODE: the density is that of x at κ = 1e-4 (radial spread 0.01 of
#: the Earth's radius, about 64 km), where ε̂ is still informative.
LIKELIHOOD_KAPPA_MIN = 1e-4

__all__ = ["Diffusion"]


class Diffusion(GenerativeMethod):
    name = "diffusion"
    path_cls = DiffusionPath
    solvers = DIFFUSION_SOLVERS
    default_solver = "ddim"
    density_space = "R3"
    likelihood_kappa_min = LIKELIHOOD_KAPPA_MIN
    train_kappa_max = KAPPA_MAX

    def _train_kappa(self, t: Tensor) -> Tensor:
        return self.schedule.kappa(t).clamp(max=KAPPA_MAX)

    def _denoise(self, field, noise: Tensor, *, num_steps: int, solver: str, trajectory) -> Tensor:
        x0 = diffusion_sample(field, noise, self.schedule, num_steps=num_steps, method=solver, trajectory=trajectory)
        return project(x0)

    #: The likelihood ODE runs in log-SNR, not in κ (so ``rk4-split`` does not apply).
    likelihood_in_level = False

    def _divergence_field(self, field_jvp) -> DivergenceField:
        lam_min = 0.5 * math.log(self.likelihood_kappa_min / (1.0 - self.likelihood_kappa_min))
        lam_max = 0.5 * math.log(KAPPA_MAX / (1.0 - KAPPA_MAX))

        def f(x: Tensor, s: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
            lam = lam_min + s.to(torch.float64) * (lam_max - lam_min)
            kappa = torch.sigmoid(2.0 * lam).reshape(1).to(device=x.device, dtype=x.dtype)
            root = kappa.sqrt()
            eps, jvp = field_jvp(x, probes, kappa)
            v = root * eps - kappa * x
            div = root * (probes * jvp).sum(dim=(-1, -2)) - kappa * probes.pow(2).sum(dim=(-1, -2))
            return (lam_max - lam_min) * v, (lam_max - lam_min) * div

        return f

    def _base_log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * x.pow(2).sum(dim=-1) - 1.5 * math.log(2.0 * math.pi)
