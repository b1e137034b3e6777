"""Evaluation metrics."""

from globeflow.metrics.density import HPD_LEVELS, density_metrics, nll_eq18
from globeflow.metrics.distance import ACCURACY_RADII_KM, GEOSCORE_SCALE_KM, distance_metrics, geoscore

__all__ = [
    "ACCURACY_RADII_KM",
    "GEOSCORE_SCALE_KM",
    "HPD_LEVELS",
    "density_metrics",
    "distance_metrics",
    "geoscore",
    "nll_eq18",
]
