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
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from _shapefile import fetch_wheel, read_shapes, write_npz

WHEEL = "geopandas==0.14.4"
MEMBER = "geopandas/datasets/naturalearth_lowres/naturalearth_lowres"
OUT = Path(__file__).resolve().parents[1] / "src/globeflow/viz/data/ne_110m_countries.npz"
SCALE = 100  # stored units per degree


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
        wheel = fetch_wheel(WHEEL, "geopandas-*.whl", tmp, args.wheel)
        with zipfile.ZipFile(wheel) as z:
            shp = z.read(MEMBER + ".shp")
            dbf = z.read(MEMBER + ".dbf")
    polygons = read_shapes(shp, 5)
    names = read_names(dbf)
    rings, owner = [], []
    for i, polygon in enumerate(polygons):
        for ring in polygon:
            rings.append(np.round(ring * SCALE).astype(np.int16))
            owner.append(i)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rings])]).astype(np.int32)
    size = write_npz(
        OUT,
        lonlat=np.concatenate(rings),
        ring_offsets=offsets,
        ring_country=np.asarray(owner, dtype=np.int16),
        country_names=np.asarray(names),
        scale=np.asarray(SCALE, dtype=np.int16),
    )
    print(f"{OUT}: {len(names)} countries, {len(rings)} rings, {offsets[-1]} points, {size} bytes")


if __name__ == "__main__":
    main()
