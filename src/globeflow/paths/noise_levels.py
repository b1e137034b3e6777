"""Which noise levels κ training visits: the density p(κ) of the training noise level.

Flow matching regresses a velocity per unit κ at every κ ∈ (0, 1); *which* κ a batch visits
decides how the network's capacity and the optimiser's steps are shared between levels. By
default globeflow draws t ~ U[0, 1] and κ = κ(t) through the sampling schedule (the paper's
recipe, so p(κ) = 1/κ̇(t(κ))). Decoupling the two lets the sampler keep its schedule while
training visits the levels that are hard to learn: Esser et al. (2024, "Scaling rectified flow
transformers for high-resolution image synthesis", Sec. 3.1) found that a logit-normal density
of the level beats uniform t for rectified flows; EDM (Karras et al. 2022) draws log σ from a
normal for the same reason.

A :class:`NoiseLevelDensity` gives samples κ (B, 1) and the density p(κ) (a probability
density on (0, 1), integrating to 1; tested), stored in the method's config as ``train_noise``.

* ``schedule``: t ~ U[0, 1], κ = κ(t) (the default, unchanged behaviour).
* ``logit_normal``: κ = σ(m + s z), z ~ N(0, 1); p(κ) = φ((logit κ − m)/s) / (s κ (1 − κ)).
  m < 0 puts more mass near the data (κ → 0), m > 0 near the noise.
* ``uniform``: κ ~ U[0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from globeflow.paths.schedules import Schedule

__all__ = ["NOISE_LEVEL_DENSITIES", "LogitNormal", "NoiseLevelDensity", "ScheduleDensity", "UniformLevel", "make_noise_density"]


class NoiseLevelDensity:
    """Base class: ``sample`` draws κ ∈ [0, 1], ``pdf`` is its density on (0, 1)."""

    name: str = ""

    def sample(self, batch: int, *, generator: torch.Generator, device=None) -> Tensor:
        """κ of shape (batch, 1), float32, drawn with ``generator`` on ``device``."""
        raise NotImplementedError

    def pdf(self, kappa: Tensor) -> Tensor:
        """p(κ) for κ ∈ (0, 1), elementwise (float64 recommended)."""
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


class ScheduleDensity(NoiseLevelDensity):
    """t ~ U[0, 1], κ = κ(t): the paper's training recipe (the level density follows the schedule)."""

    name = "schedule"

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def sample(self, batch: int, *, generator: torch.Generator, device=None) -> Tensor:
        t = torch.rand(batch, 1, generator=generator, device=device)
        return self.schedule.kappa(t)

    def pdf(self, kappa: Tensor) -> Tensor:
        # κ(t) is increasing; invert it by bisection (60 halvings: float64 resolution), then
        # p(κ) = 1 / κ̇(t(κ)).
        kappa = torch.as_tensor(kappa, dtype=torch.float64)
        lo, hi = torch.zeros_like(kappa), torch.ones_like(kappa)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = self.schedule.kappa(mid) < kappa
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 1.0 / self.schedule.kappa_dot(0.5 * (lo + hi))


class LogitNormal(NoiseLevelDensity):
    """κ = sigmoid(mean + std · z), z ~ N(0, 1) (Esser et al. 2024, "lognorm(m, s)")."""

    name = "logit_normal"

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if not math.isfinite(mean):
            raise ValueError(f"train_noise: mean must be finite, got {mean!r}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"train_noise: std must be finite and > 0, got {std!r}")
        self.mean, self.std = float(mean), float(std)

    def sample(self, batch: int, *, generator: torch.Generator, device=None) -> Tensor:
        z = torch.randn(batch, 1, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * z)

    def pdf(self, kappa: Tensor) -> Tensor:
        kappa = torch.as_tensor(kappa, dtype=torch.float64)
        inside = (kappa > 0) & (kappa < 1)
        k = torch.where(inside, kappa, 0.5)
        u = (torch.log(k) - torch.log1p(-k) - self.mean) / self.std
        p = torch.exp(-0.5 * u * u) / (math.sqrt(2.0 * math.pi) * self.std * k * (1.0 - k))
        return torch.where(inside, p, 0.0)  # the density vanishes at both ends

    def config(self) -> dict:
        return {"name": self.name, "mean": self.mean, "std": self.std}


class UniformLevel(NoiseLevelDensity):
    """κ ~ U[0, 1] (rectified flow's uniform t, Liu et al. 2022, with κ = t)."""

    name = "uniform"

    def sample(self, batch: int, *, generator: torch.Generator, device=None) -> Tensor:
        return torch.rand(batch, 1, generator=generator, device=device)

    def pdf(self, kappa: Tensor) -> Tensor:
        return torch.ones_like(torch.as_tensor(kappa, dtype=torch.float64))


NOISE_LEVEL_DENSITIES = ("schedule", "logit_normal", "uniform")


def make_noise_density(config: dict | None, schedule: Schedule) -> NoiseLevelDensity:
    """Build from :meth:`NoiseLevelDensity.config` output; None means ``schedule``."""
    if config is None:
        return ScheduleDensity(schedule)
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"train_noise: expected a dict with a 'name', got {config!r}")
    params = {k: v for k, v in config.items() if k != "name"}
    name = config["name"]
    if name == "schedule" and not params:
        return ScheduleDensity(schedule)
    if name == "uniform" and not params:
        return UniformLevel()
    if name == "logit_normal" and set(params) <= {"mean", "std"}:
        return LogitNormal(**{k: float(v) for k, v in params.items()})
    raise ValueError(f"train_noise: unknown density or parameters {config!r}; choose one of {NOISE_LEVEL_DENSITIES}")
