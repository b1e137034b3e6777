"""The dataset types every reader shares: :class:`DataError`, :class:`GeoDataset`, the column
names, the coordinate and finiteness checks, and the key of the encoder metadata.

Every problem with the input is reported as a :class:`DataError` naming the file, the field
and (where it applies) the first offending 0-based row, so that a user never has to decode a
traceback from deep inside numpy / pyarrow / torch. The readers, one per format, sit on top of
this module (:mod:`~globeflow.data.parquet`, :mod:`~globeflow.data.npz`,
:mod:`~globeflow.data.webdataset`, :mod:`~globeflow.data.labels`) and
:func:`~globeflow.data.readers.read_dataset` picks one by the file's name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np

__all__ = [
    "EMBEDDING_COLUMN",
    "LATITUDE",
    "LAT_NAMES",
    "LONGITUDE",
    "LON_NAMES",
    "METADATA_KEY",
    "NPZ_EMBEDDING",
    "NPZ_SUFFIXES",
    "PARQUET_SUFFIXES",
    "MAX_EMBEDDING_ABS",
    "DataError",
    "GeoDataset",
    "check_coords",
    "check_embedding_range",
    "check_finite_embeddings",
    "first_nonfinite_row",
    "require_columns",
]

PARQUET_SUFFIXES = (".parquet", ".pq")
#: Largest embedding magnitude accepted. Encoders emit values of order 1 (CLIP/DINOv2/
#: EfficientNet features, unit-norm text vectors); a value beyond 1e6 is corruption (a
#: bit-flipped exponent) or a unit mistake, and squared in the network's normalisation it
#: drives float32 towards overflow (1e15 already gives NaN). Rejected with the row named.
MAX_EMBEDDING_ABS = 1e6
NPZ_SUFFIXES = (".npz",)

# Column / array names of the embedding files. Deliberately no aliases: one spelling keeps
# errors unambiguous.
EMBEDDING_COLUMN = "embedding"  # Parquet column, WebDataset field
NPZ_EMBEDDING = "embeddings"  # NPZ array
LATITUDE = "latitude"
LONGITUDE = "longitude"

# Metadata CSVs and WebDataset JSON, by contrast, come from other projects: every usual spelling.
LAT_NAMES = ("latitude", "lat", "gps_latitude", "gps_lat", "photo_latitude", "y_lat")
LON_NAMES = ("longitude", "lon", "lng", "long", "gps_longitude", "gps_lon", "gps_lng", "photo_longitude", "x_lon")
PATH_NAMES = ("path", "image_path", "img_path", "file", "filename", "file_name", "image", "img", "photo")
ID_NAMES = ("id", "img_id", "image_id", "photo_id", "key")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")

#: Parquet schema-metadata key of the encoder that produced a file's embeddings (``globeflow embed``).
METADATA_KEY = "globeflow.encoder"

# Rows per finiteness-check block: bounds the temporary memory (no N x D boolean mask).
_CHECK_ROWS = 32_768


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
        for name, arr in ((LATITUDE, self.latitude), (LONGITUDE, self.longitude), *self.extra.items()):
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
# Shared validation
# --------------------------------------------------------------------------------------


def require_columns(path: str, names: Iterable[str], embedding: str, require_coords: bool, kind: str) -> bool:
    """Check that ``embedding`` and, when required or half present, both coordinates are among
    ``names`` (``kind``: "column" or "array", for the message). Returns whether both
    coordinates are present."""
    names = list(names)
    found = ", ".join(f"`{c}`" for c in names) or "(none)"
    if embedding not in names:
        raise DataError(path, f"missing {kind} `{embedding}`; {kind}s found: {found}", field=embedding)
    has_lat, has_lon = LATITUDE in names, LONGITUDE in names
    if require_coords or has_lat or has_lon:
        for col, has in ((LATITUDE, has_lat), (LONGITUDE, has_lon)):
            if not has:
                other = LONGITUDE if col == LATITUDE else LATITUDE
                why = "" if require_coords else f" (it is required because `{other}` is present)"
                raise DataError(path, f"missing {kind} `{col}`{why}; {kind}s found: {found}", field=col)
    return has_lat and has_lon


def check_finite_embeddings(path: str, emb: np.ndarray, raw: np.ndarray, *, start: int = 0, field: str) -> None:
    """``DataError`` at the first row of float32 ``emb`` (m, D) holding NaN/inf; ``raw`` (m, D)
    holds the values as read, to tell a float32 overflow from a non-finite input. ``start``:
    the global row of ``emb[0]``."""
    bad = first_nonfinite_row(emb)
    if bad is not None:
        j = int(np.flatnonzero(~np.isfinite(emb[bad]))[0])
        raise DataError(
            path,
            f"embedding contains non-finite value {float(raw[bad, j])} at position {j}"
            + (" (overflows float32)" if np.isfinite(raw[bad, j]) else ""),
            row=start + bad,
            field=field,
        )


def check_embedding_range(
    path: str, emb: np.ndarray, *, field: str = EMBEDDING_COLUMN, bound: float = MAX_EMBEDDING_ABS, start: int = 0
) -> None:
    """``DataError`` at the first row of finite ``emb`` (N, D) with a value beyond ``±bound``:
    what a model is fed (see :data:`MAX_EMBEDDING_ABS`); files may hold any finite float32.
    ``start``: the global row of ``emb[0]`` (a chunk of a streamed file)."""
    big = first_large_row(emb, bound)
    if big is not None:
        j = int(np.argmax(np.abs(emb[big])))
        raise DataError(
            path,
            f"embedding value {float(emb[big, j]):.6g} at position {j} exceeds ±{bound:g}, the range a "
            "globeflow model accepts (encoders emit values of order 1: corrupt file or wrong units?)",
            row=start + big,
            field=field,
        )


def first_large_row(arr: np.ndarray, bound: float = MAX_EMBEDDING_ABS) -> int | None:
    """Index of the first row of a finite 2-D float array with a value beyond ``±bound``."""
    for lo in range(0, arr.shape[0], _CHECK_ROWS):
        block = arr[lo : lo + _CHECK_ROWS]
        rows = np.flatnonzero(np.abs(block).max(axis=1) > bound) if block.size else ()
        if len(rows):
            return lo + int(rows[0])
    return None


def first_nonfinite_row(arr: np.ndarray) -> int | None:
    """Index of the first row of a 2-D float array holding NaN/inf, or None.

    NaN/inf propagate through a sum, so a row sum is a cheap screen (no N x D boolean
    mask); rows whose sum is non-finite only because finite values overflowed are then
    confirmed element-wise.
    """
    for lo in range(0, arr.shape[0], _CHECK_ROWS):
        block = arr[lo : lo + _CHECK_ROWS]
        with np.errstate(over="ignore", invalid="ignore"):
            suspects = np.flatnonzero(~np.isfinite(block.sum(axis=1)))
        for r in suspects:
            if not np.isfinite(block[r]).all():
                return lo + int(r)
    return None


def check_coords(path: str, lat: np.ndarray, lon: np.ndarray) -> None:
    for name, arr, bound in ((LATITUDE, lat, 90.0), (LONGITUDE, lon, 180.0)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            r = int(bad[0])
            raise DataError(path, f"coordinate is not finite ({float(arr[r])})", row=r, field=name)
        bad = np.flatnonzero(np.abs(arr) > bound)
        if bad.size:
            r = int(bad[0])
            raise DataError(path, f"value {float(arr[r])!r} outside [-{bound:g}, {bound:g}] degrees", row=r, field=name)
