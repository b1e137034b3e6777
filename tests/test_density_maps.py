"""Equal-area grid and adaptive density maps, against closed-form vMF mixtures."""

import math

import numpy as np
import pytest
import torch
from _density_helpers import vmf_mixture

from globeflow.density import (
    EqualAreaGrid,
    compare_to_exact,
    density_map,
    density_map_for_method,
    exact_log_prob_raster,
    log_prob_fn_from_method,
)
from globeflow.geometry import latlon_to_xyz, vmf_log_prob, vmf_sample, xyz_to_latlon
from globeflow.methods.base import Method

# Modes from continent scale (κ = 10, ~2000 km) to ~60 km (κ = 1e4), on the antimeridian and
# near a pole, as in the issue.
CASES = {
    "kappa10": ([(30.0, 10.0)], [10.0], [1.0]),
    "kappa1e4": ([(48.85, 2.35)], [1e4], [1.0]),
    "mixture": (
        [(48.85, 2.35), (35.0, 139.0), (-33.0, 151.0), (40.0, -74.0), (0.0, 179.5), (80.0, 0.0)],
        [1e4, 3e3, 300.0, 30.0, 1e3, 100.0],
        [0.3, 0.2, 0.15, 0.15, 0.1, 0.1],
    ),
}


def test_grid_cells_have_exactly_equal_area_at_every_level():
    grid = EqualAreaGrid.build(7.0)
    for _ in range(3):
        z = grid.z_edges
        # Archimedes: a cell's area is Δz · 2π / n.
        areas = np.repeat(np.diff(z) * 2.0 * np.pi / grid.n_cols, grid.n_cols)
        np.testing.assert_allclose(areas, grid.cell_area, rtol=1e-12)
        assert grid.cell_area * grid.num_cells == pytest.approx(4.0 * np.pi, rel=1e-12)
        # Nearly square cells away from the poles: side ≈ √A.
        side = np.degrees(np.sqrt(grid.cell_area))
        ll = grid.centers_latlon()
        mid = np.abs(ll[:, 0]) < 60
        assert grid.cell_size_deg()[mid].max() < 1.6 * side
        fine = grid.refine()
        assert fine.num_cells == 4 * grid.num_cells
        grid = fine


def test_cell_index_and_parents_are_consistent():
    coarse = EqualAreaGrid.build(10.0)
    fine = coarse.refine()
    ll = fine.centers_latlon()
    assert np.array_equal(fine.cell_index(ll[:, 0], ll[:, 1]), np.arange(fine.num_cells))
    # A child's centre lies in its parent.
    assert np.array_equal(coarse.cell_index(ll[:, 0], ll[:, 1]), fine.parent_index(coarse))
    np.testing.assert_allclose(fine.cell_index_xyz(fine.centers_xyz()), np.arange(fine.num_cells))


def test_dilate_adds_exactly_the_surrounding_ring():
    grid = EqualAreaGrid.build(10.0)
    ll = grid.centers_latlon()
    i = int(np.argmin(np.abs(ll[:, 0] - 20) + np.abs(ll[:, 1] - 45)))
    mask = np.zeros(grid.num_cells, bool)
    mask[i] = True
    grown = grid.dilate(mask)
    assert 9 <= grown.sum() <= 11  # 8 neighbours (+1 or 2 where rows' columns are offset)
    # Neighbours are near, and every cell within one cell side is included.
    d = np.degrees(np.arccos(np.clip(grid.centers_xyz() @ grid.centers_xyz()[i], -1, 1)))
    assert d[grown].max() < 2.0 * 10.0
    assert grown[d < 0.9 * 10.0].all()
    # Polar rows are all neighbours through the pole.
    polar = np.zeros(grid.num_cells, bool)
    polar[0] = True
    assert grid.dilate(polar)[: grid.n_cols[0]].all()


def test_cubic_interpolation_is_exact_for_cubics_and_fourth_order():
    grid = EqualAreaGrid.build(6.0)
    ll = grid.centers_latlon()
    rng = np.random.default_rng(0)
    q_lat, q_lon = rng.uniform(-55, 55, 500), rng.uniform(-180, 180, 500)

    def cubic(lat):
        return 1.0 + 0.3 * lat - 2e-3 * lat**2 + 1e-5 * lat**3

    got = grid.interpolate(cubic(ll[:, 0]), q_lat, q_lon, order=3)
    np.testing.assert_allclose(got, cubic(q_lat), atol=1e-9)
    # A smooth function on the sphere (through the poles too): error falls ~16× per halving.
    v = np.array([0.3, -0.5, 0.81]) / np.linalg.norm([0.3, -0.5, 0.81])
    q_lat, q_lon = rng.uniform(-90, 90, 2000), rng.uniform(-180, 180, 2000)
    target = 4.0 * latlon_to_xyz(q_lat, q_lon) @ v
    errs = []
    for g in (grid, grid.refine()):
        f = 4.0 * g.centers_xyz() @ v
        errs.append(np.abs(g.interpolate(f, q_lat, q_lon) - target))
    assert errs[1].max() < errs[0].max() / 8.0
    # Away from the polar caps (3 cells at this level) cubic beats linear by far.
    lin = np.abs(grid.interpolate(4.0 * grid.centers_xyz() @ v, q_lat, q_lon, order=1) - target)
    mid = np.abs(q_lat) < 75
    assert errs[0][mid].max() < lin[mid].max() / 5.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_density_map_matches_exact_map_with_few_evaluations(name):
    log_prob, sample = vmf_mixture(*CASES[name])
    s = sample(1000)
    dmap = density_map(log_prob, 1.0, samples_xyz=s, sample_log_prob=log_prob(s))
    _, _, exact = exact_log_prob_raster(log_prob, 1.0)
    err = compare_to_exact(dmap, exact)
    assert err["max_abs_where_mass"] < 0.03
    assert err["mass_weighted_abs"] < 0.005
    assert abs(dmap.mass() - 1.0) < 0.01  # Σ exp(log p)·A over the equal-area cells
    assert abs(dmap.raster_mass() - err["exact_mass"]) < 0.01
    assert dmap.num_evaluations < 64_800 / 10
    assert dmap.sample_abs_error[1] < 0.03
    assert dmap.log_prob.shape == (180, 360)


