"""PNG maps of a predictive density on the Equal Earth projection, with an offline basemap.

The Equal Earth projection (Šavrič, Patterson & Jenny 2018) is equal-area — a colour patch's
size on the map is its probability's share of the Earth's surface — and has closed forms both
ways up to one Newton solve for the inverse, so it is done here in numpy (no cartopy):

    sin θ = (√3/2) sin φ,
    x = 2√3 λ cos θ / (3 (9A₄θ⁸ + 7A₃θ⁶ + 3A₂θ² + A₁)),   y = A₄θ⁹ + A₃θ⁷ + A₂θ³ + A₁θ,

A₁ = 1.340264, A₂ = −0.081106, A₃ = 0.000893, A₄ = 0.003796. The density image is drawn by
inverse projection of every output pixel (sharp at any size); coastlines and country borders
are Natural Earth 1:110m (public domain), shipped in ``globeflow/viz/data`` (see NOTICE.md
there and ``scripts/make_basemap.py``).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import contourpy
import numpy as np

from globeflow.density.maps import DensityMap
from globeflow.geometry.coords import wrap_longitude
from globeflow.io import atomic_write

__all__ = ["draw_world", "equal_earth", "equal_earth_inverse", "load_basemap", "plot_density_map", "times_label"]

_A1, _A2, _A3, _A4 = 1.340264, -0.081106, 0.000893, 0.003796
_M = math.sqrt(3.0) / 2.0


def _dy(theta: np.ndarray) -> np.ndarray:
    t2 = theta * theta
    return _A1 + 3 * _A2 * t2 + t2**3 * (7 * _A3 + 9 * _A4 * t2)


def equal_earth(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project degrees (...,), (...,) to Equal Earth map coordinates x, y (unit sphere)."""
    phi = np.deg2rad(np.asarray(lat, dtype=np.float64))
    lam = np.deg2rad(np.asarray(lon, dtype=np.float64))
    theta = np.arcsin(_M * np.sin(phi))
    t2 = theta * theta
    y = theta * (_A1 + _A2 * t2 + t2**3 * (_A3 + _A4 * t2))
    x = 2.0 * math.sqrt(3.0) * lam * np.cos(theta) / (3.0 * _dy(theta))
    return x, y


