"""Embedding extraction: a folder or a metadata CSV of photos -> one Parquet of embeddings.

``embed_images`` runs an image encoder over the inputs in batches and writes
``id, path, embedding`` plus the locations to a Parquet file whose schema metadata holds the
encoder's name and settings (key ``globeflow.encoder``).

* Locations come from the CSV's coordinate columns or, where absent, from the photo's EXIF
  GPS. When every row has one they are the ``latitude``/``longitude`` columns that
  ``globeflow train`` reads; otherwise they are kept as ``gps_latitude``/``gps_longitude``
  (NaN where unknown) and the file serves ``globeflow predict``.
* Progress is saved in ``OUT.parts/`` every few batches: a rerun skips what is done
  (resumable), and under ``torchrun`` every process takes every WORLD-th input and writes its
  own parts; rank 0 merges them into ``OUT`` when all are done.
* A corrupt, truncated, missing or non-image file is reported by name, skipped, and counted
  by reason in the summary; the rest of its batch goes on.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from globeflow.data.dataset import METADATA_KEY, DataError
from globeflow.data.labels import read_labels
from globeflow.data.parquet import fixed_size_list
from globeflow.encoders.base import ImageEncoder
from globeflow.encoders.preprocess import ImageError, load_image
from globeflow.io import write_text

__all__ = [
    "METADATA_KEY",
    "EmbedItem",
    "EmbedSummary",
    "EncodedInputs",
    "collect_inputs",
    "embed_images",
    "encode_images",
    "encode_inputs",
    "encode_texts",
    "read_embed_metadata",
]

#: Files in an image folder that are metadata, not photos (never reported as skipped).
SIDECAR_SUFFIXES = (".csv", ".json", ".jsonl", ".txt", ".md", ".parquet", ".npz", ".npy", ".tar", ".xmp", ".aae")
#: Batches between two saved parts: what an interruption can lose.
PART_EVERY = 8


@dataclass(frozen=True)
class EncodedInputs:
    """Queries or photos embedded for a model: ``embeddings`` (N_ok, D) of the usable ones,
    ``good`` the index in ``records`` of each embedded input, ``records`` one dict per input
    (``query``; or ``image``, with ``exif_latitude``/``exif_longitude`` when the photo has GPS
    EXIF, or the ``error``), and the encoder's name."""

    embeddings: np.ndarray
    good: list[int]
    records: list[dict[str, Any]]
    encoder: str


