"""Likelihood ODE with the noise-level conditioning split into a slow and a fast part.

Why: the AdaLN network sees κ through sinusoids of 1000κ (periods down to 2π/1000 ≈ 0.0063), and a
trained network uses them, so the integrand g(κ) = div v(x(κ), κ) of Prop. 2 carries wiggles that
~100 distinct RK4 nodes alias (docs/benchmarks.md, "Likelihood with fewer evaluations"). But κ
enters the network at one place only: the activation a(κ) = SiLU(c + T(κ)) from which every AdaLN
modulation is an affine map (:meth:`~globeflow.nets.adaln_mlp.AdaLNMLP.condition_activation`).
a(κ) costs no coordinate-path work, so it can be computed on a fine κ grid and split exactly:

    a(κ) = ā(κ) + δ(κ),   ā = a low-passed below ω_c (FFT on the fine grid),

with ω_c = ``cutoff`` / h_local (rad per unit κ), so that the RK4 steps resolve ā. Then

* ā drives a classical RK4 solve on the graded grid (it is smooth at the step's scale);
* δ, the part the nodes cannot resolve, is *sampled antithetically*: the two RK4 evaluations at
  each step's midpoint use ā + δ and ā − δ, and so do the two evaluations that share each interior
  grid node (stage 4 of one step, stage 1 of the next; their weights are equal). The terms odd in
  δ — whose first-order part is what aliases — cancel pairwise, while the terms even in δ (the
  "rectified" mean that the wiggles add to g, which a plain low-pass would drop) are kept at their
  sampled size. This is antithetic variates (Hammersley & Morton, "A new Monte Carlo technique:
  antithetic variates", 1956) applied to a two-scale quadrature; evaluating a field at a filtered
  fast variable is the idea of the mollified long-step integrators for oscillatory ODEs
  (García-Archilla, Sanz-Serna & Skeel, SIAM J. Sci. Comput. 1998) and of heterogeneous
  multiscale methods (E & Engquist 2003). A plain low-pass alone loses the even terms' mean:
  measured, it still errs by 0.015 nats at 400 steps on a trained network (docs/benchmarks.md).

What is neglected: the mean of the terms odd in δ beyond first order (phase-locked triads of the
fast frequencies) and the small shifts of the path inside each pair. Both vanish as the steps
shrink, because ω_c grows as 1/h and the split disappears: the scheme converges to the exact
log-density like RK4 does (nodes whose cutoff exceeds ``_PASS_ALL`` take a itself). The endpoints
κ = 0 and 1 use ā alone (their pair partner is outside the interval); their weight is h/6.
Measured accuracy per function evaluation: docs/benchmarks.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from globeflow.geometry import sphere
from globeflow.solvers.likelihood import ODEResult, exact_frame, rk4_along

__all__ = ["SPLIT_CUTOFF", "NodeLowPass", "integrate_split_rk4", "split_nodes"]

#: ω_c · h_local (radians): chosen on two trained networks (docs/benchmarks.md); lower moves
#: more of a(κ) into the antithetic part, higher asks RK4 to resolve more.
SPLIT_CUTOFF = 4.5
#: Half-width of the low-pass's raised-cosine edge (rad per unit κ): the transfer is exactly 1
#: below ω_c − 30 and 0 above ω_c + 30, so the slow part passes untouched.
_ROLL_OFF = 30.0
#: Fine grid: spacing (Nyquist π·4096 ≈ 12,900 rad: SiLU's harmonics of the 1000κ features
#: reach several thousand rad, and what lies above the Nyquist folds back; only what folds
#: below the highest cutoff, 2030 rad, i.e. content above ~23,700 rad, would matter) and
#: padding beyond the nodes (the network is defined for any κ).
_FINE_SPACING = 1.0 / 4096
_PADDING = 0.25
#: Nodes whose cutoff is above this (rad) take the signal itself: steps that short resolve the
#: 1000κ features, and the filter's cost grows with the highest cutoff it must apply.
_PASS_ALL = 2000.0

#: A field at node j with fast sign σ ∈ {−1, 0, +1}: ``field_at(j, σ)(x, s, probes) -> (v, div)``.
SplitFieldFactory = Callable[[int, float], Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]]


class NodeLowPass:
    """A low-pass with its own cutoff at each node, evaluated at the nodes only.

    ``nodes`` (n,) float64; ``cutoffs`` (n,) in rad per unit κ. :attr:`grid` (G,) float64 is the
    fine grid on which a signal is to be sampled. Calling the filter with the signal on the grid
    (G, ...) and at the nodes (n, ...) returns the low-passed signal at the nodes (n, ...), in
    the signal's dtype: the sampled signal is transformed once and its filtered trigonometric
    interpolant is evaluated at each node with that node's transfer function (1 below ω_c − 30,
    a raised cosine to 0 at ω_c + 30): exact at nodes off the grid, any cutoff per node. The
    sampled signal is mirrored (so that its periodic extension has no jump to ring); nodes with
    a cutoff above ``_PASS_ALL`` get the signal itself. Everything that depends only on the
    nodes (the grid, the bins needed, the evaluation basis) is computed once, here, and shared
    by every call (the rows of a batch are filtered in chunks).
    """

    def __init__(self, nodes: Tensor, cutoffs: Tensor) -> None:
        self.lo = float(nodes.min()) - _PADDING
        g = int(math.ceil((float(nodes.max()) + _PADDING - self.lo) / _FINE_SPACING)) + 1
        g = -(-g // 1024) * 1024  # a multiple of 1024: a fast FFT size (the extra is more padding)
        self.grid = self.lo + _FINE_SPACING * torch.arange(g, dtype=torch.float64, device=nodes.device)
        n = 2 * g  # the mirrored length
        # Only the bins some filtered node passes are needed (the transfer is 0 above ω_c + roll).
        self.keep = cutoffs >= _PASS_ALL
        top = float(cutoffs[~self.keep].max()) + _ROLL_OFF if bool((~self.keep).any()) else 0.0
        self.bins = min(n // 2, int(top * n * _FINE_SPACING / (2.0 * math.pi)) + 2)
        k = torch.arange(self.bins + 1, dtype=torch.float64, device=nodes.device)
        omega = 2.0 * math.pi * k / (n * _FINE_SPACING)
        edge = ((omega[None] - cutoffs[:, None] + _ROLL_OFF) / (2.0 * _ROLL_OFF)).clamp(0.0, 1.0)
        transfer = 0.5 * (1.0 + torch.cos(math.pi * edge))  # (nodes, F): 1, raised-cosine edge, 0
        weight = torch.full_like(k, 2.0)  # a real signal's one-sided spectrum (its Nyquist bin is never passed)
        weight[0] = 1.0
        phase = (2.0 * math.pi / n) * k[None] * ((nodes[:, None] - self.lo) / _FINE_SPACING)
        self.basis = torch.polar(transfer * weight / n, phase)  # (nodes, F) complex128

    def __call__(self, on_grid: Tensor, at_nodes: Tensor) -> Tensor:
        g = len(self.grid)
        if on_grid.shape[0] != g or on_grid.shape[1:] != at_nodes.shape[1:]:
            raise ValueError(
                f"on_grid: expected ({g}, *{tuple(at_nodes.shape[1:])}) to match the grid and at_nodes, "
                f"got {tuple(on_grid.shape)}"
            )
        flat = on_grid.reshape(g, -1)
        # Mirrored, the sampled signal is periodic and continuous: no wrap-around jump to ring.
        spectrum = torch.fft.rfft(torch.cat([flat, flat.flip(0)]), dim=0)[: self.bins + 1]  # the signal's precision
        slow = (self.basis.to(spectrum.dtype) @ spectrum).real.reshape(at_nodes.shape).to(at_nodes.dtype)
        return torch.where(self.keep.reshape(-1, *[1] * (at_nodes.dim() - 1)), at_nodes, slow)


def integrate_split_rk4(
    field_at: SplitFieldFactory,
    x: Tensor,
    s_grid: Tensor,
    *,
    on_sphere: bool,
    on_step: Callable[[], object] | None = None,
) -> ODEResult:
    """RK4 along ``s_grid`` (steps + 1,) with antithetic fast parts (see the module docstring).

    Node j: 2i the grid points, 2i + 1 the midpoints. ``field_at(j, σ)`` is the divergence field
    at node j with modulations from ā + σ δ; the divergence is exact (:func:`exact_frame`).
    """
    last_step = len(s_grid) - 2
    nfe = 0

    def stage_rhs(i: int, stage: int, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        # Pairs with equal RK4 weights carry ±δ: (stage 4 of step i−1, stage 1 of step i) at the
        # grid point, (stage 2, stage 3) at the midpoint. The ends κ = s_start, s_end have no
        # partner and take ā alone. (Alternating the pairs' order from step to step was
        # measured: worse.)
        if stage == 1:
            node, sign = 2 * i, (0.0 if i == 0 else -1.0)
        elif stage == 4:
            node, sign = 2 * i + 2, (0.0 if i == last_step else 1.0)
        else:
            node, sign = 2 * i + 1, (1.0 if stage == 2 else -1.0)
        if on_sphere:
            y = sphere.project(y)
        return field_at(node, sign)(y, s, exact_frame(y, on_sphere))

    return rk4_along(stage_rhs, x, s_grid, on_sphere=on_sphere, on_step=on_step, nfe=lambda: nfe)


def split_nodes(s_grid: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """Nodes (2·steps + 1,) — grid points and midpoints — and their cutoffs ω_c = cutoff / h_local.

    h_local is the step for a midpoint and the mean of the two adjacent steps for a grid point.
    """
    h = (s_grid[1:] - s_grid[:-1]).abs()
    nodes = torch.empty(2 * len(h) + 1, dtype=torch.float64, device=s_grid.device)
    nodes[0::2], nodes[1::2] = s_grid, 0.5 * (s_grid[1:] + s_grid[:-1])
    local = torch.empty_like(nodes)
    local[1::2] = h
    local[0], local[-1] = h[0], h[-1]
    local[2:-1:2] = 0.5 * (h[1:] + h[:-1])
    return nodes, cutoff / local
