"""Export of density maps and credible regions: GeoJSON polygons, ESRI ASCII grids, NPZ.

GeoJSON (RFC 7946) follows the spec's rules for geographic polygons: longitudes in
[−180, 180], latitudes in [−90, 90], closed rings (first position = last), exteriors
counter-clockwise and holes clockwise, and no ring crossing the antimeridian: the raster is
contoured on a lattice that includes the meridians ±180° as its edges (the values there
interpolated across the seam), so a region straddling the antimeridian comes out as two
polygons that meet along it. A region around a pole includes the pole's edge of the lattice
(latitude ±90°), i.e. it is the planar lon/lat polygon whose image on the sphere is the cap.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import contourpy
import numpy as np

from globeflow.density.maps import DensityMap
from globeflow.density.regions import hpd_area_km2, hpd_threshold
from globeflow.io import atomic_write

__all__ = [
    "filled_polygons",
    "wrapped_polygons",
    "hpd_level_raster",
    "hpd_polygons",
    "region_thresholds",
    "regions_geojson",
    "save_density_npz",
    "write_esri_ascii",
    "write_geojson",
]


def _padded(lat: np.ndarray, lon: np.ndarray, values: np.ndarray):
    """The raster (H, W) extended to the lattice edges: longitudes ±180, latitudes ±90.

    The seam column is the mean of the first and last columns (it lies halfway between their
    centres); a pole row is the mean of the row nearest to it (the pole is one point).
    """
    seam = 0.5 * (values[:, :1] + values[:, -1:])
    v = np.concatenate([seam, values, seam], axis=1)
    v = np.concatenate(
        [np.full((1, v.shape[1]), v[0].mean()), v, np.full((1, v.shape[1]), v[-1].mean())],
        axis=0,
    )
    return (
        np.concatenate([[-90.0], lat, [90.0]]),
        np.concatenate([[-180.0], lon, [180.0]]),
        v,
    )


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring (K, 2) in the lon/lat plane: > 0 counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _clean_ring(ring: np.ndarray, ccw: bool) -> np.ndarray | None:
    """Rounded, clamped, closed, de-duplicated ring with the wanted orientation (None if degenerate)."""
    r = np.round(np.asarray(ring, dtype=np.float64), 6)
    r[:, 0] = np.clip(r[:, 0], -180.0, 180.0)
    r[:, 1] = np.clip(r[:, 1], -90.0, 90.0)
    keep = np.ones(len(r), bool)
    keep[1:] = np.any(r[1:] != r[:-1], axis=1)  # repeated vertices make zero-length edges
    r = r[keep]
    if len(r) and np.any(r[0] != r[-1]):
        r = np.vstack([r, r[:1]])
    if len(r) < 4:
        return None
    area = _signed_area(r)
    if area == 0.0:
        return None
    return r if (area > 0) == ccw else r[::-1].copy()


def hpd_polygons(lat: np.ndarray, lon: np.ndarray, log_prob: np.ndarray, threshold: float) -> list[list[np.ndarray]]:
    """Polygons of {log p ≥ threshold} on a raster: pixel centres ``lat`` (H,), ``lon`` (W,),
    ``log_prob`` (H, W). Each polygon is [exterior, *holes], each ring (K, 2) of closed
    (longitude, latitude) positions, exterior counter-clockwise, holes clockwise."""
    lat_p, lon_p, v = _padded(np.asarray(lat), np.asarray(lon), np.asarray(log_prob, np.float64))
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    return filled_polygons(lat_p, lon_p, v, threshold)


def filled_polygons(lat: np.ndarray, lon: np.ndarray, values: np.ndarray, threshold: float) -> list[list[np.ndarray]]:
    """Polygons of {values ≥ threshold} on a regular raster (``lat`` (H,), ``lon`` (W,),
    ``values`` (H, W)), as cleaned GeoJSON-ready rings ([exterior, *holes], see
    :func:`hpd_polygons`). Rings are clamped to ±180°/±90°; no wrap-around or pole padding."""
    top = float(np.nanmax(values))
    if top < threshold:
        return []
    gen = contourpy.contour_generator(x=lon, y=lat, z=values, fill_type=contourpy.FillType.OuterOffset)
    points, offsets = gen.filled(float(threshold), top + 1.0)
    polygons = []
    for pts, off in zip(points, offsets):
        rings = [pts[a:b] for a, b in itertools.pairwise(off)]
        shell = _clean_ring(rings[0], ccw=True)
        if shell is None:
            continue
        holes = [h for h in (_clean_ring(r, ccw=False) for r in rings[1:]) if h is not None]
        polygons.append([shell, *holes])
    return polygons


def wrapped_polygons(lat: np.ndarray, lon: np.ndarray, values: np.ndarray, threshold: float) -> list[list[np.ndarray]]:
    """:func:`filled_polygons` of a regional raster whose longitudes run continuously across
    the antimeridian (e.g. 170° … 190°): the raster is cut at ±180° (a column interpolated on
    the meridian itself), each piece is shifted into [−180°, 180°] and contoured, so a region
    straddling the antimeridian comes out whole, as polygons that meet along it (RFC 7946)."""
    lon = np.asarray(lon, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    cuts = sorted(c for c in np.arange(-900.0, 901.0, 360.0) if lon[0] < c < lon[-1])
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    start_lon, start_v = lon, values
    for c in cuts:
        j = int(np.searchsorted(start_lon, c))
        w = (c - start_lon[j - 1]) / (start_lon[j] - start_lon[j - 1])
        col = (1.0 - w) * start_v[:, j - 1 : j] + w * start_v[:, j : j + 1]
        pieces.append((np.append(start_lon[:j], c), np.concatenate([start_v[:, :j], col], axis=1)))
        start_lon = np.concatenate([[c], start_lon[j:]])
        start_v = np.concatenate([col, start_v[:, j:]], axis=1)
    pieces.append((start_lon, start_v))
    polygons = []
    for plon, pv in pieces:
        if len(plon) < 2:
            continue
        shift = -360.0 * np.round(0.5 * (plon[0] + plon[-1]) / 360.0)
        polygons.extend(filled_polygons(lat, plon + shift, pv, threshold))
    return polygons


def region_thresholds(
    dmap: DensityMap,
    levels: Sequence[float] = (0.5, 0.9, 0.95),
    sample_log_prob: np.ndarray | None = None,
    *,
    model_levels: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Threshold, area and map mass of each HPD level for one embedding.

    With the model's samples' log-densities ``sample_log_prob`` (S,) the threshold is their
    quantile and the area the importance-sampling estimate (with its standard error);
    without, both come from the map's equal-area cells. ``mass`` is the map's own mass in
    {log p ≥ τ} (a check of the threshold against the map). ``model_levels`` (one per level):
    the regions reported at nominal ``levels`` are the model's HPD regions of these levels (a
    conformal calibration's q̂(α), :mod:`globeflow.density.calibration`; < 1 each).
    """
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    q = lv if model_levels is None else np.asarray(model_levels, dtype=np.float64).reshape(-1)
    if q.shape != lv.shape:
        raise ValueError(f"model_levels: expected one per level ({lv.size}), got {q.size}")
    out = []
    if sample_log_prob is not None:
        tau = hpd_threshold(sample_log_prob, q)
        area, se = hpd_area_km2(sample_log_prob, q, threshold=tau)
    else:
        tau = np.atleast_1d(dmap.hpd_threshold(q))
        area = np.array([dmap.region_area_km2(t) for t in tau])
        se = np.full(lv.shape, np.nan)
    for a, m, t, ar, e in zip(lv, q, tau, area, se):
        out.append(
            {
                "level": float(a),
                "model_level": float(m),
                "threshold_log_prob": float(t),
                "area_km2": float(ar),
                "area_se_km2": None if np.isnan(e) else float(e),
                "area_km2_map": dmap.region_area_km2(t),
                "mass": dmap.region_mass(t),
            }
        )
    return out


