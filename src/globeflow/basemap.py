"""Shipped basemap lines: Natural Earth admin-1 (state/province) boundaries, fully offline.

The data file ``globeflow/viz/data/ne_10m_admin1_lines.npz`` (Natural Earth 1:10m
"Admin 1 – States, Provinces" boundary lines, public domain; simplified to 0.02° and stored
in units of 0.01° by ``scripts/make_admin1.py``) is read once per process. The answer maps'
zoom panels draw :func:`admin1_lines_within` (passed in by
:func:`globeflow.describe.map_annotations`: viz only draws) and the web page fetches
:func:`admin1_geojson` from ``globeflow serve`` when zoomed in.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

__all__ = ["ADMIN1_CREDIT", "admin1_geojson", "admin1_lines", "admin1_lines_within"]

#: How the maps credit the admin-1 lines.
ADMIN1_CREDIT = "Natural Earth 1:10m state/province lines"


@functools.lru_cache(maxsize=1)
def _admin1_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 2) lon/lat degrees, line offsets (L + 1,), line boxes (L, 4) lon0 lat0 lon1 lat1)."""
    # Through the top package: resources.files("globeflow.viz") would import matplotlib.
    ref = resources.files("globeflow") / "viz" / "data" / "ne_10m_admin1_lines.npz"
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as d:
        pts = d["lonlat"].astype(np.float64) / float(d["scale"])
        off = d["line_offsets"].astype(np.int64)
    start = off[:-1]
    box = np.concatenate(
        [np.minimum.reduceat(pts, start, axis=0), np.maximum.reduceat(pts, start, axis=0)], axis=1
    )
    return pts, off, box


def admin1_lines() -> tuple[np.ndarray, ...]:
    """Every admin-1 boundary line of the world: each (K, 2) (longitude, latitude) degrees, K ≥ 2."""
    pts, off, _ = _admin1_arrays()
    return tuple(np.split(pts, off[1:-1]))


def admin1_lines_within(lat0: float, lat1: float, lon0: float, lon1: float) -> tuple[np.ndarray, ...]:
    """The admin-1 lines that meet the box [lat0, lat1] × [lon0, lon1] (degrees; the longitudes
    may run past ±180°, as a zoom panel's across the antimeridian does): each (K, 2)
    (longitude, latitude), shifted by ±360° onto the box's copy of the globe. Whole lines are
    returned (the drawing clips them)."""
    if not (lat0 <= lat1 and lon0 <= lon1):
        raise ValueError(f"empty box: lat {lat0}..{lat1}, lon {lon0}..{lon1}")
    pts, off, box = _admin1_arrays()
    out: list[np.ndarray] = []
    for shift in (-360.0, 0.0, 360.0):
        hit = (box[:, 0] + shift <= lon1) & (box[:, 2] + shift >= lon0) & (box[:, 1] <= lat1) & (box[:, 3] >= lat0)
        out.extend(pts[off[i] : off[i + 1]] + np.array([shift, 0.0]) for i in np.flatnonzero(hit))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def admin1_geojson() -> str:
    """All admin-1 lines as one GeoJSON Feature (MultiLineString, ``kind: admin1``), coordinates
    to 0.01° (the stored precision), without spaces: ~1 MB, fetched once by the web page."""
    pts, off, _ = _admin1_arrays()
    coords = [np.round(pts[a:b], 2).tolist() for a, b in zip(off[:-1], off[1:])]
    feature = {
        "type": "Feature",
        "properties": {"kind": "admin1", "source": ADMIN1_CREDIT},
        "geometry": {"type": "MultiLineString", "coordinates": coords},
    }
    return json.dumps({"type": "FeatureCollection", "features": [feature]}, separators=(",", ":"))
