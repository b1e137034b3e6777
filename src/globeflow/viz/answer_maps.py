"""Maps of an :class:`~globeflow.answers.Answer`: a world panel and, for sharp answers, a zoom.

Two densities can be drawn:

* no ``log_prob_fn`` (default, what ``globeflow demo`` and ``predict --map-dir`` use): a kernel
  density estimate of the answer's own samples with a von Mises–Fisher kernel per sample whose
  concentration follows the model's exact density at that sample (Abramson's square-root law in
  2-D: κⱼ = S^{1/3} · 2π p(yⱼ), so a kernel is about 1/S^{1/6} of the local spread, the
  optimal width for S samples of a smooth peak; without log p a fixed ``bandwidth_km`` kernel).
  It costs S kernel evaluations per map point — milliseconds — instead of one likelihood ODE
  solve per point; it is smoother than the model between samples and blind to the tails where
  no sample falls. The 50/90% contours are the HPD regions *of this estimate* (thresholds from
  its values at the samples), so they enclose ~50/90% of the samples.
* exact (a ``log_prob_fn`` given): the model's exact density — a likelihood ODE solve per
  point, built by :func:`globeflow.answers.answer_map_inputs` — on the adaptive equal-area map
  of :mod:`globeflow.density.maps`, with the answer's thresholds. About 1,000–3,000 ODE solves
  per map: minutes per query on a CPU.

This module only draws: the log-density function and the denoising paths (the method's
:meth:`~globeflow.methods.base.Method.trajectories`) are computed by the caller and passed in.

The zoom panel is added when the 90% region spans less than ``max_zoom_span_deg``: a world map
shows a city-scale density as a dot. It is a latitude/longitude plot with the aspect 1/cos φ₀
of its centre (locally conformal), evaluated on its own ``zoom_points``² raster.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.density.maps import DensityMap, LogProbFn, density_map
from globeflow.density.regions import hpd_threshold
from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz, wrap_longitude
from globeflow.viz.maps import (
    ESTIMATE_STYLE,
    REGION_STYLES,
    SAMPLE_COLOR,
    TRUTH_STYLE,
    _log10_relative,
    draw_world,
    finish_map_figure,
    load_basemap,
)

__all__ = ["AnswerMap", "ZoomRaster", "answer_map", "kde_log_prob_fn", "plot_answer_map"]

LEVELS = (0.5, 0.9)


def kde_log_prob_fn(xyz: np.ndarray, log_prob: np.ndarray | None = None, *, bandwidth_km: float = 200.0) -> LogProbFn:
    """Log-density per steradian of a vMF kernel density estimate of samples ``xyz`` (S, 3).

    With the samples' exact ``log_prob`` (S,), kernel j has κⱼ = S^{1/3} · 2π pⱼ (clipped to
    [1, 10⁹]); without, every kernel has κ = (R / ``bandwidth_km``)².
    """
    y = np.asarray(xyz, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != 3 or y.shape[0] < 1 or not np.isfinite(y).all():
        raise ValueError(f"xyz: expected finite samples of shape (S, 3), got {y.shape}")
    s = y.shape[0]
    if log_prob is not None:
        lp = np.asarray(log_prob, dtype=np.float64).reshape(-1)
        if lp.shape[0] != s or not np.isfinite(lp).all():
            raise ValueError(f"log_prob: expected {s} finite values, got shape {lp.shape}")
        kappa = np.clip(s ** (1.0 / 3.0) * 2.0 * math.pi * np.exp(np.minimum(lp, 30.0)), 1.0, 1e9)
    else:
        if not bandwidth_km > 0:
            raise ValueError(f"bandwidth_km must be positive, got {bandwidth_km}")
        kappa = np.full(s, (EARTH_RADIUS_KM / bandwidth_km) ** 2)
    # vMF on S² in the shifted form log p = log(κ / (2π (1 − e^{−2κ}))) + κ (⟨x, μ⟩ − 1).
    log_c = np.log(kappa) - np.log(-np.expm1(-2.0 * kappa)) - math.log(2.0 * math.pi) - math.log(s)

    def fn(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1, 3)
        out = np.empty(x.shape[0])
        for a in range(0, x.shape[0], 4096):
            # ⟨x, μ⟩ − 1 = −|x − μ|²/2, exact for nearby points where 1 − cos loses digits.
            d2 = ((x[a : a + 4096, None, :] - y[None]) ** 2).sum(-1)
            t = log_c - 0.5 * kappa * d2
            m = t.max(axis=1, keepdims=True)
            out[a : a + 4096] = (m + np.log(np.exp(t - m).sum(axis=1, keepdims=True)))[:, 0]
        return out

    return fn


@dataclass(frozen=True, eq=False)
class ZoomRaster:
    """A regional raster: pixel centres ``lat`` (H,), ``lon`` (W,) degrees (continuous across
    the antimeridian, so possibly beyond ±180) and ``log_prob`` (H, W) per steradian."""

    lat: np.ndarray
    lon: np.ndarray
    log_prob: np.ndarray


@dataclass(frozen=True, eq=False)
class AnswerMap:
    """The densities drawn for one answer: ``world`` (adaptive global map), ``zoom`` (or None),
    ``thresholds`` {level: τ} of the HPD regions in the drawn density, ``kind``
    ("samples" for the kernel estimate, "exact" for the model's density)."""

    world: DensityMap
    zoom: ZoomRaster | None
    thresholds: dict[float, float]
    kind: str


def zoom_extent(
    latlon: np.ndarray, *, max_span_deg: float = 30.0, min_half_deg: float = 0.3
) -> tuple[float, float, float, float] | None:
    """(lat_min, lat_max, lon_min, lon_max) around points (N, 2) if they span < ``max_span_deg``
    (km-equivalent degrees), padded; longitudes continuous around the points' circular mean."""
    p = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if p.shape[0] == 0:
        return None
    lon_c = math.degrees(math.atan2(np.sin(np.radians(p[:, 1])).mean(), np.cos(np.radians(p[:, 1])).mean()))
    dlon = wrap_longitude(p[:, 1] - lon_c)
    lat_mid = 0.5 * (p[:, 0].min() + p[:, 0].max())
    lon_mid = lon_c + 0.5 * (dlon.min() + dlon.max())
    cos_lat = max(math.cos(math.radians(lat_mid)), 0.2)
    span = max(np.ptp(p[:, 0]), np.ptp(dlon) * cos_lat)
    if span > max_span_deg:
        return None
    half = max(0.7 * span, min_half_deg)
    lat0, lat1 = max(lat_mid - half, -89.9), min(lat_mid + half, 89.9)
    return lat0, lat1, lon_mid - half / cos_lat, lon_mid + half / cos_lat


def answer_map(
    ans: Any,
    *,
    log_prob_fn: LogProbFn | None = None,
    resolution_deg: float = 1.0,
    zoom_points: int | None = None,
    max_zoom_span_deg: float = 30.0,
    bandwidth_km: float = 200.0,
) -> AnswerMap:
    """The world map (and zoom) of answer ``ans``: of the model's exact density when
    ``log_prob_fn`` (unit vectors (P, 3) -> log p per steradian (P,)) is given, else of the
    kernel estimate of the answer's samples.

    ``zoom_points`` per side of the zoom raster: default 160 for the kernel estimate, 48 for
    the exact density (2,304 ODE solves; the panel interpolates bilinearly between them).
    """
    xyz = latlon_to_xyz(ans.samples[:, 0], ans.samples[:, 1])
    exact = log_prob_fn is not None
    if exact:
        if ans.hpd_thresholds is None:
            raise ValueError("exact: the answer has no density on the sphere (no HPD thresholds)")
        fn = log_prob_fn
        at_samples = ans.sample_log_prob
        thresholds = dict(ans.hpd_thresholds)
        kind = "exact"
    else:
        fn = kde_log_prob_fn(xyz, ans.sample_log_prob, bandwidth_km=bandwidth_km)
        at_samples = fn(xyz)
        # The answer's regions are at model levels q̂(α) when it is conformally calibrated.
        model_levels = getattr(ans, "region_levels", None) or {lv: lv for lv in LEVELS}
        q = np.asarray([model_levels.get(lv, lv) for lv in LEVELS])
        tau = np.where(q < 1.0, hpd_threshold(at_samples, np.minimum(q, 0.999999)), -np.inf)
        thresholds = {lv: float(t) for lv, t in zip(LEVELS, tau)}
        kind = "samples"
    # A calibrated level of 1 is the whole sphere (τ = −∞): drawn as a threshold below every
    # sample, so that contours and polygons stay finite.
    floor = float(np.min(at_samples)) - 1.0
    thresholds = {lv: (t if np.isfinite(t) else floor) for lv, t in thresholds.items()}
    with warnings.catch_warnings():
        # A city-scale density is narrower than the world raster's cells: its world map holds
        # the wrong mass (density_map warns), and the zoom panel below is what shows it.
        warnings.simplefilter("ignore", UserWarning)
        world = density_map(fn, resolution_deg, samples_xyz=xyz, sample_log_prob=at_samples)
    zoom = None
    extent = zoom_extent(ans.samples[at_samples >= thresholds[0.9]], max_span_deg=max_zoom_span_deg)
    if extent is not None:
        n = int(zoom_points or (48 if exact else 160))
        lat = np.linspace(extent[0], extent[1], n)
        lon = np.linspace(extent[2], extent[3], n)
        gl, go = np.meshgrid(lat, lon, indexing="ij")
        lp = fn(latlon_to_xyz(gl.ravel(), wrap_longitude(go.ravel()))).reshape(n, n)
        zoom = ZoomRaster(lat, lon, lp)
    return AnswerMap(world, zoom, thresholds, kind)


def _draw_trajectories(ax, paths: np.ndarray) -> None:
    """Paths (T + 1, N, 2) as lines fading in from the noise, split where they cross the map's edge."""
    from matplotlib.collections import LineCollection

    from globeflow.viz.maps import equal_earth

    x, y = equal_earth(paths[..., 0], paths[..., 1])  # (T + 1, N)
    x_max = float(equal_earth(np.array(0.0), np.array(180.0))[0])
    segs, alphas = [], []
    t = paths.shape[0] - 1
    for k in range(t):
        for n in range(paths.shape[1]):
            if abs(x[k + 1, n] - x[k, n]) < x_max:  # a jump across the antimeridian is not drawn
                segs.append([(x[k, n], y[k, n]), (x[k + 1, n], y[k + 1, n])])
                alphas.append(0.15 + 0.7 * (k + 1) / t)
    colors = [(0.1, 0.35, 0.6, a) for a in alphas]
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=0.6, zorder=5.2))
    ax.scatter(x[0], y[0], s=4, c="#7f7f7f", marker="o", lw=0, zorder=5.2)


