"""Samplers: fixed-step ODE integrators (R³ and S²) and diffusion samplers."""

from globeflow.solvers.ddim import DIFFUSION_SOLVERS, KAPPA_MAX, diffusion_sample
from globeflow.solvers.fixed_step import ODE_SOLVERS, integrate, time_grid
from globeflow.solvers.manifolds import Euclidean, Manifold, Sphere

__all__ = [
    "DIFFUSION_SOLVERS",
    "KAPPA_MAX",
    "ODE_SOLVERS",
    "Euclidean",
    "Manifold",
    "Sphere",
    "diffusion_sample",
    "integrate",
    "time_grid",
]
