"""The two state spaces the samplers integrate in: R³ and the sphere S².

A manifold tells a solver how to take a step along a velocity (``step``) and how to bring a
velocity evaluated elsewhere into the tangent space of the current point (``to_tangent``),
which is all the fixed-step integrators need.
"""

from __future__ import annotations

from torch import Tensor

from globeflow.geometry import sphere

__all__ = ["Manifold", "Euclidean", "Sphere"]


class Manifold:
    name: str = ""

    def step(self, x: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        """Move from ``x`` along velocity ``v`` for a parameter interval ``h``."""
        raise NotImplementedError

    def to_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """Express ``v`` as a tangent vector at ``x``."""
        raise NotImplementedError


class Euclidean(Manifold):
    """R³: straight steps."""

    name = "euclidean"

    def step(self, x: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        return x + h * v

    def to_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        return v


class Sphere(Manifold):
    """S²: exponential-map steps (Eq. 12), so every iterate lies on the sphere.

    ``to_tangent`` projects: for the small displacements of one solver step it differs from
    parallel transport by O(h²), within the local error of a second-order method.
    """

    name = "sphere"

    def step(self, x: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        return sphere.exp_map(x, h * sphere.project_tangent(x, v))

    def to_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        return sphere.project_tangent(x, v)
