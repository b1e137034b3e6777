"""Reading datasets in bounded memory: chunks for inference, a shuffled stream for training.

A dataset is a list of *units*, the pieces a format can read on its own:

========================  ==========================================  =====================
format                    unit                                        rows known up front
========================  ==========================================  =====================
Parquet (.parquet, .pq)   one row group                               yes (file metadata)
Arrow IPC (.arrow ...)    one record batch (memory-mapped, zero decode) yes (batch headers)
WebDataset shards (.tar)  one shard                                   no
NPZ (.npz)                the whole file (zip members cannot stream)  no
========================  ==========================================  =====================

:func:`iter_chunks` reads the units in file order, ``chunk_rows`` rows at a time (predict,
evaluate). :class:`TrainStream` feeds the trainer: memory is one *window* of
``buffer_rows`` rows plus one read chunk, whatever the number of rows.

Shuffling (:class:`TrainStream`)
--------------------------------
1. Every epoch the units are put in a random order (seeded by ``(seed, epoch)``); under DDP
   rank ``r`` of ``W`` takes units ``r, r+W, r+2W, ...`` of that order, so the ranks read
   disjoint rows (units are split in equal slices first when there are fewer than ranks).
2. A rank reads its units in that order, as one stream, into a window of
   ``buffer_rows // b * b`` rows (``b``: its per-step batch), permutes the window with a
   generator seeded by ``(seed, rank, window number)`` and hands it out ``b`` rows per step.

A batch therefore mixes the rows of one window: a few consecutive units of the shuffled
order. That decorrelates batches as long as a unit is not itself sorted (by country, say);
for such files, ``globeflow pack --shuffle`` writes them once, rows permuted, into an Arrow
IPC file of small record batches.

Exact resume: the position is ``(epoch, unit, row)`` of the current window's first row,
the window number and the batches already taken from it (:meth:`TrainStream.state_dict`,
saved in the training checkpoint). Resuming re-reads that one window and regenerates its
permutation, so the batches are bitwise those of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.data.dataset import (
    EMBEDDING_COLUMN,
    NPZ_SUFFIXES,
    PARQUET_SUFFIXES,
    DataError,
    GeoDataset,
    check_coords,
    check_embedding_range,
    check_finite_embeddings,
)
from globeflow.data.webdataset import expand_shards, is_webdataset, iter_webdataset

__all__ = [
    "ARROW_SUFFIXES",
    "DEFAULT_BUFFER_ROWS",
    "TrainStream",
    "Unit",
    "data_bytes",
    "iter_chunks",
    "iter_unit",
    "list_units",
    "pack",
]

ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
#: Rows of the training window (128 MiB at D = 1024, float32).
DEFAULT_BUFFER_ROWS = 32_768
#: Rows decoded at a time inside a unit.
READ_ROWS = 8_192
#: Rows per record batch written by :func:`pack` (16 MiB at D = 1024): small units shuffle well.
PACK_BATCH_ROWS = 4_096


@dataclass(frozen=True)
class Unit:
    """One independently readable piece of a dataset: rows ``[lo, hi)`` of row group /
    record batch ``index`` of ``path`` (``hi`` None: to the end); ``first_row``: the global
    row of the piece's row 0 (None when unknown: WebDataset, NPZ)."""

    path: str
    kind: str  # "parquet" | "arrow" | "wds" | "npz"
    index: int = 0
    first_row: int | None = 0
    rows: int | None = None
    lo: int = 0
    hi: int | None = None


def _kind(path: str) -> str:
    if is_webdataset(path):
        return "wds"
    suffix = Path(path).suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in ARROW_SUFFIXES:
        return "arrow"
    if suffix in NPZ_SUFFIXES:
        return "npz"
    raise DataError(
        path,
        f"unsupported file suffix {Path(path).suffix!r}; supported: Parquet ({', '.join(PARQUET_SUFFIXES)}), "
        f"Arrow IPC ({', '.join(ARROW_SUFFIXES)}), NPZ (.npz), WebDataset shards (.tar)",
    )


def _open_arrow(path: str):  # -> (pa.MemoryMappedFile, pa.ipc.RecordBatchFileReader)
    import pyarrow as pa

    try:
        source = pa.memory_map(path, "r")
        return source, pa.ipc.open_file(source)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"cannot read as an Arrow IPC file (corrupt or another format?): {exc}") from None


