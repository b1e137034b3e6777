"""Distance-based geolocation metrics (Sec. 4.1): GeoScore, distances and accuracies at radii."""

from __future__ import annotations

import numpy as np

from globeflow.geometry.coords import great_circle_km

__all__ = ["GEOSCORE_SCALE_KM", "ACCURACY_RADII_KM", "geoscore", "distance_metrics"]

#: GeoScore = 5000 exp(−d / 1492.7 km), the GeoGuessr score used by OSV-5M and the paper.
GEOSCORE_SCALE_KM = 1492.7
#: Radii of the accuracy columns of Tables 1 (YFCC) and of LocDiffusion's Table 1.
ACCURACY_RADII_KM = (1, 25, 200, 750, 2500)


def geoscore(distance_km: np.ndarray) -> np.ndarray:
    """Per-point GeoScore in [0, 5000]."""
    return 5000.0 * np.exp(-np.asarray(distance_km, dtype=np.float64) / GEOSCORE_SCALE_KM)


def distance_metrics(pred_latlon: np.ndarray, true_latlon: np.ndarray) -> dict[str, float]:
    """Metrics of point estimates against the truth: both (N, 2) degrees.

    Keys: ``geoscore`` (mean), ``distance_km`` (mean), ``median_distance_km``, ``acc_{r}km``
    (fraction of estimates strictly closer than r km) and ``n``.
    """
    pred = np.asarray(pred_latlon, dtype=np.float64)
    true = np.asarray(true_latlon, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"metrics: expected two (N, 2) arrays, got {pred.shape} and {true.shape}")
    if pred.shape[0] == 0:
        raise ValueError("metrics: no points to evaluate")
    d = great_circle_km(pred[:, 0], pred[:, 1], true[:, 0], true[:, 1])
    out = {
        "geoscore": float(geoscore(d).mean()),
        "distance_km": float(d.mean()),
        "median_distance_km": float(np.median(d)),
    }
    for r in ACCURACY_RADII_KM:
        out[f"acc_{r}km"] = float((d < r).mean())
    out["n"] = int(d.shape[0])
    return out
