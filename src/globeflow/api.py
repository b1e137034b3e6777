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

from collections.abc import Callable

from globeflow.io import CheckpointError, load_json, load_weights, save_json, save_weights
from globeflow.methods import Method, build_method
from globeflow.runs import CONFIG_FILE, WEIGHTS_FILE

__all__ = ["load", "load_weights_into", "save"]


def save(method: Method, run_dir: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``method``'s config and network weights into ``run_dir`` (atomically, file by file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / WEIGHTS_FILE, method.net.state_dict())
    save_json(run_dir / CONFIG_FILE, {"model": method.config(), **(extra or {})})
    return run_dir


def load(
    run_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    method: str | None = None,
) -> Method:
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
        method = build_method(config["model"])  # a PLONK model saved by save keeps its conventions
    except ValueError as err:
        raise CheckpointError(f"model: {config_path}: {err}") from None
    if not weights_path.is_file():
        raise CheckpointError(
            f"model: {weights_path} not found (is training of {run_dir} finished? checkpoints are in {run_dir}/checkpoint)"
        )
    return load_weights_into(method, weights_path, fits=f"the config in {config_path}", device=device)


def load_weights_into(
    method: Method,
    weights_path: Path,
    *,
    fits: str,
    device: str | torch.device = "cpu",
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> Method:
    """The one loader of every model: the safetensors ``weights_path`` (through ``convert``, e.g.
    the official PLONK names) into ``method.net``, in eval mode, on ``device``. A mismatch is a
    :class:`CheckpointError` saying the weights do not fit ``fits`` (what the method was built
    from)."""
    state = load_weights(weights_path)
    if convert is not None:
        state = convert(state)
    try:
        method.net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"model: weights in {weights_path} do not fit {fits}: {err}") from None
    method.net.eval()
    return method.to(device)