def list_units(path: str | os.PathLike[str], *, require_coords: bool = True) -> list[Unit]:
    """The units of ``path`` in file order (the schema is checked on the way)."""
    shown = os.fspath(path)
    kind = _kind(shown)
    if kind == "wds":
        return [Unit(s, "wds", first_row=None) for s in expand_shards(shown)]
    if not Path(shown).is_file():
        raise DataError(shown, "file not found")
    if kind == "npz":
        return [Unit(shown, "npz", first_row=0)]
    from globeflow.data.parquet import check_schema, open_parquet

    if kind == "parquet":
        pf = open_parquet(shown)
        try:
            check_schema(shown, pf.schema_arrow, require_coords)
            counts = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        finally:
            pf.close()
    else:
        source, reader = _open_arrow(shown)
        with source:
            check_schema(shown, reader.schema, require_coords)
            counts = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    starts = np.concatenate([[0], np.cumsum(counts)])
    units = [Unit(shown, kind, i, int(starts[i]), int(c)) for i, c in enumerate(counts) if c > 0]
    if not units:
        raise DataError(shown, "file contains no rows")
    return units


def data_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes of the float32 embeddings of ``path`` (rows x D x 4) when cheap to know (Parquet,
    Arrow), else None."""
    shown = os.fspath(path)
    try:
        units = list_units(shown, require_coords=False)
    except DataError:
        return None
    if units[0].rows is None:
        return None
    first = next(iter_unit(replace(units[0], hi=1), require_coords=False, batch_rows=1))
    return sum(u.rows or 0 for u in units) * first.dim * 4


def iter_unit(
    unit: Unit,
    *,
    require_coords: bool,
    batch_rows: int = READ_ROWS,
    skip: int = 0,
    embedding_key: str | None = None,
    max_abs: float | None = None,
) -> Iterator[GeoDataset]:
    """Validated chunks of at most ``batch_rows`` rows of ``unit``, from its row ``lo + skip``;
    ``max_abs``: if given, every embedding value must lie within ``±max_abs`` (as
    :func:`~globeflow.data.readers.read_dataset`; the error names the row of ``unit.path``)."""
    if max_abs is None:
        yield from _iter_unit(unit, require_coords, batch_rows, unit.lo + skip, unit.hi, embedding_key)
        return
    row = (unit.first_row or 0) + unit.lo + skip  # row of unit.path (a shard's own row for WebDataset)
    for chunk in _iter_unit(unit, require_coords, batch_rows, unit.lo + skip, unit.hi, embedding_key):
        check_embedding_range(unit.path, chunk.embeddings, bound=max_abs, start=row)
        row += len(chunk)
        yield chunk


def _iter_unit(
    unit: Unit, require_coords: bool, batch_rows: int, begin: int, end: int | None, embedding_key: str | None
) -> Iterator[GeoDataset]:
    if unit.kind == "parquet":
        yield from _iter_parquet(unit, require_coords, batch_rows, begin, end)
    elif unit.kind == "arrow":
        yield from _iter_arrow(unit, require_coords, batch_rows, begin, end)
    elif unit.kind == "wds":
        yield from _iter_wds(unit, require_coords, batch_rows, begin, end, embedding_key)
    else:
        from globeflow.data.npz import read_npz

        emb, lat, lon, extra = read_npz(unit.path, require_coords)
        stop = len(emb) if end is None else min(end, len(emb))
        for s in range(begin, stop, batch_rows):
            sl = slice(s, min(s + batch_rows, stop))
            yield GeoDataset(
                emb[sl], None if lat is None else lat[sl], None if lon is None else lon[sl], unit.path,
                {c: v[sl] for c, v in extra.items()},
            )


def _iter_parquet(unit: Unit, require_coords: bool, batch_rows: int, begin: int, end: int | None):
    import pyarrow as pa

    from globeflow.data.parquet import batch_arrays, check_schema, open_parquet

    pf = open_parquet(unit.path)
    try:
        with_coords, extra_names = check_schema(unit.path, pf.schema_arrow, require_coords)
        pos = 0  # row of the row group at the start of `batch`
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[unit.index]):
                m = batch.num_rows
                lo, hi = max(begin, pos), min(pos + m, m + pos if end is None else end)
                if hi > lo:
                    arrays = batch_arrays(
                        unit.path, batch.slice(lo - pos, hi - lo), with_coords, extra_names, (unit.first_row or 0) + lo
                    )
                    yield GeoDataset(*arrays[:3], unit.path, arrays[3])
                pos += m
                if end is not None and pos >= end:
                    break
        except (pa.ArrowException, OSError) as exc:
            raise DataError(unit.path, f"cannot decode Parquet data (corrupt file?): {exc}") from None
    finally:
        pf.close()


def _iter_arrow(unit: Unit, require_coords: bool, batch_rows: int, begin: int, end: int | None):
    from globeflow.data.parquet import batch_arrays, check_schema

    # The mapping lives while this unit is read; the arrays handed out are copies, so closing
    # it returns the pages touched to the page cache (they leave this process's RSS).
    source, reader = _open_arrow(unit.path)
    with source:
        with_coords, extra_names = check_schema(unit.path, reader.schema, require_coords)
        batch = reader.get_batch(unit.index)
        stop = batch.num_rows if end is None else min(end, batch.num_rows)
        for s in range(begin, stop, batch_rows):
            m = min(batch_rows, stop - s)
            arrays = batch_arrays(unit.path, batch.slice(s, m), with_coords, extra_names, (unit.first_row or 0) + s)
            yield GeoDataset(*arrays[:3], unit.path, arrays[3])
        del batch, reader


def _iter_wds(unit: Unit, require_coords: bool, batch_rows: int, begin: int, end: int | None, embedding_key):
    samples = iter_webdataset([unit.path], embedding_key=embedding_key, require_coords=require_coords)

    def flush(rows: list, first: int) -> GeoDataset:
        """``rows``: samples ``first``, ``first + 1``, ... of the shard (``first``: for errors)."""
        emb = np.stack([s.embedding for s in rows]).astype(np.float32, copy=False)
        check_finite_embeddings(unit.path, emb, emb, start=first, field=EMBEDDING_COLUMN)
        lat = lon = None
        if all(s.latitude is not None for s in rows):
            lat = np.array([s.latitude for s in rows], dtype=np.float64)
            lon = np.array([s.longitude for s in rows], dtype=np.float64)
            try:
                check_coords(unit.path, lat, lon)
            except DataError as err:  # the shard's sample, not the chunk's row
                row = None if err.row is None else first + err.row
                raise DataError(unit.path, err._detail, row=row, field=err.field) from None
        return GeoDataset(emb, lat, lon, unit.path, {"key": np.array([s.key for s in rows])})

    rows: list = []
    for i, sample in enumerate(samples):
        if end is not None and i >= end:
            break
        if i < begin:
            continue
        rows.append(sample)
        if len(rows) == batch_rows:
            yield flush(rows, i + 1 - len(rows))
            rows = []
    if rows:
        yield flush(rows, i + 1 - len(rows) if end is None or i < end else end - len(rows))


def iter_chunks(
    path: str | os.PathLike[str],
    *,
    require_coords: bool,
    expected_dim: int | None = None,
    chunk_rows: int = 16_384,
    embedding_key: str | None = None,
    max_abs: float | None = None,
    exact: bool = False,
) -> Iterator[GeoDataset]:
    """The rows of ``path`` in file order, ``chunk_rows`` (or fewer) at a time, validated like
    :func:`~globeflow.data.readers.read_dataset` (a ``DataError`` names the file, row, field;
    ``max_abs`` as there: pass :data:`~globeflow.data.dataset.MAX_EMBEDDING_ABS` when the rows
    are fed to a model).
    Memory: one chunk plus one unit's reader (a row group's pages, a record batch's mapping).

    ``exact``: every chunk but the last has exactly ``chunk_rows`` rows (units are joined or
    split; one more chunk of memory), so that chunk ``i`` holds rows ``[i * chunk_rows,
    (i + 1) * chunk_rows)`` whatever the file's row groups, record batches or shards:
    predict/evaluate seed each chunk, and a row's estimate must not depend on the layout."""
    chunks = _iter_chunks(os.fspath(path), require_coords, expected_dim, chunk_rows, embedding_key, max_abs)
    yield from _exact(chunks, chunk_rows) if exact else chunks


