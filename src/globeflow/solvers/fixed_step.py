"""Fixed-step ODE integrators in the noise level κ, from noise (t = 1) to data (t = 0).

The field is a velocity per unit κ, ``field(x, kappa) -> dx/dκ``; the time grid is uniform in
t and mapped through the schedule, so a schedule concentrates steps where κ(t) is flat in t
(near the data, for the skewed sigmoid). Steps have negative Δκ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from globeflow.paths.schedules import Schedule
from globeflow.solvers.manifolds import Manifold

__all__ = ["ODE_SOLVERS", "time_grid", "integrate"]

Field = Callable[[Tensor, Tensor], Tensor]

#: Fixed-step integrators and their number of field evaluations per step.
ODE_SOLVERS: dict[str, int] = {"euler": 1, "heun": 2, "midpoint": 2}


def time_grid(num_steps: int, *, device=None) -> Tensor:
    """t_i = 1 − i/N for i = 0…N (float64 so that κ(t) is exact at both ends)."""
    return 1.0 - torch.arange(num_steps + 1, dtype=torch.float64, device=device) / num_steps


def integrate(
    field: Field,
    x: Tensor,
    schedule: Schedule,
    manifold: Manifold,
    *,
    num_steps: int,
    method: str = "euler",
    trajectory: list[Tensor] | None = None,
) -> Tensor:
    """Integrate dx/dκ = field(x, κ) from κ(1) = 1 down to κ(0) = 0.

    ``x`` (..., 3) is the noise; returns the final state. If ``trajectory`` is a list, every
    iterate (including the start) is appended to it.
    """
    if method not in ODE_SOLVERS:
        raise ValueError(f"solver: unknown method {method!r}; choose one of {sorted(ODE_SOLVERS)}")
    ts = time_grid(num_steps, device=x.device)
    kappas = schedule.kappa(ts)
    if trajectory is not None:
        trajectory.append(x)

    def slope(x_eval: Tensor, kappa: Tensor) -> Tensor:
        return manifold.tangent(x_eval, field(x_eval, kappa))

    for i in range(num_steps):
        k0 = kappas[i].to(x.dtype)
        k1 = kappas[i + 1].to(x.dtype)
        h = k1 - k0
        v0 = slope(x, k0)
        if method == "euler":
            x = manifold.step(x, v0, h)
        elif method == "heun":
            # Predictor to κ₁, then the trapezoid of the two slopes, both expressed at x.
            x_pred = manifold.step(x, v0, h)
            v1 = manifold.transport(x_pred, x, slope(x_pred, k1))
            x = manifold.step(x, 0.5 * (v0 + v1), h)
        else:  # midpoint: slope at the half step in *t*, where the schedule puts it
            k_mid = schedule.kappa(0.5 * (ts[i] + ts[i + 1])).to(x.dtype)
            x_mid = manifold.step(x, v0, k_mid - k0)
            x = manifold.step(x, manifold.transport(x_mid, x, slope(x_mid, k_mid)), h)
        if trajectory is not None:
            trajectory.append(x)
    return x
