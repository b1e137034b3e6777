"""Evaluation metrics."""

from globeflow.metrics.distance import ACCURACY_RADII_KM, GEOSCORE_SCALE_KM, distance_metrics, geoscore

__all__ = ["ACCURACY_RADII_KM", "GEOSCORE_SCALE_KM", "distance_metrics", "geoscore"]
