"""MvMF, the mixture of von Mises–Fisher output layer of Izbicki et al. (paper 004).

c components with *fixed* means M and concentrations K and image-dependent weights:

    MvMF(y; M, K, Γ) = Σ_i Γ_i(x) vMF(y; μ_i, κ_i)                         (Eq. 2)
    Γ_i(x; W) = softmax_i(−xᵀw_i)                                            (Eq. 3)
    ℓ_MvMF = −log Σ_i Γ_i(x; W) vMF(y; μ_i, κ_i)                             (Eq. 4)
    ỹ = μ_ĩ,  ĩ = argmax_i Γ_i(x; W)                                          (Eq. 7)

The means are the centres of an adaptive partition of the training locations, built as
PlaNet's S2 cells (Sec. 2.2): the six faces of the cube projected on the sphere, then the cell
holding most training points is split in four, recursively, until there are c cells
(:func:`adaptive_partition`). This needs the training locations before training:
:meth:`MvMF.prepare` (called by ``globeflow train``).

Concentrations. Either one κ₀ for every component (the paper initialises κ_i = κ₀ and tunes
log κ₀ ∈ [0, 20], suggesting e¹⁶ on 6 M Flickr photos), or — the default — κ_i from the size of
cell i: the κ for which the vMF puts half its mass inside the spherical cap with the cell's area.
The default is adaptive because a fixed κ₀ ties the model to one data density: e¹⁶ (a ~2 km
spread) fits millions of photos, but on a partition of 10⁴–10⁵ locations the cells are tens to
thousands of km wide and such narrow components leave the density between cell centres at
~0 (a huge NLL for any test location off a centre); sizing κ_i by the cell makes each component
cover its cell whatever the data size, dense regions getting sharp components and sparse ones
broad components.

Eq. 3 has no bias; we add one (``bias=True``), initialised to the log of the cell populations,
so that a model starts at the marginal distribution of the training locations and features
need not carry a constant. The weights W are Glorot-initialised (paper).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from globeflow.geometry.coords import xyz_to_latlon
from globeflow.geometry.vmf import vmf_log_normaliser, vmf_sample
from globeflow.methods.base import ModuleMethod, as_embedding

__all__ = ["MvMF", "Partition", "adaptive_partition", "kappa_half_mass"]

#: Finest subdivision level of a cube face (S2 cells go to 30; 2⁻²⁴ of a face is ~0.6 m).
MAX_LEVEL = 24
#: Points × components handled per chunk in likelihood evaluation (≈ 128 MB in float64).
MAX_PAIRS_PER_CHUNK = 1 << 24


@dataclass(frozen=True)
class Partition:
    """An adaptive partition of the sphere: ``centres`` (c, 3) unit, ``areas`` (c,) sr, ``counts`` (c,)."""

    centres: np.ndarray
    areas: np.ndarray
    counts: np.ndarray


def _face_coords(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cube face (0..5) and its equal-angle coordinates s, t ∈ [−1, 1] of unit vectors (N, 3)."""
    axis = np.abs(x).argmax(axis=1)
    sign = np.take_along_axis(x, axis[:, None], axis=1)[:, 0]
    face = axis * 2 + (sign < 0)
    others = np.array([[1, 2], [0, 2], [0, 1]])[axis]
    u = np.take_along_axis(x, others[:, :1], axis=1)[:, 0] / np.abs(sign)
    v = np.take_along_axis(x, others[:, 1:], axis=1)[:, 0] / np.abs(sign)
    # Equal-angle coordinates make cells of one level nearly equal in area (S2's tangent transform).
    return face, (4.0 / math.pi) * np.arctan(u), (4.0 / math.pi) * np.arctan(v)


