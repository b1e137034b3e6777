"""Evaluation metrics."""

from globeflow.metrics.admin import admin_accuracy, keys_from_labels, load_gazetteer
from globeflow.metrics.density import HPD_LEVELS, density_metrics, nll_eq18
from globeflow.metrics.distance import ACCURACY_RADII_KM, GEOSCORE_SCALE_KM, distance_metrics, geoscore
from globeflow.metrics.prdc import PRDC_K, prdc, prdc_latlon

__all__ = [
    "ACCURACY_RADII_KM",
    "GEOSCORE_SCALE_KM",
    "HPD_LEVELS",
    "PRDC_K",
    "admin_accuracy",
    "density_metrics",
    "distance_metrics",
    "geoscore",
    "keys_from_labels",
    "load_gazetteer",
    "nll_eq18",
    "prdc",
    "prdc_latlon",
]
