"""Highest-posterior-density (HPD) credible regions from samples that carry their exact density.

The level-α HPD region of a density p on S² is R_α = {x : p(x) ≥ τ_α}, the smallest region
holding mass α. With Y ~ p, P(Y ∈ R_τ) = P(log p(Y) ≥ τ), so τ_α is the (1 − α)-quantile of
log p(Y): a model's own samples and their log-densities give the threshold without any grid.
Its area follows by importance sampling with the same samples,

    |R_α| = ∫ 1{p(x) ≥ τ} dx = E_{Y∼p}[ 1{p(Y) ≥ τ} / p(Y) ],

an unbiased estimate whose terms are bounded by 1/τ (hence a finite variance), in steradians;
× R² (R = 6371 km) gives km². Whether a point lies inside needs only p at that point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from globeflow.geometry.coords import EARTH_RADIUS_KM

__all__ = [
    "CredibleRegion",
    "credible_regions",
    "hpd_area_km2",
    "hpd_threshold",
    "in_region",
]


def _check_levels(level: float | np.ndarray) -> np.ndarray:
    lv = np.asarray(level, dtype=np.float64)
    if lv.ndim > 1 or not np.all((lv > 0.0) & (lv < 1.0)):
        raise ValueError(f"level: expected a number or 1-D array in (0, 1), got {level!r}")
    return lv


def _check_log_prob(sample_log_prob: np.ndarray) -> np.ndarray:
    lp = np.asarray(sample_log_prob, dtype=np.float64)
    if lp.ndim not in (1, 2) or lp.shape[-1] < 2:
        raise ValueError(f"sample_log_prob: expected shape (S,) or (B, S) with S ≥ 2, got {lp.shape}")
    if np.isnan(lp).any() or np.isinf(lp).any():
        raise ValueError("sample_log_prob: NaN or infinite log-densities")
    return lp


def hpd_threshold(sample_log_prob: np.ndarray, level: float | np.ndarray) -> np.ndarray:
    """Log-density threshold τ of the level-``level`` HPD region, from samples of the density.

    ``sample_log_prob``: log p(Y_s) of S samples Y_s ~ p, shape (S,) or (B, S) (one row per
    embedding); ``level``: scalar or (L,) in (0, 1). Returns the (1 − level)-quantile of the
    sample log-densities, shape () / (L,) for (S,) input, (B,) / (B, L) for (B, S) input.
    """
    lp = _check_log_prob(sample_log_prob)
    lv = _check_levels(level)
    q = np.quantile(lp, 1.0 - lv, axis=-1)  # levels first: (...) or (L, ...)
    return np.moveaxis(q, 0, -1) if lv.ndim == 1 and lp.ndim == 2 else q


def hpd_area_km2(
    sample_log_prob: np.ndarray,
    level: float | np.ndarray,
    *,
    threshold: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Area in km² of the HPD region and its standard error, by importance sampling.

    Shapes as in :func:`hpd_threshold`: (S,) or (B, S) log-densities (per steradian) of samples
    of the density itself -> (area, standard error), each () / (L,) or (B,) / (B, L). The
    threshold defaults to :func:`hpd_threshold` of the same samples.
    """
    lp = _check_log_prob(sample_log_prob)
    tau = hpd_threshold(lp, level) if threshold is None else np.asarray(threshold, np.float64)
    lv = np.asarray(level)
    # Align τ (..., [L]) with the samples (..., [1], S).
    t = tau[..., None]
    x = lp[..., None, :] if lv.ndim == 1 else lp
    # 1{p ≥ τ} / p, written as exp(−log p) only where inside: no overflow for tiny p outside.
    f = np.where(x >= t, np.exp(-np.where(x >= t, x, 0.0)), 0.0)
    s = lp.shape[-1]
    r2 = EARTH_RADIUS_KM**2
    return f.mean(axis=-1) * r2, f.std(axis=-1, ddof=1) / np.sqrt(s) * r2


def in_region(log_prob_at_points: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """Whether points lie in the HPD region {log p ≥ τ}: boolean, shape of ``log_prob_at_points``.

    ``log_prob_at_points`` (B,) or (B, P) log p at the points under each embedding's density;
    ``threshold`` scalar or (B,) (one τ per embedding, broadcast over the P points).
    """
    lp = np.asarray(log_prob_at_points, dtype=np.float64)
    tau = np.asarray(threshold, dtype=np.float64)
    if np.isnan(lp).any():
        raise ValueError("log_prob_at_points: NaN log-densities")
    if tau.ndim > 1 or (tau.ndim == 1 and (lp.ndim == 0 or tau.shape[0] != lp.shape[0])):
        raise ValueError(
            f"threshold: expected a scalar or one value per row of log_prob_at_points {lp.shape}, got shape {tau.shape}"
        )
    return lp >= tau.reshape(tau.shape + (1,) * (lp.ndim - tau.ndim))


@dataclass(frozen=True)
class CredibleRegion:
    """One HPD region of one embedding: its nominal ``level``, log-density ``threshold`` (per
    steradian), importance-sampling area and standard error in km²."""

    level: float
    threshold: float
    area_km2: float
    area_se_km2: float

    def to_dict(self) -> dict[str, float]:
        return {
            "level": self.level,
            "threshold": self.threshold,
            "area_km2": self.area_km2,
            "area_se_km2": self.area_se_km2,
        }


def credible_regions(sample_log_prob: np.ndarray, levels: tuple[float, ...] = (0.5, 0.9, 0.95)) -> list[CredibleRegion]:
    """HPD regions at ``levels`` for ONE embedding from its samples' log-densities (S,)."""
    lp = _check_log_prob(sample_log_prob)
    if lp.ndim != 1:
        raise ValueError(f"sample_log_prob: expected (S,) for one embedding, got {lp.shape}")
    lv = _check_levels(np.asarray(levels, dtype=np.float64).reshape(-1))
    tau = hpd_threshold(lp, lv)
    area, se = hpd_area_km2(lp, lv, threshold=tau)
    return [CredibleRegion(float(a), float(t), float(ar), float(e)) for a, t, ar, e in zip(lv, tau, area, se)]
