"""The two state spaces the samplers integrate in: R³ and the sphere S².

A manifold tells a solver how to read a field's output as a tangent vector (``tangent``), how
to take a step along it (``step``) and how to carry a tangent vector from one point to another
(``transport``): all that the fixed-step integrators need.
"""

from __future__ import annotations

from torch import Tensor

from globeflow.geometry import sphere

__all__ = ["Manifold", "Euclidean", "Sphere"]


class Manifold:
    name: str = ""

    def tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """The tangent vector at ``x`` that an ambient field value ``v`` stands for."""
        raise NotImplementedError

    def step(self, x: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        """Move from ``x`` along the tangent velocity ``v`` for a parameter interval ``h``."""
        raise NotImplementedError

    def transport(self, x_from: Tensor, x_to: Tensor, v: Tensor) -> Tensor:
        """Carry ``v`` ∈ T_{x_from} to T_{x_to}."""
        raise NotImplementedError


class Euclidean(Manifold):
    """R³: straight steps; every tangent space is R³ itself."""

    name = "euclidean"

    def tangent(self, x: Tensor, v: Tensor) -> Tensor:
        return v

    def step(self, x: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        return x + h * v

    def transport(self, x_from: Tensor, x_to: Tensor, v: Tensor) -> Tensor:
        return v


class Sphere(Manifold):
    """S²: exponential-map steps (Eq. 12), so every iterate lies on the sphere.

    The network's output is an ambient 3-vector; only its projection onto T_xS² moves the
    point, so ``tangent`` projects *at the point where the field was evaluated*. Projecting it
    at another point instead would leak the normal component into the slope, an O(h) error
    that makes Heun and midpoint first-order.
    """

    name = "sphere"

    def tangent(self, x: Tensor, v: Tensor) -> Tensor:
        return sphere.project_tangent(x, v)

    def step(self, x: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        return sphere.exp_map(x, h * v)

    def transport(self, x_from: Tensor, x_to: Tensor, v: Tensor) -> Tensor:
        """Parallel transport along the minimising geodesic (closed form on S²).

        P(v) = v − ⟨x_to, v⟩ / (1 + ⟨x_from, x_to⟩) · (x_from + x_to), for non-antipodal points
        (solver steps move far less than π).
        """
        coef = sphere.inner(x_to, v, keepdim=True) / (1.0 + sphere.inner(x_from, x_to, keepdim=True))
        return v - coef * (x_from + x_to)