def _exact(chunks: Iterator[GeoDataset], rows: int) -> Iterator[GeoDataset]:
    """``chunks`` re-cut into chunks of exactly ``rows`` rows (the last may be shorter)."""
    held: list[GeoDataset] = []
    have = 0
    for chunk in chunks:
        while len(chunk):
            take = min(rows - have, len(chunk))
            held.append(_slice(chunk, 0, take))
            have += take
            chunk = _slice(chunk, take, len(chunk))
            if have == rows:
                yield _join(held)
                held, have = [], 0
    if held:
        yield _join(held)


def _slice(c: GeoDataset, lo: int, hi: int) -> GeoDataset:
    if lo == 0 and hi == len(c):
        return c
    return GeoDataset(
        c.embeddings[lo:hi],
        None if c.latitude is None else c.latitude[lo:hi],
        None if c.longitude is None else c.longitude[lo:hi],
        c.path,
        {k: v[lo:hi] for k, v in c.extra.items()},
    )


def _join(parts: list[GeoDataset]) -> GeoDataset:
    if len(parts) == 1:
        return parts[0]

    def cat(arrays: list) -> np.ndarray | None:
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return GeoDataset(
        np.concatenate([c.embeddings for c in parts]),
        cat([c.latitude for c in parts]),
        cat([c.longitude for c in parts]),
        parts[0].path,
        {k: np.concatenate([c.extra[k] for c in parts]) for k in parts[0].extra},
    )