def equal_earth_inverse(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map coordinates -> latitude, longitude (degrees) and a mask of points on the map."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    y_max = equal_earth(np.array(90.0), np.array(0.0))[1]
    yc = np.clip(y, -y_max, y_max)
    theta = yc / _A1
    for _ in range(8):  # Newton on y(θ) = yc: monotone, converges to 1e-15 in ~5 steps
        t2 = theta * theta
        f = theta * (_A1 + _A2 * t2 + t2**3 * (_A3 + _A4 * t2)) - yc
        theta = theta - f / _dy(theta)
    lam = 3.0 * x * _dy(theta) / (2.0 * math.sqrt(3.0) * np.cos(theta))
    lat = np.rad2deg(np.arcsin(np.clip(np.sin(theta) / _M, -1.0, 1.0)))
    on_map = (np.abs(lam) <= math.pi) & (np.abs(y) <= y_max)
    return lat, np.rad2deg(lam), on_map


@functools.lru_cache(maxsize=1)
def load_basemap() -> tuple[np.ndarray, ...]:
    """Coastline and border rings of Natural Earth 1:110m countries: each (K, 2) (lon, lat) degrees."""
    ref = resources.files("globeflow.viz") / "data" / "ne_110m_countries.npz"
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as d:
        pts = d["lonlat"].astype(np.float64) / float(d["scale"])
        off = d["ring_offsets"]
    return tuple(pts[a:b] for a, b in itertools.pairwise(off))


def _outline(n: int = 361) -> np.ndarray:
    """The map's boundary (meridians ±180°) as a closed (2n, 2) path of x, y."""
    lat = np.linspace(-90.0, 90.0, n)
    xr, yr = equal_earth(lat, np.full(n, 180.0))
    xl, yl = equal_earth(lat[::-1], np.full(n, -180.0))
    return np.concatenate([np.stack([xr, yr], 1), np.stack([xl, yl], 1)])


def _contour_lines(dmap: DensityMap, threshold: float) -> list[np.ndarray]:
    """Iso-lines {log p = threshold} of the raster as (K, 2) (lon, lat) paths."""
    from globeflow.viz.export import _padded

    lat, lon, v = _padded(dmap.lat, dmap.lon, dmap.log_prob)
    gen = contourpy.contour_generator(x=lon, y=lat, z=v, line_type=contourpy.LineType.Separate)
    return list(gen.lines(float(threshold)))


def _log10_relative(v):
    """log p per steradian -> log₁₀ of p relative to the uniform density 1/4π (the maps' colour
    scale: 0 is "as likely as anywhere on Earth on average", 2 is "100 times more likely")."""
    return (v + math.log(4.0 * math.pi)) / math.log(10.0)


def times_label(r: float) -> str:
    """Tick label of the relative scale: r = log₁₀ ratio -> "×1", "×100", "×10⁴", "×0.1", "×10⁻³"."""
    k = round(float(r))
    if abs(r - k) > 1e-6:
        return f"×{10.0**r:.2g}"
    if 0 <= k <= 3:
        return f"×{10**k:,}"
    if -2 <= k < 0:
        return f"×{10.0**k:g}"
    sup = str(k).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return f"×10{sup}"


def _world_image(dmap: DensityMap, width_px: int, floor_mass: float):
    """Equal Earth raster of ``dmap``: (image of log₁₀ p / p_uniform, NaN off-map and below the
    top-``floor_mass`` HPD floor; extent half-widths x_max, y_max; floor; max), scaled."""
    x_max = float(equal_earth(np.array(0.0), np.array(180.0))[0])
    y_max = float(equal_earth(np.array(90.0), np.array(0.0))[1])
    nx = int(width_px)
    ny = round(nx * y_max / x_max)
    gx, gy = np.meshgrid(np.linspace(-x_max, x_max, nx), np.linspace(y_max, -y_max, ny))
    lat, lon, on_map = equal_earth_inverse(gx, gy)
    img = np.full(gx.shape, np.nan)
    img[on_map] = dmap.interpolate(lat[on_map], wrap_longitude(lon[on_map]))
    floor = float(dmap.hpd_threshold(floor_mass)) if floor_mass < 1.0 else -np.inf
    vmax = float(np.nanmax(img))
    img = np.where(img >= floor, _log10_relative(img), np.nan)
    return img, x_max, y_max, _log10_relative(floor), _log10_relative(vmax)


def draw_world(
    ax,
    dmap: DensityMap,
    *,
    samples: np.ndarray | None = None,
    estimate: Sequence[float] | None = None,
    truth: Sequence[float] | None = None,
    regions: Sequence[tuple[float, float]] | None = None,
    width_px: int = 1600,
    floor_mass: float = 0.999,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """Draw ``dmap`` with the basemap, contours and markers on a matplotlib ``ax`` (Equal Earth).

    Arguments as in :func:`plot_density_map`; ``vmin``/``vmax`` (log₁₀ p / p_uniform) override the
    colour range. Returns (the image artist, the legend handles).
    """
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Polygon

    img, x_max, y_max, floor, top = _world_image(dmap, width_px, floor_mass)
    ax.set_axis_off()
    ax.set_aspect("equal")
    ax.set_xlim(-x_max * 1.01, x_max * 1.01)
    ax.set_ylim(-y_max * 1.02, y_max * 1.02)
    outline = _outline()
    ax.add_patch(Polygon(outline, closed=True, facecolor="#eef3f7", edgecolor="none", zorder=0))
    rings = load_basemap()
    proj = [np.stack(equal_earth(r[:, 1], r[:, 0]), 1) for r in rings]
    land = [Polygon(p, closed=True) for p in proj]
    ax.add_collection(PatchCollection(land, facecolor="#e3e0d8", edgecolor="none", zorder=1))
    for lat_g in range(-60, 61, 30):
        g = np.stack(equal_earth(np.full(181, lat_g), np.linspace(-180, 180, 181)), 1)
        ax.plot(g[:, 0], g[:, 1], color="#c8ced4", lw=0.3, zorder=1.5)
    for lon_g in range(-150, 151, 30):
        g = np.stack(equal_earth(np.linspace(-90, 90, 91), np.full(91, lon_g)), 1)
        ax.plot(g[:, 0], g[:, 1], color="#c8ced4", lw=0.3, zorder=1.5)
    im = ax.imshow(
        img,
        extent=(-x_max, x_max, -y_max, y_max),
        origin="upper",
        cmap="magma_r",
        vmin=vmin if vmin is not None else (floor if np.isfinite(floor) else None),
        vmax=vmax if vmax is not None else top,
        interpolation="nearest",
        alpha=0.85,
        zorder=2,
    )
    ax.add_collection(LineCollection(proj, colors="#5a5a5a", linewidths=0.25, zorder=3))
    ax.add_patch(Polygon(outline, closed=True, facecolor="none", edgecolor="#7a828a", lw=0.6, zorder=3))
    handles = []
    for k, (level, tau) in enumerate(sorted(regions or [], key=lambda lt: lt[0])):
        color, ls = REGION_STYLES[k % len(REGION_STYLES)]
        lines = [np.stack(equal_earth(ln[:, 1], ln[:, 0]), 1) for ln in _contour_lines(dmap, tau)]
        # Above the samples: they fill the regions and would hide the lines.
        lc = LineCollection(lines, colors=color, linewidths=0.9, linestyles=ls, zorder=5.5)
        lc.set_label(f"{100 * level:g}% region")
        ax.add_collection(lc)
        handles.append(lc)
    if samples is not None:
        s = np.asarray(samples, dtype=np.float64).reshape(-1, 2)
        sx, sy = equal_earth(s[:, 0], s[:, 1])
        ax.scatter(sx, sy, s=1.2, c=SAMPLE_COLOR, alpha=0.45, lw=0, zorder=5)
        handles.append(Line2D([], [], ls="", marker=".", color=SAMPLE_COLOR, label=f"{len(s)} samples"))
    for point, (marker, color, size, label) in ((estimate, ESTIMATE_STYLE), (truth, TRUTH_STYLE)):
        if point is not None:
            px, py = equal_earth(np.array(point[0]), np.array(point[1]))
            handles.append(
                ax.scatter(
                    px, py, s=size, marker=marker, c=color, edgecolors="black", linewidths=0.6, zorder=6, label=label
                )
            )
    return im, handles


#: Line colour and style of the credible regions' contours, smallest level first.
REGION_STYLES = [("#0b6e4f", "-"), ("#1f5fa8", "--"), ("#6a3d9a", ":")]
SAMPLE_COLOR = "#08306b"
#: (marker, colour, size, label) of the point estimate and of the true location.
ESTIMATE_STYLE = ("*", "#ffd92f", 110, "estimate")
TRUTH_STYLE = ("X", "#00bcd4", 55, "true location")


def plot_density_map(
    dmap: DensityMap,
    out_png: str | os.PathLike,
    *,
    samples: np.ndarray | None = None,
    estimate: Sequence[float] | None = None,
    truth: Sequence[float] | None = None,
    regions: Sequence[tuple[float, float]] | None = None,
    title: str | None = None,
    width_px: int = 1600,
    floor_mass: float = 0.999,
) -> Path:
    """Draw ``dmap`` on an Equal Earth world map and write it to ``out_png`` (atomically).

    ``samples`` (S, 2) latitude/longitude degrees drawn as dots; ``estimate`` and ``truth``
    (lat, lon) as a star and a cross; ``regions`` [(level, log-density threshold), …] as
    contours (e.g. from :func:`globeflow.viz.export.region_thresholds`). The colour is how many
    times more likely than the world average (log scale); pixels outside the map's
    top-``floor_mass`` HPD region are left uncoloured so that the basemap shows through.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_max = float(equal_earth(np.array(0.0), np.array(180.0))[0])
    y_max = float(equal_earth(np.array(90.0), np.array(0.0))[1])
    nx = int(width_px)
    ny = round(nx * y_max / x_max)
    dpi = 200
    fig = Figure(figsize=(nx / dpi * 1.08, ny / dpi * 1.45), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.17, 0.96, 0.74))
    im, handles = draw_world(
        ax,
        dmap,
        samples=samples,
        estimate=estimate,
        truth=truth,
        regions=regions,
        width_px=width_px,
        floor_mass=floor_mass,
    )
    if handles:
        ax.legend(
            handles=handles, loc="lower left", fontsize=6, frameon=True, framealpha=0.85, bbox_to_anchor=(0.0, -0.02)
        )
    from globeflow.describe import map_annotations

    words = map_annotations(None, kind="exact")
    marks = [(_log10_relative(tau), level) for level, tau in (regions or [])]
    return finish_map_figure(
        fig, im, out_png, label=words.legend, title=title, dpi=dpi, colorbar_y=0.09, marks=marks, label_size=6
    )


def finish_map_figure(
    fig,
    im,
    out_png: str | os.PathLike,
    *,
    label: str,
    title: str | None,
    dpi: int,
    colorbar_y: float,
    title_size: int = 9,
    marks: Sequence[tuple[float, float]] = (),
    label_size: float = 7,
    colorbar_box: tuple[float, float, float, float] | None = None,
    credit: str = "Equal Earth projection · Natural Earth 1:110m",
) -> Path:
    """The shared bottom of every map: colour bar of ``im`` in relative terms (ticks "×1",
    "×10", … at powers of ten; ``marks`` [(value, level)] drawn on it where each level's
    region begins, solid for 50%, dashed otherwise), its ``label``, the title, the credit;
    atomic PNG write. Sizes in points (``label_size`` for the bar's label and ticks)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    cax = fig.add_axes(colorbar_box or (0.3, colorbar_y, 0.4, 0.025))
    cb = fig.colorbar(im, cax=cax, orientation="horizontal")
    cb.ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    cb.ax.xaxis.set_major_formatter(FuncFormatter(lambda r, _pos: times_label(r)))
    cb.set_label(label, fontsize=label_size)
    cb.ax.tick_params(labelsize=label_size)
    lo, hi = im.get_clim()
    for value, level in marks:
        if lo <= value <= hi:
            ls = "-" if abs(level - 0.5) < 1e-9 else "--"
            cb.ax.axvline(value, color="black", lw=1.6, ls=ls)
            cb.ax.text(value, 1.15, f"{100 * level:g}%", transform=cb.ax.get_xaxis_transform(),
                       ha="center", va="bottom", fontsize=label_size)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=title_size, y=0.97)
    # The credit sits in the top corner: the bottom holds the colour bar and its explanation.
    fig.text(0.995, 0.995, credit, ha="right", va="top", fontsize=max(5, label_size - 4), color="#808080")

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=dpi)

    return atomic_write(out_png, write)
