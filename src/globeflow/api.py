"""Saving and loading trained methods.

A globeflow run directory holds ``config.json`` (with a ``model`` section) and
``model.safetensors``. :func:`load` also takes a published PLONK checkpoint: a local
directory in the hub layout (``config.json`` with the network's arguments +
``model.safetensors``), or ``"hf:ORG/NAME"`` downloaded with ``huggingface_hub``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from globeflow.methods import GenerativeMethod, build_method
from globeflow.training.checkpoint import CheckpointError, load_json, load_weights, save_json, save_weights

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load", "save"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(method: GenerativeMethod, run_dir: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``method``'s config and network weights into ``run_dir`` (atomically, file by file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A method with more than one network (a distilled flow map: teacher + student) names them.
    state = method.weights_state() if hasattr(method, "weights_state") else method.net.state_dict()
    save_weights(run_dir / WEIGHTS_FILE, state)
    save_json(run_dir / CONFIG_FILE, {"model": method.config(), **(extra or {})})
    return run_dir


def load(
    run_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    method: str | None = None,
) -> GenerativeMethod:
    """Load a method: a globeflow run directory (inference weights = EMA), a PLONK
    checkpoint directory, or ``"hf:ORG/NAME[@REVISION]"`` (e.g. ``hf:nicolas-dufour/PLONK_YFCC``).

    ``method`` (``rfm``, ``flow``, ``diffusion``) applies to PLONK checkpoints only, whose
    config does not say which family they are; by default it is read from the repository
    or directory name (``PLONK_YFCC_flow`` -> flow, no suffix -> rfm).
    Errors name the directory and what is missing or malformed.
    """
    from globeflow import hub

    if isinstance(run_dir, str) and run_dir.startswith("hf:"):
        local, repo = hub.resolve_hub(run_dir)
        return hub.load_plonk(local, method=method, repo=repo, device=device)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"model: run directory not found: {run_dir}")
    if hub.is_plonk_checkpoint(run_dir):
        return hub.load_plonk(run_dir, method=method, device=device)
    if method is not None:
        raise ValueError(f"method: applies to PLONK checkpoints only; {run_dir} is a globeflow run")
    config_path = run_dir / CONFIG_FILE
    weights_path = run_dir / WEIGHTS_FILE
    config = load_json(config_path)
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"model: {config_path} has no 'model' section")
    try:
        # A PLONK model saved by globeflow.save keeps the official conventions.
        if isinstance(config["model"], dict) and config["model"].get("convention") == "plonk":
            method = hub.build_plonk_method(config["model"])
        else:
            method = build_method(config["model"])
    except ValueError as err:
        raise CheckpointError(f"model: {config_path}: {err}") from None
    if not weights_path.is_file():
        raise CheckpointError(
            f"model: {weights_path} not found (is training of {run_dir} finished? checkpoints are in {run_dir}/checkpoint)"
        )
    state = load_weights(weights_path)
    try:
        if hasattr(method, "load_weights_state"):
            method.load_weights_state(state)
        else:
            method.net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"model: weights in {weights_path} do not fit the config in {config_path}: {err}"
        ) from None
    method.net.eval()
    return method.to(device)