def _iter_chunks(
    shown: str,
    require_coords: bool,
    expected_dim: int | None,
    chunk_rows: int,
    embedding_key: str | None,
    max_abs: float | None,
) -> Iterator[GeoDataset]:
    for unit in list_units(shown, require_coords=require_coords):
        for chunk in iter_unit(
            unit, require_coords=require_coords, batch_rows=chunk_rows, embedding_key=embedding_key, max_abs=max_abs
        ):
            if expected_dim is not None and chunk.dim != expected_dim:
                raise DataError(
                    shown,
                    f"embedding length {chunk.dim} does not match the model's embedding dimension {expected_dim}",
                    field=EMBEDDING_COLUMN,
                )
            yield chunk


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    from globeflow.geometry import latlon_to_xyz

    return np.asarray(latlon_to_xyz(lat, lon), dtype=np.float32)


class TrainStream:
    """Shuffled training batches of a Parquet / Arrow IPC / WebDataset / NPZ dataset in
    bounded memory (see the module docstring for the shuffle and the resume).

    Memory: a window of ``buffer_rows`` (rounded down to whole batches) x (D + 3) float32,
    twice with ``prefetch`` (the next window is read in a background thread while the steps
    use this one), plus one read chunk of ``read_rows`` rows: 2 x 128 MiB + 32 MiB at
    D = 1024 by default, whatever the number of rows.

    Used by :func:`globeflow.training.train` (``stream=``), which calls :meth:`start` with
    its rank and batch, then :meth:`next_batch` once per step, and saves
    :meth:`state_dict` in the checkpoint.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        read_rows: int = READ_ROWS,
        embedding_key: str | None = None,
        prefetch: bool = True,
        max_abs: float | None = None,
    ) -> None:
        if not isinstance(buffer_rows, int) or buffer_rows < 1:
            raise ValueError(f"buffer_rows must be a positive integer, got {buffer_rows!r}")
        self.path = os.fspath(path)
        self.units = list_units(self.path, require_coords=True)
        self.buffer_rows = buffer_rows
        self.read_rows = read_rows
        self.embedding_key = embedding_key
        self.prefetch = prefetch
        self.max_abs = max_abs  # range check of every chunk read (None: finite is enough)
        known = all(u.rows is not None for u in self.units)
        #: rows of the dataset, None when unknown until read (WebDataset, NPZ)
        self.num_rows: int | None = sum(u.rows or 0 for u in self.units) if known else None
        self._started = False

    def head(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` rows (or fewer) in file order: ``(xyz (n, 3), emb (n, D))`` float32,
        for data-dependent set-up (MvMF's components) and the embedding dimension."""
        xyz, emb, have = [], [], 0
        for unit in self.units:
            for c in iter_unit(
                unit,
                require_coords=True,
                batch_rows=min(n, self.read_rows),
                embedding_key=self.embedding_key,
                max_abs=self.max_abs,
            ):
                take = min(n - have, len(c))
                xyz.append(_xyz(c.latitude[:take], c.longitude[:take]))
                emb.append(c.embeddings[:take])
                have += take
                if have >= n:
                    return np.concatenate(xyz), np.concatenate(emb)
        return np.concatenate(xyz), np.concatenate(emb)

    # ------------------------------------------------------------------ set-up and state

    def start(self, *, seed: int, rank: int = 0, world_size: int = 1, batch_rows: int) -> None:
        """Bind to a rank of ``world_size`` taking ``batch_rows`` rows per step; position at
        the start of epoch 0."""
        window = self.buffer_rows // batch_rows * batch_rows
        if window == 0:
            raise ValueError(
                f"shuffle buffer ({self.buffer_rows} rows) is smaller than a rank's batch ({batch_rows} rows)"
            )
        units = self.units
        if len(units) < world_size:
            if any(u.rows is None for u in units):
                raise ValueError(
                    f"{self.path}: {len(units)} shard(s)/file(s) for {world_size} processes; give at least one "
                    "per process (or `globeflow pack` the data into an Arrow file)"
                )
            parts = -(-world_size // len(units))
            units = [
                replace(u, lo=u.rows * j // parts, hi=u.rows * (j + 1) // parts, first_row=u.first_row)
                for u in units
                for j in range(parts)
                if u.rows * (j + 1) // parts > u.rows * j // parts
            ]
            if len(units) < world_size:
                raise ValueError(f"{self.path}: {self.num_rows} rows cannot be split over {world_size} processes")
        self._units = units
        self.seed, self.rank, self.world_size, self.batch_rows, self.window = seed, rank, world_size, batch_rows, window
        self._state = {"start": [0, 0, 0], "window": 0, "taken": 0}
        self._win_emb: np.ndarray | None = None
        self._win_xyz: np.ndarray | None = None
        self._perm: np.ndarray | None = None
        self._ahead = None  # (start of the next window, Future of its end) while prefetching
        self._pool = None
        self._filled = False
        self._order_cache: tuple[int, list[Unit]] | None = None
        self._reset_cursor(0, 0, 0)
        self._started = True

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: enough to resume bitwise (see the module docstring)."""
        self._check_started()
        return {
            **{k: (list(v) if isinstance(v, list) else v) for k, v in self._state.items()},
            "buffer_rows": self.buffer_rows,
            "batch_rows": self.batch_rows,
            "world_size": self.world_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s position (same settings, else ``ValueError``)."""
        self._check_started()
        mine = {"buffer_rows": self.buffer_rows, "batch_rows": self.batch_rows, "world_size": self.world_size, "seed": self.seed}
        changed = [k for k, v in mine.items() if state.get(k) != v]
        if changed:
            raise ValueError(f"data stream position saved with other settings ({', '.join(changed)})")
        self._state = {"start": [int(x) for x in state["start"]], "window": int(state["window"]), "taken": int(state["taken"])}
        self._filled = False  # the window is re-read from `start` on the next batch

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("TrainStream.start() must be called first")

    # ------------------------------------------------------------------ reading

    def _order(self, epoch: int) -> list[Unit]:
        """This rank's units of ``epoch``, in reading order."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            perm = np.random.default_rng(_seed(self.seed, "units", epoch)).permutation(len(self._units))
            self._order_cache = (epoch, [self._units[i] for i in perm[self.rank :: self.world_size]])
        return self._order_cache[1]

    def _reset_cursor(self, epoch: int, pos: int, offset: int) -> None:
        self._cursor = [epoch, pos, offset]
        self._it: Iterator[GeoDataset] | None = None
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def _read_into(self, xyz_out: np.ndarray, emb_out: np.ndarray) -> None:
        """Fill the arrays with the next rows of this rank's stream, advancing the cursor."""
        n, filled, empty_units = len(emb_out), 0, 0
        while filled < n:
            epoch, pos, offset = self._cursor
            order = self._order(epoch)
            if pos >= len(order):
                self._reset_cursor(epoch + 1, 0, 0)
                continue
            if self._pending is None:
                if self._it is None:
                    unit = order[pos]
                    self._it = iter_unit(
                        unit,
                        require_coords=True,
                        batch_rows=self.read_rows,
                        skip=offset,
                        embedding_key=self.embedding_key,
                        max_abs=self.max_abs,
                    )
                chunk = next(self._it, None)
                if chunk is None:  # unit exhausted
                    empty_units = empty_units + 1 if offset == 0 else 0
                    if empty_units > len(order) + 1:
                        raise DataError(self.path, "no rows to train on")
                    self._reset_cursor(epoch, pos + 1, 0)
                    continue
                if chunk.latitude is None:
                    raise DataError(chunk.path, "missing coordinates", field="latitude")
                self._pending = (_xyz(chunk.latitude, chunk.longitude), chunk.embeddings)
            xyz, emb = self._pending
            if emb.shape[1] != emb_out.shape[1]:
                raise DataError(order[pos].path, f"embedding length {emb.shape[1]}, earlier rows have {emb_out.shape[1]}")
            take = min(n - filled, len(emb))
            xyz_out[filled : filled + take] = xyz[:take]
            emb_out[filled : filled + take] = emb[:take]
            filled += take
            self._cursor[2] += take
            self._pending = None if take == len(emb) else (xyz[take:], emb[take:])

    def _read_window(self, start: list[int], xyz: np.ndarray, emb: np.ndarray) -> list[int]:
        """Read the window that begins at ``start`` into the arrays; the position after it."""
        if self._cursor != start:
            self._reset_cursor(*start)
        self._read_into(xyz, emb)
        return list(self._cursor)

    def _fill(self) -> None:
        start = list(self._state["start"])
        if self._win_emb is None:
            dim = self.head(1)[1].shape[1]
            self._win_emb = np.empty((self.window, dim), dtype=np.float32)
            self._win_xyz = np.empty((self.window, 3), dtype=np.float32)
            if self.prefetch:
                self._spare = (np.empty_like(self._win_xyz), np.empty_like(self._win_emb))
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == start:
            end = ahead[1].result()  # re-raises a reading error here, in the training thread
            (self._win_xyz, self._win_emb), self._spare = self._spare, (self._win_xyz, self._win_emb)
        else:
            if ahead is not None:
                ahead[1].exception()  # wait: the reader state is the thread's until it is done
            end = self._read_window(start, self._win_xyz, self._win_emb)
        self._window_end = end
        rng = np.random.default_rng(_seed(self.seed, "window", self.rank, self._state["window"]))
        self._perm = rng.permutation(self.window)
        self._filled = True
        if self.prefetch:
            # The next window is read (decoded) in a thread while the steps run on this one:
            # Arrow/Parquet decoding and torch both release the GIL.
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="globeflow-stream")
            self._ahead = (end, self._pool.submit(self._read_window, end, *self._spare))

    def next_batch(self):  # -> tuple[Tensor, Tensor]
        """This rank's next ``(xyz (b, 3), emb (b, D))`` float32 CPU tensors."""
        import torch

        self._check_started()
        if not getattr(self, "_filled", False) or self._win_emb is None:
            self._fill()
        k, b = self._state["taken"], self.batch_rows
        idx = np.sort(self._perm[k * b : (k + 1) * b])  # sorted: sequential memory reads, same set
        xb = torch.from_numpy(self._win_xyz[idx])
        eb = torch.from_numpy(self._win_emb[idx])
        self._state["taken"] += 1
        if self._state["taken"] * b == self.window:
            self._state = {"start": list(self._window_end), "window": self._state["window"] + 1, "taken": 0}
            self._filled = False
        return xb, eb


# ---------------------------------------------------------------------------------- pack


def pack(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    shuffle_seed: int | None = None,
    batch_rows: int = PACK_BATCH_ROWS,
    buckets: int | None = None,
    embedding_key: str | None = None,
    overwrite: bool = False,
) -> int:
    """Convert a dataset once into an uncompressed Arrow IPC file (``.arrow``) of
    ``batch_rows``-row record batches: memory-mapped, nothing to decode, small units that
    :class:`TrainStream` shuffles well. Returns the number of rows.

    ``shuffle_seed``: also permute the rows (two passes through ``buckets`` temporary Arrow
    files next to ``dest``: rows are dealt to random buckets, then each bucket is permuted in
    memory; memory is one bucket, about ``rows / buckets``: 65536 rows by default). Written to a temporary file and
    renamed at the end; an existing ``dest`` is only replaced with ``overwrite``.
    """
    import pyarrow as pa

    from globeflow.data.dataset import LATITUDE, LONGITUDE
    from globeflow.data.parquet import fixed_size_list

    dest = Path(os.fspath(dest))
    if dest.suffix.lower() not in ARROW_SUFFIXES:
        raise ValueError(f"pack: the output must end in {', '.join(ARROW_SUFFIXES)}, got {dest.name!r}")
    if dest.exists() and not overwrite:
        raise FileExistsError(f"pack: {dest} exists (pass overwrite to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)

    def table_of(c: GeoDataset) -> pa.RecordBatch:
        cols = {EMBEDDING_COLUMN: fixed_size_list(np.ascontiguousarray(c.embeddings))}
        if c.latitude is not None:
            cols[LATITUDE] = pa.array(c.latitude)
            cols[LONGITUDE] = pa.array(c.longitude)
        for k, v in c.extra.items():
            cols[k] = fixed_size_list(np.ascontiguousarray(v)) if v.ndim == 2 else pa.array(v)
        return pa.RecordBatch.from_pydict(cols)

    chunks = iter_chunks(src, require_coords=False, chunk_rows=batch_rows, embedding_key=embedding_key)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmps = [tmp]
    rows = 0
    try:
        if shuffle_seed is None:
            rows = _write_batches(tmp, _rebatch((table_of(c) for c in chunks), batch_rows))
        else:
            rng = np.random.default_rng(_seed(shuffle_seed, "pack"))
            total = sum(u.rows or 0 for u in list_units(src, require_coords=False)) or None
            nb = buckets or max(1, -(-(total or 1) // (2 * DEFAULT_BUFFER_ROWS)))
            paths = [dest.with_name(f".{dest.name}.{os.getpid()}.bucket{i}.tmp") for i in range(nb)]
            tmps += paths
            writers: list = [None] * nb
            try:
                for c in chunks:
                    batch = table_of(c)
                    which = rng.integers(nb, size=batch.num_rows)
                    for i in np.unique(which):
                        part = batch.filter(pa.array(which == i))
                        if writers[i] is None:
                            writers[i] = pa.ipc.new_file(str(paths[i]), part.schema)
                        writers[i].write_batch(part)
            finally:
                for w in writers:
                    if w is not None:
                        w.close()

            def permuted() -> Iterator[pa.RecordBatch]:
                for i, p in enumerate(paths):
                    if writers[i] is None:
                        continue
                    with pa.memory_map(str(p), "r") as source:
                        table = pa.ipc.open_file(source).read_all()
                        table = table.take(pa.array(rng.permutation(table.num_rows)))
                        for b in table.combine_chunks().to_batches(max_chunksize=batch_rows):
                            yield b
                        del table
                    p.unlink()

            rows = _write_batches(tmp, permuted())
        os.replace(tmp, dest)
    finally:
        for p in tmps:
            p.unlink(missing_ok=True)
    return rows


def _rebatch(batches: Iterator, rows: int) -> Iterator:
    """Record batches of exactly ``rows`` rows (the last may be shorter)."""
    import pyarrow as pa

    held, count = [], 0
    for b in batches:
        held.append(b)
        count += b.num_rows
        if count >= rows:
            table = pa.Table.from_batches(held).combine_chunks()
            whole = count // rows * rows
            yield from table.slice(0, whole).to_batches(max_chunksize=rows)
            held = table.slice(whole).combine_chunks().to_batches() if count > whole else []
            count -= whole
    if count:
        yield from pa.Table.from_batches(held).combine_chunks().to_batches(max_chunksize=rows)


def _write_batches(path: Path, batches: Iterator) -> int:
    import pyarrow as pa

    writer, rows = None, 0
    try:
        for b in batches:
            if writer is None:
                writer = pa.ipc.new_file(str(path), b.schema)
            writer.write_batch(b)
            rows += b.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise DataError(str(path), "nothing to pack: no rows")
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return rows
