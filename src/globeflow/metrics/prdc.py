"""Precision, recall, density and coverage on the sphere (Appendix C, Eqs. B–F).

X are true locations (N), Y locations drawn from the model (M). B(z, Z) is the great-circle
ball around z whose radius is the distance from z to its k-th nearest neighbour in Z (itself
excluded; k = 3 as in the paper), and manifold(Z) = ∪ B(z, Z) (Eq. B). Then

* precision (Eq. C) = fraction of y in manifold(X);
* recall    (Eq. D) = fraction of x in manifold(Y);
* density   (Eq. E) = Σ_y #{x : y ∈ B(x, X)} / (k M);
* coverage  (Eq. F) = fraction of x whose ball B(x, X) holds at least one y.

Membership is strict (d < radius), as in Naeem et al. (2020), so that a set scored against
itself has precision = recall = coverage = 1 and density = 1 exactly (no ties).

**Exact, whole sets.** Points are unit vectors; the chord ‖a − b‖ = 2 sin(θ/2) is monotone in
the great-circle angle θ, so great-circle balls are Euclidean balls of the chord radius and a
KD-tree in R³ answers every query exactly. The ball queries go from each ball's centre with
its own radius (``cKDTree.query_ball_point`` with per-point radii), so the work is the number
of (ball, point) incidences, about k·M·density, not N·M. Candidates come from a radius enlarged
by a relative 1e-9; the decision is then taken on chords recomputed by one formula,
:func:`_chord`, the same one that computed the radii, so a point exactly at a k-th neighbour's
distance is never counted in. Queries run in chunks only to bound memory: every point is
checked against the whole other set.
"""

from __future__ import annotations

import numpy as np

from globeflow.geometry.coords import latlon_to_xyz

__all__ = ["PRDC_K", "knn_radii", "prdc", "prdc_latlon"]

#: Number of neighbours of the paper (Appendix C).
PRDC_K = 3
_CHUNK = 16384


def _chord(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a − b‖ of rows (n, 3), (n, 3) -> (n,); the one chord formula (symmetric bit for bit)."""
    d = a - b
    return np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])


def _unit(xyz: np.ndarray, field: str, *, owned: bool = False) -> np.ndarray:
    """``xyz`` checked and renormalised; ``owned``: the caller's array may be divided in place
    (no second copy of a whole point set, 24 B a point)."""
    a = np.ascontiguousarray(xyz, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{field}: expected (N, 3) unit vectors, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{field}: contains NaN or inf")
    norm = np.linalg.norm(a, axis=1)
    if np.abs(norm - 1.0).max(initial=0.0) > 1e-6:
        raise ValueError(f"{field}: rows must be unit vectors (max |‖x‖ − 1| = {np.abs(norm - 1).max():.3g})")
    if owned or a is not xyz:
        a /= norm[:, None]
        return a
    return a / norm[:, None]


def knn_radii(xyz: np.ndarray, k: int = PRDC_K, tree=None) -> np.ndarray:
    """Chord distance (N,) from each point to its k-th nearest neighbour in the set, itself excluded."""
    from scipy.spatial import cKDTree

    tree = tree or cKDTree(xyz)
    out = np.empty(xyz.shape[0], np.float64)
    # In chunks: the (n, k + 1) neighbour arrays of the whole set would cost ~100 B a point.
    for s in range(0, xyz.shape[0], _CHUNK):
        c = xyz[s : s + _CHUNK]
        # k + 1 neighbours: the point itself comes back at distance 0 (or a duplicate does,
        # which is then a genuine neighbour at distance 0 either way).
        _, idx = tree.query(c, k=k + 1)
        d = np.stack([_chord(c, xyz[idx[:, j]]) for j in range(k + 1)], axis=1)
        out[s : s + len(c)] = np.sort(d, axis=1)[:, k]
    return out


def _incidences(centres: np.ndarray, radii: np.ndarray, tree, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The pairs (i, j) with chord(centres[i], points[j]) < radii[i], reduced as they are found
    (memory: one chunk of pairs, not all of them): which centres hold at least one point (bool
    (N,)), which points lie in at least one ball (bool (M,)), and the number of pairs."""
    ball_hit = np.zeros(centres.shape[0], bool)
    point_in = np.zeros(points.shape[0], bool)
    pairs = 0
    for s in range(0, centres.shape[0], _CHUNK):
        c, r = centres[s : s + _CHUNK], radii[s : s + _CHUNK]
        lists = tree.query_ball_point(c, r * (1.0 + 1e-9) + 1e-15, return_sorted=False)
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
        if lengths.sum() == 0:
            continue
        i = np.repeat(np.arange(s, s + len(lists), dtype=np.int64), lengths)
        j = np.fromiter((p for v in lists for p in v), dtype=np.int64, count=int(lengths.sum()))
        keep = _chord(centres[i], points[j]) < radii[i]
        ball_hit[i[keep]] = True
        point_in[j[keep]] = True
        pairs += int(keep.sum())
    return ball_hit, point_in, pairs


def prdc(real_xyz: np.ndarray, fake_xyz: np.ndarray, k: int = PRDC_K) -> dict[str, float]:
    """Precision, recall, density, coverage (Eqs. C–F) of fake points against real ones.

    real_xyz: (N, 3) unit vectors X (true locations); fake_xyz: (M, 3) unit vectors Y (model
    samples); both need more than k points. Returns the four metrics and ``n_real``, ``n_fake``.
    Memory: the two point sets, their k-d trees and a few bytes a point (radii, flags).
    """
    return _prdc(_unit(real_xyz, "real"), _unit(fake_xyz, "fake"), k)


def _prdc(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    """:func:`prdc` of checked unit vectors."""
    from scipy.spatial import cKDTree

    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    for name, z in (("real", x), ("fake", y)):
        if z.shape[0] <= k:
            raise ValueError(f"{name}: need more than k = {k} points, got {z.shape[0]}")
    tree_x, tree_y = cKDTree(x), cKDTree(y)
    r_x = knn_radii(x, k, tree_x)
    r_y = knn_radii(y, k, tree_y)
    # Balls of X against the fakes: precision (C), density (E), coverage (F).
    covered, in_real_manifold, pairs = _incidences(x, r_x, tree_y, y)
    # Balls of Y against the reals: recall (D).
    _, in_fake_manifold, _ = _incidences(y, r_y, tree_x, x)
    return {
        "precision": float(in_real_manifold.mean()),
        "recall": float(in_fake_manifold.mean()),
        "density": float(pairs / (k * y.shape[0])),
        "coverage": float(covered.mean()),
        "n_real": int(x.shape[0]),
        "n_fake": int(y.shape[0]),
    }


def prdc_latlon(real_latlon: np.ndarray, fake_latlon: np.ndarray, k: int = PRDC_K) -> dict[str, float]:
    """:func:`prdc` for (N, 2) and (M, 2) latitude/longitude arrays in degrees."""
    out = []
    for name, a in (("real", real_latlon), ("fake", fake_latlon)):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name}: expected (N, 2) latitude/longitude in degrees, got shape {a.shape}")
        out.append(_unit(np.asarray(latlon_to_xyz(a[:, 0], a[:, 1])), name, owned=True))
    return _prdc(out[0], out[1], k)
