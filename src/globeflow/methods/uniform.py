"""The uniform baseline (paper 000, Sec. 4.2): density 1/(4π) per steradian, uniform samples."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from globeflow.geometry.sphere import LOG_AREA, uniform
from globeflow.methods.base import ModuleMethod

__all__ = ["Uniform"]


class _NoParameters(nn.Module):
    """The uniform law has nothing to learn or store; an empty module keeps save/load uniform."""


class Uniform(ModuleMethod):
    """p(y | c) = 1/(4π) for every embedding (the paper's reference NLL, log 4π ≈ 2.53 nats)."""

    name: ClassVar[str] = "uniform"
    density_space: ClassVar[str | None] = "S2"

    def __init__(self, embedding_dim: int) -> None:
        super().__init__(embedding_dim)
        self.net = _NoParameters()

    def sample_xyz(self, emb: Tensor, num_samples: int, *, generator: torch.Generator, **options: Any) -> Tensor:
        """Uniform unit vectors (B, S, 3), drawn on the generator's device then moved to ``emb``'s."""
        x = uniform((emb.shape[0], num_samples), generator=generator, dtype=torch.float64)
        return x.to(device=emb.device, dtype=torch.float32)

    def log_prob_xyz(self, emb: Tensor, x: Tensor, *, guidance: float = 0.0, **options: Any) -> Tensor:
        """−log 4π everywhere: (B, P, 3) -> (B, P)."""
        return torch.full(x.shape[:-1], -LOG_AREA, dtype=torch.float32, device=x.device)

    def loss(self, x0: Tensor, emb: Tensor, generator: torch.Generator, net: nn.Module | None = None) -> Tensor:
        """The (constant) NLL log 4π; there is nothing to optimise."""
        return torch.full((), math.log(4.0 * math.pi), device=x0.device)
