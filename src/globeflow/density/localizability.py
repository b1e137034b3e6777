"""Localizability (Eq. 19): the negative entropy of the predicted distribution, in bits.

Localizability(c) = ∫ p(y | c) log₂ p(y | c) dy = E_{Y∼p}[log₂ p(Y | c)], estimated by Monte
Carlo over the model's own samples, each carrying its exact log-density (the paper uses 10,000
samples). The density is per steradian, so the uniform distribution scores −log₂ 4π = −3.65
bits and a distribution concentrated on a region of area A sr scores about −log₂ A.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Localizability", "localizability", "localizability_from_log_prob"]


@dataclass(frozen=True)
class Localizability:
    """Per-embedding estimate ``bits`` (B,) and its Monte-Carlo standard error ``stderr`` (B,)."""

    bits: np.ndarray
    stderr: np.ndarray
    num_samples: int


def localizability_from_log_prob(sample_log_prob: np.ndarray) -> Localizability:
    """Eq. 19 from the natural-log densities (B, S) of S samples of each embedding's density."""
    lp = np.asarray(sample_log_prob, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] < 2:
        raise ValueError(f"sample_log_prob: expected shape (B, S) with S ≥ 2, got {lp.shape}")
    if not np.isfinite(lp).all():
        raise ValueError("sample_log_prob: NaN or infinite log-densities")
    bits = lp / math.log(2.0)
    return Localizability(
        bits=bits.mean(axis=1), stderr=bits.std(axis=1, ddof=1) / math.sqrt(lp.shape[1]), num_samples=lp.shape[1]
    )


def localizability(model: Any, emb: Any, *, num_samples: int = 10_000, seed: int = 0, **options: Any) -> Localizability:
    """Eq. 19 for each embedding (B, D) of ``model``, from ``num_samples`` samples with log p.

    ``options`` go to :meth:`~globeflow.methods.base.Method.sample_with_log_prob` (guidance,
    solver, sample_steps…). Requires a density on S² (``model.density_space == "S2"``): the
    entropy of an R³ density is not a localizability on the Earth.
    """
    if getattr(model, "density_space", None) != "S2":
        raise ValueError(f"model: localizability needs a density on S², {model.name!r} has {model.density_space!r}")
    res = model.sample_with_log_prob(emb, num_samples, seed=seed, **options)
    return localizability_from_log_prob(res.log_prob)
