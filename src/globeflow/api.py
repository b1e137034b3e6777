"""Saving and loading trained methods: a run directory holds ``config.json`` + ``model.safetensors``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from globeflow.methods import GenerativeMethod, build_method
from globeflow.training.checkpoint import CheckpointError, load_json, load_weights, save_json, save_weights

__all__ = ["load", "save", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(method: GenerativeMethod, run_dir: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``method``'s config and network weights into ``run_dir`` (atomically, file by file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / WEIGHTS_FILE, method.net.state_dict())
    save_json(run_dir / CONFIG_FILE, {"model": method.config(), **(extra or {})})
    return run_dir


def load(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> GenerativeMethod:
    """Load a method trained by globeflow from its run directory (inference weights = EMA).

    Errors name the directory and what is missing or malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"model: run directory not found: {run_dir}")
    config_path = run_dir / CONFIG_FILE
    weights_path = run_dir / WEIGHTS_FILE
    config = load_json(config_path)
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"model: {config_path} has no 'model' section")
    try:
        method = build_method(config["model"])
    except ValueError as err:
        raise CheckpointError(f"model: {config_path}: {err}") from None
    if not weights_path.is_file():
        raise CheckpointError(
            f"model: {weights_path} not found (is training of {run_dir} finished? checkpoints are in {run_dir}/checkpoint)"
        )
    state = load_weights(weights_path)
    try:
        method.net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"model: weights in {weights_path} do not fit the config in {config_path}: {err}") from None
    method.net.eval()
    return method.to(device)
