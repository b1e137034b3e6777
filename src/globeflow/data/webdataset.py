"""WebDataset shards of embeddings: ``.tar`` files read as a stream with :mod:`tarfile`.

A shard holds samples as consecutive tar members sharing a key (the member name up to the
first dot of its base name): ``KEY.npy`` (or ``KEY.NAME.npy``, e.g. PLONK's
``KEY.street_clip.npy``) with the embedding and ``KEY.json`` with ``latitude`` and
``longitude`` in degrees (any spelling of :data:`~globeflow.data.dataset.LAT_NAMES`).

:func:`iter_webdataset` streams samples shard by shard with bounded memory.
:func:`read_webdataset` streams them once into a memory-mapped float32 cache, so that a
training set larger than RAM can be sampled at random by :func:`globeflow.training.train`
(the operating system pages rows in on demand); the cache is reused while the shards are
unchanged.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.data.dataset import LAT_NAMES, LON_NAMES, DataError, GeoDataset, check_coords

__all__ = ["WdsSample", "expand_shards", "is_webdataset", "iter_webdataset", "read_webdataset", "write_webdataset"]

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class WdsSample:
    """One sample: ``embedding`` (D,) float32, ``latitude``/``longitude`` degrees or None."""

    key: str
    embedding: np.ndarray
    latitude: float | None
    longitude: float | None
    shard: str
    meta: dict[str, Any]


def is_webdataset(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names shards: a ``.tar`` file, a brace pattern, or a folder of ``.tar``."""
    s = os.fspath(spec)
    if s.lower().endswith(_TAR_SUFFIXES) or _BRACE.search(s):
        return True
    p = Path(s)
    return p.is_dir() and any(f.name.lower().endswith(_TAR_SUFFIXES) for f in p.iterdir())


def expand_shards(spec: str | os.PathLike) -> list[str]:
    """Shard paths of ``spec``: a file, a folder (its ``*.tar``, sorted), ``a-{000..009}.tar``
    brace ranges (zero-padded like the pattern), globs, or a comma-separated list of these."""
    out: list[str] = []
    whole = Path(os.fspath(spec))
    # A path that exists is taken literally, even if it holds `,`, `[ ]` or `{..}`.
    parts = [os.fspath(spec)] if whole.exists() else os.fspath(spec).split(",")
    for part in parts:
        part = part.strip()
        if not part:
            continue
        m = None if Path(part).exists() else _BRACE.search(part)
        if m:
            lo, hi = m.group(1), m.group(2)
            width = len(lo) if lo.startswith("0") else 0
            for i in range(int(lo), int(hi) + 1):
                out.extend(expand_shards(part[: m.start()] + str(i).zfill(width) + part[m.end() :]))
            continue
        p = Path(part)
        if p.is_dir():
            out.extend(sorted(str(f) for f in p.iterdir() if f.name.lower().endswith(_TAR_SUFFIXES)))
        elif not p.exists() and any(c in part for c in "*?["):
            out.extend(sorted(glob.glob(part)))
        else:
            out.append(part)
    if not out:
        raise DataError(os.fspath(spec), "no WebDataset shards (.tar) found")
    missing = [s for s in out if not Path(s).is_file()]
    if missing:
        raise DataError(missing[0], "shard not found")
    return out


