"""Probabilistic metrics of a model on held-out data (Sec. 4.2): NLL (Eq. 18), localizability
(Eq. 19) and the calibration of its highest-density credible regions.

For each test pair (c_i, y_i): log p(y_i | c_i) by the likelihood ODE, and S samples Y ~ p(· | c_i)
with their log-densities, which give the HPD thresholds τ_α (quantiles of log p(Y)), the region
areas (importance sampling) and the localizability. A calibrated model has hpdα_coverage ≈ α:
the true location falls in the α-region a fraction α of the time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from globeflow.density.localizability import localizability_from_log_prob
from globeflow.density.regions import hpd_area_km2, hpd_threshold

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
    **likelihood_options: Any,
) -> dict[str, Any]:
    """Probabilistic metrics of ``model`` on embeddings (N, D) with true ``latlon`` (N, 2).

    Keys: ``nll`` (Eq. 18; in R³ for R³ methods, not comparable), ``log_prob_mean`` (nats),
    and for S² densities ``localizability_mean`` (bits, Eq. 19), ``hpd50_coverage``,
    ``hpd90_coverage``, ``hpd95_coverage``, ``hpd90_area_km2_median``, from ``num_samples``
    samples per embedding. ``likelihood_options`` (solver, steps, …) go to the likelihood
    solver, for both the true points and the samples.
    """
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer ≥ 2, got {num_samples!r}")
    truth = np.asarray(latlon, dtype=np.float64)
    log_p = model.log_prob(emb, truth, guidance=guidance, **likelihood_options)
    out: dict[str, Any] = {
        "nll": nll_eq18(log_p),
        "log_prob_mean": float(log_p.mean()),
        "density_space": model.density_space,
        "density_samples": num_samples,
        "n_density": len(log_p),
    }
    if model.density_space != "S2":
        return out
    steps = likelihood_options.pop("steps", None)
    res = model.sample_with_log_prob(
        emb, num_samples, guidance=guidance, seed=seed, sample_steps=steps, **likelihood_options
    )
    tau = hpd_threshold(res.log_prob, np.asarray(HPD_LEVELS))  # (N, L)
    for j, level in enumerate(HPD_LEVELS):
        out[f"hpd{round(100 * level)}_coverage"] = float((log_p >= tau[:, j]).mean())
    area, _ = hpd_area_km2(res.log_prob, 0.9, threshold=tau[:, 1])
    out["hpd90_area_km2_median"] = float(np.median(area))
    out["localizability_mean"] = float(localizability_from_log_prob(res.log_prob).bits.mean())
    return out
