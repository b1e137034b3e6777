"""Metadata CSVs of public geolocation datasets: which image, where it was taken.

* OSV-5M (``id, latitude, longitude, country, region, sub-region, city, …``): images are
  ``{id}.jpg``.
* YFCC / Im2GPS / MP-16 style (``IMG_ID, AUTHOR, LAT, LON`` and the like): coordinate
  columns under any of the usual spellings (:data:`LAT_NAMES`, :data:`LON_NAMES`, matched
  case-insensitively), in degrees; the image under a path column or an id column.

:func:`read_labels` returns a :class:`LabelTable`; empty coordinate cells become NaN
("unknown"), anything else that is not a valid latitude/longitude is an error naming the
file, row and column.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from globeflow.data.dataset import ID_NAMES, IMAGE_SUFFIXES, LAT_NAMES, LON_NAMES, PATH_NAMES, DataError

__all__ = ["LabelTable", "read_labels"]



@dataclass(frozen=True, eq=False)
class LabelTable:
    """Rows of a metadata CSV.

    ``ids`` (N,) strings; ``paths`` (N,) image paths as written in the CSV (relative to the
    CSV's folder unless absolute) or None when the CSV has only ids; ``latitude`` and
    ``longitude`` (N,) float64 degrees, NaN where unknown, or None when the CSV has no
    coordinate columns; ``extra``: the other columns as strings (country, city, …).
    """

    ids: np.ndarray
    paths: np.ndarray | None
    latitude: np.ndarray | None
    longitude: np.ndarray | None
    path: str
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def resolve_image(self, row: int, image_root: str | os.PathLike | None = None) -> Path:
        """The image file of ``row``: its path column, else ``{id}.{jpg,…}`` under the root.

        The root is ``image_root``, else the CSV's folder; ``images/`` below it is tried too
        (the layout of the OSV-5M sample).
        """
        root = Path(image_root) if image_root is not None else Path(self.path).parent
        if self.paths is not None:
            p = Path(str(self.paths[row]))
            return p if p.is_absolute() else root / p
        ident = str(self.ids[row])
        candidates = [base / f"{ident}{suf}" for base in (root, root / "images") for suf in IMAGE_SUFFIXES]
        if Path(ident).suffix.lower() in IMAGE_SUFFIXES:
            candidates = [root / ident, root / "images" / ident, *candidates]
        return next((c for c in candidates if c.exists()), candidates[0])


def _find(names: list[str], options: tuple[str, ...]) -> str | None:
    lower = {n.lower().strip(): n for n in names}
    return next((lower[o] for o in options if o in lower), None)


def read_labels(path: str | os.PathLike, *, require_coords: bool = False) -> LabelTable:
    """Read an OSV-5M / YFCC / Im2GPS style metadata CSV (see the module docstring)."""
    shown = os.fspath(path)
    names, table = _read_csv(shown)
    lat_col, lon_col, path_col, id_col = _label_columns(shown, names, require_coords)

    def text(col: str) -> np.ndarray:
        return np.asarray(table.column(col).to_pylist(), dtype=object)

    paths = text(path_col) if path_col is not None else None
    ids = text(id_col) if id_col is not None else np.asarray([Path(str(s)).stem for s in paths], dtype=object)
    refs = paths if path_col else ids
    empty = [i for i, v in enumerate(refs) if v is None or str(v).strip() == ""]
    if empty:
        raise DataError(shown, "empty image reference", row=empty[0], field=path_col or id_col)
    lat = lon = None
    if lat_col is not None and lon_col is not None:
        lat = _coords(shown, table.column(lat_col), lat_col, 90.0)
        lon = _coords(shown, table.column(lon_col), lon_col, 180.0)
        both = np.isnan(lat) == np.isnan(lon)
        if not both.all():
            r = int(np.flatnonzero(~both)[0])
            raise DataError(shown, "latitude and longitude must be both given or both empty", row=r)
    used = {c for c in (lat_col, lon_col, path_col, id_col) if c is not None}
    extra = {c: text(c) for c in table.column_names if c not in used}
    return LabelTable(ids=ids.astype(str), paths=paths, latitude=lat, longitude=lon, path=shown, extra=extra)


def _read_csv(shown: str) -> tuple[list[str], pa.Table]:
    """The header and every column as text (ids must not become floats: OSV-5M ids exceed 2^53)."""
    p = Path(shown)
    if not p.is_file():
        raise DataError(shown, "file not found")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            names = next(csv.reader(f), [])
        table = pacsv.read_csv(
            p,
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(shown, f"cannot read as CSV: {err}") from None
    if table.num_rows == 0:
        raise DataError(shown, "file contains no rows")
    return names, table


def _label_columns(shown: str, names: list[str], require_coords: bool) -> tuple[str | None, ...]:
    """(latitude, longitude, path, id) column names as spelled in the file, None where absent."""
    lat_col, lon_col = _find(names, LAT_NAMES), _find(names, LON_NAMES)
    if (lat_col is None) != (lon_col is None) or (require_coords and lat_col is None):
        missing = "latitude" if lat_col is None else "longitude"
        raise DataError(
            shown,
            f"no {missing} column (accepted names: {', '.join(LAT_NAMES if lat_col is None else LON_NAMES)}, "
            f"any case); columns found: {', '.join(names)}",
            field=missing,
        )
    path_col, id_col = _find(names, PATH_NAMES), _find(names, ID_NAMES)
    if path_col is None and id_col is None:
        raise DataError(
            shown,
            f"no image column: need a path column ({', '.join(PATH_NAMES)}) or an id column ({', '.join(ID_NAMES)})",
        )
    return lat_col, lon_col, path_col, id_col


def _coords(path: str, column: pa.ChunkedArray, name: str, bound: float) -> np.ndarray:
    """Degrees as float64 (NaN for empty cells); vectorised, with a row-wise pass for errors."""
    trimmed = pc.utf8_trim_whitespace(column)
    nulled = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    try:
        out = pc.cast(nulled, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = _coords_slow(path, np.asarray(column.to_pylist(), dtype=object), name)
    bad = np.flatnonzero(np.isinf(out) | (np.abs(np.nan_to_num(out)) > bound))
    if bad.size:
        r = int(bad[0])
        raise DataError(path, f"value {float(out[r])!r} outside [-{bound:g}, {bound:g}] degrees", row=r, field=name)
    return out


def _coords_slow(path: str, values: np.ndarray, name: str) -> np.ndarray:
    out = np.full(values.shape[0], np.nan)
    for i, v in enumerate(values):
        if v is None or str(v).strip() == "":
            continue
        try:
            x = float(v)
        except ValueError:
            raise DataError(path, f"not a number: {v!r}", row=i, field=name) from None
        out[i] = x
    return out
