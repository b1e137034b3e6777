"""Probabilistic metrics of a model on held-out data (Sec. 4.2): NLL (Eq. 18), localizability
(Eq. 19) and the calibration of its highest-density credible regions.

For each test pair (c_i, y_i): log p(y_i | c_i) by the likelihood ODE, and S samples Y ~ p(· | c_i)
with their log-densities, which give the HPD thresholds τ_α (quantiles of log p(Y)), the region
areas (importance sampling) and the localizability. A calibrated model has hpdα_coverage ≈ α:
the true location falls in the α-region a fraction α of the time.

Coverage is counted with the HPD rank of the truth among the S samples (the conformity score of
:func:`globeflow.density.calibration.hpd_rank_scores`): the truth is in the region of model
level q iff u_i ≤ q. For a calibrated model u_i is exactly uniform whatever S, so the coverage
of a calibrated model is α in expectation even from few samples (a sample quantile as threshold
is biased low: ≈ 0.88 for α = 0.9 with 32 samples). When the model carries a conformal
calibration fitted at the same guidance (``globeflow calibrate``), the regions reported are the
calibrated ones (``regions`` says which) and the uncalibrated values are kept as
``*_uncalibrated``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from globeflow.density.calibration import calibrated_regions, hpd_rank_scores, resolve_calibration
from globeflow.density.localizability import localizability_from_log_prob

__all__ = ["HPD_LEVELS", "density_metrics", "nll_eq18"]

#: Credible levels whose coverage is reported.
HPD_LEVELS = (0.5, 0.9, 0.95)


def nll_eq18(log_prob: np.ndarray) -> float:
    """Eq. 18: −1/(3N) Σ log₂ p(y_i | c_i) from natural-log densities per steradian (N,).

    The uniform distribution scores log₂(4π)/3 = 1.2173.
    """
    lp = np.asarray(log_prob, dtype=np.float64)
    return float(-lp.mean() / (3.0 * math.log(2.0)))


def density_metrics(
    model: Any,
    emb: Any,
    latlon: np.ndarray,
    *,
    num_samples: int = 128,
    guidance: float = 0.0,
    seed: int = 0,
    calibration: Any = "auto",
    truth_steps: int | None = None,
    **likelihood_options: Any,
) -> dict[str, Any]:
    """Probabilistic metrics of ``model`` on embeddings (N, D) with true ``latlon`` (N, 2).

    Keys: ``nll`` (Eq. 18; in R³ for R³ methods, not comparable), ``log_prob_mean`` (nats),
    and for S² densities ``localizability_mean`` (bits, Eq. 19), ``hpd50_coverage``,
    ``hpd90_coverage``, ``hpd95_coverage``, ``hpd90_area_km2_median``, from ``num_samples``
    samples per embedding, and ``regions`` ("uncalibrated" or the calibration used; with one,
    also ``hpd*_coverage_uncalibrated``, ``hpd90_area_km2_median_uncalibrated`` and the model
    levels ``hpd*_model_level``). ``calibration``: "auto" (the model's own, if fitted at
    ``guidance``), None, or a :class:`~globeflow.density.calibration.Calibration`.
    ``likelihood_options`` (solver, steps, precision, …) go to the likelihood solver, for both
    the true points and the samples, except that ``truth_steps`` (default: ``steps``) sets the
    RK4 steps of the true points' solve, which costs 1/S of the samples' per step: the NLL can
    have many steps at little cost. The true points are always solved in float32.
    """
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer ≥ 2, got {num_samples!r}")
    truth = np.asarray(latlon, dtype=np.float64)
    truth_options = {k: v for k, v in likelihood_options.items() if k != "precision"}
    if truth_steps is not None:
        truth_options["steps"] = truth_steps
    log_p = model.log_prob(emb, truth, guidance=guidance, **truth_options)
    out: dict[str, Any] = {
        "nll": nll_eq18(log_p),
        "log_prob_mean": float(log_p.mean()),
        "density_space": model.density_space,
        "density_samples": num_samples,
        "n_density": len(log_p),
    }
    if model.density_space != "S2":
        return out
    cal = resolve_calibration(model, calibration, guidance)
    steps = likelihood_options.pop("steps", None)
    res = model.sample_with_log_prob(
        emb, num_samples, guidance=guidance, seed=seed, sample_steps=steps, **likelihood_options
    )
    u = hpd_rank_scores(log_p, res.log_prob, seed=seed)
    levels = np.asarray(HPD_LEVELS)
    _, area, model_levels = calibrated_regions(res.log_prob, levels, cal)
    for j, level in enumerate(HPD_LEVELS):
        name = f"hpd{round(100 * level)}"
        out[f"{name}_coverage"] = float((u <= model_levels[j]).mean())
        if cal is not None:
            out[f"{name}_coverage_uncalibrated"] = float((u <= level).mean())
            out[f"{name}_model_level"] = float(model_levels[j])
    out["hpd90_area_km2_median"] = float(np.median(area[:, 1]))
    if cal is not None:
        _, raw_area, _ = calibrated_regions(res.log_prob, (0.9,), None)
        out["hpd90_area_km2_median_uncalibrated"] = float(np.median(raw_area[:, 0]))
    out["regions"] = "uncalibrated" if cal is None else cal.describe()
    out["localizability_mean"] = float(localizability_from_log_prob(res.log_prob).bits.mean())
    return out