@dataclass(frozen=True)
class EmbedItem:
    """One input photo: ``id`` (relative path or CSV id), its file, its known location."""

    id: str
    path: Path
    latitude: float | None = None
    longitude: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class EmbedSummary:
    """What a run did. ``skipped``: (id, reason, message) per file that could not be embedded."""

    out: Path
    total: int
    embedded: int
    already_done: int
    skipped: list[tuple[str, str, str]]
    seconds: float
    rows_written: int = 0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else float("nan")

    def reasons(self) -> dict[str, int]:
        return dict(Counter(r for _, r, _ in self.skipped))

    def format(self) -> str:
        lines = [
            (
                f"{self.embedded} embedded, {self.already_done} already done, {len(self.skipped)} skipped "
                f"of {self.total} inputs in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
            )
        ]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(self.reasons().items())))
        if self.rows_written:
            lines.append(f"{self.rows_written} rows in {self.out}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ inputs
def collect_inputs(images: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> list[EmbedItem]:
    """The photos of a folder (recursively, sorted; hidden and sidecar files left out) or of a
    metadata CSV (OSV-5M, YFCC/Im2GPS style: see :func:`globeflow.data.read_labels`)."""
    src = Path(images)
    if src.is_dir():
        files = sorted(
            p
            for p in src.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(src).parts)
            and p.suffix.lower() not in SIDECAR_SUFFIXES
        )
        if not files:
            raise DataError(str(src), "the folder holds no files to embed")
        return [EmbedItem(p.relative_to(src).as_posix(), p) for p in files]
    if src.suffix.lower() == ".csv":
        table = read_labels(src)
        items = []
        for i in range(len(table)):
            lat = lon = None
            if table.latitude is not None and not np.isnan(table.latitude[i]):
                lat, lon = float(table.latitude[i]), float(table.longitude[i])
            extra = {k: ("" if v[i] is None else str(v[i])) for k, v in table.extra.items()}
            items.append(EmbedItem(str(table.ids[i]), table.resolve_image(i, image_root), lat, lon, extra))
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            dup = next(x for x, n in Counter(ids).items() if n > 1)
            raise DataError(str(src), f"duplicate image id {dup!r}", field="id")
        return items
    if src.exists():
        raise DataError(str(src), "expected a folder of images or a .csv of image ids/paths")
    raise DataError(str(src), "not found")


def read_embed_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The encoder name and settings stored in an embeddings Parquet by :func:`embed_images`."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY.encode())
    return None if raw is None else json.loads(raw)


# ------------------------------------------------------------------------------ running
def _done_ids(out: Path, parts: Path) -> set[str]:
    done: set[str] = set()
    if out.is_file():
        done.update(pq.read_table(out, columns=["id"]).column("id").to_pylist())
    for part in sorted(parts.glob("rank*-*.parquet")):
        try:
            done.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        except (pa.ArrowException, OSError):
            part.unlink()  # a part cut off mid-write is redone
    return done


def _check_settings(out: Path, parts: Path, settings: dict) -> None:
    previous = None
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} is a directory; give a Parquet file name")
    if out.is_file():
        try:
            previous = read_embed_metadata(out)
            has_ids = "id" in pq.read_schema(out).names
        except (pa.ArrowException, OSError, ValueError) as err:
            raise ValueError(
                f"--out {out} exists and is not a Parquet file written by globeflow embed ({err}); "
                "choose another --out (embed resumes only its own output)"
            ) from None
        if previous is None or not has_ids:
            raise ValueError(
                f"--out {out} exists and is not a Parquet file written by globeflow embed "
                "(no embed metadata or id column); choose another --out (embed resumes only its own output)"
            )
    elif (parts / "settings.json").is_file():
        previous = json.loads((parts / "settings.json").read_text())
    if previous is not None and previous != settings:
        raise ValueError(
            f"out: {out} holds embeddings from another encoder or settings "
            f"({previous.get('name')}); choose another --out or delete it"
        )


def _load(item: EmbedItem, preprocess: Callable) -> tuple[np.ndarray | None, tuple | None, ImageError | None]:
    try:
        img = load_image(item.path)
        return preprocess(img), img.info.get("gps"), None
    except ImageError as err:
        return None, None, err
    except FileNotFoundError as err:
        return None, None, ImageError(f"{item.path}: missing ({err})", "missing")
    except (OSError, ValueError, MemoryError) as err:  # e.g. a decodable but degenerate image
        return None, None, ImageError(f"{item.path}: corrupt ({type(err).__name__}: {err})", "corrupt")


