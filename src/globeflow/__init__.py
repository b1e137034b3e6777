"""globeflow: probabilistic visual geolocation.

    import globeflow
    model = globeflow.load(run_dir)
    latlon = model.predict(emb, guidance=2.0, sample_steps=16, seed=0)                # (B, 2) degrees
    samples = model.sample(emb, num_samples=64, guidance=0.0, sample_steps=16, seed=0)  # (B, 64, 2)

The names below are imported on first use: ``import globeflow`` (and so the CLI's ``--help``)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["METHODS", "Method", "__version__", "api", "create_method", "load", "save"]

# name -> module that defines it
_LAZY = {
    "api": "globeflow.api",
    "load": "globeflow.api",
    "save": "globeflow.api",
    "METHODS": "globeflow.methods",
    "Method": "globeflow.methods",
    "create_method": "globeflow.methods",
}

if TYPE_CHECKING:
    from globeflow import api
    from globeflow.api import load, save
    from globeflow.methods import METHODS, Method, create_method


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'globeflow' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "api" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
