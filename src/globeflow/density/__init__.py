"""Densities on the sphere as maps, credible (highest-density) regions and their areas."""

from globeflow.density.grid import EqualAreaGrid
from globeflow.density.maps import (
    DensityMap,
    LogProbFn,
    compare_to_exact,
    density_map,
    density_map_for_method,
    exact_log_prob_raster,
    log_prob_fn_from_method,
    raster_axes,
)

__all__ = [
    "DensityMap",
    "EqualAreaGrid",
    "LogProbFn",
    "compare_to_exact",
    "density_map",
    "density_map_for_method",
    "exact_log_prob_raster",
    "log_prob_fn_from_method",
    "raster_axes",
]
