"""Global density maps of one embedding's predictive density, at few exact evaluations.

Exact log-densities of a flow cost an ODE solve each, so a 1° raster (64,800 pixels)
evaluated pixel by pixel is out of reach on a CPU. :func:`density_map` instead works on the
hierarchical equal-area grid of :mod:`globeflow.density.grid`:

1. evaluate the exact log p at the centres of a coarse grid (≈ 8° cells, ~650 points);
2. at each level, select the cells that matter: those holding the top ``mass_fraction`` of the
   mass (sorted by exp(log p)·area) or containing one of the model's own samples (which find
   modes too narrow for the coarse grid to see), grown by one ring of neighbours; keep those
   whose interpolation error is still above ``tol`` nats — measured as the *surplus*
   |exact − interpolated from the parent level| at the cell (adaptive sparse-grid criterion),
   ¼ of the parent's for cells not evaluated (linear interpolation error is O(h²));
3. evaluate their four children exactly; every other child inherits the interpolated value;
4. stop when the cells reach ``min_cell_deg``, and interpolate the finest level (cubic
   Lagrange in log p, exact for the quadratic log p of a vMF peak up to O(h⁴) terms) onto the
   latitude/longitude raster.

Smooth, broad densities stop after a level or two (their surplus falls below ``tol``), sharp
modes are refined only where they are, so the number of exact evaluations follows the
density's complexity, not the raster's size.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from globeflow.density.grid import EqualAreaGrid
from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz, xyz_to_latlon

__all__ = [
    "DensityMap",
    "LogProbFn",
    "compare_to_exact",
    "density_map",
    "density_map_for_method",
    "exact_log_prob_raster",
    "log_prob_fn_from_method",
    "raster_axes",
]

_LOG_ZERO = -1000.0
#: log p more than this many nats below the map's maximum is raised to that floor: it changes
#: the mass by < 4π·e⁻⁶⁰ relative to the peak, and keeps cubic interpolation from ringing
#: across a jump to a zero density (a step of 1000 nats would overshoot by ~100).
DYNAMIC_RANGE_NATS = 60.0

#: log p at unit vectors (P, 3) float64 -> (P,) float64, natural log per steradian, for one embedding.
LogProbFn = Callable[[np.ndarray], np.ndarray]


def log_prob_fn_from_method(
    method: Any,
    emb: Any,
    *,
    chunk_size: int = 8192,
    guidance: float = 0.0,
    **options: Any,
) -> LogProbFn:
    """Make a :data:`LogProbFn` from a globeflow ``Method`` and ONE embedding ``emb`` (D,) or (1, D).

    Points go through ``method.log_prob_xyz`` in chunks of ``chunk_size`` (the ODE likelihood
    of flow methods holds a few activations per point and may use autograd, so no
    ``inference_mode`` here). ``options`` are passed on (e.g. the likelihood solver's steps).
    """
    import torch

    from globeflow.methods.base import as_embedding

    method._check_likelihood()
    if method.density_space != "S2":
        raise ValueError(
            f"method: {method.name!r} has density_space {method.density_space!r}; a map on "
            "the sphere needs a density per steradian ('S2')"
        )
    e = np.asarray(emb.detach().cpu() if isinstance(emb, torch.Tensor) else emb)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or e.shape[0] != 1:
        raise ValueError(f"emb: expected one embedding, shape (D,) or (1, D), got {e.shape}")
    emb_t = as_embedding(e, method.embedding_dim, device=method.device)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")

    def log_prob_fn(xyz: np.ndarray) -> np.ndarray:
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        out = np.empty(xyz.shape[0])
        for start in range(0, xyz.shape[0], chunk_size):
            x = torch.as_tensor(xyz[start : start + chunk_size], dtype=torch.float32, device=method.device)
            lp = method.log_prob_xyz(emb_t, x[None], guidance=float(guidance), **options)
            out[start : start + chunk_size] = lp.detach().double().cpu().numpy()[0]
        return out

    return log_prob_fn


def raster_axes(resolution_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre latitudes (H,) south to north and longitudes (W,) west to east, degrees."""
    resolution_deg = float(resolution_deg)
    h = round(180.0 / resolution_deg)
    w = round(360.0 / resolution_deg)
    if not math.isfinite(resolution_deg) or resolution_deg <= 0 or abs(h * resolution_deg - 180.0) > 1e-9:
        raise ValueError(f"resolution_deg must divide 180 (e.g. 0.25, 0.5, 1, 2, 4), got {resolution_deg}")
    lat = -90.0 + (np.arange(h) + 0.5) * resolution_deg
    lon = -180.0 + (np.arange(w) + 0.5) * resolution_deg
    return lat, lon


def _pixel_area(lat: np.ndarray, resolution_deg: float) -> np.ndarray:
    """Steradians (H, 1) of the pixels of each raster row: Δλ (sin φ₁ − sin φ₀)."""
    half = np.deg2rad(resolution_deg / 2.0)
    phi = np.deg2rad(lat)
    return (np.deg2rad(resolution_deg) * (np.sin(phi + half) - np.sin(phi - half)))[:, None]


def _call(log_prob_fn: LogProbFn, xyz: np.ndarray) -> np.ndarray:
    out = np.asarray(log_prob_fn(xyz), dtype=np.float64).reshape(-1)
    if out.shape[0] != xyz.shape[0]:
        raise ValueError(f"log_prob_fn: returned {out.shape[0]} values for {xyz.shape[0]} points")
    if np.isnan(out).any() or np.isposinf(out).any():
        raise ValueError("log_prob_fn: returned NaN or +inf log-densities")
    # A zero density (log p = −inf) would turn interpolation weights into NaN; e^−1000 is 0
    # in float64 all the same.
    return np.maximum(out, _LOG_ZERO)


@dataclass(frozen=True)
class DensityMap:
    """Log-density of one embedding on a latitude/longitude raster and on equal-area cells.

    ``lat`` (H,), ``lon`` (W,) pixel centres in degrees (south→north, west→east); ``log_prob``
    (H, W) natural log per steradian at the pixel centres; ``grid`` the finest equal-area level,
    ``cell_log_prob`` (N,) its values at cell centres, ``cell_exact`` (N,) which of them were
    evaluated exactly at this level (the others are interpolated from the coarser levels); ``num_evaluations`` how many points
    ``log_prob_fn`` was called on in all; ``sample_abs_error`` mean and max |map − exact| at the
    samples passed in (a free a-posteriori error check, NaN without samples).
    """

    lat: np.ndarray
    lon: np.ndarray
    log_prob: np.ndarray
    grid: EqualAreaGrid
    cell_log_prob: np.ndarray
    cell_exact: np.ndarray
    num_evaluations: int
    resolution_deg: float
    sample_abs_error: tuple[float, float] = (math.nan, math.nan)

    @property
    def pixel_area(self) -> np.ndarray:
        """Steradians (H, 1) of each raster row's pixels."""
        return _pixel_area(self.lat, self.resolution_deg)

    @functools.cached_property
    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """log p (Q,) and weights (Q,) in steradians of a quadrature rule on the whole sphere.

        The equal-area cells with their centre values (midpoint rule), except the cells
        larger than 1.5 × the raster's resolution — the polar rows, whose height shrinks only
        by √2 per level — and the three rows nearest each pole, which are split into m × m
        equal-area sub-cells (uniform in z and longitude) valued by interpolation, so that a
        narrow mode at a pole integrates right.
        """
        g = self.grid
        size = g.cell_size_deg()
        rows, cols = g.row_col()
        # The rows next to the polar ones are thin and long: the midpoint rule is poor there
        # too for a mode at the pole narrower than the cells (measured: 19% of the mass of a
        # κ = 10⁴ mode 1.5° from the pole); they are few (~6 rows).
        near_pole = (rows < 3) | (rows >= g.num_rows - 3)
        big = (size > 1.5 * self.resolution_deg) | near_pole
        log_p = [self.cell_log_prob[~big]]
        weights = [np.full(int((~big).sum()), g.cell_area)]
        if big.any():
            idx = np.flatnonzero(big)
            r, c = rows[idx], cols[idx]
            m = max(3, math.ceil(2.0 * size[big].max() / self.resolution_deg))
            f = (np.arange(m) + 0.5) / m
            z0, dz = g.z_edges[r], g.z_edges[r + 1] - g.z_edges[r]
            width = 360.0 / g.n_cols[r]
            z = np.repeat(z0[:, None] + dz[:, None] * f, m, axis=1)  # (K, m·m): z-major
            lon = np.tile(-180.0 + (c * width)[:, None] + width[:, None] * f, (1, m))
            lat = np.rad2deg(np.arcsin(np.clip(z, -1.0, 1.0)))
            log_p.append(self.grid.interpolate(self.cell_log_prob, lat.ravel(), lon.ravel(), order=3))
            weights.append(np.full(idx.size * m * m, g.cell_area / (m * m)))
        return np.concatenate(log_p), np.concatenate(weights)

    def mass(self) -> float:
        """∫ p dΩ over the sphere by :attr:`quadrature` (1 for a normalised density)."""
        log_p, w = self.quadrature
        return float((np.exp(log_p) * w).sum())

    def raster_mass(self) -> float:
        """∫ p dΩ over the raster: Σ exp(log p)·pixel area."""
        return float((np.exp(self.log_prob) * self.pixel_area).sum())

    def interpolate(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """The map's log p at arbitrary points, degrees (P,), (P,) -> (P,)."""
        return self.grid.interpolate(self.cell_log_prob, lat, lon, order=3)

    def hpd_threshold(self, level: float | np.ndarray) -> np.ndarray | float:
        """log-density τ with ∫_{p ≥ τ} p = ``level`` (of the map's own mass), by quadrature.

        ``level`` scalar or (L,) in (0, 1) -> same shape. Prefer
        :func:`globeflow.density.regions.hpd_threshold` on the model's samples when available.
        """
        lv = np.asarray(level, dtype=np.float64)
        if np.any((lv <= 0) | (lv >= 1)):
            raise ValueError(f"level must be in (0, 1), got {level}")
        log_p, w = self.quadrature
        order = np.argsort(-log_p)
        v = log_p[order]
        m = np.cumsum(np.exp(v - v[0]) * w[order])
        m /= m[-1]
        idx = np.searchsorted(m, lv, side="left").clip(0, v.size - 1)
        out = v[idx]
        return float(out) if out.ndim == 0 else out

    def region_mass(self, threshold: float) -> float:
        """The map's mass in {log p ≥ threshold}, as a fraction of its total mass."""
        log_p, w = self.quadrature
        p = np.exp(log_p - log_p.max()) * w
        return float(p[log_p >= threshold].sum() / p.sum())

    def region_area_km2(self, threshold: float) -> float:
        """Area in km² of {log p ≥ threshold}, by quadrature."""
        log_p, w = self.quadrature
        return float(w[log_p >= threshold].sum() * EARTH_RADIUS_KM**2)


def _check_map_options(mass_fraction: float, tol: float, min_cell_deg: float, base_deg: float, order: int) -> None:
    if not 0.0 < mass_fraction <= 1.0:
        raise ValueError(f"mass_fraction must be in (0, 1], got {mass_fraction}")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be positive, got {tol}")
    if min_cell_deg <= 0 or base_deg <= 0:
        raise ValueError("base_deg and min_cell_deg must be positive")
    if order not in (1, 3):
        raise ValueError(f"order must be 1 or 3, got {order}")


def _check_samples(
    samples_xyz: np.ndarray | None, sample_log_prob: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``samples_xyz`` (S, 3) and ``sample_log_prob`` (S,) as float64 arrays (or None), checked."""
    s = slp = None
    if samples_xyz is not None:
        s = np.asarray(samples_xyz, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != 3 or not np.isfinite(s).all():
            raise ValueError(f"samples_xyz: expected finite (S, 3) unit vectors, got shape {s.shape}")
        if sample_log_prob is not None:
            slp = np.asarray(sample_log_prob, dtype=np.float64).reshape(-1)
            if slp.shape[0] != s.shape[0]:
                raise ValueError(f"sample_log_prob: {slp.shape[0]} values for {s.shape[0]} samples")
    return s, slp


def density_map(
    log_prob_fn: LogProbFn,
    resolution_deg: float = 1.0,
    *,
    samples_xyz: np.ndarray | None = None,
    sample_log_prob: np.ndarray | None = None,
    base_deg: float = 8.0,
    min_cell_deg: float | None = None,
    mass_fraction: float = 0.999,
    tol: float = 0.05,
    order: int = 3,
    max_evaluations: int | None = None,
) -> DensityMap:
    """Adaptive density map of one embedding (see the module docstring for the algorithm).

    ``log_prob_fn``: unit vectors (P, 3) -> (P,) natural log per steradian. ``samples_xyz``
    (S, 3): samples of the same density (recommended: they locate modes narrower than
    ``base_deg``); ``sample_log_prob`` (S,) their exact log p, used only to report the map's
    error at them. ``min_cell_deg`` (default ``resolution_deg``): the finest cell side (cubic interpolation
    of log p makes finer cells than the raster's unnecessary: measured in the tests);
    ``tol``: stop refining where the interpolation surplus is below this many nats; log p
    is floored at its maximum − :data:`DYNAMIC_RANGE_NATS` (far tails only);
    ``max_evaluations``: stop refining before exceeding this budget (with a warning).
    """
    lat_r, lon_r = raster_axes(resolution_deg)
    min_cell_deg = float(resolution_deg if min_cell_deg is None else min_cell_deg)
    _check_map_options(mass_fraction, tol, min_cell_deg, base_deg, order)
    s, slp = _check_samples(samples_xyz, sample_log_prob)

    def sample_cells_of(g: EqualAreaGrid) -> np.ndarray:
        m = np.zeros(g.num_cells, bool)
        if s is not None:
            m[g.cell_index_xyz(s)] = True
        return m

    grid = EqualAreaGrid.build(base_deg)
    values = _call(log_prob_fn, grid.centers_xyz())
    values = np.maximum(values, values.max() - DYNAMIC_RANGE_NATS)
    exact = np.ones(grid.num_cells, bool)
    err = np.full(grid.num_cells, np.inf)
    evaluations = grid.num_cells
    # Levels until the typical cell side (√A) is at most min_cell_deg; the few cells at the
    # poles may stay a little larger (they are still of the same area).
    side = math.degrees(math.sqrt(grid.cell_area))
    num_levels = max(0, math.ceil(math.log2(side / min_cell_deg)))
    for _ in range(num_levels):
        m = np.exp(values - values.max())
        rank = np.argsort(-m)
        cum = np.cumsum(m[rank]) / m.sum()
        # Cells sorted by mass until the one that reaches mass_fraction, inclusive.
        keep = rank[: int(np.searchsorted(cum, mass_fraction, side="left")) + 1]
        relevant = np.zeros(grid.num_cells, bool)
        relevant[keep] = True
        relevant |= sample_cells_of(grid)
        big = grid.cell_size_deg() > min_cell_deg
        # With nothing left to refine the levels still go on, by interpolation alone, so that
        # the returned cells are fine enough for their midpoint-rule mass to be accurate.
        split = grid.dilate(relevant & (err > tol)) & big
        fine = grid.refine()
        parent = fine.parent_index(grid)
        new = split[parent]
        if max_evaluations is not None and evaluations + int(new.sum()) > max_evaluations:
            if new.any():
                warnings.warn(
                    f"density_map: stopped refining at {evaluations} evaluations (max_evaluations={max_evaluations})",
                    stacklevel=2,
                )
            max_evaluations = evaluations  # from here on, levels by interpolation alone
            new = np.zeros_like(new)
        centers = fine.centers_latlon()
        interp = grid.interpolate(values, centers[:, 0], centers[:, 1], order=order)
        fine_values = interp.copy()
        idx = np.flatnonzero(new)
        if idx.size:
            fine_values[idx] = _call(log_prob_fn, latlon_to_xyz(centers[idx, 0], centers[idx, 1]))
            fine_values = np.maximum(fine_values, fine_values.max() - DYNAMIC_RANGE_NATS)
        evaluations += idx.size
        fine_err = err[parent] / 4.0
        # Surplus of a refined cell: the largest of its four children's, shared by all four.
        child_surplus = np.abs(fine_values - interp)
        worst = np.zeros(grid.num_cells)
        np.maximum.at(worst, parent[idx], child_surplus[idx])
        fine_err[idx] = worst[parent[idx]]
        grid, values, err = fine, fine_values, fine_err
        exact = new
    ll = np.meshgrid(lat_r, lon_r, indexing="ij")
    raster = grid.interpolate(values, ll[0].ravel(), ll[1].ravel(), order=order)
    raster = np.maximum(raster.reshape(ll[0].shape), values.max() - DYNAMIC_RANGE_NATS)
    sample_err = (math.nan, math.nan)
    if s is not None and slp is not None:
        sll = xyz_to_latlon(s)
        d = np.abs(grid.interpolate(values, sll[:, 0], sll[:, 1], order=order) - slp)
        sample_err = (float(d.mean()), float(d.max()))
    dmap = DensityMap(
        lat=lat_r,
        log_prob=raster,
        lon=lon_r,
        grid=grid,
        cell_log_prob=values,
        cell_exact=exact,
        num_evaluations=int(evaluations),
        resolution_deg=float(resolution_deg),
        sample_abs_error=sample_err,
    )
    mass = dmap.mass()
    if abs(mass - 1.0) > 0.05:
        # A normalised density must integrate to 1: a deficit means mass the grid never saw
        # (modes narrower than base_deg with no sample in them) or an unnormalised log_prob_fn.
        warnings.warn(
            f"density_map: the map holds {mass:.3f} of the probability (expected 1); "
            "pass samples_xyz of the density, or a smaller base_deg",
            stacklevel=2,
        )
    return dmap


def exact_log_prob_raster(
    log_prob_fn: LogProbFn, resolution_deg: float = 1.0, *, chunk_size: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference map: exact log p at every pixel centre -> lat (H,), lon (W,), (H, W)."""
    lat, lon = raster_axes(resolution_deg)
    ll = np.meshgrid(lat, lon, indexing="ij")
    xyz = latlon_to_xyz(ll[0].ravel(), ll[1].ravel())
    out = np.concatenate([_call(log_prob_fn, xyz[i : i + chunk_size]) for i in range(0, xyz.shape[0], chunk_size)])
    return lat, lon, out.reshape(ll[0].shape)


def compare_to_exact(dmap: DensityMap, exact_log_prob: np.ndarray, *, mass_fraction: float = 0.99) -> dict[str, float]:
    """Error of a map against the exact per-pixel map ``exact_log_prob`` (H, W).

    "Where the mass is" = the pixels of the exact map's top-``mass_fraction`` HPD set.
    Returns max and mean |Δ log p| there, the mass-weighted mean |Δ log p| over the whole
    sphere (Σ p |Δ| dΩ / Σ p dΩ), the total-variation distance ½ Σ |p − p̂| dΩ, and the masses.
    """
    exact_log_prob = np.asarray(exact_log_prob, dtype=np.float64)
    if exact_log_prob.shape != dmap.log_prob.shape:
        raise ValueError(f"exact_log_prob: shape {exact_log_prob.shape} does not match the map's {dmap.log_prob.shape}")
    area = np.broadcast_to(dmap.pixel_area, exact_log_prob.shape)
    w = np.exp(exact_log_prob) * area
    order = np.argsort(-w, axis=None)
    cum = np.cumsum(w.ravel()[order]) / w.sum()
    where = np.zeros(w.size, bool)
    where[order[: int(np.searchsorted(cum, mass_fraction)) + 1]] = True
    where = where.reshape(w.shape)
    d = np.abs(dmap.log_prob - exact_log_prob)
    return {
        "max_abs_where_mass": float(d[where].max()),
        "mean_abs_where_mass": float(d[where].mean()),
        "mass_weighted_abs": float((w * d).sum() / w.sum()),
        "total_variation": float(0.5 * np.abs(w - np.exp(dmap.log_prob) * area).sum()),
        "pixels_where_mass": int(where.sum()),
        "exact_mass": float(w.sum()),
        "map_mass": dmap.raster_mass(),
        "cell_mass": dmap.mass(),
        "num_evaluations": dmap.num_evaluations,
    }


def density_map_for_method(
    method: Any,
    emb: Any,
    resolution_deg: float = 1.0,
    *,
    num_samples: int = 1000,
    seed: int = 0,
    guidance: float = 0.0,
    sample_options: dict[str, Any] | None = None,
    log_prob_options: dict[str, Any] | None = None,
    chunk_size: int = 8192,
    **map_options: Any,
) -> tuple[DensityMap, Any]:
    """Density map of a trained method for ONE embedding ``emb`` (D,) or (1, D).

    Draws ``num_samples`` samples with their exact log-densities
    (``method.sample_with_log_prob``; ODE methods carry log p along the solve, so these come
    at the cost of sampling), uses them to seed the refinement and to check the map, and
    evaluates the exact density elsewhere through :func:`log_prob_fn_from_method`. Returns the
    map and the samples (a ``SamplesWithLogProb`` of one row: latlon (1, S, 2), log_prob (1, S),
    xyz (1, S, 3)), whose log-densities give the credible regions
    (:func:`globeflow.density.regions.credible_regions`).
    """
    fn = log_prob_fn_from_method(method, emb, chunk_size=chunk_size, guidance=guidance, **(log_prob_options or {}))
    e = np.asarray(emb.detach().cpu() if hasattr(emb, "detach") else emb, dtype=np.float32).reshape(1, -1)
    samples = method.sample_with_log_prob(e, num_samples, guidance=guidance, seed=seed, **(sample_options or {}))
    dmap = density_map(
        fn,
        resolution_deg,
        samples_xyz=samples.xyz[0],
        sample_log_prob=samples.log_prob[0],
        **map_options,
    )
    return dmap, samples
