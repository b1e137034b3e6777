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

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "OutputError",
    "RunLockedError",
    "atomic_write",
    "check_output_dir",
    "check_outputs",
    "claim_output_dir",
    "run_lock",
    "load_json",
    "load_weights",
    "load_weights_metadata",
    "save_json",
    "save_weights",
    "write_text",
]

_META_KEY = "globeflow"  # safetensors metadata is str -> str; we store one JSON string
_DIGEST_KEY = "globeflow.sha256"  # sha256 of the tensors' names, dtypes, shapes and bytes


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


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _clean_stale_temps(path: Path) -> None:
    """Remove ``.NAME.PID.*.tmp`` siblings of ``path`` left by a process killed mid-write
    (its pid no longer exists); temporaries of live writers are left alone."""
    try:
        siblings = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return
    for tmp in siblings:
        pid_text = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _write_error(path: Path, err: BaseException) -> OSError:
    """An :class:`OSError` that names the file being written (disk full, read-only, ...)."""
    code = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) or str(err)
    if code is None and "No space left" in str(err):
        code = errno.ENOSPC
    out = OSError(code, f"cannot write {path}: {reason}")
    out.filename = str(path)
    return out


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Atomically create/replace ``path`` with the file produced by ``write(tmp)``.

    ``write`` receives a temporary path in the same directory (``.NAME.PID.HEX.tmp``) and must
    create the file there. On any exception (including KeyboardInterrupt) the temporary file
    is removed and ``path`` is left untouched; an :class:`OSError` (disk full, read-only
    directory) is re-raised naming ``path``. Temporaries that a killed process left beside
    ``path`` are removed first.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path.parent, e) from e
    _clean_stale_temps(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) or "No space left" in str(e):
            raise _write_error(path, e) from e
        raise
    _fsync_dir(path.parent)
    return path


# --------------------------------------------------------------------------- output guard


class OutputError(ValueError):
    """An output path would destroy a file: an input of the same command, or an existing
    file the user did not ask to replace."""


#: Marker file of a directory that globeflow created for its outputs (``demo --out``,
#: ``--map-dir``): such a directory may be refreshed by a rerun without ``--overwrite``.
OWNER_MARK = ".globeflow-output"


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _paths_under(p: Path) -> list[Path]:
    """``p`` and, for a directory, the files in it (an input folder of shards or photos)."""
    if p.is_dir():
        try:
            return [p, *(q for q in p.iterdir() if q.is_file())]
        except OSError:
            return [p]
    return [p]


def check_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Refuse outputs that would destroy a file, before any work is done.

    Args:
        outputs: flag -> file the command will write (None: not written).
        inputs: flag -> file or folder the command reads (None: not given).
        overwrite: the user's ``--overwrite``: an existing output file may be replaced.

    Raises:
        OutputError: an output is (the same path or the same inode as) an input, two outputs
            are the same file, an output is an existing directory, or an output exists and
            ``overwrite`` is False. Replacing an input is refused even with ``overwrite``:
            the command would read what it is destroying.
    """
    given_in = [(flag, Path(p)) for flag, p in (inputs or {}).items() if p is not None]
    seen: list[tuple[str, Path]] = []
    for flag, raw in outputs.items():
        if raw is None:
            continue
        out = Path(raw)
        for in_flag, inp in given_in:
            if any(_same_file(out, q) for q in _paths_under(inp) if q.exists() or q == inp):
                raise OutputError(
                    f"{flag} {out} is the input {in_flag} {inp}: refusing to overwrite an input; choose another {flag}"
                )
        for other_flag, other in seen:
            if _same_file(out, other):
                raise OutputError(f"{flag} {out} and {other_flag} {other} are the same file; give two different paths")
        seen.append((flag, out))
        if out.is_dir():
            raise OutputError(f"{flag} {out} is a directory; give a file name")
        if out.exists() and not overwrite:
            raise OutputError(f"{flag} {out} already exists; pass --overwrite to replace it")


def check_output_dir(flag: str, path: str | os.PathLike[str] | None, *, overwrite: bool = False) -> None:
    """Refuse to write into an existing, non-empty directory that globeflow did not create
    (no :data:`OWNER_MARK` in it), unless ``overwrite``; a file at ``path`` is refused."""
    if path is None:
        return
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise OutputError(f"{flag} {d} is a file, not a directory")
    if d.is_dir() and not overwrite and not (d / OWNER_MARK).is_file() and any(d.iterdir()):
        raise OutputError(
            f"{flag} {d} is a non-empty directory that globeflow did not create; "
            "choose an empty or new directory, or pass --overwrite to write into it"
        )


def claim_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (if needed) and mark it as a globeflow output directory."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    mark = d / OWNER_MARK
    if not mark.is_file():
        write_text(mark, "written by globeflow; a rerun may refresh the files in this directory\n")
    return d


# --------------------------------------------------------------------------- run lock


class RunLockedError(OutputError):
    """Another live process is training into the same run directory."""


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike[str], name: str = ".lock") -> Iterator[Path]:
    """Hold ``directory/name`` (created with O_EXCL, holding this pid) for the ``with`` block.

    A lock whose pid no longer exists (a killed run) is taken over; a live one raises
    :class:`RunLockedError` naming the pid. The lock is removed on exit.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    lock = d / name
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                text = lock.read_text().strip()
            except OSError:
                text = ""
            pid = int(text.split()[0]) if text[:1].isdigit() else -1
            if pid == os.getpid() or not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    lock.unlink()  # stale: its process is gone
                continue
            raise RunLockedError(
                f"{d} is locked by process {pid}, which is training into it; wait for it to finish, "
                f"or choose another --out (if process {pid} is not globeflow, delete {lock})"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise RunLockedError(f"could not lock {d} ({lock} keeps reappearing)")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()


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
    meta = {_DIGEST_KEY: _tensor_digest(tensors)}
    if metadata is not None:
        meta[_META_KEY] = json.dumps(metadata)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor (sorted by name): a flipped bit anywhere in the data shows."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


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
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            digest = (f.metadata() or {}).get(_DIGEST_KEY)
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or unreadable weights file {path}: {e}") from e
    if digest is not None and _tensor_digest(tensors) != digest:
        raise CheckpointError(
            f"corrupt weights file {path}: its tensors do not match the checksum written with them "
            "(a flipped bit or a modified file)"
        )
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


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
