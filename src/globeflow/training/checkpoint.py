"""Crash-safe training state (model, EMA, optimiser, RNGs) on top of :mod:`globeflow.io`.

Every file goes through :mod:`globeflow.io`'s atomic writes (safetensors for tensors, JSON
for everything else; no pickle).

Training-state layout (``dir`` = e.g. ``run/checkpoint``)::

    dir/state-00001000-<token>.safetensors   model/<name>, ema/<name>, optim/<idx>/<key>
    dir/state.json                           step, file name + sha256 of the tensor
                                             file, optimizer param groups and non-tensor
                                             state, EMA counters, RNG states, extra

``state.json`` is written last and is the commit marker: the tensor file it names
is complete (fsync'ed before the JSON was written) and is verified against the
stored sha256 on load. Each save writes a tensor file with a fresh name and only
deletes the previous one after the new JSON is in place, so a crash at any point
leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from globeflow import io
from globeflow.io import CheckpointError, CheckpointNotFoundError

from .ema import EMA, unwrap_model

__all__ = [
    "capture_rng_state",
    "has_training_state",
    "load_training_state",
    "restore_rng_state",
    "save_training_state",
]

_STATE_JSON = "state.json"
_STATE_FORMAT = "globeflow.training_state"
_STATE_VERSION = 1


# --------------------------------------------------------------------------- JSON encoding of tensors


def _encode(obj: Any) -> Any:
    """JSON-encodable copy of ``obj``; tensors become base64 records."""
    if isinstance(obj, Tensor):
        t = obj.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {
            "__tensor__": base64.b64encode(raw).decode("ascii"),
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
        }
    if isinstance(obj, Mapping):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            dtype = getattr(torch, obj["dtype"])
            raw = bytearray(base64.b64decode(obj["__tensor__"]))
            flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            return flat.view(dtype).reshape(obj["shape"]).clone()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- RNG state


def capture_rng_state(
    generators: Mapping[str, torch.Generator] | None = None,
    *,
    cuda_device: torch.device | None = None,
) -> dict[str, Any]:
    """Snapshot of every RNG a training step may touch.

    Returns ``{"torch": ByteTensor, "numpy": {...}, "python": [...],
    "generators": {name: ByteTensor}, "cuda": ByteTensor (only if cuda_device)}``,
    which :func:`save_training_state` stores in JSON (tensors base64-encoded).
    numpy / python ``random`` are included although globeflow itself does not use
    them, so user code (e.g. augmentation) inside ``method.loss`` resumes exactly.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss_next],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if cuda_device is not None and cuda_device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(cuda_device)
    return state


def restore_rng_state(
    state: Mapping[str, Any],
    generators: Mapping[str, torch.Generator] | None = None,
    *,
    cuda_device: torch.device | None = None,
) -> None:
    """Inverse of :func:`capture_rng_state` (accepts its output after a JSON round trip).

    Every generator named in ``generators`` must be present in ``state``.
    """
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (np_state["kind"], np.asarray(np_state["keys"], dtype=np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    saved = state["generators"]
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"RNG state has no generator {name!r} (has {sorted(saved)})")
        g.set_state(saved[name])
    if cuda_device is not None and cuda_device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], cuda_device)


