"""Precision, recall, density, coverage on the sphere (Eqs. B–F): known answers and a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest

from globeflow.metrics import prdc, prdc_latlon


def _clustered(n: int, rng: np.random.Generator, centres: np.ndarray, spread: float) -> np.ndarray:
    p = centres[rng.integers(0, len(centres), n)] + rng.normal(0, spread, (n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _brute(x: np.ndarray, y: np.ndarray, k: int = 3) -> dict:
    """Eqs. B–F with all pairwise great-circle angles."""
    def ang(a, b):
        return np.arccos(np.clip(a @ b.T, -1, 1))

    rx = np.sort(ang(x, x), 1)[:, k]
    ry = np.sort(ang(y, y), 1)[:, k]
    dxy = ang(x, y)
    inb = dxy < rx[:, None]
    return {
        "precision": inb.any(0).mean(),
        "recall": (dxy < ry[None, :]).any(1).mean(),
        "density": inb.sum() / (k * len(y)),
        "coverage": inb.any(1).mean(),
    }


def test_set_against_itself():
    rng = np.random.default_rng(0)
    x = _clustered(500, rng, np.eye(3), 0.2)
    m = prdc(x, x)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    assert m["density"] == pytest.approx(1.0)  # each ball holds itself and k − 1 neighbours: k per point


def test_disjoint_sets():
    rng = np.random.default_rng(1)
    north = _clustered(300, rng, np.array([[0.0, 0.0, 1.0]]), 0.05)
    south = _clustered(400, rng, np.array([[0.0, 0.0, -1.0]]), 0.05)
    assert prdc(north, south) == {
        "precision": 0.0,
        "recall": 0.0,
        "density": 0.0,
        "coverage": 0.0,
        "n_real": 300,
        "n_fake": 400,
    }


def test_matches_brute_force():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(6, 3))
    x = _clustered(600, rng, centres, 0.15)
    y = _clustered(800, rng, centres[:4], 0.1)
    m, b = prdc(x, y), _brute(x, y)
    for key in b:
        assert m[key] == pytest.approx(b[key], abs=1e-12), key


def test_hand_counted_points_on_the_equator():
    # X at longitudes 0, 10, 20, 30, 40 (k = 3: radius of 0 and 40 is 30°, of 10, 20, 30 is 20°).
    # Y at 5 (in every ball of 0, 10, 20), 100, 101, 102, 103 (far away).
    x = np.array([[0.0, lo] for lo in (0, 10, 20, 30, 40)])
    y = np.array([[0.0, lo] for lo in (5, 100, 101, 102, 103)])
    m = prdc_latlon(x, y)
    assert m["precision"] == pytest.approx(1 / 5)
    assert m["density"] == pytest.approx(
        3 / (3 * 5)
    )  # y=5 is in B(0), B(10), B(20); B(30) stops at 10 exactly (strict)
    assert m["coverage"] == pytest.approx(3 / 5)
    # Y's radii: 5 -> 98° (its 3rd neighbour 102), 100..103 -> 2° or 3°; only x = 0..40 near 5 lie in B(5).
    assert m["recall"] == 1.0


def test_bad_input():
    x = np.eye(3)
    with pytest.raises(ValueError, match="real: need more than k"):
        prdc(x, np.vstack([x, x]))
    with pytest.raises(ValueError, match="fake"):
        prdc(np.vstack([x, -x]), 2 * np.vstack([x, -x]))


def test_prdc_leaves_the_callers_points_alone_and_latlon_agrees():
    # prdc_latlon normalises its own arrays in place; prdc must not touch the caller's.
    from globeflow.geometry.coords import latlon_to_xyz
    from globeflow.metrics import prdc, prdc_latlon

    rng = np.random.default_rng(5)
    ll = [np.stack([rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)], 1) for n in (300, 200)]
    x, y = (np.asarray(latlon_to_xyz(a[:, 0], a[:, 1])) * (1 + 1e-8) for a in ll)  # nearly unit
    x0, y0 = x.copy(), y.copy()
    assert prdc(x, y) == prdc_latlon(*ll)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