def regions_geojson(
    dmap: DensityMap,
    levels: Sequence[float] = (0.5, 0.9, 0.95),
    *,
    sample_log_prob: np.ndarray | None = None,
    properties: dict[str, Any] | None = None,
    model_levels: Sequence[float] | None = None,
) -> dict[str, Any]:
    """GeoJSON FeatureCollection: one MultiPolygon Feature per HPD level (largest level first,
    so that smaller regions draw on top), with the level's threshold, area and mass as
    properties (see :func:`region_thresholds`, also for ``model_levels``), plus ``properties``
    on every feature."""
    features = []
    regions = region_thresholds(dmap, levels, sample_log_prob, model_levels=model_levels)
    for region in sorted(regions, key=lambda r: -r["level"]):
        polys = hpd_polygons(dmap.lat, dmap.lon, dmap.log_prob, region["threshold_log_prob"])
        features.append(
            {
                "type": "Feature",
                "properties": {**region, **(properties or {})},
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [[ring.tolist() for ring in poly] for poly in polys],
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, collection: dict[str, Any]) -> Path:
    """Atomically write a GeoJSON object (compact JSON, UTF-8)."""
    text = json.dumps(collection, separators=(",", ":"), allow_nan=False)

    def write(tmp: Path) -> None:
        tmp.write_text(text + "\n", encoding="utf-8")

    return atomic_write(path, write)


def hpd_level_raster(dmap: DensityMap, thresholds: Sequence[tuple[float, float]]) -> np.ndarray:
    """Integer raster (H, W): the smallest level (in %, e.g. 50, 90) whose region holds the
    pixel, 0 outside all; ``thresholds`` = [(level, log-density threshold), …]."""
    out = np.zeros(dmap.log_prob.shape, dtype=np.int16)
    for level, tau in sorted(thresholds, key=lambda lt: -lt[0]):
        out[dmap.log_prob >= tau] = round(100 * level)
    return out


def write_esri_ascii(
    path: str | os.PathLike,
    lat: np.ndarray,
    lon: np.ndarray,
    values: np.ndarray,
    *,
    nodata: float = -9999.0,
) -> Path:
    """Write a raster (H, W) on pixel centres ``lat`` (H,) south→north, ``lon`` (W,) as an ESRI
    ASCII grid (rows from north to south, as the format wants); non-finite values -> ``nodata``."""
    lat, lon = np.asarray(lat), np.asarray(lon)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (lat.size, lon.size):
        raise ValueError(f"values: shape {values.shape} does not match ({lat.size}, {lon.size})")
    cell = float(lat[1] - lat[0]) if lat.size > 1 else 180.0
    v = np.where(np.isfinite(values), values, nodata)[::-1]
    integer = np.issubdtype(np.asarray(values).dtype, np.integer) or np.all(v == np.round(v))
    fmt = "%d" if integer else "%.6g"
    header = (
        f"ncols {lon.size}\nnrows {lat.size}\n"
        f"xllcorner {lon[0] - cell / 2:.10g}\nyllcorner {lat[0] - cell / 2:.10g}\n"
        f"cellsize {cell:.10g}\nNODATA_value {nodata:g}\n"
    )

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(header)
            np.savetxt(f, v, fmt=fmt, delimiter=" ")

    return atomic_write(path, write)


def save_density_npz(path: str | os.PathLike, dmap: DensityMap, *, level_raster: np.ndarray | None = None) -> Path:
    """Atomically save a map's arrays (no pickle): lat, lon, log_prob raster, equal-area cells
    (z_edges, n_cols, cell_log_prob), num_evaluations, and optionally the HPD level raster."""
    arrays = {
        "lat": dmap.lat,
        "lon": dmap.lon,
        "log_prob": dmap.log_prob,
        "z_edges": dmap.grid.z_edges,
        "n_cols": dmap.grid.n_cols,
        "cell_log_prob": dmap.cell_log_prob,
        "num_evaluations": np.asarray(dmap.num_evaluations),
    }
    if level_raster is not None:
        arrays["hpd_level"] = np.asarray(level_raster)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)
