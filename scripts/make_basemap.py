"""Regenerate ``src/globeflow/viz/data/ne_110m_countries.npz``: the offline basemap of the PNG maps.

Source: Natural Earth 1:110m "Admin 0 – Countries" (public domain), as shipped inside the
geopandas 0.14.4 wheel on PyPI (``geopandas/datasets/naturalearth_lowres/``). The wheel is
fetched with ``pip download`` (PyPI only), the shapefile is read straight out of it with a
minimal reader of the shapefile format (polygons only: no extra dependency), and every ring is
stored as (longitude, latitude) in units of 0.01° (int16; ~1 km, finer than the 1:110m
source's own precision), with ring offsets and the country name of each ring.

Usage: python scripts/make_basemap.py [--wheel PATH_TO_WHEEL]
"""

from __future__ import annotations

import argparse
import io
import itertools
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "geopandas==0.14.4"
MEMBER = "geopandas/datasets/naturalearth_lowres/naturalearth_lowres"
OUT = Path(__file__).resolve().parents[1] / "src/globeflow/viz/data/ne_110m_countries.npz"
SCALE = 100  # stored units per degree


def read_polygons(shp: bytes) -> list[list[np.ndarray]]:
    """Rings (K, 2) of (lon, lat) of every polygon record of a shapefile (type 5)."""
    out = []
    pos = 100  # fixed-size file header
    while pos < len(shp):
        _, length = struct.unpack(">ii", shp[pos : pos + 8])
        body = shp[pos + 8 : pos + 8 + 2 * length]
        pos += 8 + 2 * length
        (shape_type,) = struct.unpack("<i", body[:4])
        if shape_type == 0:
            out.append([])
            continue
        if shape_type != 5:
            raise ValueError(f"unexpected shape type {shape_type} (want 5, polygon)")
        n_parts, n_points = struct.unpack("<ii", body[36:44])
        parts = list(struct.unpack(f"<{n_parts}i", body[44 : 44 + 4 * n_parts])) + [n_points]
        pts = np.frombuffer(body, "<f8", 2 * n_points, 44 + 4 * n_parts).reshape(-1, 2)
        out.append([pts[a:b] for a, b in itertools.pairwise(parts)])
    return out


def read_names(dbf: bytes, field: str = "name") -> list[str]:
    """One text field of every record of a dBASE III table."""
    n_rec, header_len, rec_len = struct.unpack("<IHH", dbf[4:12])
    fields, off, pos = {}, 1, 32
    while dbf[pos] != 0x0D:
        name = dbf[pos : pos + 11].split(b"\0")[0].decode()
        size = dbf[pos + 16]
        fields[name] = (off, size)
        off += size
        pos += 32
    start, size = fields[field]
    return [
        dbf[header_len + i * rec_len + start : header_len + i * rec_len + start + size]
        .decode("utf-8", "replace")
        .strip()
        for i in range(n_rec)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="an already downloaded geopandas 0.14.4 wheel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", tmp],
                check=True,
            )
            wheel = next(Path(tmp).glob("geopandas-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            shp = z.read(MEMBER + ".shp")
            dbf = z.read(MEMBER + ".dbf")
    polygons = read_polygons(shp)
    names = read_names(dbf)
    rings, owner = [], []
    for i, polygon in enumerate(polygons):
        for ring in polygon:
            rings.append(np.round(ring * SCALE).astype(np.int16))
            owner.append(i)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rings])]).astype(np.int32)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        lonlat=np.concatenate(rings),
        ring_offsets=offsets,
        ring_country=np.asarray(owner, dtype=np.int16),
        country_names=np.asarray(names),
        scale=np.asarray(SCALE, dtype=np.int16),
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(buf.getvalue())
    print(f"{OUT}: {len(names)} countries, {len(rings)} rings, {offsets[-1]} points, {len(buf.getvalue())} bytes")


if __name__ == "__main__":
    main()
