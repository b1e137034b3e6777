"""Parquet files of embeddings and coordinates (``.parquet`` / ``.pq``).

Column ``embedding`` (``list`` / ``large_list`` / ``fixed_size_list`` of any floating type),
columns ``latitude`` and ``longitude`` (degrees, any numeric type), plus any other columns,
which are carried through unchanged in :attr:`GeoDataset.extra` (e.g. an ``id`` column that
``predict`` writes back). Read in record batches with bounded temporary memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from globeflow.data.dataset import (
    EMBEDDING_COLUMN,
    LATITUDE,
    LONGITUDE,
    DataError,
    check_coords,
    check_finite_embeddings,
    require_columns,
)

__all__ = ["fixed_size_list", "read_parquet", "write_parquet"]

# Rows per Arrow record batch. Bounds the temporary memory (a 1M x 1024 float32 file is
# 4 GiB; we never want a second full-size copy on top of it).
_BATCH_ROWS = 32_768
_ROW_GROUP_BYTES = 128 << 20
# Buffered column-chunk reads: with pyarrow's default (0) a whole column chunk is read into
# memory at once -- 4 GiB for a 1M-row group of 1024-d float32 (pyarrow's default row groups).
# Measured on a 200k-row single-group file: peak RSS 1.14 GB unbuffered, 0.29 GB with 8 MiB.
_READ_BUFFER = 8 << 20


def write_parquet(
    path: str | os.PathLike[str],
    embeddings: np.ndarray | None,
    latitude: np.ndarray | None = None,
    longitude: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically write a Parquet file readable by :func:`~globeflow.data.readers.read_dataset`.

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
        check_len(EMBEDDING_COLUMN, emb.shape[0])
        columns[EMBEDDING_COLUMN] = fixed_size_list(emb)
    if (latitude is None) != (longitude is None):
        raise ValueError("latitude and longitude must both be given or both be None")
    if latitude is not None and longitude is not None:
        for name, arr in ((LATITUDE, latitude), (LONGITUDE, longitude)):
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim != 1:
                raise ValueError(f"`{name}` must be 1-D, got shape {a.shape}")
            check_len(name, a.shape[0])
            columns[name] = pa.array(a)
    for name, arr in (extra or {}).items():
        if name in (EMBEDDING_COLUMN, LATITUDE, LONGITUDE):
            raise ValueError(f"extra column `{name}` clashes with a reserved column name")
        a = np.asarray(arr)
        if a.ndim == 0:
            raise ValueError(f"extra column `{name}` must have a leading row dimension")
        check_len(name, a.shape[0])
        if a.ndim == 1:
            columns[name] = pa.array(a)
        elif a.ndim == 2:
            columns[name] = fixed_size_list(np.ascontiguousarray(a))
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
        pq.write_table(table, tmp, row_group_size=row_group_size, write_page_checksum=True)
        os.replace(tmp, dest)
    except BaseException:
        # Never leave a stray temp file behind, whatever interrupted us.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_parquet(
    path: str, require_coords: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    try:
        # pre_buffer=False: pre-buffering reads whole row groups ahead (GiBs for large
        # embedding files) on top of the output array; local reads gain nothing from it.
        # page_checksum_verification: pages written with checksums (write_parquet writes them)
        # are verified, so bit-flipped values are an error, not silently different numbers.
        # buffer_size: see _READ_BUFFER.
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER, page_checksum_verification=True)
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
    with_coords, extra_names = _check_schema(path, pf.schema_arrow, require_coords)
    n = pf.metadata.num_rows
    if n == 0:
        raise DataError(path, "file contains no rows")
    reader = _BatchReader(path, n, with_coords, extra_names)
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
        reader.add(batch)
    return reader.result()


def _check_schema(path: str, schema: pa.Schema, require_coords: bool) -> tuple[bool, list[str]]:
    """Column names and types -> (whether coordinates are present, the passthrough columns)."""
    names = list(schema.names)
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataError(path, f"duplicate column name(s) {', '.join(f'`{c}`' for c in dupes)}", field=dupes[0])
    with_coords = require_columns(path, names, EMBEDDING_COLUMN, require_coords, "column")
    emb_type = schema.field(EMBEDDING_COLUMN).type
    if not (pa.types.is_list(emb_type) or pa.types.is_large_list(emb_type) or pa.types.is_fixed_size_list(emb_type)):
        raise DataError(path, f"column must be a list of floats, got type {emb_type}", field=EMBEDDING_COLUMN)
    if not pa.types.is_floating(emb_type.value_type):
        raise DataError(
            path,
            f"embedding values must be floating point, got list of {emb_type.value_type}",
            field=EMBEDDING_COLUMN,
        )
    for col in (LATITUDE, LONGITUDE) if with_coords else ():
        t = schema.field(col).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise DataError(path, f"column must be numeric (degrees), got type {t}", field=col)
    return with_coords, [c for c in names if c not in (EMBEDDING_COLUMN, LATITUDE, LONGITUDE)]


class _BatchReader:
    """Fills the output arrays batch by batch (global row indices in every error)."""

    def __init__(self, path: str, n: int, with_coords: bool, extra_names: list[str]) -> None:
        self.path, self.n = path, n
        self.emb: np.ndarray | None = None
        self.lat = np.empty(n, dtype=np.float64) if with_coords else None
        self.lon = np.empty(n, dtype=np.float64) if with_coords else None
        self.extra_parts: dict[str, list[np.ndarray]] = {c: [] for c in extra_names}
        self.dim: int | None = None
        self.start = 0

    def add(self, batch: pa.RecordBatch) -> None:
        path, start, m = self.path, self.start, batch.num_rows
        if m == 0:
            return
        if start + m > self.n:
            raise DataError(path, f"file holds more rows than its metadata declares ({self.n})")
        values, self.dim = _embedding_values(path, batch.column(EMBEDDING_COLUMN), start, self.dim)
        if self.emb is None:
            self.emb = np.empty((self.n, self.dim), dtype=np.float32)
        block = self.emb[start : start + m]
        # Overflowing float64 -> float32 casts become inf, which the finiteness check
        # below reports; numpy's overflow warning would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            block[...] = values.reshape(m, self.dim)
        check_finite_embeddings(path, block, values.reshape(m, self.dim), start=start, field=EMBEDDING_COLUMN)
        if self.lat is not None and self.lon is not None:
            self.lat[start : start + m] = _numeric_column(path, batch.column(LATITUDE), LATITUDE, start)
            self.lon[start : start + m] = _numeric_column(path, batch.column(LONGITUDE), LONGITUDE, start)
        for c, parts in self.extra_parts.items():
            parts.append(_extra_column(path, batch.column(c), c))
        self.start += m

    def result(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
        if self.start != self.n or self.emb is None:
            raise DataError(self.path, f"file declares {self.n} rows but only {self.start} could be read (truncated?)")
        if self.lat is not None and self.lon is not None:
            check_coords(self.path, self.lat, self.lon)
        extra = {c: (p[0] if len(p) == 1 else np.concatenate(p)) for c, p in self.extra_parts.items()}
        return self.emb, self.lat, self.lon, extra


def _embedding_values(path: str, col: pa.Array, start: int, dim: int | None) -> tuple[np.ndarray, int]:
    """Flat values (m*D,) of one batch of the embedding column, after structural checks.

    Vectorised on the Arrow buffers (lengths from offsets, one flat values array) so that
    large files are read without a Python loop over rows.
    """
    if col.null_count:
        row = int(np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False))[0])
        raise DataError(path, "embedding is null", row=start + row, field=EMBEDDING_COLUMN)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if dim is None:
        dim = int(lengths[0])
        if dim == 0:
            raise DataError(path, "embedding is empty (length 0)", row=start, field=EMBEDDING_COLUMN)
    diff = np.flatnonzero(lengths != dim)
    if diff.size:
        r = int(diff[0])
        raise DataError(
            path,
            f"embedding has length {int(lengths[r])}, but earlier rows have length {dim}",
            row=start + r,
            field=EMBEDDING_COLUMN,
        )
    flat = col.flatten()  # respects slicing offsets, unlike `.values`
    if flat.null_count:
        pos = int(np.flatnonzero(~flat.is_valid().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            path, f"embedding has a null value at position {pos % dim}", row=start + pos // dim, field=EMBEDDING_COLUMN
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


def fixed_size_list(arr: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) C-contiguous array -> fixed_size_list<D> column without copying the values."""
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def open_parquet(path: str) -> pq.ParquetFile:
    """``pq.ParquetFile`` without pre-buffering, buffered, page checksums verified (as
    :func:`read_parquet`); a ``DataError`` for an unreadable file."""
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"cannot read as Parquet (corrupt or not a Parquet file): {exc}") from None