def _split(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the extension starts at the first dot of the base name."""
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(directory, stem), ext.lower()


def _groups(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    try:
        with tarfile.open(shard, mode="r|*") as tf:
            key, files = None, {}
            for member in tf:
                if not member.isfile():
                    continue
                k, ext = _split(member.name)
                if key is not None and k != key:
                    yield key, files
                    files = {}
                key = k
                f = tf.extractfile(member)
                files[ext] = f.read() if f is not None else b""
            if key is not None:
                yield key, files
            end = tf.offset
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(shard, f"cannot read as a tar archive (corrupt or truncated shard?): {err}") from None
    _check_end_of_archive(shard, end)


def _check_end_of_archive(shard: str, end: int) -> None:
    """A tar archive ends with zero blocks: a shard cut at a member boundary reads as a valid
    but shorter archive, so the end marker is checked (uncompressed shards; a compressed one
    cut short fails in the decompressor)."""
    try:
        with open(shard, "rb") as f:
            if f.read(2) == b"\x1f\x8b":  # gzip: checked by its own trailer
                return
            f.seek(end)
            block = f.read(512)
    except OSError as err:
        raise DataError(shard, f"cannot read: {err}") from None
    if len(block) < 512 or block.count(0) != 512:
        raise DataError(
            shard,
            f"truncated shard: no end-of-archive marker after byte {end} "
            "(the file was cut short; samples after that point are missing)",
        )


def _pick(meta: dict, names: tuple[str, ...]) -> Any:
    lower = {str(k).lower(): v for k, v in meta.items()}
    return next((lower[n] for n in names if n in lower), None)


def iter_webdataset(
    shards: str | os.PathLike | list[str],
    *,
    embedding_key: str | None = None,
    require_coords: bool = True,
) -> Iterator[WdsSample]:
    """Stream the samples of ``shards`` in order.

    ``embedding_key``: which ``.npy`` entry holds the embedding (``"npy"`` for ``KEY.npy``,
    ``"street_clip"`` for ``KEY.street_clip.npy``); by default the sample's only ``.npy``.
    Raises :class:`DataError` naming the shard, the sample key and the field.
    """
    paths = shards if isinstance(shards, list) else expand_shards(shards)
    for shard in paths:
        for key, files in _groups(shard):
            emb = _embedding(shard, key, files, embedding_key)
            meta = _metadata(shard, key, files)
            lat, lon = _coords(shard, key, meta, require_coords)
            yield WdsSample(key, emb.astype(np.float32, copy=False), lat, lon, shard, meta)


def _embedding(shard: str, key: str, files: dict[str, bytes], embedding_key: str | None) -> np.ndarray:
    """The sample's embedding (D,): its ``embedding_key`` .npy entry, else its only one."""
    npys = {ext[: -len(".npy")] if ext != "npy" else "npy": ext for ext in files if ext.endswith("npy")}
    if embedding_key is not None:
        ext = npys.get(embedding_key)
        if ext is None:
            raise DataError(
                shard,
                f"sample {key!r} has no {embedding_key!r} .npy entry; it has {sorted(npys) or 'none'}",
                field="embedding",
            )
    elif len(npys) == 1:
        ext = next(iter(npys.values()))
    else:
        raise DataError(
            shard,
            f"sample {key!r} has {len(npys)} .npy entries {sorted(npys)}; choose one with embedding_key",
            field="embedding",
        )
    try:
        emb = np.load(io.BytesIO(files[ext]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(shard, f"sample {key!r}: cannot read {ext}: {err}", field="embedding") from None
    if emb.ndim == 2 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.ndim != 1 or not np.issubdtype(emb.dtype, np.floating):
        raise DataError(
            shard,
            f"sample {key!r}: embedding must be a 1-D float array, got {emb.dtype} {emb.shape}",
            field="embedding",
        )
    return emb


def _metadata(shard: str, key: str, files: dict[str, bytes]) -> dict:
    """The sample's ``.json`` object ({} without one)."""
    if "json" not in files:
        return {}
    try:
        meta = json.loads(files["json"].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(shard, f"sample {key!r}: invalid JSON: {err}", field="json") from None
    if not isinstance(meta, dict):
        raise DataError(shard, f"sample {key!r}: JSON metadata must be an object", field="json")
    return meta


def _coords(shard: str, key: str, meta: dict, require_coords: bool) -> tuple[float | None, float | None]:
    """(latitude, longitude) degrees from the metadata under any usual spelling, or None."""
    lat, lon = _pick(meta, LAT_NAMES), _pick(meta, LON_NAMES)
    if require_coords and (lat is None or lon is None):
        raise DataError(shard, f"sample {key!r} has no latitude/longitude in its .json", field="latitude")
    try:
        lat = None if lat is None else float(lat)
        lon = None if lon is None else float(lon)
    except (TypeError, ValueError):
        raise DataError(shard, f"sample {key!r}: coordinates are not numbers", field="latitude") from None
    return lat, lon


def _fingerprint(paths: list[str], embedding_key: str | None) -> str:
    h = hashlib.sha256(repr(embedding_key).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def user_cache_dir() -> Path:
    """``$GLOBEFLOW_CACHE``, else ``$XDG_CACHE_HOME/globeflow``, else ``~/.cache/globeflow``."""
    if os.environ.get("GLOBEFLOW_CACHE"):
        return Path(os.environ["GLOBEFLOW_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "globeflow"


def read_webdataset(
    shards: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    embedding_key: str | None = None,
    require_coords: bool = True,
    expected_dim: int | None = None,
) -> GeoDataset:
    """All samples of ``shards`` as a :class:`GeoDataset` whose embeddings are memory-mapped.

    The embeddings are streamed into ``cache_dir`` (default: :func:`user_cache_dir`, never
    beside the shards, which may be read-only) as a raw float32 file, then mapped copy-on-write: RAM holds only
    the rows in use. A cache whose shards (paths, sizes, times) are unchanged is reused.
    """
    shown = os.fspath(shards)
    paths = expand_shards(shards)
    # Never beside the shards by default: they are often on read-only or shared storage.
    cache = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "webdataset"
    cache.mkdir(parents=True, exist_ok=True)
    _clean_stale_cache_temps(cache)
    stem = cache / f"wds-{_fingerprint(paths, embedding_key)}"
    raw, index = stem.with_suffix(".f32"), stem.with_suffix(".json")
    if not (raw.is_file() and index.is_file()):
        _build_cache(paths, raw, index, embedding_key=embedding_key, require_coords=require_coords)
    info = json.loads(index.read_text())
    n, dim = int(info["rows"]), int(info["dim"])
    if expected_dim is not None and dim != expected_dim:
        raise DataError(
            shown,
            f"embedding length {dim} does not match the model's embedding dimension {expected_dim}",
            field="embedding",
        )
    emb = np.memmap(raw, dtype=np.float32, mode="c", shape=(n, dim))
    lat = np.asarray(info["latitude"], dtype=np.float64) if info["has_coords"] else None
    lon = np.asarray(info["longitude"], dtype=np.float64) if info["has_coords"] else None
    if require_coords and lat is None:
        raise DataError(shown, "the shards have no coordinates", field="latitude")
    return GeoDataset(embeddings=emb, latitude=lat, longitude=lon, path=shown, extra={"key": np.asarray(info["keys"])})


def _clean_stale_cache_temps(cache: Path) -> None:
    """Remove ``wds-*.PID.tmp`` files of cache builds whose process was killed."""
    from globeflow.io import _pid_alive

    for tmp in cache.glob("wds-*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _build_cache(paths: list[str], raw: Path, index: Path, *, embedding_key: str | None, require_coords: bool) -> None:
    tmp = raw.with_name(raw.name + f".{os.getpid()}.tmp")
    keys: list[str] = []
    lats: list[float] = []
    lons: list[float] = []
    dim = None
    try:
        with open(tmp, "wb") as out:
            for s in iter_webdataset(paths, embedding_key=embedding_key, require_coords=require_coords):
                if dim is None:
                    dim = s.embedding.shape[0]
                if s.embedding.shape[0] != dim:
                    raise DataError(
                        s.shard,
                        f"sample {s.key!r}: embedding length {s.embedding.shape[0]}, earlier {dim}",
                        field="embedding",
                    )
                if not np.isfinite(s.embedding).all():
                    raise DataError(s.shard, f"sample {s.key!r}: non-finite embedding value", field="embedding")
                out.write(np.ascontiguousarray(s.embedding, dtype=np.float32).tobytes())
                keys.append(s.key)
                lats.append(np.nan if s.latitude is None else s.latitude)
                lons.append(np.nan if s.longitude is None else s.longitude)
        if dim is None:
            raise DataError(paths[0], "the shards hold no samples")
        has = not np.isnan(lats).any()
        if has:
            check_coords(paths[0], np.asarray(lats), np.asarray(lons))
        os.replace(tmp, raw)
    finally:
        if tmp.exists():
            tmp.unlink()
    info = {
        "rows": len(keys),
        "dim": dim,
        "has_coords": bool(has),
        "keys": keys,
        "latitude": lats if has else None,
        "longitude": lons if has else None,
        "shards": paths,
    }
    itmp = index.with_name(index.name + f".{os.getpid()}.tmp")
    itmp.write_text(json.dumps(info))
    os.replace(itmp, index)


def write_webdataset(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    latitude: np.ndarray | None = None,
    longitude: np.ndarray | None = None,
    *,
    keys: list[str] | None = None,
    embedding_key: str = "npy",
    meta: list[dict] | None = None,
) -> Path:
    """Write one shard: ``KEY.npy`` (or ``KEY.{embedding_key}.npy``) + ``KEY.json`` per row."""
    emb = np.asarray(embeddings, dtype=np.float32)
    n = emb.shape[0]
    keys = keys or [f"{i:08d}" for i in range(n)]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    ext = "npy" if embedding_key == "npy" else f"{embedding_key}.npy"
    with tarfile.open(tmp, "w") as tf:
        for i in range(n):
            buf = io.BytesIO()
            np.save(buf, emb[i], allow_pickle=False)
            record = dict(meta[i]) if meta else {}
            if latitude is not None and longitude is not None:
                record.update(latitude=float(latitude[i]), longitude=float(longitude[i]))
            for name, data in ((f"{keys[i]}.{ext}", buf.getvalue()), (f"{keys[i]}.json", json.dumps(record).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    return path
