"""Noise schedules κ(t): [0, 1] → [0, 1] with κ(0) = 0 (data) and κ(1) = 1 (noise).

Each schedule gives κ(t) and its analytic derivative κ̇(t). The generative methods use κ as the
noise level: the networks are conditioned on κ and predict velocities per unit κ, so that a
schedule only decides *which* noise levels are visited in training and sampling (Sec. 3.4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "SkewedSigmoid",
    "Linear",
    "Cosine",
    "SCHEDULES",
    "make_schedule",
]


class Schedule:
    """Base class: subclasses implement ``_kappa`` and ``_kappa_dot`` on t ∈ [0, 1]."""

    name: str = ""

    def kappa(self, t: Tensor) -> Tensor:
        """κ(t), with the endpoints pinned to exactly 0 and 1."""
        t = torch.as_tensor(t)
        # Clamped: in float32 the rounding of Eq. 15 can leave [0, 1] by an ulp or so near the
        # ends, and diffusion takes √κ and √(1 − κ).
        k = self._kappa(t).clamp(0.0, 1.0)
        k = torch.where(t <= 0, torch.zeros_like(k), k)
        return torch.where(t >= 1, torch.ones_like(k), k)

    def kappa_dot(self, t: Tensor) -> Tensor:
        """dκ/dt at t (analytic)."""
        return self._kappa_dot(torch.as_tensor(t))

    def _kappa(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _kappa_dot(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description, inverse of :func:`make_schedule`."""
        params = asdict(self) if hasattr(self, "__dataclass_fields__") else {}
        return {"name": self.name, **params}


@dataclass(frozen=True)
class SkewedSigmoid(Schedule):
    """Eq. 15: κ(t) = (σ(α) − σ(α + t(β − α))) / (σ(α) − σ(β)).

    α = −3, β = 7 is the paper's stated default and globeflow's; α = −3, β = 3 is the standard
    (symmetric) sigmoid of Table A. Taken literally, (−3, 7) spends about half of [0, 1] at
    κ > 0.9 (near the noise). Since σ(−x) = 1 − σ(x), this curve is 1 − κ_off(1 − t), where κ_off is
    the official implementation's schedule (``SigmoidScheduler(start=−7, end=3)`` on the signal
    level). κ_off spends about half of [0, 1] at κ < 0.1 (near the data), which is what Sec. 3.4
    describes. It is this formula with α = −7, β = 3. See docs/core.md.
    """

    alpha: float = -3.0
    beta: float = 7.0
    name = "skewed_sigmoid"

    def __post_init__(self) -> None:
        if not self.beta > self.alpha:
            raise ValueError(f"schedule: need beta > alpha, got alpha={self.alpha}, beta={self.beta}")

    def _kappa(self, t: Tensor) -> Tensor:
        a, b = self.alpha, self.beta
        num = _sigmoid(a) - torch.sigmoid(a + t * (b - a))
        return num / (_sigmoid(a) - _sigmoid(b))

    def _kappa_dot(self, t: Tensor) -> Tensor:
        a, b = self.alpha, self.beta
        s = torch.sigmoid(a + t * (b - a))
        return (b - a) * s * (1.0 - s) / (_sigmoid(b) - _sigmoid(a))


@dataclass(frozen=True)
class _StandardSigmoid(SkewedSigmoid):
    alpha: float = -3.0
    beta: float = 3.0
    name = "sigmoid"


@dataclass(frozen=True)
class Linear(Schedule):
    """κ(t) = t."""

    name = "linear"

    def _kappa(self, t: Tensor) -> Tensor:
        return t.clone()

    def _kappa_dot(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


@dataclass(frozen=True)
class Cosine(Schedule):
    """κ(t) = sin²(πt/2) = 1 − cos²(πt/2): the cosine schedule of improved DDPM (without offset)."""

    name = "cosine"

    def _kappa(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t) ** 2

    def _kappa_dot(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(math.pi * t)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


SCHEDULES: dict[str, type[Schedule]] = {
    "skewed_sigmoid": SkewedSigmoid,
    "sigmoid": _StandardSigmoid,
    "linear": Linear,
    "cosine": Cosine,
}


def make_schedule(name: str = "skewed_sigmoid", **params: float) -> Schedule:
    """Build a schedule by name (``skewed_sigmoid``, ``sigmoid``, ``linear``, ``cosine``)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule: unknown name {name!r}; choose one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](**params)
    except TypeError as err:
        raise ValueError(f"schedule {name!r}: bad parameters {params}: {err}") from None