def _cell_geometry(face: int, level: int, i: int, j: int) -> tuple[np.ndarray, float]:
    """Centre (3,) and exact solid angle of cell (i, j) of ``level`` on ``face``."""
    n = 1 << level
    s0, s1 = -1.0 + 2.0 * i / n, -1.0 + 2.0 * (i + 1) / n
    t0, t1 = -1.0 + 2.0 * j / n, -1.0 + 2.0 * (j + 1) / n
    u0, u1, v0, v1 = (math.tan(math.pi / 4 * a) for a in (s0, s1, t0, t1))

    # Solid angle of [0,u]×[0,v] on the plane at distance 1: atan(uv / √(1+u²+v²)).
    def f(u: float, v: float) -> float:
        return math.atan(u * v / math.sqrt(1.0 + u * u + v * v))

    area = f(u1, v1) - f(u0, v1) - f(u1, v0) + f(u0, v0)
    uc, vc = math.tan(math.pi / 4 * (s0 + s1) / 2), math.tan(math.pi / 4 * (t0 + t1) / 2)
    axis, negative = divmod(face, 2)
    c = np.zeros(3)
    c[axis] = -1.0 if negative else 1.0
    others = [a for a in range(3) if a != axis]
    c[others[0]], c[others[1]] = uc, vc
    return c / np.linalg.norm(c), area


def adaptive_partition(x: np.ndarray | Tensor, num_cells: int) -> Partition:
    """PlaNet-style adaptive partition of training locations ``x`` (N, 3) into ``num_cells`` cells.

    Start from the six cube faces; repeatedly split the cell with the most points (ties: the
    coarsest first) into its four children, empty ones included so that the cells keep tiling
    the sphere. Each split adds three cells; if the last one would overshoot, its emptiest
    children are merged into one cell, so that exactly ``num_cells`` cells remain. Cells at :data:`MAX_LEVEL` are not split further (if
    every cell is there, fewer than ``num_cells`` cells are returned).
    """
    if not isinstance(num_cells, int) or num_cells < 6:
        raise ValueError(f"num_components must be an integer ≥ 6 (the cube's faces), got {num_cells!r}")
    face, s, t = _face_coords(_unit_locations(x))
    scale = 1 << MAX_LEVEL
    si = np.clip(((s + 1.0) / 2.0 * scale).astype(np.int64), 0, scale - 1)
    ti = np.clip(((t + 1.0) / 2.0 * scale).astype(np.int64), 0, scale - 1)

    # cell id -> (face, level, i, j, point indices, merged geometry or None); heap of (−count, level, id)
    cells: dict[int, tuple] = {}
    heap: list[tuple[int, int, int]] = []
    next_id = 0

    def add(cell: tuple) -> None:
        nonlocal next_id
        cells[next_id] = cell
        heapq.heappush(heap, (-len(cell[4]), cell[1], next_id))
        next_id += 1

    for f in range(6):
        add((f, 0, 0, 0, np.nonzero(face == f)[0], None))
    while len(cells) < num_cells and heap:
        _, level, cid = heapq.heappop(heap)
        f, _, i, j, idx, merged = cells[cid]
        if level == MAX_LEVEL or merged is not None:  # stays a cell, leaves the heap
            continue
        del cells[cid]
        shift = MAX_LEVEL - level - 1
        ci = (si[idx] >> shift) & 1
        cj = (ti[idx] >> shift) & 1
        children = [
            (f, level + 1, 2 * i + di, 2 * j + dj, idx[(ci == di) & (cj == dj)], None) for di in (0, 1) for dj in (0, 1)
        ]
        room = num_cells - len(cells)  # cells this split may produce (2..4)
        if room < 4:
            children = _merge_emptiest(children, room)
        for ch in children:
            add(ch)
    return _partition(cells.values())


