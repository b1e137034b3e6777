"""NumPy ``.npz`` archives of embeddings and coordinates.

Arrays ``embeddings`` (N, D), ``latitude`` (N,), ``longitude`` (N,); any other array whose
first dimension is N is carried through in :attr:`GeoDataset.extra`. Never unpickles.
"""

from __future__ import annotations

import zipfile
import zlib

import numpy as np

from globeflow.data.dataset import (
    LATITUDE,
    LONGITUDE,
    NPZ_EMBEDDING,
    DataError,
    check_coords,
    check_finite_embeddings,
    require_columns,
)

__all__ = ["read_npz"]


def read_npz(
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

        def load(name: str) -> np.ndarray:
            try:
                return np.asarray(archive[name])
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
                raise DataError(path, f"cannot load array: {exc}", field=name) from None

        with_coords = require_columns(path, names, NPZ_EMBEDDING, require_coords, "array")

        raw = load(NPZ_EMBEDDING)
        if raw.ndim != 2:
            raise DataError(path, f"embeddings must be a 2-D array (N, D), got shape {raw.shape}", field=NPZ_EMBEDDING)
        if not np.issubdtype(raw.dtype, np.floating):
            raise DataError(
                path, f"embedding values must be floating point, got dtype {raw.dtype}", field=NPZ_EMBEDDING
            )
        n, dim = raw.shape
        if n == 0:
            raise DataError(path, "file contains no rows", field=NPZ_EMBEDDING)
        if dim == 0:
            raise DataError(path, "embedding is empty (length 0)", field=NPZ_EMBEDDING)
        with np.errstate(over="ignore", invalid="ignore"):
            emb = np.ascontiguousarray(raw, dtype=np.float32)
        check_finite_embeddings(path, emb, raw, field=NPZ_EMBEDDING)
        del raw

        lat = lon = None
        if with_coords:
            coords = []
            for name in (LATITUDE, LONGITUDE):
                a = load(name)
                if a.shape != (n,):
                    raise DataError(
                        path, f"expected shape ({n},) to match `{NPZ_EMBEDDING}`, got {a.shape}", field=name
                    )
                if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                    raise DataError(path, f"must be numeric (degrees), got dtype {a.dtype}", field=name)
                coords.append(a.astype(np.float64))
            lat, lon = coords
            check_coords(path, lat, lon)

        extra: dict[str, np.ndarray] = {}
        for name in names:
            if name in (NPZ_EMBEDDING, LATITUDE, LONGITUDE):
                continue
            a = load(name)
            # Only per-row arrays are passthrough; archive-level metadata (e.g. a list of
            # class names) has no row to travel with.
            if a.ndim >= 1 and a.shape[0] == n:
                extra[name] = a
    return emb, lat, lon, extra
