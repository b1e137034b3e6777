"""Reading any supported dataset file: :func:`read_dataset` picks the reader by the name.

Formats (one module each below :mod:`globeflow.data.dataset`)
-------------------------------------------------------------
* Parquet (``.parquet`` / ``.pq``): :mod:`globeflow.data.parquet`.
* NPZ (``.npz``): :mod:`globeflow.data.npz`.
* WebDataset shards (``.tar``, a folder of them, ``shard-{000..009}.tar``):
  :mod:`globeflow.data.webdataset`.
* Arrow IPC (``.arrow`` / ``.feather`` / ``.ipc``, e.g. from ``globeflow pack``): read
  through :func:`globeflow.data.stream.iter_chunks` (memory-mapped record batches).

Every problem with the input is reported as a :class:`DataError` naming the file, the
field and (where it applies) the first offending 0-based row.
"""

from __future__ import annotations

import os
from pathlib import Path

from globeflow.data.dataset import (
    EMBEDDING_COLUMN,
    NPZ_EMBEDDING,
    NPZ_SUFFIXES,
    PARQUET_SUFFIXES,
    DataError,
    GeoDataset,
    check_embedding_range,
)
from globeflow.data.npz import read_npz
from globeflow.data.parquet import read_parquet
from globeflow.data.stream import ARROW_SUFFIXES, iter_chunks
from globeflow.data.webdataset import is_webdataset, read_webdataset

__all__ = ["read_dataset"]


def read_dataset(
    path: str | os.PathLike[str],
    *,
    require_coords: bool = True,
    expected_dim: int | None = None,
    max_abs: float | None = None,
) -> GeoDataset:
    """Read and validate a Parquet, NPZ, Arrow IPC or WebDataset dataset.

    Parameters
    ----------
    path: ``.parquet`` / ``.pq`` or ``.npz`` file (format chosen by suffix), or WebDataset
        shards (a ``.tar``, a folder of them, ``shard-{000..009}.tar``): see
        :func:`globeflow.data.webdataset.read_webdataset` (memory-mapped embeddings).
    require_coords: if True, ``latitude`` and ``longitude`` must be present. If False they
        may be absent (prediction inputs); when present they are validated all the same.
    expected_dim: if given, the embedding dimension D must equal it (the model's input
        dimension).
    max_abs: if given, every embedding value must lie within ``±max_abs`` (pass
        :data:`~globeflow.data.dataset.MAX_EMBEDDING_ABS` when the rows are fed to a model).

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
    if is_webdataset(shown):
        data = read_webdataset(shown, require_coords=require_coords, expected_dim=expected_dim)
        if max_abs is not None:
            check_embedding_range(shown, data.embeddings, bound=max_abs)
        return data
    if suffix in ARROW_SUFFIXES:  # memory-mapped record batches, e.g. from `globeflow pack`
        return _read_arrow(shown, require_coords, expected_dim, max_abs)
    if suffix not in PARQUET_SUFFIXES + NPZ_SUFFIXES:
        raise DataError(
            shown,
            f"unsupported file suffix {p.suffix!r}; supported formats: "
            f"Parquet ({', '.join(PARQUET_SUFFIXES)}), NumPy NPZ ({', '.join(NPZ_SUFFIXES)}), "
            f"Arrow IPC ({', '.join(ARROW_SUFFIXES)}) "
            "and WebDataset shards (.tar, a folder of them, or a {000..009} pattern)",
        )
    if not p.exists():
        raise DataError(shown, "file not found")
    if not p.is_file():
        raise DataError(shown, "not a regular file")
    if not os.access(p, os.R_OK):
        raise DataError(shown, "file is not readable (permission denied)")

    if suffix in PARQUET_SUFFIXES:
        emb, lat, lon, extra = read_parquet(shown, require_coords)
    else:
        emb, lat, lon, extra = read_npz(shown, require_coords)

    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise DataError(
            shown,
            f"embedding length {emb.shape[1]} does not match the model's embedding dimension {expected_dim}",
            field=EMBEDDING_COLUMN if suffix in PARQUET_SUFFIXES else NPZ_EMBEDDING,
        )
    if max_abs is not None:
        field = EMBEDDING_COLUMN if suffix in PARQUET_SUFFIXES else NPZ_EMBEDDING
        check_embedding_range(shown, emb, field=field, bound=max_abs)
    return GeoDataset(embeddings=emb, latitude=lat, longitude=lon, path=shown, extra=extra)


def _read_arrow(path: str, require_coords: bool, expected_dim: int | None, max_abs: float | None) -> GeoDataset:
    import numpy as np

    # The range check runs chunk by chunk (global rows in its error), as for streamed reads.
    chunks = list(iter_chunks(path, require_coords=require_coords, expected_dim=expected_dim, max_abs=max_abs))

    def cat(arrays: list) -> np.ndarray | None:
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return GeoDataset(
        embeddings=np.concatenate([c.embeddings for c in chunks]),
        latitude=cat([c.latitude for c in chunks]),
        longitude=cat([c.longitude for c in chunks]),
        path=path,
        extra={k: np.concatenate([c.extra[k] for c in chunks]) for k in chunks[0].extra},
    )
