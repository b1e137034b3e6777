"""Deterministic samplers for ε-prediction diffusion in R³.

DDIM (Eqs. 3–4) is exactly Euler's method for the probability-flow ODE written in the scaled
variables y = x / √(1−κ) and σ = √(κ / (1−κ)), where it reads dy/dσ = ε̂ (Song et al. 2021,
Karras et al. 2022). The second-order option is Heun's method in those same variables (EDM),
with a final Euler step since ε̂ is not informative at σ = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from globeflow.paths.schedules import Schedule
from globeflow.solvers.fixed_step import time_grid

__all__ = ["DIFFUSION_SOLVERS", "KAPPA_MAX", "diffusion_sample"]

#: Largest noise level used by diffusion: at κ = 1 the signal √(1−κ) x₀ vanishes and the
#: x̂₀ of Eq. 4 is 0/0. 1 − 1e-4 leaves a signal-to-noise ratio of 1e-4, as in DDPM's last step.
KAPPA_MAX = 1.0 - 1e-4

DIFFUSION_SOLVERS: dict[str, int] = {"ddim": 1, "heun": 2}

EpsField = Callable[[Tensor, Tensor], Tensor]


def diffusion_sample(
    eps_field: EpsField,
    x: Tensor,
    schedule: Schedule,
    *,
    num_steps: int,
    method: str = "ddim",
    trajectory: list[Tensor] | None = None,
) -> Tensor:
    """Denoise ``x`` (..., 3) ~ N(0, I) from κ = KAPPA_MAX to κ = 0 with predicted noise ε̂(x, κ).

    Returns x̂₀ in R³ (not yet projected onto the sphere).
    """
    if method not in DIFFUSION_SOLVERS:
        raise ValueError(f"solver: unknown diffusion method {method!r}; choose one of {sorted(DIFFUSION_SOLVERS)}")
    kappas = schedule.kappa(time_grid(num_steps, device=x.device)).clamp(max=KAPPA_MAX)
    if trajectory is not None:
        trajectory.append(x)
    for i in range(num_steps):
        k0 = kappas[i].to(x.dtype)
        k1 = kappas[i + 1].to(x.dtype)
        eps = eps_field(x, k0)
        if method == "heun" and i < num_steps - 1:
            # Heun in (y, σ): average the slopes ε̂ at both ends of the step.
            x_pred = _ddim_step(x, eps, k0, k1)
            eps = 0.5 * (eps + eps_field(x_pred, k1))
        x = _ddim_step(x, eps, k0, k1)
        if trajectory is not None:
            trajectory.append(x)
    return x


def _ddim_step(x: Tensor, eps: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
    """Eq. 4 then Eq. 3 (with κ of the *next* level in Eq. 3)."""
    x0_hat = (x - torch.sqrt(k0) * eps) / torch.sqrt(1.0 - k0)
    return torch.sqrt(1.0 - k1) * x0_hat + torch.sqrt(k1) * eps