def test_density_map_without_samples_finds_a_sharp_mode_and_honours_the_budget():
    log_prob, _ = vmf_mixture([(-12.3, -77.0)], [3000.0], [1.0])
    dmap = density_map(log_prob, 2.0)
    assert abs(dmap.mass() - 1.0) < 0.01
    i, j = np.unravel_index(np.argmax(dmap.log_prob), dmap.log_prob.shape)
    assert abs(dmap.lat[i] + 12.3) <= 2.0 and abs(dmap.lon[j] + 77.0) <= 2.0
    with pytest.warns(UserWarning) as record:
        capped = density_map(log_prob, 2.0, max_evaluations=650)
    assert capped.num_evaluations <= 650
    messages = " ".join(str(r.message) for r in record)
    # Stopped at the coarse grid (8° cells for a ~1° mode, one node on the peak), the map
    # cannot be right, and it says so when its mass is off.
    assert "max_evaluations" in messages
    assert (abs(capped.mass() - 1.0) > 0.05) == ("of the probability" in messages)


def test_density_map_rejects_bad_input():
    log_prob, _ = vmf_mixture([(0.0, 0.0)], [10.0], [1.0])
    with pytest.raises(ValueError, match="resolution_deg"):
        density_map(log_prob, 0.7)
    with pytest.raises(ValueError, match="log_prob_fn"):
        density_map(lambda x: np.full(len(x), np.nan), 4.0)
    with pytest.raises(ValueError, match="log_prob_fn"):
        density_map(lambda x: np.zeros(3), 4.0)
    with pytest.raises(ValueError, match="samples_xyz"):
        density_map(log_prob, 4.0, samples_xyz=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="sample_log_prob"):
        density_map(log_prob, 4.0, samples_xyz=np.ones((5, 3)), sample_log_prob=np.zeros(4))


def test_density_with_zero_regions_maps_without_nan():
    # Uniform on the northern hemisphere, zero (log p = −inf) on the southern one.
    def log_prob(xyz):
        return np.where(xyz[:, 2] > 0, -math.log(2 * math.pi), -np.inf)

    dmap = density_map(log_prob, 2.0)
    assert np.isfinite(dmap.log_prob).all()
    assert abs(dmap.mass() - 1.0) < 0.02
    north = dmap.lat > 5
    np.testing.assert_allclose(dmap.log_prob[north], -math.log(2 * math.pi), atol=1e-6)


class _VMFMethod(Method):
    """A closed-form 'model': vMF around a location given by the embedding (lat, lon, log κ)."""

    name = "vmf-oracle"
    density_space = "S2"
    embedding_dim = 3

    def __init__(self):
        self.calls = []

    def _params(self, emb):
        mu = torch.as_tensor(latlon_to_xyz(emb[:, 0].double(), emb[:, 1].double()))
        return mu, emb[:, 2].double().exp()

    def sample_xyz(self, emb, num_samples, *, generator, **options):
        mu, k = self._params(emb)
        return vmf_sample(mu, k, num_samples, generator=generator).float()

    def log_prob_xyz(self, emb, x, *, guidance=0.0, **options):
        self.calls.append(x.shape)
        mu, k = self._params(emb)
        return vmf_log_prob(x.double(), mu[:, None], k[:, None]).float()

    def config(self):
        return {"method": self.name}


def test_log_prob_fn_from_method_chunks_and_matches_the_method():
    method = _VMFMethod()
    emb = np.array([20.0, -60.0, math.log(200.0)], dtype=np.float32)
    fn = log_prob_fn_from_method(method, emb, chunk_size=1000)
    res = method.sample_with_log_prob(emb[None], 300, seed=1)
    xyz = res.xyz[0]
    got = fn(xyz)
    np.testing.assert_allclose(got, res.log_prob[0], atol=1e-4)
    method.calls.clear()
    dmap = density_map(fn, 2.0, samples_xyz=xyz)
    assert all(shape[0] == 1 and shape[1] <= 1000 for shape in method.calls)
    assert sum(shape[1] for shape in method.calls) == dmap.num_evaluations
    assert abs(dmap.mass() - 1.0) < 0.01
    ll = xyz_to_latlon(xyz)
    np.testing.assert_allclose(dmap.interpolate(ll[:, 0], ll[:, 1]), got, atol=0.05)
    with pytest.raises(ValueError, match="emb"):
        log_prob_fn_from_method(method, np.zeros((2, 3), np.float32))
    dmap2, samples = density_map_for_method(method, emb, 2.0, num_samples=200, seed=3)
    assert samples.log_prob.shape == (1, 200) and abs(dmap2.mass() - 1.0) < 0.01
    assert dmap2.sample_abs_error[1] < 0.05


def test_density_map_warns_when_mass_is_missing():
    log_prob, _ = vmf_mixture([(0.0, 0.0)], [10.0], [1.0])
    with pytest.warns(UserWarning, match="holds 0.5"):
        density_map(lambda x: log_prob(x) + math.log(0.5), 4.0)