def check_schema(path: str, schema: pa.Schema, require_coords: bool) -> tuple[bool, list[str]]:
    """Column names and types -> (whether coordinates are present, the passthrough columns)."""
    return _check_schema(path, schema, require_coords)


def batch_arrays(
    path: str, batch: pa.RecordBatch, with_coords: bool, extra_names: list[str], start: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    """One record batch (Parquet or Arrow IPC) -> validated, freshly allocated arrays
    (embeddings (m, D) float32, latitude/longitude (m,) float64 or None, passthrough columns);
    ``start``: the global row of the batch's first row, for the errors. The copy matters for
    memory-mapped Arrow files: no array keeps the mapping alive."""
    m = batch.num_rows
    values, dim = _embedding_values(path, batch.column(EMBEDDING_COLUMN), start, None)
    emb = np.empty((m, dim), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        emb[...] = values.reshape(m, dim)
    check_finite_embeddings(path, emb, values.reshape(m, dim), start=start, field=EMBEDDING_COLUMN)
    lat = lon = None
    if with_coords:
        lat = np.array(_numeric_column(path, batch.column(LATITUDE), LATITUDE, start), dtype=np.float64)
        lon = np.array(_numeric_column(path, batch.column(LONGITUDE), LONGITUDE, start), dtype=np.float64)
        try:
            check_coords(path, lat, lon)
        except DataError as err:  # the row of the file, not of the batch
            raise DataError(path, err._detail, row=None if err.row is None else start + err.row, field=err.field) from None
    extra = {c: np.array(_extra_column(path, batch.column(c), c)) for c in extra_names}
    return emb, lat, lon, extra
