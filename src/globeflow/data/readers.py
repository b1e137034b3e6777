"""Validated readers/writers for the two on-disk formats of embeddings + coordinates.

Formats
-------
* Parquet (``.parquet`` / ``.pq``): column ``embedding`` (``list`` / ``large_list`` /
  ``fixed_size_list`` of any floating type), columns ``latitude`` and ``longitude``
  (degrees, any numeric type), plus any other columns, which are carried through
  unchanged in :attr:`GeoDataset.extra` (e.g. an ``id`` column that ``predict`` writes back).
* NPZ (``.npz``): arrays ``embeddings`` (N, D), ``latitude`` (N,), ``longitude`` (N,);
  any other array whose first dimension is N is carried through in ``extra``.

Every problem with the input is reported as a :class:`DataError` naming the file, the
field and (where it applies) the first offending 0-based row, so that a user never has to
decode a traceback from deep inside numpy / pyarrow / torch.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["DataError", "GeoDataset", "read_dataset", "write_parquet"]

PARQUET_SUFFIXES = (".parquet", ".pq")
NPZ_SUFFIXES = (".npz",)

# Column / array names. Deliberately no aliases: one spelling keeps errors unambiguous.
_PQ_EMBEDDING = "embedding"
_NPZ_EMBEDDING = "embeddings"
_LAT = "latitude"
_LON = "longitude"

# Rows per Arrow record batch / per finiteness-check block. Bounds the temporary memory
# (a 1M x 1024 float32 file is 4 GiB; we never want a second full-size copy or a 1 GiB
# boolean mask on top of it).
_BATCH_ROWS = 32_768
_ROW_GROUP_BYTES = 128 << 20


class DataError(ValueError):
    """Bad input data; the message names the file, the row (0-based) and the field.

    Attributes
    ----------
    path: the offending file as given by the caller.
    row: first offending 0-based row, or ``None`` if the problem is not row-specific.
    field: the column / array name concerned, or ``None``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.row = row
        self.field = field
        self._detail = message
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field `{field}`")
        prefix = f"`{self.path}`"
        if where:
            prefix += " (" + ", ".join(where) + ")"
        super().__init__(f"{prefix}: {message}")

    def __reduce__(self) -> tuple:
        # Keyword-only arguments defeat the default exception pickling; errors raised in
        # DataLoader worker processes must survive the trip back to the parent.
        return (_rebuild_data_error, (self.path, self._detail, self.row, self.field))


def _rebuild_data_error(path: str, message: str, row: int | None, field: str | None) -> DataError:
    return DataError(path, message, row=row, field=field)


