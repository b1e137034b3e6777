"""Geolocation methods behind one interface (:class:`~globeflow.methods.base.Method`)."""

from __future__ import annotations

from globeflow.methods.base import (
    GenerativeMethod,
    Method,
    SamplesWithLogProb,
    as_embedding,
    as_latlon,
)
from globeflow.methods.diffusion import Diffusion
from globeflow.methods.flow import FlowMatching
from globeflow.methods.rfm import RiemannianFlowMatching
from globeflow.nets.adaln_mlp import AdaLNMLPConfig
from globeflow.paths.schedules import make_schedule

__all__ = [
    "METHODS",
    "Diffusion",
    "FlowMatching",
    "GenerativeMethod",
    "Method",
    "RiemannianFlowMatching",
    "SamplesWithLogProb",
    "as_embedding",
    "as_latlon",
    "build_method",
    "create_method",
]

METHODS: dict[str, type[GenerativeMethod]] = {
    cls.name: cls for cls in (Diffusion, FlowMatching, RiemannianFlowMatching)
}


def create_method(
    name: str,
    embedding_dim: int,
    *,
    width: int = 512,
    depth: int = 12,
    expansion: int = 4,
    schedule: str = "skewed_sigmoid",
    schedule_params: dict | None = None,
    cond_drop: float = 0.1,
) -> GenerativeMethod:
    """A new, untrained method ``name`` (``diffusion``, ``flow`` or ``rfm``)."""
    if name not in METHODS:
        raise ValueError(f"method: unknown name {name!r}; choose one of {sorted(METHODS)}")
    net = AdaLNMLPConfig(cond_dim=embedding_dim, dim=width, depth=depth, expansion=expansion)
    return METHODS[name](net, make_schedule(schedule, **(schedule_params or {})), cond_drop=cond_drop)


def build_method(config: dict) -> GenerativeMethod:
    """Rebuild an (untrained) method from :meth:`Method.config` output."""
    try:
        name = config["method"]
        net = AdaLNMLPConfig(**config["net"])
        schedule = dict(config.get("schedule", {"name": "skewed_sigmoid"}))
        cond_drop = float(config.get("cond_drop", 0.1))
    except (KeyError, TypeError) as err:
        raise ValueError(f"model config: missing or malformed field {err}") from None
    if name not in METHODS:
        raise ValueError(f"model config: unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](net, make_schedule(schedule.pop("name"), **schedule), cond_drop=cond_drop)
