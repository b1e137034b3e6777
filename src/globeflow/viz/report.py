"""One call from a trained method and one embedding to its density map, regions and files."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.density.localizability import localizability_from_log_prob
from globeflow.density.maps import density_map_for_method
from globeflow.viz.export import (
    hpd_level_raster,
    region_thresholds,
    regions_geojson,
    write_esri_ascii,
    write_geojson,
)
from globeflow.viz.maps import plot_density_map

__all__ = ["density_report"]


def density_report(
    method: Any,
    emb: Any,
    *,
    out_png: str | os.PathLike | None = None,
    geojson: str | os.PathLike | None = None,
    ascii_grid: str | os.PathLike | None = None,
    truth: Sequence[float] | None = None,
    resolution_deg: float = 1.0,
    levels: Sequence[float] = (0.5, 0.9, 0.95),
    num_samples: int = 1000,
    seed: int = 0,
    guidance: float = 0.0,
    title: str | None = None,
    log_prob_options: dict[str, Any] | None = None,
    sample_options: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    calibration: Any = "auto",
) -> dict[str, Any]:
    """Density map of ``method`` for ONE embedding ``emb`` (D,), with its HPD regions.

    Writes, when given: ``out_png`` (Equal Earth map with the 50/90% contours, the samples, the
    estimate — the sample of highest density — and ``truth`` (lat, lon)), ``geojson`` (the
    regions at ``levels``) and ``ascii_grid`` (ESRI ASCII raster of the smallest level holding
    each pixel, in %; ``properties`` go into every GeoJSON feature). Returns a JSON-ready
    summary: the estimate, the regions (threshold, importance-sampling area ± standard error in
    km², the map's area and mass), the localizability (bits ± standard error, from the samples'
    log-densities), the map's total mass, the number of exact density evaluations, the seconds
    the map took and, with ``truth``, its log-density and the smallest level whose region holds it.
    ``calibration``: "auto" (the method's own conformal calibration, when fitted at ``guidance``:
    the regions at nominal α are the model's of level q̂(α)), None (uncalibrated) or a
    Calibration; ``summary["calibration"]`` says which.
    """
    from globeflow.density.calibration import drawable_levels, resolve_calibration

    start = time.perf_counter()
    cal = resolve_calibration(method, calibration, guidance)
    dmap, samples = density_map_for_method(
        method,
        emb,
        resolution_deg,
        num_samples=num_samples,
        seed=seed,
        guidance=guidance,
        sample_options=sample_options,
        log_prob_options=log_prob_options,
    )
    map_seconds = time.perf_counter() - start
    sample_lp = samples.log_prob[0]
    model_levels = drawable_levels(cal, levels, sample_lp.shape[0])
    regions = region_thresholds(dmap, levels, sample_log_prob=sample_lp, model_levels=model_levels)
    estimate = samples.latlon[0][int(np.argmax(sample_lp))]
    loc = localizability_from_log_prob(samples.log_prob)
    summary: dict[str, Any] = {
        "estimate": [float(estimate[0]), float(estimate[1])],
        "regions": regions,
        "localizability": {"bits": float(loc.bits[0]), "stderr": float(loc.stderr[0])},
        "mass": dmap.mass(),
        "num_evaluations": dmap.num_evaluations,
        "resolution_deg": dmap.resolution_deg,
        "map_seconds": map_seconds,
        "calibration": None if cal is None else cal.describe(),
    }
    if truth is not None:
        from globeflow.density.maps import log_prob_fn_from_method
        from globeflow.geometry.coords import latlon_to_xyz

        fn = log_prob_fn_from_method(method, emb, guidance=guidance, **(log_prob_options or {}))
        lp_truth = float(fn(latlon_to_xyz(np.array([truth[0]]), np.array([truth[1]])))[0])
        inside = [r["level"] for r in regions if lp_truth >= r["threshold_log_prob"]]
        summary["truth"] = {
            "latlon": [float(truth[0]), float(truth[1])],
            "log_prob": lp_truth,
            "smallest_level_containing": min(inside) if inside else None,
        }
    contour_levels = [(r["level"], r["threshold_log_prob"]) for r in regions if r["level"] in (0.5, 0.9)]
    if out_png is not None:
        plot_density_map(
            dmap,
            out_png,
            samples=samples.latlon[0],
            estimate=estimate,
            truth=truth,
            regions=contour_levels or [(r["level"], r["threshold_log_prob"]) for r in regions],
            title=title,
        )
        summary["png"] = str(Path(out_png))
    if geojson is not None:
        write_geojson(
            geojson,
            regions_geojson(
                dmap, levels, sample_log_prob=sample_lp, properties=properties, model_levels=model_levels
            ),
        )
        summary["geojson"] = str(Path(geojson))
    if ascii_grid is not None:
        raster = hpd_level_raster(dmap, [(r["level"], r["threshold_log_prob"]) for r in regions])
        write_esri_ascii(ascii_grid, dmap.lat, dmap.lon, raster)
        summary["ascii_grid"] = str(Path(ascii_grid))
    return summary