@dataclass(frozen=True, eq=False)
class GeoDataset:
    """Embeddings with (optional) ground-truth coordinates, as read from one file.

    Attributes
    ----------
    embeddings: (N, D) float32, C-contiguous.
    latitude: (N,) float64 degrees in [-90, 90], or ``None`` when coordinates were not
        required and are absent from the file.
    longitude: (N,) float64 degrees in [-180, 180], or ``None`` (same condition).
    path: the source file.
    extra: other columns (Parquet) / arrays (NPZ) with leading dimension N, passed through
        unchanged so that outputs can carry e.g. an ``id`` column.
    """

    embeddings: np.ndarray
    latitude: np.ndarray | None
    longitude: np.ndarray | None
    path: str
    extra: dict[str, np.ndarray] = dataclass_field(default_factory=dict)

    def __post_init__(self) -> None:
        # Cheap structural checks so a hand-built GeoDataset cannot silently be ragged.
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (N, D), got shape {self.embeddings.shape}")
        n = self.embeddings.shape[0]
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude must both be given or both be None")
        for name, arr in ((_LAT, self.latitude), (_LON, self.longitude), *self.extra.items()):
            if arr is not None and (arr.ndim == 0 or arr.shape[0] != n):
                raise ValueError(f"`{name}` has shape {arr.shape}, expected leading dimension {n}")

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.embeddings.shape[1])

    @property
    def has_coords(self) -> bool:
        """Whether ground-truth coordinates are present."""
        return self.latitude is not None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def read_dataset(
    path: str | os.PathLike[str],
    *,
    require_coords: bool = True,
    expected_dim: int | None = None,
) -> GeoDataset:
    """Read and validate a Parquet, NPZ or WebDataset dataset.

    Parameters
    ----------
    path: ``.parquet`` / ``.pq`` or ``.npz`` file (format chosen by suffix), or WebDataset
        shards (a ``.tar``, a folder of them, ``shard-{000..009}.tar``): see
        :func:`globeflow.data.webdataset.read_webdataset` (memory-mapped embeddings).
    require_coords: if True, ``latitude`` and ``longitude`` must be present. If False they
        may be absent (prediction inputs); when present they are validated all the same.
    expected_dim: if given, the embedding dimension D must equal it (the model's input
        dimension).

    Returns
    -------
    GeoDataset with embeddings (N, D) float32 and coordinates (N,) float64 or None.

    Raises
    ------
    DataError: for any problem with the file or its contents.
    """
    shown = os.fspath(path)
    p = Path(shown)
    suffix = p.suffix.lower()
    from globeflow.data.webdataset import is_webdataset, read_webdataset

    if is_webdataset(shown):
        return read_webdataset(shown, require_coords=require_coords, expected_dim=expected_dim)
    if suffix not in PARQUET_SUFFIXES + NPZ_SUFFIXES:
        raise DataError(
            shown,
            f"unsupported file suffix {p.suffix!r}; supported formats: "
            f"Parquet ({', '.join(PARQUET_SUFFIXES)}), NumPy NPZ ({', '.join(NPZ_SUFFIXES)}) "
            "and WebDataset shards (.tar, a folder of them, or a {000..009} pattern)",
        )
    if not p.exists():
        raise DataError(shown, "file not found")
    if not p.is_file():
        raise DataError(shown, "not a regular file")
    if not os.access(p, os.R_OK):
        raise DataError(shown, "file is not readable (permission denied)")

    if suffix in PARQUET_SUFFIXES:
        emb, lat, lon, extra = _read_parquet(shown, require_coords)
    else:
        emb, lat, lon, extra = _read_npz(shown, require_coords)

    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise DataError(
            shown,
            f"embedding length {emb.shape[1]} does not match the model's embedding dimension {expected_dim}",
            field=_PQ_EMBEDDING if suffix in PARQUET_SUFFIXES else _NPZ_EMBEDDING,
        )
    return GeoDataset(embeddings=emb, latitude=lat, longitude=lon, path=shown, extra=extra)


