"""Saving and loading trained methods.

A globeflow run directory holds ``config.json`` (with a ``model`` section) and
``model.safetensors``, and optionally ``calibration.json`` (conformal calibration of its credible
regions, ``globeflow calibrate``; :func:`load` attaches it as ``method.calibration``, else None).
:func:`load` also takes a published PLONK checkpoint: a local
directory in the hub layout (``config.json`` with the network's arguments +
``model.safetensors``), or ``"hf:ORG/NAME"`` downloaded with ``huggingface_hub``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from globeflow.io import CheckpointError, load_json, load_weights, load_weights_metadata, save_json, save_weights
from globeflow.methods import Method, build_method
from globeflow.runs import CALIBRATION_FILE, CONFIG_FILE, WEIGHTS_FILE

__all__ = ["load", "load_weights_into", "save"]


def save(method: Method, run_dir: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``method``'s config and network weights into ``run_dir`` (atomically, file by file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A method with more than one network (a distilled flow map: teacher + student) names them.
    state = method.weights_state() if hasattr(method, "weights_state") else method.net.state_dict()
    save_weights(run_dir / WEIGHTS_FILE, state, metadata={"method": method.config()})
    save_json(run_dir / CONFIG_FILE, {"model": method.config(), **(extra or {})})
    return run_dir


def _check_weights(weights_path: Path, fits: str, model_cfg: Any, state: dict, expected: dict) -> None:
    """Weights that would load but answer garbage: another method's (the weights' metadata
    names the method they were trained as), a dtype other than the network's (an int32 or
    float16 file is silently cast by ``load_state_dict``), or NaN/inf values."""
    meta = load_weights_metadata(weights_path) or {}
    trained = meta.get("method") if isinstance(meta, dict) else None
    if isinstance(trained, dict) and isinstance(model_cfg, dict):
        name, cfg_name = trained.get("method"), model_cfg.get("method")
        if name is not None and cfg_name is not None and name != cfg_name:
            raise CheckpointError(
                f"model: {fits} says method {cfg_name!r} but the weights {weights_path} were trained "
                f"as {name!r}; the config does not belong to these weights"
            )
    for key, tensor in state.items():
        want = expected.get(key)
        if want is not None and tensor.dtype != want.dtype:
            raise CheckpointError(
                f"model: {weights_path}: tensor {key!r} is {tensor.dtype}, the network's is {want.dtype} "
                "(not weights written by globeflow for this model)"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"model: {weights_path}: tensor {key!r} holds {bad} NaN/inf value(s) (corrupt file or a diverged run)"
            )


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
    except (KeyError, TypeError, AttributeError) as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise CheckpointError(f"model: {config_path}: malformed 'model' section ({detail})") from None
    if not weights_path.is_file():
        raise CheckpointError(
            f"model: {weights_path} not found (is training of {run_dir} finished? checkpoints are in {run_dir}/checkpoint)"
        )
    method = load_weights_into(method, weights_path, fits=f"the config in {config_path}", device=device)
    if (run_dir / CALIBRATION_FILE).is_file():
        from globeflow.density.calibration import load_calibration

        try:
            method.calibration = load_calibration(run_dir / CALIBRATION_FILE)
        except ValueError as err:
            raise CheckpointError(f"model: {err}") from None
    return method


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
    # Weights that would load but answer garbage are refused before they reach the network.
    # A method with more than one network (a distilled flow map) names them (weights_state).
    expected = method.weights_state() if hasattr(method, "weights_state") else method.net.state_dict()
    _check_weights(weights_path, fits, method.config(), state, expected)
    try:
        if hasattr(method, "load_weights_state"):
            method.load_weights_state(state)
        else:
            method.net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"model: weights in {weights_path} do not fit {fits}: {err}") from None
    method.net.eval()
    method = method.to(device)
    # Conformal calibration of the credible regions: :func:`load` attaches a run's file.
    method.calibration = None
    return method