def embed_images(
    encoder: ImageEncoder,
    items: Sequence[EmbedItem],
    out: str | os.PathLike,
    *,
    batch_size: int = 32,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    report: Callable[[str], None] | None = print,
    wait_timeout: float = 24 * 3600.0,
) -> EmbedSummary:
    """Embed ``items`` into the Parquet ``out`` (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    settings = json.loads(json.dumps(encoder.settings()))  # as stored: tuples become lists
    _check_settings(out, parts, settings)
    parts.mkdir(parents=True, exist_ok=True)
    _clean_temps(out, parts)
    if rank == 0:
        write_text(parts / "settings.json", json.dumps(settings))
    done = _done_ids(out, parts)
    mine = [it for i, it in enumerate(items) if i % world_size == rank]
    todo = [it for it in mine if it.id not in done]
    skipped: list[tuple[str, str, str]] = []
    start = time.perf_counter()
    n_done = 0
    part_no = len(list(parts.glob(f"rank{rank}-*.parquet")))
    buffer: list[tuple[EmbedItem, np.ndarray, tuple | None]] = []

    def flush() -> None:
        nonlocal part_no
        if buffer:
            _write_part(parts / f"rank{rank}-{part_no:06d}.parquet", buffer)
            part_no += 1
            buffer.clear()

    bar = tqdm(total=len(todo), desc=f"embed {encoder.name}", unit="img", disable=not progress or rank != 0)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        for b, (batch, loaded) in enumerate(_decoded(pool, batches, encoder.preprocess)):
            good = _readable(batch, loaded, skipped, report)
            if good:
                emb = encoder.encode_pixels(np.stack([g[1] for g in good]))
                buffer.extend((item, e, gps) for (item, _, gps), e in zip(good, emb))
                n_done += len(good)
            bar.update(len(batch))
            if (b + 1) % PART_EVERY == 0:
                flush()
        flush()
    bar.close()
    seconds = time.perf_counter() - start
    with open(parts / f"skipped-rank{rank}.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": s[0], "reason": s[1], "message": s[2]}) + "\n" for s in skipped)
    write_text(parts / f"done-rank{rank}.json", json.dumps({"embedded": n_done, "skipped": len(skipped)}))
    summary = EmbedSummary(out, len(mine), n_done, len(mine) - len(todo), skipped, seconds)
    if rank == 0:
        _wait_for_ranks(parts, world_size, wait_timeout)
        summary.rows_written = _merge(out, parts, items, settings)
    return summary


def _decoded(pool: ThreadPoolExecutor, batches: list[list[EmbedItem]], preprocess: Callable) -> Iterator[tuple]:
    """(batch, its decoded items) for each of ``batches``; the decoding of the next batch runs
    on the ``pool`` while the caller encodes this one."""
    pending = pool.map(lambda it: _load(it, preprocess), batches[0]) if batches else None
    for b, batch in enumerate(batches):
        loaded = list(pending)
        if b + 1 < len(batches):
            pending = pool.map(lambda it: _load(it, preprocess), batches[b + 1])
        yield batch, loaded


def _readable(
    batch: list[EmbedItem],
    loaded: list[tuple],
    skipped: list[tuple[str, str, str]],
    report: Callable[[str], None] | None,
) -> list[tuple[EmbedItem, np.ndarray, tuple | None]]:
    """The (item, pixels, GPS) of the photos of ``batch`` that decoded; the others are appended
    to ``skipped`` (id, reason, message) and reported."""
    good = []
    for item, (pixels, gps, err) in zip(batch, loaded):
        if err is not None:
            skipped.append((item.id, err.reason, str(err)))
            if report is not None:
                report(f"skipped {err}")
        else:
            good.append((item, pixels, gps))
    return good


def _clean_temps(out: Path, parts: Path) -> None:
    """Temporaries of a killed run: parts cut off mid-write and a merge cut off mid-write
    (only those of processes that no longer exist, so a concurrent rank's are kept)."""
    from globeflow.io import _pid_alive

    for tmp in [*parts.glob("*.tmp"), *out.parent.glob(f".{out.name}.*.tmp")]:
        pids = [int(f) for f in tmp.name.split(".") if f.isdigit() and len(f) < 10]
        if not any(_pid_alive(pid) for pid in pids):
            tmp.unlink(missing_ok=True)


def _write_part(path: Path, rows: list[tuple[EmbedItem, np.ndarray, tuple | None]]) -> None:
    lat, lon, source = [], [], []
    for item, _, gps in rows:
        if item.latitude is not None:
            lat.append(item.latitude), lon.append(item.longitude), source.append("csv")
        elif gps is not None:
            lat.append(gps[0]), lon.append(gps[1]), source.append("exif")
        else:
            lat.append(np.nan), lon.append(np.nan), source.append("")
    columns = {
        "id": pa.array([r[0].id for r in rows], pa.string()),
        "path": pa.array([str(r[0].path) for r in rows], pa.string()),
        "embedding": fixed_size_list(np.stack([r[1] for r in rows]).astype(np.float32)),
        "latitude": pa.array(np.asarray(lat, dtype=np.float64)),
        "longitude": pa.array(np.asarray(lon, dtype=np.float64)),
        "location_source": pa.array(source, pa.string()),
    }
    for key in rows[0][0].extra:
        columns[key] = pa.array([r[0].extra.get(key, "") for r in rows], pa.string())
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.table(columns), tmp, write_page_checksum=True)
    os.replace(tmp, path)