def write_parquet(
    path: str | os.PathLike[str],
    embeddings: np.ndarray | None,
    latitude: np.ndarray | None = None,
    longitude: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically write a Parquet file readable by :func:`read_dataset`.

    The table is written to a temporary file in the destination directory and moved into
    place with ``os.replace``, so readers never observe a half-written file.

    Parameters
    ----------
    embeddings: (N, D) array, stored as ``fixed_size_list<float32>[D]`` column ``embedding``;
        may be None for files that carry only coordinates/extras (e.g. predictions).
    latitude, longitude: (N,) degrees, stored as float64; both or neither.
    extra: further columns, each of leading dimension N. 1-D arrays become plain columns,
        2-D arrays become ``fixed_size_list`` columns (read back as 2-D arrays).
    metadata: key/value strings stored in the file's schema metadata (e.g. which encoder
        produced the embeddings).

    Raises
    ------
    ValueError: inconsistent shapes, name clashes, or unsupported extra arrays.
    """
    columns: dict[str, pa.Array] = {}
    n: int | None = None

    def check_len(name: str, length: int) -> None:
        nonlocal n
        if n is None:
            n = length
        elif length != n:
            raise ValueError(f"column `{name}` has {length} rows, expected {n}")

    if embeddings is not None:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (N, D), got shape {emb.shape}")
        check_len(_PQ_EMBEDDING, emb.shape[0])
        columns[_PQ_EMBEDDING] = _fixed_size_list(emb)
    if (latitude is None) != (longitude is None):
        raise ValueError("latitude and longitude must both be given or both be None")
    if latitude is not None and longitude is not None:
        for name, arr in ((_LAT, latitude), (_LON, longitude)):
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim != 1:
                raise ValueError(f"`{name}` must be 1-D, got shape {a.shape}")
            check_len(name, a.shape[0])
            columns[name] = pa.array(a)
    for name, arr in (extra or {}).items():
        if name in (_PQ_EMBEDDING, _LAT, _LON):
            raise ValueError(f"extra column `{name}` clashes with a reserved column name")
        a = np.asarray(arr)
        if a.ndim == 0:
            raise ValueError(f"extra column `{name}` must have a leading row dimension")
        check_len(name, a.shape[0])
        if a.ndim == 1:
            columns[name] = pa.array(a)
        elif a.ndim == 2:
            columns[name] = _fixed_size_list(np.ascontiguousarray(a))
        else:
            raise ValueError(f"extra column `{name}` has {a.ndim} dimensions; only 1-D and 2-D are supported")
    if not columns:
        raise ValueError("nothing to write: no embeddings, coordinates or extra columns given")

    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata({str(k): str(v) for k, v in metadata.items()})
    # Row groups of ~128 MiB (instead of pyarrow's default 1M rows, i.e. 4 GiB at D = 1024)
    # let readers stream a large file with bounded memory.
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    row_group_size = int(min(1 << 20, max(1024, _ROW_GROUP_BYTES // row_bytes)))
    dest = Path(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, dest)
    except BaseException:
        # Never leave a stray temp file behind, whatever interrupted us.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------


def _read_parquet(
    path: str, require_coords: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    try:
        # pre_buffer=False: pre-buffering reads whole row groups ahead (GiBs for large
        # embedding files) on top of the output array; local reads gain nothing from it.
        pf = pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"cannot read as Parquet (corrupt or not a Parquet file): {exc}") from None
    try:
        return _read_parquet_file(path, pf, require_coords)
    except (pa.ArrowException, OSError) as exc:
        # Damage that only shows once pages are decoded (truncated / corrupt row groups).
        raise DataError(path, f"cannot decode Parquet data (corrupt file?): {exc}") from None
    finally:
        pf.close()


def _read_parquet_file(
    path: str, pf: pq.ParquetFile, require_coords: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    schema = pf.schema_arrow
    names = list(schema.names)
    found = ", ".join(f"`{c}`" for c in names) or "(none)"
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataError(path, f"duplicate column name(s) {', '.join(f'`{c}`' for c in dupes)}", field=dupes[0])
    if _PQ_EMBEDDING not in names:
        raise DataError(path, f"missing column `{_PQ_EMBEDDING}`; columns found: {found}", field=_PQ_EMBEDDING)
    has_lat, has_lon = _LAT in names, _LON in names
    if require_coords or has_lat or has_lon:
        for col, has in ((_LAT, has_lat), (_LON, has_lon)):
            if not has:
                why = (
                    "" if require_coords else f" (it is required because `{_LON if col == _LAT else _LAT}` is present)"
                )
                raise DataError(path, f"missing column `{col}`{why}; columns found: {found}", field=col)
    with_coords = has_lat and has_lon

    emb_type = schema.field(_PQ_EMBEDDING).type
    if not (pa.types.is_list(emb_type) or pa.types.is_large_list(emb_type) or pa.types.is_fixed_size_list(emb_type)):
        raise DataError(path, f"column must be a list of floats, got type {emb_type}", field=_PQ_EMBEDDING)
    if not pa.types.is_floating(emb_type.value_type):
        raise DataError(
            path, f"embedding values must be floating point, got list of {emb_type.value_type}", field=_PQ_EMBEDDING
        )
    for col in (_LAT, _LON) if with_coords else ():
        t = schema.field(col).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise DataError(path, f"column must be numeric (degrees), got type {t}", field=col)

    n = pf.metadata.num_rows
    if n == 0:
        raise DataError(path, "file contains no rows")

    extra_names = [c for c in names if c not in (_PQ_EMBEDDING, _LAT, _LON)]
    emb: np.ndarray | None = None
    lat = np.empty(n, dtype=np.float64) if with_coords else None
    lon = np.empty(n, dtype=np.float64) if with_coords else None
    extra_parts: dict[str, list[np.ndarray]] = {c: [] for c in extra_names}
    dim: int | None = None
    start = 0
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
        m = batch.num_rows
        if m == 0:
            continue
        if start + m > n:
            raise DataError(path, f"file holds more rows than its metadata declares ({n})")
        col = batch.column(_PQ_EMBEDDING)
        values, dim = _embedding_values(path, col, start, dim)
        if emb is None:
            emb = np.empty((n, dim), dtype=np.float32)
        block = emb[start : start + m]
        # Overflowing float64 -> float32 casts become inf, which the finiteness check
        # below reports; numpy's overflow warning would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            block[...] = values.reshape(m, dim)
        bad = _first_nonfinite_row(block)
        if bad is not None:
            j = int(np.flatnonzero(~np.isfinite(block[bad]))[0])
            raise DataError(
                path,
                f"embedding contains non-finite value {float(values.reshape(m, dim)[bad, j])} at position {j}"
                + (" (overflows float32)" if np.isfinite(values.reshape(m, dim)[bad, j]) else ""),
                row=start + bad,
                field=_PQ_EMBEDDING,
            )
        if lat is not None and lon is not None:
            lat[start : start + m] = _numeric_column(path, batch.column(_LAT), _LAT, start)
            lon[start : start + m] = _numeric_column(path, batch.column(_LON), _LON, start)
        for c in extra_names:
            extra_parts[c].append(_extra_column(path, batch.column(c), c))
        start += m
    if start != n or emb is None:
        raise DataError(path, f"file declares {n} rows but only {start} could be read (truncated?)")

    if lat is not None and lon is not None:
        _check_coords(path, lat, lon)
    extra = {c: (parts[0] if len(parts) == 1 else np.concatenate(parts)) for c, parts in extra_parts.items()}
    return emb, lat, lon, extra


def _embedding_values(path: str, col: pa.Array, start: int, dim: int | None) -> tuple[np.ndarray, int]:
    """Flat values (m*D,) of one batch of the embedding column, after structural checks.

    Vectorised on the Arrow buffers (lengths from offsets, one flat values array) so that
    large files are read without a Python loop over rows.
    """
    if col.null_count:
        row = int(np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False))[0])
        raise DataError(path, "embedding is null", row=start + row, field=_PQ_EMBEDDING)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if dim is None:
        dim = int(lengths[0])
        if dim == 0:
            raise DataError(path, "embedding is empty (length 0)", row=start, field=_PQ_EMBEDDING)
    diff = np.flatnonzero(lengths != dim)
    if diff.size:
        r = int(diff[0])
        raise DataError(
            path,
            f"embedding has length {int(lengths[r])}, but earlier rows have length {dim}",
            row=start + r,
            field=_PQ_EMBEDDING,
        )
    flat = col.flatten()  # respects slicing offsets, unlike `.values`
    if flat.null_count:
        pos = int(np.flatnonzero(~flat.is_valid().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            path, f"embedding has a null value at position {pos % dim}", row=start + pos // dim, field=_PQ_EMBEDDING
        )
    return flat.to_numpy(zero_copy_only=False), dim


def _numeric_column(path: str, col: pa.Array, name: str, start: int) -> np.ndarray:
    if col.null_count:
        row = int(np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False))[0])
        raise DataError(path, "value is null", row=start + row, field=name)
    return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _extra_column(path: str, col: pa.Array, name: str) -> np.ndarray:
    """Convert a passthrough column to numpy; fixed-size lists of numbers become 2-D."""
    try:
        t = col.type
        if (
            pa.types.is_fixed_size_list(t)
            and col.null_count == 0
            and (pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type))
        ):
            flat = col.flatten()
            if flat.null_count == 0:
                return flat.to_numpy(zero_copy_only=False).reshape(len(col), t.list_size)
        return col.to_numpy(zero_copy_only=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(
            path, f"cannot convert passthrough column of type {col.type} to numpy: {exc}", field=name
        ) from None


# --------------------------------------------------------------------------------------
# NPZ
# --------------------------------------------------------------------------------------


def _read_npz(
    path: str, require_coords: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    # Sniff the magic ourselves: np.load falls back to unpickling for unknown content, whose
    # error ("contains pickled (object) data") would mislead for a merely corrupt file.
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(path, f"cannot open file: {exc}") from None
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(path, "file is a single .npy array, not an .npz archive of named arrays")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise DataError(path, "not an .npz archive (no zip signature; corrupt or wrong format)")
    try:
        # allow_pickle=False: an .npz from an untrusted source must not execute code.
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"cannot read as NPZ (corrupt .npz archive): {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # pragma: no cover - excluded by the magic check
        raise DataError(path, "not an .npz archive of named arrays")
    with archive:
        names = list(archive.files)
        found = ", ".join(f"`{c}`" for c in names) or "(none)"

        def load(name: str) -> np.ndarray:
            try:
                return np.asarray(archive[name])
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
                raise DataError(path, f"cannot load array: {exc}", field=name) from None

        if _NPZ_EMBEDDING not in names:
            raise DataError(path, f"missing array `{_NPZ_EMBEDDING}`; arrays found: {found}", field=_NPZ_EMBEDDING)
        has_lat, has_lon = _LAT in names, _LON in names
        if require_coords or has_lat or has_lon:
            for col, has in ((_LAT, has_lat), (_LON, has_lon)):
                if not has:
                    why = (
                        ""
                        if require_coords
                        else f" (it is required because `{_LON if col == _LAT else _LAT}` is present)"
                    )
                    raise DataError(path, f"missing array `{col}`{why}; arrays found: {found}", field=col)

        raw = load(_NPZ_EMBEDDING)
        if raw.ndim != 2:
            raise DataError(path, f"embeddings must be a 2-D array (N, D), got shape {raw.shape}", field=_NPZ_EMBEDDING)
        if not np.issubdtype(raw.dtype, np.floating):
            raise DataError(
                path, f"embedding values must be floating point, got dtype {raw.dtype}", field=_NPZ_EMBEDDING
            )
        n, dim = raw.shape
        if n == 0:
            raise DataError(path, "file contains no rows", field=_NPZ_EMBEDDING)
        if dim == 0:
            raise DataError(path, "embedding is empty (length 0)", field=_NPZ_EMBEDDING)
        with np.errstate(over="ignore", invalid="ignore"):
            emb = np.ascontiguousarray(raw, dtype=np.float32)
        bad = _first_nonfinite_row(emb)
        if bad is not None:
            j = int(np.flatnonzero(~np.isfinite(emb[bad]))[0])
            raise DataError(
                path,
                f"embedding contains non-finite value {float(raw[bad, j])} at position {j}"
                + (" (overflows float32)" if np.isfinite(raw[bad, j]) else ""),
                row=bad,
                field=_NPZ_EMBEDDING,
            )
        del raw

        lat = lon = None
        if has_lat and has_lon:
            coords = []
            for name in (_LAT, _LON):
                a = load(name)
                if a.shape != (n,):
                    raise DataError(
                        path, f"expected shape ({n},) to match `{_NPZ_EMBEDDING}`, got {a.shape}", field=name
                    )
                if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                    raise DataError(path, f"must be numeric (degrees), got dtype {a.dtype}", field=name)
                coords.append(a.astype(np.float64))
            lat, lon = coords
            _check_coords(path, lat, lon)

        extra: dict[str, np.ndarray] = {}
        for name in names:
            if name in (_NPZ_EMBEDDING, _LAT, _LON):
                continue
            a = load(name)
            # Only per-row arrays are passthrough; archive-level metadata (e.g. a list of
            # class names) has no row to travel with.
            if a.ndim >= 1 and a.shape[0] == n:
                extra[name] = a
    return emb, lat, lon, extra


# --------------------------------------------------------------------------------------
# Shared validation
# --------------------------------------------------------------------------------------


def _first_nonfinite_row(arr: np.ndarray) -> int | None:
    """Index of the first row of a 2-D float array holding NaN/inf, or None.

    NaN/inf propagate through a sum, so a row sum is a cheap screen (no N x D boolean
    mask); rows whose sum is non-finite only because finite values overflowed are then
    confirmed element-wise.
    """
    for lo in range(0, arr.shape[0], _BATCH_ROWS):
        block = arr[lo : lo + _BATCH_ROWS]
        with np.errstate(over="ignore", invalid="ignore"):
            suspects = np.flatnonzero(~np.isfinite(block.sum(axis=1)))
        for r in suspects:
            if not np.isfinite(block[r]).all():
                return lo + int(r)
    return None


def _check_coords(path: str, lat: np.ndarray, lon: np.ndarray) -> None:
    for name, arr, bound in ((_LAT, lat, 90.0), (_LON, lon, 180.0)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            r = int(bad[0])
            raise DataError(path, f"coordinate is not finite ({float(arr[r])})", row=r, field=name)
        bad = np.flatnonzero(np.abs(arr) > bound)
        if bad.size:
            r = int(bad[0])
            raise DataError(path, f"value {float(arr[r])!r} outside [-{bound:g}, {bound:g}] degrees", row=r, field=name)


def _fixed_size_list(arr: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) C-contiguous array -> fixed_size_list<D> column without copying the values."""
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
