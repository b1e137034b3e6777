"""Geometry of the sphere S² and of geographic coordinates."""

from globeflow.geometry.coords import (
    EARTH_RADIUS_KM,
    great_circle_km,
    latlon_to_xyz,
    wrap_longitude,
    xyz_to_latlon,
)
from globeflow.geometry.sphere import (
    LOG_AREA,
    angle,
    exp_map,
    geodesic,
    geodesic_velocity,
    inner,
    log_map,
    project,
    project_tangent,
    uniform,
    uniform_log_prob,
)
from globeflow.geometry.vmf import vmf_log_prob, vmf_sample

__all__ = [
    "EARTH_RADIUS_KM",
    "LOG_AREA",
    "angle",
    "exp_map",
    "geodesic",
    "geodesic_velocity",
    "great_circle_km",
    "inner",
    "latlon_to_xyz",
    "log_map",
    "project",
    "project_tangent",
    "uniform",
    "uniform_log_prob",
    "vmf_log_prob",
    "vmf_sample",
    "wrap_longitude",
    "xyz_to_latlon",
]