def _wait_for_ranks(parts: Path, world_size: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all((parts / f"done-rank{r}.json").is_file() for r in range(world_size)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"embed: not every process finished within {timeout:.0f} s ({parts})")
        time.sleep(1.0)


_GPS = {"gps_latitude": "latitude", "gps_longitude": "longitude"}
_GPS_BACK = {v: k for k, v in _GPS.items()}
#: Rows per batch read from the existing output while merging.
_MERGE_ROWS = 16_384


def _merge_schema(runs: list[list[Path]]) -> tuple[pa.Schema, bool]:
    """The merged output's schema, and whether every photo is located (otherwise what is
    known goes under names train does not read: ``gps_latitude`` / ``gps_longitude``)."""
    schema = pa.unify_schemas(
        [
            pa.schema([f.with_name(_GPS.get(f.name, f.name)) for f in pq.read_schema(p).remove_metadata()])
            for run in runs
            for p in run
        ],
        promote_options="default",
    )
    if "location_source" not in schema.names:
        schema = schema.append(pa.field("location_source", pa.string()))
    located = all(
        np.isfinite(pq.read_table(p, columns=[c]).column(0).to_numpy(zero_copy_only=False)).all()
        for run in runs
        for p in run
        for c in pq.read_schema(p).names
        if c in ("latitude", "gps_latitude")
    )
    if not located:
        schema = pa.schema([f.with_name(_GPS_BACK.get(f.name, f.name)) for f in schema])
    return schema, located


def _conform(table: pa.Table, schema: pa.Schema, located: bool) -> pa.Table:
    """``table`` with the merged output's column names, order and types (missing columns:
    ``location_source`` empty, others null)."""
    table = table.rename_columns([_GPS.get(c, c) for c in table.column_names])
    if not located:
        table = table.rename_columns([_GPS_BACK.get(c, c) for c in table.column_names])
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        elif f.name == "location_source":
            cols.append(pa.array([""] * table.num_rows, pa.string()))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.table(cols, schema=schema)


class _IdRanks:
    """id -> merge rank: the input position of a listed id; ids no longer listed keep their
    place, last, in the order they are first met."""

    def __init__(self, items: Sequence[EmbedItem]) -> None:
        self.order = {it.id: i for i, it in enumerate(items)}
        self.unlisted: dict[str, int] = {}

    def __call__(self, i: str) -> int:
        if i in self.order:
            return self.order[i]
        return self.unlisted.setdefault(i, len(self.order) + len(self.unlisted))


def _run_batches(run: list[Path], schema: pa.Schema, located: bool, rank_of: _IdRanks) -> Iterator[tuple]:
    """(conformed table, int64 ranks of its ids) per batch of one sorted run."""
    for p in run:
        pf = pq.ParquetFile(p, page_checksum_verification=True)
        for b in pf.iter_batches(batch_size=_MERGE_ROWS):
            table = _conform(pa.Table.from_batches([b]), schema, located)
            ids = table.column("id").to_pylist()
            yield table, np.asarray([rank_of(i) for i in ids], dtype=np.int64)
        pf.close()


def _merged_batches(iters: list[Iterator[tuple] | None]) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """The k-way merge: (rows, their ranks) of every run up to the smallest buffered rank, in
    run order (not yet sorted), until every run is spent. Memory: one batch per run."""
    heads: list = [None] * len(iters)
    while True:
        for j, it in enumerate(iters):
            while it is not None and (heads[j] is None or heads[j][0].num_rows == 0):
                heads[j] = next(it, None)
                if heads[j] is None:
                    iters[j] = it = None
        live = [h for h in heads if h is not None and h[0].num_rows]
        if not live:
            return
        cutoff = min(int(r[-1]) for _, r in live)  # every row up to it is buffered
        out_tables, out_ranks = [], []
        for j, h in enumerate(heads):
            if h is None or not h[0].num_rows:
                continue
            table, r = h
            k = int(np.searchsorted(r, cutoff, side="right")) if np.all(r[:-1] <= r[1:]) else len(r)
            out_tables.append(table.slice(0, k))
            out_ranks.append(r[:k])
            heads[j] = (table.slice(k), r[k:])
        yield pa.concat_tables(out_tables), np.concatenate(out_ranks)


def _first_copies(ranks: np.ndarray, written: np.ndarray, written_unlisted: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """(stable sort of ``ranks``, mask over the sorted rows of the ids to write): each id
    once, the earliest run's copy; ``written`` / ``written_unlisted`` are updated."""
    sort = np.argsort(ranks, kind="stable")  # stable: of equal ids, the earliest run's first
    ranks = ranks[sort]
    keep = np.ones(len(ranks), dtype=bool)
    keep[1:] = ranks[1:] != ranks[:-1]  # a repeated id within this batch
    listed = ranks < len(written)
    keep[listed] &= ~written[ranks[listed]]  # an id written by an earlier batch
    for i in np.flatnonzero(keep & ~listed):
        if int(ranks[i]) in written_unlisted:
            keep[i] = False
        written_unlisted.add(int(ranks[i]))
    written[ranks[keep & listed]] = True
    return sort, keep


def _remove_parts(part_files: list[Path], parts: Path) -> None:
    for p in [*part_files, *parts.glob("*.json"), *parts.glob("*.jsonl")]:
        p.unlink()
    try:
        parts.rmdir()
    except OSError:
        pass


def _merge(out: Path, parts: Path, items: Sequence[EmbedItem], settings: dict) -> int:
    """Existing output + all parts -> ``out`` (atomically), in input order; parts removed.

    A k-way merge of sorted runs (the existing output, then each rank's parts, each already in
    input order), written batch by batch (page checksums on): memory is one batch per run,
    not the dataset. Each id is written once, so a merge cut off between replacing ``out``
    and removing the parts gives the same file when rerun."""
    old = [out] if out.is_file() else []
    part_files = sorted(parts.glob("rank*-*.parquet"))
    by_rank: dict[str, list[Path]] = {}
    for p in part_files:
        by_rank.setdefault(p.name.split("-")[0], []).append(p)
    runs = [old] + list(by_rank.values()) if old else list(by_rank.values())
    if not runs:
        return 0
    schema, located = _merge_schema(runs)
    rank_of = _IdRanks(items)
    iters: list[Iterator[tuple] | None] = [_run_batches(run, schema, located, rank_of) for run in runs]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rows = 0
    # A run killed after writing ``out`` but before removing its parts finds those rows twice
    # (in ``out`` and in the parts): each id is written once (the copy of the earliest run, the
    # existing output first), so a rerun is idempotent. Every id has one rank (see ``_IdRanks``),
    # so "written" is a bitmap over the listed ids (1 byte per input item) plus a set for the
    # few ids no longer listed: memory stays independent of the embeddings' size.
    written = np.zeros(len(rank_of.order), dtype=bool)
    written_unlisted: set[int] = set()
    try:
        with pq.ParquetWriter(
            tmp, schema.with_metadata({METADATA_KEY: json.dumps(settings)}), write_page_checksum=True
        ) as writer:
            for merged, ranks in _merged_batches(iters):
                sort, keep = _first_copies(ranks, written, written_unlisted)
                writer.write_table(merged.take(pa.array(sort[keep])))
                rows += int(keep.sum())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    _remove_parts(part_files, parts)
    return rows


def encode_texts(
    texts: Sequence[str],
    *,
    embedding_dim: int,
    encoder: str | None = None,
    model_encoder: str | None = None,
    source: str | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, str]:
    """Embed text queries for a model of ``embedding_dim`` -> ((N, D) float32, encoder name).

    The encoder is ``encoder``, else the one the model was trained with (``model_encoder``),
    else ``minilm``; ``source`` is a hub id or local directory of its weights. ``ValueError``
    for an empty query, a non-text encoder, or one whose dimension does not fit the model.
    """
    from globeflow.encoders import TextEncoder

    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("--text: empty query")
    name = encoder or model_encoder or "minilm"
    what = "a text encoder (text queries need one, e.g. minilm)"
    # The process-wide instance: the answers' text-familiarity check reuses it (no second load).
    enc = _encoder_for(name, TextEncoder, what, embedding_dim, source, device, shared=True)
    return enc.encode_texts(list(texts)), name


def _encoder_for(
    name: str, kind: type, what: str, embedding_dim: int, source: str | None, device: str, *, shared: bool = False
) -> Any:
    """Encoder ``name``, checked to be a ``kind`` (``what``, for the message) of ``embedding_dim``-d;
    ``shared``: the process-wide instance (:func:`globeflow.encoders.shared_encoder`)."""
    from globeflow.encoders import get_encoder, shared_encoder

    enc = shared_encoder(name, source, device) if shared else get_encoder(name, source=source, device=device)
    if not isinstance(enc, kind):
        raise ValueError(f"--encoder {name} is not {what}")
    if enc.dim != embedding_dim:
        raise ValueError(f"--encoder {name} gives {enc.dim}-d embeddings but the model expects {embedding_dim}-d")
    return enc


def encode_images(
    paths: Sequence[str],
    *,
    embedding_dim: int,
    encoder: str | None = None,
    model_encoder: str | None = None,
    source: str | None = None,
    device: str = "cpu",
    report: Callable[[str], None] | None = None,
    batch_size: int = 32,
) -> EncodedInputs:
    """Embed photos for a model of ``embedding_dim`` (encoder: ``encoder``, else the model's,
    else the default image encoder). A photo that cannot be read is reported through
    ``report`` and recorded with its ``error``; GPS EXIF is kept as the photo's true location."""
    from globeflow.encoders import DEFAULT_IMAGE_ENCODER

    name = encoder or model_encoder or DEFAULT_IMAGE_ENCODER
    enc = _encoder_for(name, ImageEncoder, "an image encoder", embedding_dim, source, device)
    pixels, good, records = [], [], []
    for path in paths:
        try:
            img = load_image(Path(path))
        except (ImageError, FileNotFoundError) as err:
            if report is not None:
                report(f"skipped {err}")
            records.append({"image": path, "error": str(err)})
            continue
        pixels.append(enc.preprocess(img))
        good.append(len(records))
        gps = img.info.get("gps")
        records.append({"image": path, **({"exif_latitude": gps[0], "exif_longitude": gps[1]} if gps else {})})
    emb = np.zeros((0, embedding_dim), np.float32)
    if pixels:
        emb = np.concatenate(
            [enc.encode_pixels(np.stack(pixels[i : i + batch_size])) for i in range(0, len(pixels), batch_size)]
        )
    return EncodedInputs(emb, good, records, name)


def encode_inputs(
    method: Any,
    model_ref: str | os.PathLike,
    *,
    texts: Sequence[str] | None = None,
    images: Sequence[str] | None = None,
    encoder: str | None = None,
    source: str | None = None,
    device: str = "cpu",
    report: Callable[[str], None] | None = None,
) -> EncodedInputs:
    """``texts`` (if given) else ``images`` embedded for ``method`` loaded from ``model_ref``,
    with ``encoder`` or the one the model expects (:func:`globeflow.runs.model_encoder`)."""
    from globeflow.runs import model_encoder

    common = {"embedding_dim": method.embedding_dim, "encoder": encoder, "source": source, "device": device}
    if texts:
        emb, name = encode_texts(texts, model_encoder=model_encoder(model_ref), **common)
        return EncodedInputs(emb, list(range(len(texts))), [{"query": t} for t in texts], name)
    return encode_images(images or [], model_encoder=model_encoder(model_ref, method), report=report, **common)
