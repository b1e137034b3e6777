"""Noising paths: how a clean location x₀ and a noise sample ε give x_t and the regression target.

All three paths are parameterised by the noise level κ = κ(t) ∈ [0, 1] (κ = 0: data, κ = 1: noise)
and every target is a derivative *per unit κ*; the velocity in t of the paper is κ̇(t) times it
(e.g. Eq. 6 = κ̇(t)(ε − x₀), Eq. 10 = κ̇(t) D(x_t)). Regressing the κ-velocity keeps the targets
of bounded size whatever the schedule, which is how the official implementation trains too.

Shapes: ``x0`` (B, 3) unit vectors, ``kappa`` (B, 1), ``noise`` (B, 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from globeflow.geometry import sphere

__all__ = ["NoisingPath", "DiffusionPath", "FlowPath", "GeodesicPath", "PATHS"]


class NoisingPath:
    """Base class. ``on_sphere`` tells whether x_t and the noise live on S² (else in R³)."""

    name: str = ""
    on_sphere: bool = False

    def sample_noise(
        self, shape: tuple[int, ...], *, generator: torch.Generator | None, dtype=torch.float32, device=None
    ) -> Tensor:
        """Noise ε of shape (*shape, 3): standard Gaussian in R³ (overridden on S²)."""
        return torch.randn(*shape, 3, generator=generator, dtype=dtype, device=device)

    def interpolate(self, x0: Tensor, kappa: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Return (x_t, target) for the regression loss."""
        raise NotImplementedError

    def loss(self, pred: Tensor, target: Tensor, x_t: Tensor) -> Tensor:
        """Per-sample squared error (B,)."""
        return ((pred - target) ** 2).sum(dim=-1)


class DiffusionPath(NoisingPath):
    """Variance-preserving diffusion in R³ (Eq. 1): x_t = √(1−κ) x₀ + √κ ε; target ε (Eq. 2)."""

    name = "diffusion"

    def interpolate(self, x0: Tensor, kappa: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        x_t = torch.sqrt(1.0 - kappa) * x0 + torch.sqrt(kappa) * noise
        return x_t, noise


class FlowPath(NoisingPath):
    """Straight path in R³ (Eq. 5): x_t = (1−κ) x₀ + κ ε; target dx_t/dκ = ε − x₀ (Eq. 6/κ̇)."""

    name = "flow"

    def interpolate(self, x0: Tensor, kappa: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        x_t = (1.0 - kappa) * x0 + kappa * noise
        return x_t, noise - x0


class GeodesicPath(NoisingPath):
    """Geodesic path on S² (Eq. 9): x_t = exp_{x₀}(κ log_{x₀} ε), ε uniform on S².

    Target: D(x_t) = dx_t/dκ, the tangent vector at x_t along the geodesic from x₀ to ε with
    length d(x₀, ε) (Eq. 10 divided by κ̇). The loss (Eq. 11) compares it with the network
    output projected onto T_{x_t}S²: a normal component carries no information on the sphere.
    """

    name = "rfm"
    on_sphere = True

    def sample_noise(self, shape, *, generator, dtype=torch.float32, device=None) -> Tensor:
        return sphere.uniform(shape, generator=generator, dtype=dtype, device=device)

    def interpolate(self, x0: Tensor, kappa: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        return sphere.geodesic_velocity(x0, noise, kappa)

    def loss(self, pred: Tensor, target: Tensor, x_t: Tensor) -> Tensor:
        return ((sphere.project_tangent(x_t, pred) - target) ** 2).sum(dim=-1)


PATHS: dict[str, type[NoisingPath]] = {p.name: p for p in (DiffusionPath, FlowPath, GeodesicPath)}
