"""The uniform baseline (paper 000, Sec. 4.2): density 1/(4π) per steradian, uniform samples.

Also home of :class:`ModuleMethod`, the small base the non-generative methods share: a
:class:`~globeflow.methods.base.Method` that is an ``nn.Module`` whose ``net`` holds every
persistent tensor, built from options (:meth:`ModuleMethod.create`) or from its saved config
(:meth:`ModuleMethod.from_config`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from globeflow.geometry.sphere import LOG_AREA, uniform
from globeflow.methods.base import Method

__all__ = ["ModuleMethod", "Uniform", "check_options"]


def check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Reject construction options a method does not know (a typo must not be ignored)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r}: unknown option(s) {unknown}; known: {sorted(allowed)}")


class ModuleMethod(Method, nn.Module):
    """A method whose persistent state is ``self.net`` (saved as safetensors by :func:`globeflow.api.save`).

    Subclasses implement :meth:`create` (new, untrained, from construction options) and
    :meth:`from_config` (rebuild the same architecture from :meth:`config`); the weights are
    then loaded into ``net``.
    """

    net: nn.Module
    #: Construction options :meth:`create` accepts besides ``embedding_dim``.
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, embedding_dim: int) -> None:
        nn.Module.__init__(self)
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        self.embedding_dim = embedding_dim
        # A device marker that is not saved: methods without parameters still know their device.
        self.register_buffer("_device_marker", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_marker.device

    @classmethod
    def create(cls, embedding_dim: int, **options: Any) -> ModuleMethod:
        """A new, untrained method (``options`` as in :attr:`option_names`)."""
        check_options(cls.name, options, cls.option_names)
        return cls(embedding_dim, **options)

    @classmethod
    def from_config(cls, config: dict) -> ModuleMethod:
        """Rebuild from :meth:`config` output (weights are loaded separately into ``net``)."""
        try:
            options = {k: v for k, v in config.items() if k not in ("method", "embedding_dim")}
            return cls.create(int(config["embedding_dim"]), **options)
        except (KeyError, TypeError) as err:
            raise ValueError(f"model config: missing or malformed field {err}") from None

    def config(self) -> dict:
        return {"method": self.name, "embedding_dim": self.embedding_dim, **self._options()}

    def _options(self) -> dict:
        """Construction options (JSON) reproducing this architecture."""
        return {}


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