# --------------------------------------------------------------------------- training state


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def has_training_state(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a committed training checkpoint (its ``state.json``)."""
    return (Path(directory) / _STATE_JSON).is_file()


def save_training_state(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    rng: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete, crash-safe training checkpoint into ``directory``.

    Args:
        model: the trained module (a DDP wrapper is unwrapped); its ``state_dict``
            is stored under ``model/``.
        ema: EMA whose shadow is stored under ``ema/`` (counters in JSON), or None.
        optimizer: optimiser whose tensor state goes under ``optim/<param index>/<key>``
            and whose param groups / non-tensor state go to JSON, or None.
        step: number of completed optimisation steps.
        rng: RNG snapshot (e.g. from :func:`capture_rng_state`); nested dicts/lists of
            JSON values and tensors.
        extra: any further JSON-serialisable values (tensors allowed).

    Returns:
        Path of ``state.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tensors: dict[str, Tensor] = {f"model/{k}": v for k, v in unwrap_model(model).state_dict().items()}
    ema_meta = None
    if ema is not None:
        ema_sd = ema.state_dict()
        tensors.update({f"ema/{k}": v for k, v in ema_sd["shadow"].items()})
        ema_meta = {k: ema_sd[k] for k in ("decay", "warmup", "num_updates")}
    optim_meta = None
    if optimizer is not None:
        opt_sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, pstate in opt_sd["state"].items():
            for key, val in pstate.items():
                if isinstance(val, Tensor):
                    tensors[f"optim/{idx}/{key}"] = val
                else:
                    scalars.setdefault(str(idx), {})[key] = val
        optim_meta = {
            "class": type(optimizer).__name__,
            "param_groups": _encode(opt_sd["param_groups"]),
            "state": _encode(scalars),
            # Parameters that have state at all; a param with only tensor state
            # would otherwise be invisible in `state`.
            "indices": [int(i) for i in opt_sd["state"]],
        }

    token = uuid.uuid4().hex[:12]
    weights_name = f"state-{int(step):08d}-{token}.safetensors"
    weights_path = io.save_weights(directory / weights_name, tensors, metadata={"step": int(step), "token": token})
    record = {
        "format": _STATE_FORMAT,
        "version": _STATE_VERSION,
        "step": int(step),
        "weights_file": weights_name,
        "sha256": _sha256(weights_path),
        "token": token,
        "ema": ema_meta,
        "optimizer": optim_meta,
        "rng": _encode(rng),
        "extra": _encode(dict(extra or {})),
    }
    json_path = io.save_json(directory / _STATE_JSON, record)  # commit point
    # Only now is the previous tensor file unreferenced; also sweeps files left by
    # earlier crashes (temporary files and uncommitted tensor files).
    for f in directory.iterdir():
        stale_state = f.name.startswith("state-") and f.name.endswith(".safetensors") and f.name != weights_name
        stale_tmp = f.name.startswith((".state-", f".{_STATE_JSON}.")) and f.name.endswith(".tmp")
        if stale_state or stale_tmp:
            f.unlink(missing_ok=True)
    return json_path


def _read_state_record(directory: Path) -> tuple[dict[str, Any], Path, Path, int]:
    """``(record, state.json path, tensor file path, step)`` of the committed checkpoint in
    ``directory``, its tensor file checked (inside ``directory``, present, checksum)."""
    json_path = directory / _STATE_JSON
    if not json_path.is_file():
        raise CheckpointNotFoundError(f"no training checkpoint in {directory} (missing {json_path})")
    rec = io.load_json(json_path)
    if not isinstance(rec, dict) or rec.get("format") != _STATE_FORMAT:
        raise CheckpointError(f"{json_path} is not a globeflow training-state file")
    if rec.get("version") != _STATE_VERSION:
        raise CheckpointError(f"{json_path}: unsupported training-state version {rec.get('version')!r}")
    try:
        weights_name = rec["weights_file"]
        if not isinstance(weights_name, str):
            raise TypeError(f"weights_file is {type(weights_name).__name__}, not a file name")
        weights_path = directory / weights_name
        expected_sha = rec["sha256"]
        step = int(rec["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{json_path}: malformed training-state record ({e!r})") from e
    # A state.json is data, not an instruction: resume reads only a file of its own directory.
    if Path(weights_name).name != weights_name or weights_path.resolve().parent != directory.resolve():
        raise CheckpointError(
            f"{json_path}: weights_file {weights_name!r} points outside {directory}; refusing to read it"
        )
    if not weights_path.is_file():
        raise CheckpointNotFoundError(f"{json_path} refers to missing tensor file {weights_path}")
    if _sha256(weights_path) != expected_sha:
        raise CheckpointError(f"checksum mismatch for {weights_path}: the file is corrupt or was modified")
    return rec, json_path, weights_path, step


def _section(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, meta: dict[str, Any] | None, tensors: dict[str, Tensor], json_path: Path
) -> None:
    """Restore ``optimizer`` from the record's ``optimizer`` entry and the ``optim/`` tensors."""
    if meta is None:
        raise CheckpointError(f"{json_path}: checkpoint has no optimizer state")
    if meta["class"] != type(optimizer).__name__:
        raise CheckpointError(
            f"{json_path}: checkpoint optimizer is {meta['class']}, training uses {type(optimizer).__name__}"
        )
    state: dict[int, dict[str, Any]] = {int(i): {} for i in meta["indices"]}
    for idx, vals in _decode(meta["state"]).items():
        state[int(idx)].update(vals)
    for key, val in _section(tensors, "optim/").items():
        idx, name = key.split("/", 1)
        state[int(idx)][name] = val
    try:
        optimizer.load_state_dict({"state": state, "param_groups": _decode(meta["param_groups"])})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{json_path}: optimizer state does not match the optimizer: {e}") from e


def load_training_state(
    directory: str | os.PathLike[str],
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer | None,
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Restore ``model``/``ema``/``optimizer`` in place from :func:`save_training_state`.

    Returns:
        ``(step, rng, extra)`` with tensors decoded back to tensors.

    Raises:
        CheckpointNotFoundError: no committed checkpoint in ``directory``.
        CheckpointError: corrupt/inconsistent files, or a checkpoint that does not
            match the model/optimizer; messages name the offending file.
    """
    rec, json_path, weights_path, step = _read_state_record(Path(directory))
    tensors = io.load_weights(weights_path)

    try:
        unwrap_model(model).load_state_dict(_section(tensors, "model/"), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path}: model weights do not match the model: {e}") from e

    if ema is not None:
        if rec.get("ema") is None:
            raise CheckpointError(f"{json_path}: checkpoint has no EMA state")
        try:
            ema.load_state_dict({**rec["ema"], "shadow": _section(tensors, "ema/")})
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{weights_path}: EMA weights do not match the model: {e}") from e

    if optimizer is not None:
        _load_optimizer_state(optimizer, rec.get("optimizer"), tensors, json_path)

    return step, _decode(rec["rng"]), _decode(rec["extra"])
