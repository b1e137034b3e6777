"""An exactly equal-area, nearly square, hierarchical grid on S² ("igloo" grid).

The sphere is cut into R latitude rows by boundaries z_0 = −1 < z_1 < … < z_R = 1 in
z = sin(latitude); row r holds n_r cells of equal longitude width 360°/n_r. Archimedes' theorem
(the area between two parallels is 2π Δz) makes a cell's area (z_{r+1} − z_r)·2π/n_r, so
choosing n_r ∝ cos(latitude) (cells nearly square) and then placing the boundaries with
z_{r+1} = z_r + n_r·A/(2π), A = 4π/Σn_r, gives every cell exactly the area A steradians.
The polar rows hold ~3 cells that meet at the pole (no degenerate slivers).

:meth:`EqualAreaGrid.refine` halves every row in z and every cell in longitude: the four
children of a cell again have exactly equal areas (A/4), and cell (r, c) has children
(2r + i, 2c + j), i, j ∈ {0, 1}, so a level of the hierarchy is again an igloo grid.

Values live at cell centres (the z and longitude midpoints); :meth:`EqualAreaGrid.interpolate`
is linear in longitude within a row, then linear in latitude between the rows bracketing the
query, with the pole's value the mean of the polar row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from globeflow.geometry.coords import latlon_to_xyz, xyz_to_latlon

__all__ = ["EqualAreaGrid"]


@dataclass(frozen=True)
class EqualAreaGrid:
    """Rows ``z_edges`` (R + 1,) from −1 to 1 and ``n_cols`` (R,) cells per row.

    Cells are numbered row by row from the south pole, each row from longitude −180° east.
    """

    z_edges: np.ndarray
    n_cols: np.ndarray
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        z = np.asarray(self.z_edges, dtype=np.float64)
        n = np.asarray(self.n_cols, dtype=np.int64)
        if z.ndim != 1 or n.ndim != 1 or z.shape[0] != n.shape[0] + 1 or n.shape[0] < 1:
            raise ValueError(f"z_edges: expected R + 1 boundaries for n_cols of length R, got {z.shape} and {n.shape}")
        if not (z[0] == -1.0 and z[-1] == 1.0 and np.all(np.diff(z) > 0)):
            raise ValueError("z_edges: must increase strictly from -1 to 1")
        if np.any(n < 1):
            raise ValueError("n_cols: every row needs at least one cell")
        object.__setattr__(self, "z_edges", z)
        object.__setattr__(self, "n_cols", n)
        object.__setattr__(self, "offsets", np.concatenate([[0], np.cumsum(n)]))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def build(cls, cell_deg: float) -> EqualAreaGrid:
        """Grid of equal-area cells about ``cell_deg`` degrees on a side (area exactly 4π/N)."""
        cell_deg = float(cell_deg)
        if not (0.0 < cell_deg <= 90.0) or not math.isfinite(cell_deg):
            raise ValueError(f"cell_deg must be in (0, 90], got {cell_deg}")
        rows = max(2, round(180.0 / cell_deg))
        lat_c = np.deg2rad(-90.0 + (np.arange(rows) + 0.5) * 180.0 / rows)
        n = np.maximum(1, np.round(2.0 * np.pi * np.cos(lat_c) / np.deg2rad(180.0 / rows)))
        n = n.astype(np.int64)
        area = 4.0 * np.pi / n.sum()
        z = np.concatenate([[-1.0], -1.0 + np.cumsum(n * area / (2.0 * np.pi))])
        z[-1] = 1.0  # the cumulative sum ends at 1 up to rounding
        return cls(z, n)

    def refine(self) -> EqualAreaGrid:
        """The next level: every cell split into 2 × 2 equal-area children."""
        mid = 0.5 * (self.z_edges[:-1] + self.z_edges[1:])
        z = np.empty(2 * self.num_rows + 1)
        z[0::2] = self.z_edges
        z[1::2] = mid
        return EqualAreaGrid(z, np.repeat(2 * self.n_cols, 2))

    # -- geometry -------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return int(self.n_cols.shape[0])

    @property
    def num_cells(self) -> int:
        return int(self.offsets[-1])

    @property
    def cell_area(self) -> float:
        """Area of every cell in steradians (4π / N)."""
        return 4.0 * np.pi / self.num_cells

    def row_col(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every cell: two (N,) int arrays."""
        rows = np.repeat(np.arange(self.num_rows), self.n_cols)
        cols = np.arange(self.num_cells) - self.offsets[rows]
        return rows, cols

    def row_center_lat(self) -> np.ndarray:
        """Latitude in degrees (R,) of the cell centres of each row (z midpoint)."""
        return np.rad2deg(np.arcsin(0.5 * (self.z_edges[:-1] + self.z_edges[1:])))

    def centers_latlon(self) -> np.ndarray:
        """Cell centres (N, 2) as (latitude, longitude) degrees."""
        rows, cols = self.row_col()
        width = 360.0 / self.n_cols[rows]
        return np.stack([self.row_center_lat()[rows], -180.0 + (cols + 0.5) * width], axis=-1)

    def centers_xyz(self) -> np.ndarray:
        """Cell centres (N, 3) as unit vectors."""
        ll = self.centers_latlon()
        return latlon_to_xyz(ll[:, 0], ll[:, 1])

    def cell_size_deg(self) -> np.ndarray:
        """Side (N,) in degrees of arc: the larger of a cell's height and its widest width."""
        lat_edges = np.rad2deg(np.arcsin(np.clip(self.z_edges, -1.0, 1.0)))
        height = np.diff(lat_edges)
        # The widest parallel of a cell is the one nearest the equator.
        widest = np.where(
            (lat_edges[:-1] < 0) & (lat_edges[1:] > 0),
            0.0,
            np.minimum(np.abs(lat_edges[:-1]), np.abs(lat_edges[1:])),
        )
        width = 360.0 / self.n_cols * np.cos(np.deg2rad(widest))
        return np.repeat(np.maximum(height, width), self.n_cols)

    def cell_index(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Index of the cell containing each point: degrees (P,), (P,) -> (P,) int."""
        z = np.sin(np.deg2rad(np.asarray(lat, dtype=np.float64)))
        rows = np.clip(np.searchsorted(self.z_edges, z, side="right") - 1, 0, self.num_rows - 1)
        n = self.n_cols[rows]
        cols = np.floor((np.asarray(lon, dtype=np.float64) + 180.0) / 360.0 * n).astype(np.int64)
        return self.offsets[rows] + np.mod(cols, n)

    def cell_index_xyz(self, xyz: np.ndarray) -> np.ndarray:
        """Index of the cell containing each unit vector (P, 3) -> (P,) int."""
        ll = xyz_to_latlon(np.asarray(xyz, dtype=np.float64).reshape(-1, 3))
        return self.cell_index(ll[:, 0], ll[:, 1])

    def parent_index(self, coarse: EqualAreaGrid) -> np.ndarray:
        """For a grid made by ``coarse.refine()``: the parent (N,) of each cell in ``coarse``."""
        rows, cols = self.row_col()
        return coarse.offsets[rows // 2] + cols // 2

    # -- neighbourhoods -------------------------------------------------------------------
    def dilate(self, mask: np.ndarray) -> np.ndarray:
        """Boolean (N,) mask grown by one ring of cells (edge and corner neighbours).

        Neighbours across a row boundary are the cells whose longitude span touches the cell's
        span widened by one column; the polar rows' cells all touch at the pole.
        """
        mask = np.asarray(mask, dtype=bool)
        out = mask.copy()
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return out
        rows = np.repeat(np.arange(self.num_rows), self.n_cols)[idx]
        cols = idx - self.offsets[rows]
        n = self.n_cols[rows]
        for dc in (-1, 1):
            out[self.offsets[rows] + np.mod(cols + dc, n)] = True
        lo = (cols - 1) / n  # span in turns, widened by one column each side
        hi = (cols + 2) / n
        for dr in (-1, 1):
            r2 = rows + dr
            ok = (r2 >= 0) & (r2 < self.num_rows)
            r2, lo2, hi2 = r2[ok], lo[ok], hi[ok]
            n2 = self.n_cols[r2]
            first = np.floor(lo2 * n2).astype(np.int64)
            last = np.ceil(hi2 * n2).astype(np.int64) - 1
            span = int((last - first).max(initial=0)) + 1
            for k in range(span):
                c2 = first + k
                sel = c2 <= last
                out[self.offsets[r2[sel]] + np.mod(c2[sel], n2[sel])] = True
        for polar in (0, self.num_rows - 1):
            sl = slice(self.offsets[polar], self.offsets[polar + 1])
            if out[sl].any():
                out[sl] = True
        return out

    # -- interpolation ---------------------------------------------------------------------
    def _row_values(self, values: np.ndarray, rows: np.ndarray, lon: np.ndarray, order: int) -> np.ndarray:
        """Lagrange interpolation of degree ``order`` in longitude within ``rows`` (P,)."""
        n = self.n_cols[rows]
        u = (lon + 180.0) / 360.0 * n - 0.5  # column coordinate of the centres
        c = np.floor(u)
        t = u - c
        c = c.astype(np.int64)
        base = self.offsets[rows]
        if order == 1:
            return (1.0 - t) * values[base + np.mod(c, n)] + t * values[base + np.mod(c + 1, n)]
        # Cubic Lagrange weights for equally spaced nodes −1, 0, 1, 2 at t ∈ [0, 1).
        w = (
            -t * (t - 1.0) * (t - 2.0) / 6.0,
            (t + 1.0) * (t - 1.0) * (t - 2.0) / 2.0,
            -(t + 1.0) * t * (t - 2.0) / 2.0,
            (t + 1.0) * t * (t - 1.0) / 6.0,
        )
        return sum(wk * values[base + np.mod(c + k - 1, n)] for k, wk in enumerate(w))

    def interpolate(self, values: np.ndarray, lat: np.ndarray, lon: np.ndarray, *, order: int = 3) -> np.ndarray:
        """Values at cell centres (N,) -> values at points: degrees (P,), (P,) -> (P,).

        Tensor-product Lagrange interpolation of degree ``order`` (1: linear, 3: cubic, exact
        for cubic polynomials in (latitude, longitude)): first in longitude within each of the
        ``order + 1`` rows whose centres bracket the point, then in latitude across them. Rows
        beyond a pole continue across it: row −1 is row 0 seen from the other side, at latitude
        −180° − φ₀ and longitude λ + 180°, so the interpolant is smooth through the poles.
        """
        if order not in (1, 3):
            raise ValueError(f"order must be 1 or 3, got {order}")
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.num_cells,):
            raise ValueError(f"values: expected shape ({self.num_cells},), got {values.shape}")
        lat = np.asarray(lat, dtype=np.float64).ravel()
        lon = np.asarray(lon, dtype=np.float64).ravel()
        lat_c = self.row_center_lat()
        big_r = self.num_rows
        r0 = np.searchsorted(lat_c, lat, side="right") - 1  # row centred at or below the point
        ks = range(2) if order == 1 else range(-1, 3)
        nodes, vals = [], []
        for k in ks:
            r = r0 + k
            south, north = r < 0, r >= big_r
            actual = np.where(south, -r - 1, np.where(north, 2 * big_r - 1 - r, r))
            actual = np.clip(actual, 0, big_r - 1)  # only for R < 2, where rows repeat
            flip = south | north
            nodes.append(np.where(south, -180.0 - lat_c[actual], np.where(north, 180.0 - lat_c[actual], lat_c[actual])))
            vals.append(self._row_values(values, actual, np.where(flip, lon + 180.0, lon), order))
        out = np.zeros_like(lat)
        for j in range(len(nodes)):
            wj = np.ones_like(lat)
            for m in range(len(nodes)):
                if m != j:
                    wj *= (lat - nodes[m]) / (nodes[j] - nodes[m])
            out += wj * vals[j]
        return out
