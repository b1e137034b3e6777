"""Geolocation methods behind one interface (:class:`~globeflow.methods.base.Method`).

:data:`METHOD_CLASSES` is the one registry: method name -> where its class lives. Classes
(and torch) are imported on first use, so ``globeflow --help`` lists the methods without
importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from globeflow.methods.base import Method, ModuleMethod, SamplesWithLogProb, as_embedding, as_latlon
    from globeflow.methods.diffusion import Diffusion
    from globeflow.methods.flow import FlowMatching
    from globeflow.methods.flowmap import FlowMapRFM
    from globeflow.methods.grounded import GroundedMethod
    from globeflow.methods.locdiffusion import LocDiffusion
    from globeflow.methods.mvmf import MvMF
    from globeflow.methods.rfm import RiemannianFlowMatching
    from globeflow.methods.generative import GenerativeMethod
    from globeflow.methods.uniform import Uniform
    from globeflow.methods.vmf import VMFRegression
    from globeflow.methods.vmf_mixture import VMFMixture

__all__ = [
    "ALL_METHODS",
    "BASELINE_METHODS",
    "COMPOSED_CLASSES",
    "DISTILLED_CLASSES",
    "DISTILLED_METHODS",
    "GENERATIVE_METHODS",
    "METHODS",
    "METHOD_CLASSES",
    "METHOD_NAMES",
    "Diffusion",
    "FlowMapRFM",
    "FlowMatching",
    "GenerativeMethod",
    "GroundedMethod",
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
    "method_class",
]

#: Every method, by the name ``globeflow train --method`` takes -> ``module:Class``. The
#: generative methods of paper 000 first (AdaLN network + schedule + noising path), then the
#: baselines of paper 000 Sec. 4.2 and the methods of papers 003 and 004.
METHOD_CLASSES: dict[str, str] = {
    "diffusion": "globeflow.methods.diffusion:Diffusion",
    "flow": "globeflow.methods.flow:FlowMatching",
    "rfm": "globeflow.methods.rfm:RiemannianFlowMatching",
    "uniform": "globeflow.methods.uniform:Uniform",
    "vmf": "globeflow.methods.vmf:VMFRegression",
    "vmf_mixture": "globeflow.methods.vmf_mixture:VMFMixture",
    "mvmf": "globeflow.methods.mvmf:MvMF",
    "locdiffusion": "globeflow.methods.locdiffusion:LocDiffusion",
}
#: Methods made from a trained one by ``globeflow distill`` -> ``module:Class`` (not in
#: METHOD_CLASSES: they cannot be trained from scratch).
DISTILLED_CLASSES: dict[str, str] = {"rfm_flowmap": "globeflow.methods.flowmap:FlowMapRFM"}
#: Methods that wrap a trained one (its config under ``inner``) -> ``module:Class``: the
#: gazetteer-grounded mixture of the shipped text model (:mod:`globeflow.methods.grounded`).
COMPOSED_CLASSES: dict[str, str] = {"grounded": "globeflow.methods.grounded:GroundedMethod"}
#: The names of :data:`METHOD_CLASSES` (the CLI's ``--method`` choices).
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_CLASSES)

# Other public names -> the module that defines them (imported on first use).
_LAZY = {
    "GenerativeMethod": "globeflow.methods.generative",
    "Method": "globeflow.methods.base",
    "SamplesWithLogProb": "globeflow.methods.base",
    "as_embedding": "globeflow.methods.base",
    "as_latlon": "globeflow.methods.base",
    "ModuleMethod": "globeflow.methods.base",
    **{
        ref.split(":")[1]: ref.split(":")[0]
        for ref in (*METHOD_CLASSES.values(), *DISTILLED_CLASSES.values(), *COMPOSED_CLASSES.values())
    },
}


def method_class_ref(ref: str) -> type[Method]:
    """The class at ``module:Class``."""
    module, cls = ref.split(":")
    return getattr(importlib.import_module(module), cls)


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"method: unknown name {name!r}; choose one of {sorted(METHOD_CLASSES)}")
    return method_class_ref(METHOD_CLASSES[name])


def _registries() -> dict[str, dict[str, type]]:
    from globeflow.methods.generative import GenerativeMethod

    every = {name: method_class(name) for name in METHOD_CLASSES}
    generative = {n: c for n, c in every.items() if issubclass(c, GenerativeMethod)}
    return {
        #: The generative methods of paper 000 (AdaLN network + schedule + noising path).
        "GENERATIVE_METHODS": generative,
        #: Kept as the generative methods for existing callers; ALL_METHODS lists every method.
        "METHODS": generative,
        #: The baselines of paper 000 Sec. 4.2 and the methods of papers 003 and 004.
        "BASELINE_METHODS": {n: c for n, c in every.items() if n not in generative},
        "ALL_METHODS": every,
        #: Methods made from a trained one by ``globeflow distill`` (not trainable from scratch).
        "DISTILLED_METHODS": {n: method_class_ref(r) for n, r in DISTILLED_CLASSES.items()},
    }


def __getattr__(name: str) -> Any:
    if name in ("GENERATIVE_METHODS", "METHODS", "BASELINE_METHODS", "ALL_METHODS", "DISTILLED_METHODS"):
        if name not in globals():
            globals().update(_registries())
        return globals()[name]
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'globeflow.methods' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    """A new, untrained method ``name`` (see :data:`METHOD_CLASSES`).

    ``width``/``depth``/``expansion`` size the network of every method that has one (the
    AdaLN MLP; LocDiffusion's CS-UNet); ``schedule*`` and ``cond_drop`` only concern the
    generative methods: each method takes those of the shared options it names in its
    ``option_names``. ``options`` are method-specific (e.g. ``components`` for
    ``vmf_mixture``, ``num_components`` for ``mvmf``, ``degree`` for ``locdiffusion``); an
    option the method does not know raises ``ValueError``.
    """
    cls = method_class(name)
    shared = {
        "width": width,
        "depth": depth,
        "expansion": expansion,
        "schedule": schedule,
        "schedule_params": schedule_params,
        "cond_drop": cond_drop,
    }
    # Options that only some methods take are passed only when set, so a method that does not
    # know them names them in its error.
    if cond_depth != 1:
        options["cond_depth"] = cond_depth
    if train_noise is not None:
        options["train_noise"] = train_noise
    return cls.create(embedding_dim, **{k: v for k, v in shared.items() if k in cls.option_names}, **options)


def build_method(config: dict) -> Method:
    """Rebuild an (untrained) method from :meth:`Method.config` output (a PLONK model, whose
    config says ``"convention": "plonk"``, keeps the official conventions)."""
    if not isinstance(config, dict) or "method" not in config:
        raise ValueError("model config: missing or malformed field 'method'")
    name = config["method"]
    made_from_others = {**DISTILLED_CLASSES, **COMPOSED_CLASSES}  # they rebuild themselves from their config
    if name in made_from_others:
        return method_class_ref(made_from_others[name]).from_config(config)
    if name not in METHOD_CLASSES:
        raise ValueError(f"model config: unknown method {name!r}; known: {sorted(METHOD_CLASSES)}")
    if config.get("convention") == "plonk":
        from globeflow.methods.plonk import plonk_class

        return plonk_class(name).from_config(config)
    return method_class(name).from_config(config)