def _unit_locations(x: np.ndarray | Tensor) -> np.ndarray:
    """Training locations ``x`` (N, 3), checked, as float64 unit vectors."""
    x = np.asarray(x.detach().cpu().double() if isinstance(x, Tensor) else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"training locations must have shape (N, 3) with N > 0, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("training locations: non-finite values")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _merge_emptiest(children: list[tuple], room: int) -> list[tuple]:
    """The last split of :func:`adaptive_partition`: keep the ``room`` − 1 fullest of the four
    ``children``, merge the others into one cell (its centre the area-weighted mean of theirs),
    so that exactly the requested number of cells tile the sphere."""
    f, level = children[0][:2]
    children = sorted(children, key=lambda ch: -len(ch[4]))
    rest = children[room - 1 :]
    geo = [_cell_geometry(*ch[:4]) for ch in rest]
    areas_rest = np.array([g[1] for g in geo])
    centre = (np.stack([g[0] for g in geo]) * areas_rest[:, None]).sum(axis=0)
    merged_idx = np.concatenate([ch[4] for ch in rest])
    merged = (centre / np.linalg.norm(centre), float(areas_rest.sum()))
    return children[: room - 1] + [(f, level, -1, -1, merged_idx, merged)]


def _partition(cells) -> Partition:
    """The :class:`Partition` of cells (face, level, i, j, point indices, merged geometry or None)."""
    centres, areas, counts = [], [], []
    for f, level, i, j, idx, merged in cells:
        c, a = merged if merged is not None else _cell_geometry(f, level, i, j)
        centres.append(c)
        areas.append(a)
        counts.append(len(idx))
    return Partition(np.stack(centres), np.array(areas), np.array(counts, dtype=np.int64))


def kappa_half_mass(areas: np.ndarray) -> np.ndarray:
    """κ such that vMF(μ, κ) has half its mass in a cap of solid angle ``areas`` (float64).

    A cap of area A is {y: 1 − μᵀy ≤ h}, h = A/(2π); its vMF mass is (1 − e^{−κh})/(1 − e^{−2κ}).
    Solved for mass ½ by bisection on log κ (for small cells κ ≈ 2π ln 2 / A). Caps of half
    the sphere or more (h ≥ 1) get the uniform law's κ → 0 (floored at 1e-6).
    """
    h = np.clip(np.asarray(areas, dtype=np.float64) / (2.0 * math.pi), 1e-300, None)
    lo = np.full_like(h, math.log(1e-6))
    hi = np.full_like(h, math.log(1e12))
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        k = np.exp(mid)
        mass = -np.expm1(-k * h) / -np.expm1(-2.0 * k)
        too_wide = mass < 0.5  # not concentrated enough: raise κ
        lo = np.where(too_wide, mid, lo)
        hi = np.where(too_wide, hi, mid)
    return np.exp(0.5 * (lo + hi))


class _MvMFNLL(torch.autograd.Function):
    """Per-row ℓ_MvMF (Eq. 4) with a hand-written backward, fused for large c.

    With a = −(W x + b) (B, c) and v = log vMF(y | μ_i, κ_i) (B, c, constant),
    ℓ = logsumexp(a) − logsumexp(a + v), and ∂ℓ/∂a = β − α with β = softmax(a) and
    α = softmax(a + v) (the α, β of the paper's Appendix A). Autograd would keep and revisit
    several (B, c) intermediates; this keeps one (β − α) and does the two matrix products of
    the backward pass, about 3× faster at c = 2¹⁵.
    """

    @staticmethod
    def forward(ctx, emb: Tensor, weight: Tensor, bias: Tensor | None, v: Tensor) -> Tensor:
        a = emb @ weight.T
        if bias is not None:
            a += bias
        a.neg_()
        beta = torch.softmax(a, dim=-1)
        lse_a = torch.logsumexp(a, dim=-1)
        a += v  # a is now a + v
        lse_av = torch.logsumexp(a, dim=-1)
        alpha = torch.softmax(a, dim=-1)
        beta -= alpha
        ctx.save_for_backward(emb, weight, beta)
        ctx.has_bias = bias is not None
        return lse_a - lse_av

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        emb, weight, g = ctx.saved_tensors
        g = g * grad_out[:, None]  # ∂L/∂a (B, c); a = −(W x + b)
        grad_emb = -(g @ weight) if ctx.needs_input_grad[0] else None
        grad_w = -(g.T @ emb) if ctx.needs_input_grad[1] else None
        grad_b = -g.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_emb, grad_w, grad_b, None


class MvMFNet(nn.Module):
    """Weights W (c, D) and bias (Eq. 3) and the fixed buffers M (c, 3), log K (c,)."""

    def __init__(self, embedding_dim: int, num_components: int, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_dim, num_components, bias=bias)
        nn.init.xavier_uniform_(self.linear.weight)  # Glorot, as in the paper
        if bias:
            nn.init.zeros_(self.linear.bias)
        # Buffers, not parameters: saved with the weights, not trained (fixed M and K).
        self.register_buffer("means", torch.zeros(num_components, 3, dtype=torch.float64))
        self.register_buffer("log_kappas", torch.zeros(num_components, dtype=torch.float64))
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    def forward(self, emb: Tensor, log_vmf: Tensor | None = None) -> Tensor:
        """log Γ (B, c), the log-softmax of −(W x + b) (Eq. 3, its sign);
        with ``log_vmf`` (B, c), the per-row loss ℓ_MvMF (B,) (Eq. 4) instead.

        The loss goes through ``forward`` so that a DistributedDataParallel wrapper sees it.
        """
        if log_vmf is not None:
            return _MvMFNLL.apply(emb, self.linear.weight, self.linear.bias, log_vmf)
        return (-self.linear(emb)).log_softmax(dim=-1)


class MvMF(ModuleMethod):
    """The MvMF layer of paper 004 on frozen embeddings (``mvmf``)."""

    name: ClassVar[str] = "mvmf"
    default_strategy: ClassVar[str] = "mode"  # predict's own estimate
    density_space: ClassVar[str | None] = "S2"
    option_names: ClassVar[tuple[str, ...]] = ("num_components", "log_kappa0", "bias")

    def __init__(
        self,
        embedding_dim: int,
        *,
        num_components: int = 1 << 12,
        log_kappa0: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(embedding_dim)
        if not isinstance(num_components, int) or num_components < 6:
            raise ValueError(f"num_components must be an integer ≥ 6, got {num_components!r}")
        if log_kappa0 is not None and not (math.isfinite(log_kappa0) and -14.0 <= log_kappa0 <= 25.0):
            raise ValueError(f"log_kappa0 must be None (cell-size κ) or in [-14, 25], got {log_kappa0!r}")
        self.num_components = num_components
        self.log_kappa0 = None if log_kappa0 is None else float(log_kappa0)
        self.bias = bool(bias)
        self.net = MvMFNet(embedding_dim, num_components, self.bias)

    @property
    def device(self) -> torch.device:
        return self.net.means.device

    def _options(self) -> dict:
        return {"num_components": self.num_components, "log_kappa0": self.log_kappa0, "bias": self.bias}

    # -- data-dependent set-up -------------------------------------------------------------------
    def prepare(self, x0: Tensor, emb: Tensor | None = None) -> Partition:
        """Place the components: partition the training locations ``x0`` (N, 3) (see module doc).

        Sets the buffers M, K and the bias (log cell populations); ``emb`` is not used. If the
        partition has fewer cells than ``num_components`` (every cell at the finest level),
        the surplus components repeat the fullest cells, so every component stays valid.
        Returns the partition.
        """
        part = adaptive_partition(x0, self.num_components)
        c = len(part.centres)
        centres, areas, counts = part.centres, part.areas, part.counts
        if c < self.num_components:  # duplicate the fullest cells (never happens before ~10⁸ points)
            extra = np.arange(self.num_components - c) % c
            centres = np.concatenate([centres, centres[extra]])
            areas = np.concatenate([areas, areas[extra]])
            counts = np.concatenate([counts, np.zeros(len(extra), dtype=np.int64)])
        if self.log_kappa0 is None:
            log_k = np.log(kappa_half_mass(areas))
        else:
            log_k = np.full(len(areas), self.log_kappa0)
        net = self.net
        with torch.no_grad():
            net.means.copy_(torch.from_numpy(centres))
            net.log_kappas.copy_(torch.from_numpy(log_k))
            if net.linear.bias is not None:
                # −b_i = log(count_i + ½): the softmax starts at the smoothed cell frequencies.
                net.linear.bias.copy_(torch.from_numpy(-np.log(counts + 0.5)).to(net.linear.bias))
            net.prepared.fill_(True)
        return part

    def _check_prepared(self) -> None:
        if not bool(self.net.prepared):
            raise ValueError(
                "mvmf: the components are not placed yet; call method.prepare(x0) with the training "
                "locations before training (globeflow train does it)"
            )

    # -- the distribution --------------------------------------------------------------------
    def _component_log_prob(self, x: Tensor) -> Tensor:
        """log vMF(x | μ_i, κ_i) for x (..., 3) -> (..., c), in float64.

        Written as one matrix product with a bias, x · (κ_i μ_i) + (log C̃(κ_i) − κ_i), the
        only pass over the (points × c) array. Float64, and x renormalised in float64: with κ
        up to e¹⁶ ≈ 9·10⁶, a float32 unit vector's |x| − 1 ~ 6·10⁻⁸ alone would shift the
        log-density by ~0.5 nat.
        """
        net = self.net
        kappa = net.log_kappas.exp()
        flat = x.reshape(-1, 3).to(torch.float64)
        flat = flat / flat.norm(dim=-1, keepdim=True)
        out = torch.addmm(vmf_log_normaliser(kappa) - kappa, flat, (kappa[:, None] * net.means).T)
        return out.reshape(*x.shape[:-1], -1)

    def log_prob_xyz(self, emb: Tensor, x: Tensor, *, guidance: float = 0.0, **options: Any) -> Tensor:
        """log Σ_i Γ_i(emb) vMF(x | μ_i, κ_i) (Eq. 2): emb (B, D), x (B, P, 3) -> (B, P) (float32).

        Chunked over points so that at most :data:`MAX_PAIRS_PER_CHUNK` point–component pairs
        are in memory (c = 2¹⁵ components fit at any batch size).
        """
        self._check_prepared()
        b, p = x.shape[:2]
        out = torch.empty(b, p, dtype=torch.float32, device=x.device)
        with torch.inference_mode():
            log_w = self.net(emb).to(torch.float64)  # (B, c)
            per_row = max(1, MAX_PAIRS_PER_CHUNK // (self.num_components * max(p, 1)))
            for start in range(0, b, per_row):
                sl = slice(start, start + per_row)
                comp = self._component_log_prob(x[sl])  # (b', P, c)
                out[sl] = torch.logsumexp(comp + log_w[sl, None, :], dim=-1).float()
        return out

    def loss(self, x0: Tensor, emb: Tensor, generator: torch.Generator, net: nn.Module | None = None) -> Tensor:
        """Mean ℓ_MvMF (Eq. 4) in nats over the batch: x0 (B, 3), emb (B, D)."""
        self._check_prepared()
        v = self._component_log_prob(x0).to(emb.dtype)  # constant: M and K are not trained
        return (self.net if net is None else net)(emb, v).mean()

    def sample_xyz(self, emb: Tensor, num_samples: int, *, generator: torch.Generator, **options: Any) -> Tensor:
        """Exact samples (B, S, 3): component i ~ Γ(emb), then vMF(μ_i, κ_i)."""
        self._check_prepared()
        dev = generator.device
        with torch.inference_mode():
            w = self.net(emb).to(dev, torch.float64).exp()
            comp = torch.multinomial(w, num_samples, replacement=True, generator=generator).reshape(-1)
            mu = self.net.means.to(dev)[comp]
            kappa = self.net.log_kappas.to(dev)[comp].exp()
            x = vmf_sample(mu, kappa, 1, generator=generator)
        return x.reshape(emb.shape[0], num_samples, 3).to(emb.device, torch.float32)

    def predict(self, emb: Any, *, strategy: str | None = None, **options: Any) -> np.ndarray:
        """Eq. 7 by default: the mean of the heaviest component, (B, D) -> (B, 2) degrees."""
        strategy = self.default_strategy if strategy is None else strategy
        if strategy != "mode":
            return super().predict(emb, strategy=strategy, **options)
        self._check_prepared()
        emb_t = as_embedding(emb, self.embedding_dim, device=self.device)
        with torch.inference_mode():
            best = self.net(emb_t).argmax(dim=-1)
            return xyz_to_latlon(self.net.means[best])
