"""The von Mises–Fisher distribution on S² (density per steradian and exact sampling).

vMF(x | μ, κ) = κ / (4π sinh κ) · exp(κ μᵀx)
             = κ / (2π (1 − e^{−2κ})) · exp(κ (μᵀx − 1)),
the second form being the one evaluated: it never overflows, and with ``expm1``/``log1p`` it
is accurate from κ = 1e-6 (≈ uniform, density → 1/4π) to κ = 1e7 (a 2-km-wide spike).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from globeflow.geometry.sphere import _any_tangent

__all__ = ["vmf_log_normaliser", "vmf_log_prob", "vmf_sample"]


def _log_normaliser(kappa: Tensor) -> Tensor:
    """log(κ / (2π (1 − e^{−2κ}))), stable for tiny and huge κ."""
    # κ / (−expm1(−2κ)) → 1/2 as κ → 0, so the ratio is evaluated as a whole there.
    small = kappa < 1e-4
    k_safe = torch.where(small, torch.ones_like(kappa), kappa)
    big = torch.log(k_safe) - torch.log(-torch.expm1(-2.0 * k_safe))
    # Series: κ / (1 − e^{−2κ}) = 1/2 + κ/2 + κ²/6 + O(κ⁴)
    series = torch.log(0.5 + 0.5 * kappa + kappa * kappa / 6.0)
    return torch.where(small, series, big) - math.log(2.0 * math.pi)


def vmf_log_normaliser(kappa: Tensor) -> Tensor:
    """log C(κ) − κ = log(κ / (4π sinh κ)) − κ per steradian: (...) -> (...), stable for κ ∈ [0, 10¹²].

    ``vmf_log_normaliser(κ) + κ (μᵀx − 1)`` is the log-density; the shift by κ keeps both
    terms finite where κ / sinh κ underflows.
    """
    return _log_normaliser(kappa)


def vmf_log_prob(x: Tensor, mu: Tensor, kappa: Tensor) -> Tensor:
    """Log density of vMF(μ, κ) at ``x``, per steradian.

    Shapes: ``x`` (..., 3), ``mu`` (..., 3) unit vectors, ``kappa`` (...) > 0 -> (...).
    ``μᵀx − 1`` is evaluated as ``−|x − μ|²/2`` so that large κ keeps its precision.
    """
    cos_minus_one = -0.5 * ((x - mu) ** 2).sum(dim=-1)
    return _log_normaliser(kappa) + kappa * cos_minus_one


def vmf_sample(
    mu: Tensor,
    kappa: Tensor,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact samples from vMF(μ, κ) on S² (Wood's algorithm, closed form for p = 3).

    Shapes: ``mu`` (B, 3) unit, ``kappa`` (B,) -> (B, num_samples, 3).

    The cosine to the mean is w = 1 + log(u + (1−u) e^{−2κ}) / κ with u ~ U(0, 1], computed as
    ``log1p((1−u) expm1(−2κ)) / κ`` so that neither κ → 0 (w uniform on [−1, 1]) nor κ → ∞
    (w → 1) loses precision; 1 − w is kept separately for the same reason.
    """
    if mu.dim() != 2 or mu.shape[-1] != 3:
        raise ValueError(f"mu must have shape (B, 3), got {tuple(mu.shape)}")
    b = mu.shape[0]
    kappa = kappa.to(mu.dtype).reshape(b, 1)
    u = 1.0 - torch.rand(b, num_samples, generator=generator, dtype=mu.dtype, device=mu.device)
    one_minus_w = -torch.log1p((1.0 - u) * torch.expm1(-2.0 * kappa)) / kappa
    one_minus_w = one_minus_w.clamp(0.0, 2.0)
    w = 1.0 - one_minus_w
    sin_w = torch.sqrt((one_minus_w * (2.0 - one_minus_w)).clamp_min(0.0))
    phi = 2.0 * math.pi * torch.rand(b, num_samples, generator=generator, dtype=mu.dtype, device=mu.device)
    e1 = _any_tangent(mu)
    e2 = torch.linalg.cross(mu, e1, dim=-1)
    direction = torch.cos(phi)[..., None] * e1[:, None, :] + torch.sin(phi)[..., None] * e2[:, None, :]
    x = w[..., None] * mu[:, None, :] + sin_w[..., None] * direction
    return x / x.norm(dim=-1, keepdim=True)