def _degrees(value: float, positive: str, negative: str) -> str:
    v = float(value)
    text = f"{abs(v):.2f}".rstrip("0").rstrip(".")
    return f"{text}°{positive if v >= 0 else negative}" if abs(v) > 1e-9 else "0°"


def _draw_zoom(
    ax,
    zoom: ZoomRaster,
    thresholds: dict[float, float],
    ans: Any,
    truth,
    vmin: float,
    vmax: float,
    words: Any,
    font: float,
):
    """The zoom panel: density, country borders, ``words.admin1`` state/province lines, the
    50/90% contours, samples, estimate and truth, ``words.cities`` labelled, degree ticks and
    a ``words.scale_km`` scale bar."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    lat0, lat1, lon0, lon1 = zoom.lat[0], zoom.lat[-1], zoom.lon[0], zoom.lon[-1]
    ax.set_facecolor("#eef3f7")
    img = _log10_relative(zoom.log_prob)
    img = np.where(img >= vmin, img, np.nan)
    im = ax.imshow(
        img,
        extent=(lon0, lon1, lat0, lat1),
        origin="lower",
        cmap="magma_r",
        vmin=vmin,
        vmax=vmax,
        interpolation="bilinear",
        alpha=0.7,
        zorder=2,
        aspect="auto",
    )
    admin1 = tuple(getattr(words, "admin1", ()))
    if admin1:
        # State/province lines under the country borders: thinner, dashed, light grey over a
        # faint dark halo (readable over pale and saturated colours alike).
        ax.add_collection(LineCollection(admin1, colors="#202020", linewidths=1.1, alpha=0.3, zorder=2.9))
        ax.add_collection(
            LineCollection(admin1, colors="#e6e6e6", linewidths=0.6, linestyles=(0, (4, 2)), zorder=2.95,
                           label="admin-1 boundaries")
        )  # fmt: skip
    rings = load_basemap()
    lines = [r + np.array([shift, 0.0]) for shift in (-360.0, 0.0, 360.0) for r in rings]
    # Borders in white over a dark halo: readable over both pale and saturated colours.
    ax.add_collection(LineCollection(lines, colors="#202020", linewidths=1.6, zorder=3, alpha=0.6))
    ax.add_collection(LineCollection(lines, colors="white", linewidths=0.7, zorder=3.1))
    levels = sorted(thresholds.items())  # 0.5 then 0.9
    for k, (level, tau) in enumerate(levels):
        color, ls = REGION_STYLES[k % len(REGION_STYLES)]
        if np.nanmax(zoom.log_prob) >= tau:
            ax.contour(zoom.lon, zoom.lat, zoom.log_prob, levels=[tau], colors=[color], linestyles=[ls], linewidths=1.3)
    s = ans.samples
    # Samples are shown on the copy of the globe nearest the panel.
    slon = (lon0 + lon1) / 2 + wrap_longitude(s[:, 1] - (lon0 + lon1) / 2)
    ax.scatter(slon, s[:, 0], s=3, c=SAMPLE_COLOR, alpha=0.5, lw=0, zorder=5)
    for lat, lon, name in words.cities:
        ax.scatter(lon, lat, s=10, c="#303030", edgecolors="white", linewidths=0.5, zorder=6.5)
        right = lon > 0.5 * (lon0 + lon1)  # labels point inwards: none runs off the panel
        label = ax.annotate(
            name, (lon, lat), xytext=(-3 if right else 3, 3), textcoords="offset points", fontsize=font - 1,
            ha="right" if right else "left", zorder=6.6, color="#202020",
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6},
        )  # fmt: skip
        label.set_clip_on(True)
    for point, (marker, color, size, _) in (((ans.latitude, ans.longitude), ESTIMATE_STYLE), (truth, TRUTH_STYLE)):
        if point is not None:
            plon = (lon0 + lon1) / 2 + wrap_longitude(np.array(point[1]) - (lon0 + lon1) / 2)
            ax.scatter(plon, point[0], s=size * 1.6, marker=marker, c=color, edgecolors="black", lw=0.6, zorder=7)
    ax.set_xlim(lon0, lon1)
    ax.set_ylim(lat0, lat1)
    lat_mid = 0.5 * (lat0 + lat1)
    cos_mid = max(math.cos(math.radians(lat_mid)), 0.2)
    ax.set_aspect(1.0 / cos_mid)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: _degrees(wrap_longitude(np.array(v)).item(), "E", "W")))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: _degrees(v, "N", "S")))
    ax.tick_params(labelsize=font - 1, length=3)
    if words.scale_km:
        # Scale bar at the bottom left: its length in degrees of longitude at the panel's middle.
        dlon = math.degrees(words.scale_km / (EARTH_RADIUS_KM * cos_mid))
        x0 = lon0 + 0.06 * (lon1 - lon0)
        y0 = lat0 + 0.06 * (lat1 - lat0)
        ax.plot([x0, x0 + dlon], [y0, y0], color="black", lw=3, solid_capstyle="butt", zorder=8)
        ax.plot([x0, x0 + dlon], [y0, y0], color="white", lw=1.2, solid_capstyle="butt", zorder=8.1)
        ax.text(x0 + dlon / 2, y0 + 0.025 * (lat1 - lat0), f"{words.scale_km:,g} km", ha="center", va="bottom",
                fontsize=font - 1, zorder=8.2, bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})  # fmt: skip
    ax.set_title("detail around the estimate", fontsize=font)
    return im


#: The answer map's figure size (inches): the same with or without a zoom panel, so that every
#: map of a report has the same size; ``width_px`` sets the resolution (dpi), not the layout.
FIGURE_IN = (10.0, 5.6)
#: Point size of legend, colour-bar and panel text (≥ 10 pt at the figure's size).
FONT_PT = 10.5


def plot_answer_map(
    ans: Any,
    amap: AnswerMap,
    out_png: str | os.PathLike,
    *,
    truth: Sequence[float] | None = None,
    title: str | None = None,
    width_px: int = 1400,
    max_labels: int = 3,
    floor_mass: float = 0.99,
    trajectories: np.ndarray | None = None,
    annotations: Any = None,
) -> Path:
    """Write the answer's map to ``out_png``: the world (Equal Earth) with the density coloured
    by how many times more likely than the world average, the 50/90% regions, the samples, the
    estimate (star), the top modes (numbered, with their mass), ``truth`` (cross) when known,
    and the zoom panel if any (labelled towns, degree ticks, scale bar). Every map has the
    same figure size (:data:`FIGURE_IN`, ``width_px`` pixels wide) and ≥ 10 pt text.
    Outside the map's top-``floor_mass`` HPD region the basemap is left uncoloured.
    ``trajectories`` (T + 1, N, 2) (:meth:`~globeflow.methods.base.Method.trajectories`) are drawn as fading lines
    from the noise (grey dots) to the samples. ``annotations``: the words and marks
    (:class:`globeflow.describe.MapAnnotations`; default :func:`globeflow.describe.map_annotations`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from globeflow.viz.maps import equal_earth

    zoom = amap.zoom
    if annotations is None:
        from globeflow.describe import map_annotations

        extent = None if zoom is None else (zoom.lat[0], zoom.lat[-1], zoom.lon[0], zoom.lon[-1])
        annotations = map_annotations(extent, kind=amap.kind, calibrated=bool(getattr(ans, "calibration", None)))
    font = FONT_PT
    dpi = max(50, round(width_px / FIGURE_IN[0]))
    fig = Figure(figsize=FIGURE_IN, dpi=dpi)
    FigureCanvasAgg(fig)
    world_box = (0.0, 0.33, 0.62, 0.57) if zoom is not None else (0.1, 0.33, 0.8, 0.57)
    ax = fig.add_axes(world_box)
    top = float(np.max(amap.world.log_prob))
    if zoom is not None:
        top = max(top, float(np.max(zoom.log_prob)))
    floor = float(amap.world.hpd_threshold(floor_mass))
    vmin, vmax = _log10_relative(floor), _log10_relative(top)
    if zoom is not None:
        # A sharp peak would squeeze the world's colours into one end: keep ≥ 2 decades.
        vmin = min(vmin, vmax - 2.0)
    regions = sorted(amap.thresholds.items())
    im, handles = draw_world(
        ax,
        amap.world,
        samples=ans.samples,
        estimate=(ans.latitude, ans.longitude),
        truth=truth,
        regions=regions,
        width_px=int(width_px * world_box[2]),
        floor_mass=floor_mass,
        vmin=vmin,
        vmax=vmax,
    )
    if trajectories is not None:
        from matplotlib.lines import Line2D

        _draw_trajectories(ax, np.asarray(trajectories, dtype=np.float64))
        handles.append(Line2D([], [], color=(0.1, 0.35, 0.6), lw=0.8, label="denoising paths"))
    for k, m in enumerate(ans.modes[:max_labels]):
        mx, my = equal_earth(np.array(m.latitude), np.array(m.longitude))
        ax.annotate(
            f"{k + 1}: {100 * m.mass:.0f}%",
            (float(mx), float(my)),
            xytext=(6, 6 + 13 * k),
            textcoords="offset points",
            fontsize=font - 1.5,
            zorder=7,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#7a828a", "lw": 0.4, "alpha": 0.85},
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#404040"},
        )
    if zoom is not None:
        from matplotlib.patches import Polygon

        # Where the zoom is, on the world map.
        lat0, lat1, lon0, lon1 = zoom.lat[0], zoom.lat[-1], zoom.lon[0], zoom.lon[-1]
        t = np.linspace(0.0, 1.0, 50)
        bl = np.concatenate([np.full(50, lat0), lat0 + (lat1 - lat0) * t, np.full(50, lat1), lat1 - (lat1 - lat0) * t])
        bo = np.concatenate([lon0 + (lon1 - lon0) * t, np.full(50, lon1), lon1 - (lon1 - lon0) * t, np.full(50, lon0)])
        box = np.stack(equal_earth(bl, wrap_longitude(bo)), 1)
        ax.add_patch(Polygon(box, closed=True, fill=False, edgecolor="#d62728", lw=1.0, zorder=6.5))
        zax = fig.add_axes((0.685, 0.345, 0.29, 0.545))
        _draw_zoom(zax, zoom, amap.thresholds, ans, truth, vmin, vmax, annotations, font)
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles), fontsize=font, frameon=False,
        bbox_to_anchor=(0.5, 0.225), handletextpad=0.3, columnspacing=1.2, markerscale=1.5,
    )  # fmt: skip
    marks = [(_log10_relative(tau), level) for level, tau in regions]
    fig.text(0.5, 0.012, annotations.scale, ha="center", va="bottom", fontsize=font - 0.5, color="#404040")
    return finish_map_figure(
        fig,
        im,
        out_png,
        label=annotations.legend,
        title=title,
        dpi=dpi,
        colorbar_y=0.12,
        title_size=13,
        marks=marks,
        label_size=font,
        colorbar_box=(0.2, 0.175, 0.6, 0.03),
        credit=f"Equal Earth projection · {annotations.credit}",
    )
