"""Real spherical harmonics Y_lm on S² (LocDiffusion, paper 003, Appendix A.2, Eq. 19).

Convention (Eq. 19): with θ the colatitude, φ the longitude and N_lm = sqrt((2l+1)/(4π) ·
(l−|m|)!/(l+|m|)!),

    Y_lm = √2 N_lm P_l^{|m|}(cos θ) sin(|m| φ)   m < 0
    Y_l0 =    N_l0 P_l(cos θ)
    Y_lm = √2 N_lm P_l^{m}(cos θ)   cos(m φ)     m > 0

Eq. 19 carries a factor (−1)^m and the P_l^m of Eq. 20 the Condon–Shortley phase (−1)^m; the
two cancel, so the associated Legendre functions below have no phase. The basis is orthonormal
on the unit sphere: ∫ Y_lm Y_l'm' dΩ = δ_ll' δ_mm'.

Eq. 20 (an explicit sum of factorial ratios) cancels catastrophically beyond l ≈ 20 in floating
point; we use instead the standard three-term recurrences of the *fully normalised* functions
P̄_l^m = N_lm P_l^m in float64:

    P̄_0^0 = 1/√(4π),   P̄_m^m = √((2m+1)/(2m)) sin θ P̄_{m−1}^{m−1},
    P̄_{m+1}^m = √(2m+3) cos θ P̄_m^m,
    P̄_l^m = a_lm (cos θ P̄_{l−1}^m − b_lm P̄_{l−2}^m),
    a_lm = √((4l²−1)/(l²−m²)),  b_lm = √(((l−1)²−m²)/(4(l−1)²−1)),

whose values stay O(√l) (no factorial ever formed). The recurrence in l runs for all orders m at
once, so the cost is L vectorised steps. Coefficients are ordered by degree then order,
index l² + l + m (m = −l..l), (L+1)² in all.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["num_coefficients", "real_sph_harm", "sh_index", "sphere_quadrature"]


def num_coefficients(degree: int) -> int:
    """(L+1)², the number of real harmonics of degree ≤ L."""
    return (degree + 1) ** 2


def sh_index(el: int, m: int) -> int:
    """Position of Y_lm (degree l = ``el``) in the coefficient vector (ordered by degree, then
    order m = −l..l)."""
    if not -el <= m <= el:
        raise ValueError(f"order m = {m} outside [-{el}, {el}]")
    return el * el + el + m


@functools.lru_cache(maxsize=8)
def _recurrence_tables(degree: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """a_lm, b_lm (L+1, L+1) in float64, and the gather indices (l, |m|) of every coefficient."""
    el = torch.arange(degree + 1, dtype=torch.float64)[:, None]
    em = torch.arange(degree + 1, dtype=torch.float64)[None, :]
    valid = el > em + 1  # the three-term step applies for l ≥ m + 2
    denom = torch.where(valid, el * el - em * em, torch.ones(()))
    a = torch.where(valid, torch.sqrt((4 * el * el - 1) / denom), torch.zeros(()))
    lm1 = el - 1
    num_b = torch.where(valid, lm1 * lm1 - em * em, torch.zeros(()))
    den_b = torch.where(valid, 4 * lm1 * lm1 - 1, torch.ones(()))
    b = torch.where(valid, torch.sqrt(num_b / den_b), torch.zeros(()))
    ls, ms = [], []
    for deg in range(degree + 1):
        for m in range(-deg, deg + 1):
            ls.append(deg)
            ms.append(m)
    return a, b, torch.tensor(ls), torch.tensor(ms)


def real_sph_harm(x: Tensor, degree: int) -> Tensor:
    """All real spherical harmonics of degree ≤ L at unit vectors: (..., 3) -> (..., (L+1)²).

    Evaluated in float64 (recurrences above, φ from ``atan2``), returned in ``x``'s floating dtype. ``x`` need not be exactly
    unit: it is normalised first.
    """
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
    if x.shape[-1] != 3:
        raise ValueError(f"x must have a last dimension of 3, got shape {tuple(x.shape)}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    lead = x.shape[:-1]
    p = x.reshape(-1, 3).to(torch.float64)
    p = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    z = p[:, 2].clamp(-1.0, 1.0)
    # sin θ from x, y directly (not √(1−z²)): no cancellation near the poles.
    s = torch.hypot(p[:, 0], p[:, 1])
    phi = torch.atan2(p[:, 1], p[:, 0])
    n = p.shape[0]
    big = degree + 1
    a, b, ls, ms = (t.to(p.device) for t in _recurrence_tables(degree))

    # Diagonal P̄_m^m for every m: cumulative product of √((2k+1)/(2k)) sin θ.
    k = torch.arange(1, big, dtype=torch.float64, device=p.device)
    factors = torch.sqrt((2 * k + 1) / (2 * k))[None, :] * s[:, None]  # (n, L)
    diag = torch.cat(
        [torch.ones(n, 1, dtype=torch.float64, device=p.device), torch.cumprod(factors, dim=1)],
        dim=1,
    ) / math.sqrt(4 * math.pi)  # (n, L+1)

    # Rows P̄_l^m (m = 0..L) built degree by degree; entries with m > l stay zero.
    rows = [torch.zeros(n, big, dtype=torch.float64, device=p.device) for _ in range(big)]
    m_idx = torch.arange(big, device=p.device)
    for el in range(big):
        row = torch.zeros(n, big, dtype=torch.float64, device=p.device)
        row[:, el] = diag[:, el]
        if el >= 1:
            # m = l − 1: P̄_l^{l−1} = √(2l+1) cos θ P̄_{l−1}^{l−1}
            row[:, el - 1] = math.sqrt(2 * el + 1) * z * diag[:, el - 1]
        if el >= 2:
            sel = m_idx < el - 1
            row[:, sel] = a[el, sel] * (z[:, None] * rows[el - 1][:, sel] - b[el, sel] * rows[el - 2][:, sel])
        rows[el] = row
    plm = torch.stack(rows, dim=1)  # (n, L+1, L+1) indexed [l, m]

    absm = ms.abs()
    # cos(mφ), sin(mφ) for m = 0..L only, then gathered: (n, L+1) transcendental calls, not (n, (L+1)²).
    mphi = phi[:, None] * torch.arange(big, dtype=torch.float64, device=p.device)[None, :]
    trig = torch.cat([torch.cos(mphi), torch.sin(mphi)], dim=1)  # (n, 2(L+1))
    col = torch.where(ms < 0, absm + big, absm)
    # float64 throughout: a Python-scalar torch.where would round √2 to float32.
    scale = torch.full((ms.shape[0],), math.sqrt(2.0), dtype=torch.float64, device=p.device)
    scale[ms == 0] = 1.0
    flat = ls * big + absm
    y = plm.reshape(n, big * big)[:, flat] * trig[:, col] * scale[None, :]
    return y.reshape(*lead, num_coefficients(degree)).to(out_dtype)


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [−1, 1] by Newton's method on the recurrence."""

    def value_and_slope(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p0, p1 = np.ones_like(t), t.copy()
        for j in range(2, n + 1):
            p0, p1 = p1, ((2 * j - 1) * t * p1 - (j - 1) * p0) / j
        return p1, n * (t * p1 - p0) / (t * t - 1)

    t = np.cos(np.pi * (np.arange(1, n + 1) - 0.25) / (n + 0.5))
    for _ in range(100):
        val, slope = value_and_slope(t)
        step = val / slope
        t = t - step
        if np.abs(step).max() < 1e-15:
            break
    _, slope = value_and_slope(t)
    return t, 2.0 / ((1 - t * t) * slope * slope)


def sphere_quadrature(n_z: int, n_phi: int) -> tuple[Tensor, Tensor]:
    """Product rule on S²: Gauss–Legendre in z = cos θ, trapezoid in φ -> points (n, 3), weights (n,).

    Exact (to rounding) for spherical polynomials of degree ≤ min(2 n_z − 1, n_phi − 1),
    e.g. for every product Y_lm Y_l'm' with l, l' ≤ L when n_z ≥ L + 1 and n_phi ≥ 2L + 1.
    Float64.
    """
    if n_z < 1 or n_phi < 1:
        raise ValueError(f"n_z and n_phi must be positive, got {n_z}, {n_phi}")
    z, wz = _gauss_legendre(n_z)
    phi = np.arange(n_phi) * (2 * np.pi / n_phi)
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    r = np.sqrt(1 - zz**2)
    pts = np.stack([r * np.cos(pp), r * np.sin(pp), zz], axis=-1).reshape(-1, 3)
    w = np.repeat(wz * (2 * np.pi / n_phi), n_phi)
    return torch.from_numpy(pts), torch.from_numpy(w)
