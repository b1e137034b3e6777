"""The unit sphere S² embedded in R³: projections, exponential/logarithmic maps, distances.

All functions act on the last dimension (size 3) and broadcast over the leading ones.
Formulas follow Appendix D of *Around the World in 80 Timesteps* (Eqs. G, H), written in
forms that stay accurate at tiny angles and near antipodes:

* angles use ``atan2`` of a sine and a cosine that are both computed without cancellation,
  never a bare ``acos`` of a dot product (which loses half the digits near 0 and π);
* ``sin θ / θ`` and ``θ / sin θ`` switch to their Taylor series below a per-dtype threshold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "eps_for",
    "inner",
    "project",
    "project_tangent",
    "exp_map",
    "log_map",
    "angle",
    "geodesic",
    "geodesic_velocity",
    "uniform",
    "uniform_log_prob",
    "LOG_AREA",
]

#: log(4π), the log-area of the unit sphere: the uniform density is exp(-LOG_AREA) per steradian.
LOG_AREA = math.log(4.0 * math.pi)

# Thresholds below which Taylor series replace sin(θ)/θ-type ratios. They sit where the
# series truncation error (θ⁴/120) falls below the dtype's resolution.
_EPS = {
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
    torch.float32: 1e-3,
    torch.float64: 1e-5,
}


def eps_for(dtype: torch.dtype) -> float:
    """Small-angle threshold for ``dtype`` (float32 unless known)."""
    return _EPS.get(dtype, 1e-3)


def inner(u: Tensor, v: Tensor, keepdim: bool = False) -> Tensor:
    """Euclidean inner product over the last dimension: (..., 3), (..., 3) -> (...)."""
    return (u * v).sum(dim=-1, keepdim=keepdim)


def project(x: Tensor) -> Tensor:
    """Nearest point of S² to ``x`` (..., 3): radial normalisation. ``x`` must be non-zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def project_tangent(x: Tensor, v: Tensor) -> Tensor:
    """Orthogonal projection of ambient vectors ``v`` onto the tangent space at ``x`` ∈ S².

    Shapes: ``x`` (..., 3) unit, ``v`` (..., 3) -> (..., 3) with ⟨x, result⟩ = 0.
    """
    return v - inner(x, v, keepdim=True) * x


def _sinc(theta: Tensor) -> Tensor:
    """sin(θ)/θ, exact at θ = 0."""
    small = theta < eps_for(theta.dtype)
    safe = torch.where(small, torch.ones_like(theta), theta)
    return torch.where(small, 1.0 - theta * theta / 6.0, torch.sin(safe) / safe)


def exp_map(x: Tensor, v: Tensor) -> Tensor:
    """Exponential map (Eq. H): exp_x(v) = cos‖v‖ x + sin‖v‖ v/‖v‖.

    Shapes: ``x`` (..., 3) on S², ``v`` (..., 3) tangent at ``x`` -> (..., 3) on S².
    The result is re-normalised so that long integrations stay on the sphere to the last bit.
    """
    theta = v.norm(dim=-1, keepdim=True)
    y = torch.cos(theta) * x + _sinc(theta) * v
    return project(y)


def _any_tangent(x: Tensor) -> Tensor:
    """A unit tangent vector at ``x`` (..., 3), chosen continuously away from the axis used."""
    # Cross with the canonical axis least aligned with x: never parallel, so never zero.
    idx = x.abs().argmin(dim=-1, keepdim=True)
    e = torch.zeros_like(x).scatter_(-1, idx, 1.0)
    return project(torch.linalg.cross(x, e, dim=-1))


def log_map(x: Tensor, y: Tensor) -> Tensor:
    """Logarithmic map (Eq. G): the tangent vector at ``x`` pointing to ``y`` with length d(x, y).

    Shapes: ``x``, ``y`` (..., 3) on S² -> (..., 3) tangent at ``x``.

    The tangent direction is taken from ``d = y - x`` (accurate for nearby points) and the
    angle from ``atan2(|u|, ⟨x, y⟩)``. For exact antipodes every direction is a geodesic: an
    arbitrary tangent direction with length π is returned rather than a zero vector.
    """
    d = y - x
    u = d - inner(x, d, keepdim=True) * x  # = y - ⟨x,y⟩x, without cancellation near y ≈ x
    # Second Gram–Schmidt pass: near antipodes |u| ≪ 1 and the first pass leaves a normal
    # rounding residue ~ε·x that θ/|u| would blow up into a non-tangent (even radial) result.
    u = u - inner(x, u, keepdim=True) * x
    u_norm = u.norm(dim=-1, keepdim=True)
    cos = inner(x, y, keepdim=True)
    theta = torch.atan2(u_norm, cos)
    eps = eps_for(x.dtype)
    # θ / sin θ with sin θ = |u|: Taylor near 0; the antipodal case is handled below.
    safe = torch.where(u_norm > 0, u_norm, torch.ones_like(u_norm))
    ratio = torch.where(theta < eps, 1.0 + theta * theta / 6.0, theta / safe)
    out = ratio * u
    antipodal = (u_norm <= torch.finfo(x.dtype).eps) & (cos < 0)
    if bool(antipodal.any()):
        out = torch.where(antipodal, math.pi * _any_tangent(x), out)
    return out


def angle(x: Tensor, y: Tensor) -> Tensor:
    """Great-circle angle in radians between unit vectors: (..., 3), (..., 3) -> (...).

    ``2 atan2(|x − y|, |x + y|)`` is accurate for both tiny and near-antipodal pairs.
    """
    return 2.0 * torch.atan2((x - y).norm(dim=-1), (x + y).norm(dim=-1))


def geodesic(x0: Tensor, x1: Tensor, s: Tensor) -> Tensor:
    """Point at fraction ``s`` along the geodesic from ``x0`` to ``x1``: exp_{x0}(s log_{x0}(x1)).

    Shapes: ``x0``, ``x1`` (..., 3); ``s`` broadcastable to (..., 1).
    """
    return exp_map(x0, s * log_map(x0, x1))


def geodesic_velocity(x0: Tensor, x1: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Point ``x_s`` on the geodesic x0 → x1 and its velocity d x_s / d s, in closed form.

    With u = log_{x0}(x1), θ = |u|, û = u/θ: x_s = cos(sθ) x0 + sin(sθ) û and
    d x_s/ds = θ (−sin(sθ) x0 + cos(sθ) û): a tangent vector at x_s of length θ = d(x0, x1)
    pointing along the geodesic (the D(x_t) of Eq. 10).

    Shapes: ``x0``, ``x1`` (..., 3); ``s`` (..., 1) -> two (..., 3) tensors.
    """
    u = log_map(x0, x1)
    theta = u.norm(dim=-1, keepdim=True)
    u_hat = u / theta.clamp_min(torch.finfo(u.dtype).tiny)
    # When x1 == x0 the path is constant: u_hat is 0 and so is the velocity, as it should be.
    st = s * theta
    x_s = project(torch.cos(st) * x0 + torch.sin(st) * u_hat)
    v_s = theta * (-torch.sin(st) * x0 + torch.cos(st) * u_hat)
    return x_s, v_s


def uniform(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform samples on S²: normalised standard Gaussians, shape (*shape, 3)."""
    z = torch.randn(*shape, 3, generator=generator, dtype=dtype, device=device)
    return project(z)


def uniform_log_prob(x: Tensor) -> Tensor:
    """Log density of the uniform distribution on S², per steradian: (..., 3) -> (...)."""
    return torch.full(x.shape[:-1], -LOG_AREA, dtype=x.dtype, device=x.device)
