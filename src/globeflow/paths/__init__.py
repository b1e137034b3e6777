"""Noise schedules κ(t) and the noising paths of the three generative methods."""

from globeflow.paths.noising import PATHS, DiffusionPath, FlowPath, GeodesicPath, NoisingPath
from globeflow.paths.schedules import SCHEDULES, Cosine, Linear, Schedule, SkewedSigmoid, make_schedule

__all__ = [
    "PATHS",
    "SCHEDULES",
    "Cosine",
    "DiffusionPath",
    "FlowPath",
    "GeodesicPath",
    "Linear",
    "NoisingPath",
    "Schedule",
    "SkewedSigmoid",
    "make_schedule",
]
