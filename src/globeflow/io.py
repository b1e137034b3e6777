"""File I/O of the whole project: atomic writes, JSON and safetensors weights.

No pickle is used for anything written here: weights are safetensors (safe to load from
untrusted sources, memory-mappable), everything else is plain JSON.

Every file is written atomically: to a temporary file in the destination directory, flushed
and fsync'ed, then moved into place with :func:`os.replace` (atomic on POSIX and Windows within
one file system). A crash therefore leaves either the old file or the new one, never a
truncated mix.

torch and safetensors are imported when weights are read or written, so that the JSON and
atomic-write helpers stay cheap to import (the CLI's ``--help``, the data readers).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "atomic_write",
    "load_json",
    "load_weights",
    "load_weights_metadata",
    "save_json",
    "save_weights",
    "write_text",
]

_META_KEY = "globeflow"  # safetensors metadata is str -> str; we store one JSON string


class CheckpointError(RuntimeError):
    """A checkpoint file is corrupt, inconsistent or does not match the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file or directory does not exist."""


# --------------------------------------------------------------------------- atomic I/O


def _fsync_path(path: Path) -> None:
    # "r+b": Windows' fsync (_commit) needs a writable handle.
    with open(path, "r+b") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened on Windows.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Atomically create/replace ``path`` with the file produced by ``write(tmp)``.

    ``write`` receives a temporary path in the same directory and must create the
    file there. On any exception (including KeyboardInterrupt) the temporary file
    is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return atomic_write(path, write)


# --------------------------------------------------------------------------- weights


def save_file(tensors: dict[str, Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
    """:func:`safetensors.torch.save_file`, imported on first use (torch is heavy)."""
    from safetensors.torch import save_file as _save_file

    _save_file(tensors, filename, metadata=metadata)


def _to_saveable(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, non-aliasing copies as required by safetensors."""
    from torch import Tensor

    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in state_dict.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"save_weights: value for {k!r} is {type(v).__name__}, not a Tensor")
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory (tied weights, views of
        # one buffer); an independent copy is stored for every alias instead.
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        elif t.numel() > 0:
            seen.add(ptr)
        out[k] = t
    return out


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write ``state_dict`` to a safetensors file.

    Args:
        path: destination file (parent directories are created).
        state_dict: name -> tensor (any device; saved from CPU copies).
        metadata: optional JSON-serialisable dict, stored as one JSON string in the
            safetensors header; read it back with :func:`load_weights_metadata`.
    """
    tensors = _to_saveable(state_dict)
    meta = None if metadata is None else {_META_KEY: json.dumps(metadata)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Load a safetensors file as ``{name: Tensor}`` on ``device``.

    Raises:
        CheckpointNotFoundError: the file does not exist.
        CheckpointError: the file is not a valid safetensors file (message names it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or unreadable weights file {path}: {e}") from e


def load_weights_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``metadata`` dict passed to :func:`save_weights` (None if there was none)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or unreadable weights file {path}: {e}") from e
    if not meta or _META_KEY not in meta:
        return None
    try:
        return json.loads(meta[_META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt metadata in weights file {path}: {e}") from e


# --------------------------------------------------------------------------- JSON


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (UTF-8, trailing newline)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; missing/corrupt files raise errors that name the path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"JSON file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt JSON file {path}: {e}") from e
