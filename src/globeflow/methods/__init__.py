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
from globeflow.methods.locdiffusion import LocDiffusion
from globeflow.methods.mvmf import MvMF
from globeflow.methods.rfm import RiemannianFlowMatching
from globeflow.methods.uniform import ModuleMethod, Uniform
from globeflow.methods.vmf import VMFRegression
from globeflow.methods.vmf_mixture import VMFMixture
from globeflow.nets.adaln_mlp import AdaLNMLPConfig
from globeflow.paths.schedules import make_schedule

__all__ = [
    "ALL_METHODS",
    "BASELINE_METHODS",
    "GENERATIVE_METHODS",
    "METHODS",
    "Diffusion",
    "FlowMatching",
    "GenerativeMethod",
    "LocDiffusion",
    "Method",
    "ModuleMethod",
    "MvMF",
    "RiemannianFlowMatching",
    "SamplesWithLogProb",
    "Uniform",
    "VMFMixture",
    "VMFRegression",
    "as_embedding",
    "as_latlon",
    "build_method",
    "create_method",
]

#: The generative methods of paper 000 (AdaLN network + schedule + noising path).
GENERATIVE_METHODS: dict[str, type[GenerativeMethod]] = {
    cls.name: cls for cls in (Diffusion, FlowMatching, RiemannianFlowMatching)
}
#: Kept as the generative methods for existing callers; :data:`ALL_METHODS` lists every method.
METHODS = GENERATIVE_METHODS
#: The baselines of paper 000 Sec. 4.2 and the methods of papers 003 and 004.
BASELINE_METHODS: dict[str, type[ModuleMethod]] = {
    cls.name: cls for cls in (Uniform, VMFRegression, VMFMixture, MvMF, LocDiffusion)
}
#: Every method, by the name ``globeflow train --method`` takes.
ALL_METHODS: dict[str, type[Method]] = {**GENERATIVE_METHODS, **BASELINE_METHODS}


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
    cond_depth: int = 1,
    train_noise: dict | None = None,
    **options,
) -> Method:
    """A new, untrained method ``name`` (see :data:`ALL_METHODS`).

    ``width``/``depth``/``expansion`` size the network of every method that has one (the
    AdaLN MLP; LocDiffusion's CS-UNet); ``schedule*`` and ``cond_drop`` only concern the
    generative methods. ``options`` are method-specific (e.g. ``components`` for
    ``vmf_mixture``, ``num_components`` for ``mvmf``, ``degree`` for ``locdiffusion``); an
    option the method does not know raises ``ValueError``.
    """
    if name not in ALL_METHODS:
        raise ValueError(f"method: unknown name {name!r}; choose one of {sorted(ALL_METHODS)}")
    if name in GENERATIVE_METHODS:
        if options:
            raise ValueError(f"method {name!r}: unknown option(s) {sorted(options)}")
        net = AdaLNMLPConfig(
            cond_dim=embedding_dim, dim=width, depth=depth, expansion=expansion, cond_depth=cond_depth
        )
        return GENERATIVE_METHODS[name](
            net, make_schedule(schedule, **(schedule_params or {})), cond_drop=cond_drop, train_noise=train_noise
        )
    if cond_depth != 1:
        raise ValueError(f"method {name!r}: cond_depth applies to the generative methods only")
    if train_noise is not None:
        raise ValueError(f"method {name!r}: train_noise applies to the generative methods only")
    cls = BASELINE_METHODS[name]
    sizes = {"width": width, "depth": depth, "expansion": expansion}
    sized = {k: v for k, v in sizes.items() if k in cls.option_names}
    return cls.create(embedding_dim, **sized, **options)


def build_method(config: dict) -> Method:
    """Rebuild an (untrained) method from :meth:`Method.config` output."""
    if not isinstance(config, dict) or "method" not in config:
        raise ValueError("model config: missing or malformed field 'method'")
    name = config["method"]
    if name not in ALL_METHODS:
        raise ValueError(f"model config: unknown method {name!r}; known: {sorted(ALL_METHODS)}")
    if name in BASELINE_METHODS:
        return BASELINE_METHODS[name].from_config(config)
    try:
        net = AdaLNMLPConfig(**config["net"])
        schedule = dict(config.get("schedule", {"name": "skewed_sigmoid"}))
        cond_drop = float(config.get("cond_drop", 0.1))
        train_noise = config.get("train_noise")
    except (KeyError, TypeError) as err:
        raise ValueError(f"model config: missing or malformed field {err}") from None
    return GENERATIVE_METHODS[name](
        net, make_schedule(schedule.pop("name"), **schedule), cond_drop=cond_drop, train_noise=train_noise
    )
