"""Log-likelihood by the instantaneous change of variables (Prop. 2, Eqs. I–O of the paper).

Along a trajectory of the probability-flow ODE dx/ds = v(x, s), the log-density obeys
d log p_s(x(s))/ds = −div v(x(s), s) (Eq. J), hence

    log p(x(s_end)) = log p(x(s_start)) − ∫_{s_start}^{s_end} div v(x(s), s) ds.

Integrated from a data point (s = 0) to the noise (s = 1) this is Prop. 2: log p(y) =
log p_ε(x(1)) + ∫₀¹ div v. Integrated from noise to data it gives each *sample* its density in
the same solve.

A method describes its ODE by a *divergence field* ``field(x, s, probes) -> (v, div)``:
``x`` (..., 3), ``s`` a scalar tensor, ``probes`` (..., K, 3) the directions along which the
Jacobian is traced: an orthonormal frame (exact divergence: K = 2 on the tangent plane of S²,
K = 3 in R³) or random probes (Hutchinson's estimator, K = 1, unbiased). ``v`` (..., 3),
``div`` (...).

On S² the state is kept on the sphere: fixed-step solvers renormalise after each step, and the
field is evaluated at x/|x| (so the adaptive solver's O(tol) radial drift never reaches the
network); the divergence is the *Riemannian* one, the trace of the field's Jacobian on the
tangent plane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from globeflow.geometry import sphere

__all__ = [
    "DIVERGENCES",
    "LIKELIHOOD_SOLVERS",
    "ODEResult",
    "exact_frame",
    "graded_grid",
    "integrate_with_divergence",
    "rk4_along",
]

DivergenceField = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

#: Solvers of the likelihood ODE: fixed-step classical Runge–Kutta, adaptive Dormand–Prince, and
#: RK4 with the noise-level conditioning split into slow and antithetically sampled fast parts
#: (``rk4-split``: :mod:`globeflow.solvers.split`, reached through a method's ``log_prob_xyz``).
LIKELIHOOD_SOLVERS = ("rk4", "dopri5", "rk4-split")
#: ``exact``: trace over an orthonormal frame; ``hutchinson``: one Gaussian probe per point.
DIVERGENCES = ("exact", "hutchinson")


@dataclass(frozen=True)
class ODEResult:
    """End state ``x`` (..., 3), ``delta`` = ∫ div v ds along the path (...), ``nfe`` field calls."""

    x: Tensor
    delta: Tensor
    nfe: int


def _tangent_frame(x: Tensor) -> Tensor:
    """An orthonormal basis of T_xS²: (..., 3) -> (..., 2, 3)."""
    e1 = sphere.project(sphere._any_tangent(x))
    return torch.stack([e1, torch.linalg.cross(x, e1, dim=-1)], dim=-2)


def exact_frame(y: Tensor, on_sphere: bool) -> Tensor:
    """Probes of the exact divergence at ``y`` (..., 3): the tangent frame of S² (..., 2, 3) or
    the standard basis of R³ (..., 3, 3)."""
    if on_sphere:
        return _tangent_frame(y)
    return torch.eye(3, dtype=y.dtype, device=y.device).expand(*y.shape[:-1], 3, 3)


def graded_grid(s_start: float, s_end: float, steps: int, grid_power: float) -> Tensor:
    """RK4 step boundaries (steps + 1,) float64 from ``s_start`` to ``s_end``: uᵖ for u uniform in
    [0, 1], measured from the end nearer s = 0 (the data end)."""
    if not (isinstance(grid_power, (int, float)) and grid_power >= 1.0):
        raise ValueError(f"grid_power must be a number ≥ 1, got {grid_power!r}")
    base = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64) ** float(grid_power)
    lo, hi = min(s_start, s_end), max(s_start, s_end)
    return lo + (hi - lo) * (base if s_start <= s_end else base.flip(0))


def rk4_along(
    stage_rhs: Callable[[int, int, Tensor, Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    s_grid: Tensor,
    *,
    on_sphere: bool,
    on_step: Callable[[], object] | None = None,
    nfe: Callable[[], int],
) -> ODEResult:
    """Classical RK4 for (x, delta) along ``s_grid``; ``stage_rhs(i, stage, s, y) -> (v, div)`` is
    called for stages 1–4 of step i (the split solver gives each stage its own field).
    ``nfe()`` reads the caller's count of field calls for the result."""
    delta = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for i in range(len(s_grid) - 1):
        s0, s1 = s_grid[i], s_grid[i + 1]
        h = float(s1 - s0)
        sm = 0.5 * (s0 + s1)
        v1, d1 = stage_rhs(i, 1, s0, x)
        v2, d2 = stage_rhs(i, 2, sm, x + 0.5 * h * v1)
        v3, d3 = stage_rhs(i, 3, sm, x + 0.5 * h * v2)
        v4, d4 = stage_rhs(i, 4, s1, x + h * v3)
        x = x + (h / 6.0) * (v1 + 2.0 * v2 + 2.0 * v3 + v4)
        delta = delta + (h / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
        if on_sphere:
            x = sphere.project(x)
        if on_step is not None:
            on_step()
    return ODEResult(x=x, delta=delta, nfe=nfe())


def integrate_with_divergence(
    field: DivergenceField,
    x: Tensor,
    s_start: float,
    s_end: float,
    *,
    on_sphere: bool,
    divergence: str = "exact",
    solver: str = "dopri5",
    steps: int = 16,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    generator: torch.Generator | None = None,
    grid_power: float = 1.0,
    on_step: Callable[[], object] | None = None,
) -> ODEResult:
    """Integrate dx/ds = v and d(delta)/ds = div v from ``s_start`` to ``s_end``.

    ``x`` (..., 3). ``solver="rk4"`` takes ``steps`` steps (4 field calls each), uniform in s
    for ``grid_power`` 1; with p > 1 the nodes are uᵖ for u uniform in [0, 1] measured from the
    end nearer s = 0 (the data end), so that steps shrink where a sharp density contracts the
    flow (div v ~ 1/s there);
    ``"dopri5"`` is torchdiffeq's adaptive Dormand–Prince with ``atol``/``rtol`` on the joint
    state (x, delta), one step size for the whole batch. ``on_step`` (rk4) is called after
    each step (a progress bar's update).
    """
    if solver not in LIKELIHOOD_SOLVERS:
        raise ValueError(f"solver: unknown likelihood solver {solver!r}; choose one of {LIKELIHOOD_SOLVERS}")
    if solver == "rk4-split":
        raise ValueError("solver: 'rk4-split' needs the network's split conditioning; call the method's log_prob_xyz")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: unknown value {divergence!r}; choose one of {DIVERGENCES}")
    gauss = None
    if divergence == "hutchinson":
        # One ambient Gaussian g per trajectory, fixed along it (as in FFJORD), so that the
        # integral of the estimates is an unbiased estimate of the integral of the traces. On S²
        # the probe at y is z = P_y g: E[z zᵀ] = P_y exactly at every point of the path.
        g_device = generator.device if generator is not None else x.device
        gauss = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=g_device).to(x.device).unsqueeze(-2)
    nfe = 0

    def rhs(s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        if on_sphere:
            y = sphere.project(y)
        if gauss is None:
            probes = exact_frame(y, on_sphere)
        else:
            probes = sphere.project_tangent(y.unsqueeze(-2), gauss) if on_sphere else gauss
        return field(y, s, probes)

    if solver == "rk4":
        grid = graded_grid(s_start, s_end, steps, grid_power)
        return rk4_along(
            lambda i, stage, s, y: rhs(s, y), x, grid, on_sphere=on_sphere, on_step=on_step, nfe=lambda: nfe
        )

    from torchdiffeq import odeint

    def joint(s: Tensor, y: Tensor) -> Tensor:
        v, div = rhs(s, y[..., :3])
        return torch.cat([v, div.unsqueeze(-1)], dim=-1)

    y0 = torch.cat([x, torch.zeros(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], dim=-1)
    t = torch.tensor([s_start, s_end], dtype=torch.float64, device=x.device)
    y1 = odeint(joint, y0, t, method="dopri5", atol=atol, rtol=rtol)[-1]
    x1 = sphere.project(y1[..., :3]) if on_sphere else y1[..., :3]
    return ODEResult(x=x1, delta=y1[..., 3], nfe=nfe)
