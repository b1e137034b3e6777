"""The synthetic world: closed-form density, exact samplers and reference scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from globeflow.data import SyntheticWorld, nats_to_paper_nll, read_dataset, write_world_dataset
from globeflow.data import synthetic as syn
from globeflow.geometry import great_circle_km, latlon_to_xyz, xyz_to_latlon

LOG_4PI = math.log(4 * math.pi)


def _fibonacci_sphere(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n near-uniform points (lat, lon degrees); equal quadrature weights 4*pi/n."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    lon = np.degrees(np.mod(math.pi * (1.0 + 5.0**0.5) * i, 2 * math.pi)) - 180.0
    return np.degrees(np.arcsin(z)), lon


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle angle (radians) between unit vectors, accurate at 0 and π."""
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def _xyz(lat: float, lon: float) -> np.ndarray:
    return latlon_to_xyz(np.float64(lat), np.float64(lon))


def _single_vmf_world(kappa: float, lat: float = 40.0, lon: float = 179.0) -> SyntheticWorld:
    return SyntheticWorld(
        prior=np.array([1.0]),
        prototypes=np.zeros((1, 2)),
        sigma=1.0,
        weights=np.array([[1.0]]),
        means=_xyz(lat, lon)[None, None],
        kappas=np.array([[kappa]]),
    )


def _moderate_world() -> SyntheticWorld:
    """Hand-made 3-type world, kappa <= 300 so a 300k-point grid resolves every component."""
    means = np.stack(
        [
            [_xyz(89.5, 0.0), _xyz(0.0, 0.0), _xyz(0.0, 0.0)],  # near the pole; padded x2
            [_xyz(10.0, 179.0), _xyz(-30.0, -179.0), _xyz(45.0, 90.0)],  # straddles the dateline
            [_xyz(-60.0, 20.0), _xyz(35.0, -100.0), _xyz(0.0, 0.0)],
        ]
    )
    return SyntheticWorld(
        prior=np.array([0.2, 0.5, 0.3]),
        prototypes=np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        sigma=0.5,
        weights=np.array([[1.0, 0.0, 0.0], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]]),
        means=means,
        kappas=np.array([[300.0, 1.0, 1.0], [50.0, 120.0, 0.5], [8.0, 200.0, 1.0]]),
    )


# ----------------------------------------------------------------------------- density


def test_conditional_density_integrates_to_one() -> None:
    world = _moderate_world()
    lat, lon = _fibonacci_sphere(300_000)
    # Embeddings at each prototype and in between (ambiguous posterior).
    emb = np.array([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.3, 0.3, 0.3], [5.0, -2.0, 1.0]])
    logp = world.log_prob(emb, np.tile(lat, (4, 1)), np.tile(lon, (4, 1)))
    assert logp.shape == (4, lat.size)
    integral = np.exp(logp).sum(axis=1) * 4 * math.pi / lat.size
    np.testing.assert_allclose(integral, 1.0, rtol=1e-3)


def test_made_world_density_integrates_to_one() -> None:
    world = SyntheticWorld.make(num_types=3, dim=8, seed=3, kappa_range=(5.0, 300.0))
    lat, lon = _fibonacci_sphere(300_000)
    emb, _, _ = world.sample(2, seed=1)
    logp = world.log_prob(emb, np.tile(lat, (2, 1)), np.tile(lon, (2, 1)))
    np.testing.assert_allclose(np.exp(logp).sum(axis=1) * 4 * math.pi / lat.size, 1.0, rtol=1e-3)


@pytest.mark.parametrize("kappa", [1e-3, 1.0, 40.0, 400.0])
def test_vmf_component_integrates_to_one(kappa: float) -> None:
    lat, lon = _fibonacci_sphere(300_000)
    logp = syn._vmf_log_prob(latlon_to_xyz(lat, lon), _xyz(-20.0, 60.0), kappa)
    assert abs(np.exp(logp).mean() * 4 * math.pi - 1.0) < 1e-3


def test_log_prob_shapes_and_pointwise_formula() -> None:
    world = _moderate_world()
    emb = np.array([[0.2, 0.1, 0.7], [1.0, 0.0, 0.1]])
    lat, lon = np.array([10.0, -30.0]), np.array([179.5, -179.0])
    logp = world.log_prob(emb, lat, lon)
    assert logp.shape == (2,)
    # Direct evaluation of sum_k p(k|c) sum_m w_km vMF(y; mu_km, kappa_km).
    post = world.type_posterior(emb)
    for i in range(2):
        y = _xyz(lat[i], lon[i])
        dens = sum(
            post[i, k] * world.weights[k, m] * math.exp(syn._vmf_log_prob(y, world.means[k, m], world.kappas[k, m]))
            for k in range(3)
            for m in range(3)
            if world.weights[k, m] > 0
        )
        assert logp[i] == pytest.approx(math.log(dens), rel=1e-12)


def test_vmf_log_norm_matches_direct_formula_and_limits() -> None:
    for kappa in [0.1, 1.0, 10.0, 100.0]:
        direct = math.log(kappa / (4 * math.pi * math.sinh(kappa))) + kappa  # log C(kappa) + kappa
        assert float(syn._vmf_log_norm(kappa)) == pytest.approx(direct, rel=1e-12)
    mu = _xyz(10.0, 20.0)
    anti = -mu
    with np.errstate(all="raise"):  # no overflow / invalid operations anywhere
        for kappa in [0.0, 1e-12, 1e-6]:
            for x in (mu, anti, _xyz(-50.0, 100.0)):
                assert float(syn._vmf_log_prob(x, mu, kappa)) == pytest.approx(-LOG_4PI, abs=3e-6)
        big = float(syn._vmf_log_prob(mu, mu, 1e7))
        assert big == pytest.approx(math.log(1e7 / (2 * math.pi)), rel=1e-12)
        far = float(syn._vmf_log_prob(anti, mu, 1e7))
        assert math.isfinite(far) and far == pytest.approx(-2e7, rel=1e-6)


# ----------------------------------------------------------------------------- type posterior


def test_type_posterior_hand_checked_two_types() -> None:
    world = SyntheticWorld(
        prior=np.array([0.5, 0.5]),
        prototypes=np.array([[0.0], [2.0]]),
        sigma=1.0,
        weights=np.ones((2, 1)),
        means=np.array([[[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]]),
        kappas=np.full((2, 1), 10.0),
    )
    post = world.type_posterior(np.array([[1.0], [0.0], [2.0]]))
    e2 = math.exp(-2.0)  # likelihood ratio N(0; 2, 1) / N(0; 0, 1)
    np.testing.assert_allclose(post[0], [0.5, 0.5], rtol=1e-14)
    np.testing.assert_allclose(post[1], [1 / (1 + e2), e2 / (1 + e2)], rtol=1e-14)
    np.testing.assert_allclose(post[2], [e2 / (1 + e2), 1 / (1 + e2)], rtol=1e-14)
    # With a 1:3 prior, the midpoint posterior is the prior.
    skewed = SyntheticWorld(**{**_fields(world), "prior": np.array([0.25, 0.75])})
    np.testing.assert_allclose(skewed.type_posterior(np.array([[1.0]])), [[0.25, 0.75]], rtol=1e-14)


def _fields(world: SyntheticWorld) -> dict:
    return {k: getattr(world, k) for k in ("prior", "prototypes", "sigma", "weights", "means", "kappas")}


def test_type_posterior_matches_bayes_rule_and_is_stable() -> None:
    world = SyntheticWorld.make(num_types=5, dim=16, seed=7)
    emb, _, _ = world.sample(200, seed=2)
    post = world.type_posterior(emb)
    assert post.shape == (200, 5)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-12)
    c = emb.astype(np.float64)
    sq = ((c[:, None, :] - world.prototypes[None]) ** 2).sum(-1)
    lik = world.prior * np.exp(-sq / (2 * world.sigma**2))
    np.testing.assert_allclose(post, lik / lik.sum(axis=1, keepdims=True), rtol=1e-9, atol=1e-300)
    # Far from every prototype the naive formula underflows to 0/0; ours must not.
    far = world.type_posterior(1e4 * np.ones((1, 16)))
    assert np.all(np.isfinite(far)) and far.sum() == pytest.approx(1.0)
    # Genuine ambiguity exists, but the type is usually identifiable.
    emb, _, _, types = world.sample(4000, seed=3, return_types=True)
    post = world.type_posterior(emb)
    assert 0.75 < np.mean(post.argmax(1) == types) < 0.99
    assert 0.02 < np.mean(post.max(1) < 0.75) < 0.5


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("kappa", [5.0, 200.0, 2000.0])
def test_conditional_samples_match_vmf_moments(kappa: float) -> None:
    world = _single_vmf_world(kappa)
    n = 40_000
    samples = world.sample_conditional(np.zeros((1, 2)), n, seed=1)
    assert samples.shape == (1, n, 2)
    xyz = latlon_to_xyz(samples[0, :, 0], samples[0, :, 1])
    mean_vec = xyz.mean(axis=0)
    r_bar = np.linalg.norm(mean_vec)
    expected = 1 / math.tanh(kappa) - 1 / kappa
    # Var(cos theta) = 1 - coth^2 k + 1/k^2 for vMF on S^2; allow 5 standard errors.
    var_cos = 1 - 1 / math.tanh(kappa) ** 2 + 1 / kappa**2
    assert abs(r_bar - expected) < 5 * math.sqrt(var_cos / n) + 1e-12
    angle = float(_angle(mean_vec / r_bar, world.means[0, 0]))
    assert angle < 5 * math.sqrt((1 - expected) / n)


def test_extreme_kappa_sampling_is_stable() -> None:
    rng = np.random.default_rng(0)
    mu = np.repeat(_xyz(-89.99, 33.0)[None], 5000, axis=0)
    with np.errstate(all="raise"):
        tiny = syn._vmf_sample(rng, mu, np.full(5000, 1e-6))
        huge = syn._vmf_sample(rng, mu, np.full(5000, 1e7))
    np.testing.assert_allclose(np.linalg.norm(tiny, axis=1), 1.0, rtol=1e-12)
    # kappa -> 0 is uniform: cos to the mean is U(-1, 1) (mean 0, var 1/3).
    cos = tiny @ mu[0]
    assert abs(cos.mean()) < 0.05 and abs(cos.var() - 1 / 3) < 0.03
    # kappa = 1e7: angles ~ Rayleigh with scale 1/sqrt(kappa); E[theta^2] = 2/kappa.
    theta = _angle(huge, mu)
    assert np.mean(theta**2) == pytest.approx(2e-7, rel=0.1)


def test_conditional_samples_follow_type_posterior() -> None:
    # Two types with one far-apart sharp component each; fraction of samples near each
    # component must equal p(k | c).
    world = SyntheticWorld(
        prior=np.array([0.4, 0.6]),
        prototypes=np.array([[0.0], [1.0]]),
        sigma=0.5,
        weights=np.ones((2, 1)),
        means=np.stack([_xyz(30.0, 0.0), _xyz(-30.0, 120.0)])[:, None],
        kappas=np.full((2, 1), 500.0),
    )
    emb = np.array([[0.5], [0.3]])
    post = world.type_posterior(emb)
    n = 20_000
    samples = world.sample_conditional(emb, n, seed=5)
    for i in range(2):
        xyz = latlon_to_xyz(samples[i, :, 0], samples[i, :, 1])
        frac0 = np.mean(xyz @ world.means[0, 0] > xyz @ world.means[1, 0])
        assert abs(frac0 - post[i, 0]) < 4 * math.sqrt(post[i, 0] * post[i, 1] / n)


def test_sample_is_deterministic_and_well_formed() -> None:
    world = SyntheticWorld.make(num_types=4, dim=32, seed=0)
    a = world.sample(500, seed=11, return_types=True)
    b = world.sample(500, seed=11, return_types=True)
    c = world.sample(500, seed=12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    emb, lat, lon, types = a
    assert emb.shape == (500, 32) and emb.dtype == np.float32
    assert lat.dtype == np.float64 and lon.dtype == np.float64
    assert np.all(np.abs(lat) <= 90) and np.all(np.abs(lon) <= 180)
    assert types.dtype == np.int64 and set(np.unique(types)) <= set(range(4))
    np.testing.assert_array_equal(
        world.sample_conditional(emb[:3], 7, seed=4), world.sample_conditional(emb[:3], 7, seed=4)
    )


def test_sample_marginals() -> None:
    world = SyntheticWorld.make(num_types=3, dim=8, seed=5)
    n = 30_000
    emb, lat, lon, types = world.sample(n, seed=0, return_types=True)
    freq = np.bincount(types, minlength=3) / n
    assert np.all(np.abs(freq - world.prior) < 4 * np.sqrt(world.prior * (1 - world.prior) / n))
    # Embedding noise is isotropic with std sigma around the type's prototype.
    resid = emb - world.prototypes[types]
    assert resid.std() == pytest.approx(world.sigma, rel=0.02)
    # Every location lies near some component of its own type (no padding drawn).
    y = latlon_to_xyz(lat, lon)
    cos = np.einsum("ni,nmi->nm", y, world.means[types])
    cos[world.weights[types] == 0] = -np.inf
    nearest = np.argmax(cos, axis=1)
    assert np.all(world.weights[types, nearest] > 0)


def test_make_has_sharp_and_multimodal_types() -> None:
    world = SyntheticWorld.make(num_types=6, dim=32, seed=1)
    used = world.weights > 0
    assert used[0].sum() == 1 and used[1].sum() == 3
    assert np.all((world.kappas[used] >= 20) & (world.kappas[used] <= 2000))
    assert world.kappas[0, 0] > 300  # the sharp type
    np.testing.assert_array_equal(SyntheticWorld.make(num_types=6, seed=1).prototypes, world.prototypes)


# ----------------------------------------------------------------------------- reference scores


def test_conditional_entropy_of_single_vmf() -> None:
    kappa = 200.0
    world = _single_vmf_world(kappa)
    log_c = math.log(kappa / (4 * math.pi * math.sinh(kappa)))  # log normaliser C(kappa)
    exact = -log_c - kappa * (1 / math.tanh(kappa) - 1 / kappa)
    # -log p has std ~1 nat here; 20k samples give a standard error ~0.007.
    assert world.conditional_entropy(n=20_000, seed=1) == pytest.approx(exact, abs=0.03)
    assert nats_to_paper_nll(3 * math.log(2.0)) == pytest.approx(1.0)
    np.testing.assert_allclose(nats_to_paper_nll(np.array([0.0, -3 * math.log(2.0)])), [0.0, -1.0])


def test_best_geoscore_beats_blind_guess() -> None:
    world = SyntheticWorld.make(num_types=4, dim=32, seed=0)
    emb, lat, lon = world.sample(400, seed=9)
    best = world.best_geoscore(emb, lat, lon, num_candidates=128, seed=0)
    blind_lat, blind_lon = xyz_to_latlon(world.means[0, 0])
    d = great_circle_km(np.float64(blind_lat), np.float64(blind_lon), lat, lon)
    blind = float(np.mean(5000 * np.exp(-d / 1492.7)))
    assert blind < best <= 5000
    # The estimate is deterministic given the seed.
    assert world.best_geoscore(emb, lat, lon, num_candidates=128, seed=0) == best


def test_best_geoscore_sharp_world_is_near_perfect() -> None:
    world = _single_vmf_world(1e5, lat=-89.0, lon=-179.9)
    emb, lat, lon = world.sample(200, seed=0)
    # Angular spread ~ 1/sqrt(kappa) ~ 20 km, so the best score is ~ 5000 exp(-20/1493).
    assert 4900 < world.best_geoscore(emb, lat, lon, num_candidates=64) <= 5000


# ----------------------------------------------------------------------------- serialisation


def test_dict_round_trip_through_json() -> None:
    world = SyntheticWorld.make(num_types=5, dim=16, seed=2)
    again = SyntheticWorld.from_dict(json.loads(json.dumps(world.to_dict())))
    for name, value in _fields(world).items():
        np.testing.assert_array_equal(getattr(again, name), value)
    with pytest.raises(ValueError, match="synthetic_world"):
        SyntheticWorld.from_dict({"format": "something else"})


def test_world_is_validated_and_immutable() -> None:
    good = _fields(_moderate_world())
    with pytest.raises(ValueError, match="prior"):
        SyntheticWorld(**{**good, "prior": np.array([0.5, 0.5, 0.5])})
    with pytest.raises(ValueError, match="unit"):
        SyntheticWorld(**{**good, "means": 2 * good["means"]})
    with pytest.raises(ValueError, match="kappas"):
        SyntheticWorld(**{**good, "kappas": -good["kappas"]})
    with pytest.raises(ValueError):
        _moderate_world().kappas[0, 0] = 5.0


def test_write_world_dataset(tmp_path: Path) -> None:
    world = SyntheticWorld.make(num_types=3, dim=8, seed=4)
    paths = write_world_dataset(tmp_path / "synth", world, n_train=300, n_test=100, seed=0)
    assert set(paths) == {"train", "test", "world"}
    train, test = read_dataset(paths["train"], expected_dim=8), read_dataset(paths["test"], expected_dim=8)
    assert len(train) == 300 and len(test) == 100
    np.testing.assert_array_equal(train.extra["id"], np.arange(300))
    assert set(np.unique(train.extra["scene_type"])) <= {0, 1, 2}
    assert not np.array_equal(train.embeddings[:100], test.embeddings)
    loaded = SyntheticWorld.load(paths["world"])
    np.testing.assert_array_equal(loaded.prototypes, world.prototypes)
    # The stored split is the world's own sample (bit-exact float32 embeddings).
    assert np.all(np.isfinite(loaded.log_prob(test.embeddings, test.latitude, test.longitude)))
    again = write_world_dataset(tmp_path / "synth2", world, n_train=300, n_test=100, seed=0)
    np.testing.assert_array_equal(read_dataset(again["train"]).embeddings, train.embeddings)


# ----------------------------------------------------------------------------- harder worlds (issue 12)


def test_default_worlds_are_unchanged_by_the_new_options() -> None:
    """Without families/places the world is bit-for-bit what earlier versions made (hashes
    computed with the code before the options existed)."""
    import hashlib

    def digest(world: SyntheticWorld) -> str:
        return hashlib.sha256(json.dumps(world.to_dict()).encode()).hexdigest()[:16]

    assert digest(SyntheticWorld.make()) == "5b842258e6bbc398"
    sharp = SyntheticWorld.make(num_types=6, dim=16, seed=3, max_components=4, kappa_range=(5.0, 5e4))
    assert digest(sharp) == "e4793e94e3db56bd"


def test_families_make_similar_types_ambiguous() -> None:
    world = SyntheticWorld.make(num_types=12, dim=128, seed=2, families=3, family_spread=0.3)
    p = world.prototypes
    dist = np.linalg.norm(p[:, None] - p[None], axis=-1)
    family = np.arange(12) % 3
    same = (family[:, None] == family[None]) & ~np.eye(12, dtype=bool)
    # Within a family |p_j - p_k| ~ 0.3 sqrt(2); across families ~ sqrt(2 (1 + 0.09)).
    assert dist[same].mean() == pytest.approx(0.3 * math.sqrt(2), rel=0.1)
    assert dist[~same & ~np.eye(12, dtype=bool)].mean() == pytest.approx(math.sqrt(2 * 1.09), rel=0.1)
    # The Bayes classifier confuses types within a family, not across families.
    emb, _, _, types = world.sample(4000, 0, return_types=True)
    guess = world.type_posterior(emb).argmax(axis=1)
    assert np.mean(family[guess] == family[types]) > 0.9
    assert np.mean(guess == types) < 0.8


def test_places_and_sharp_kappas() -> None:
    places = syn._uniform_sphere(np.random.default_rng(0), 5)
    world = SyntheticWorld.make(num_types=8, dim=4, seed=1, max_components=4, kappa_range=(20.0, 2e4), places=places)
    used = world.weights > 0
    cos = world.means[used] @ places.T
    assert np.allclose(cos.max(axis=1), 1.0)  # every used mean is one of the places
    assert world.kappas[used].max() <= 2e4 and world.kappas[0, 0] > 2000  # type 0: the sharp one
    # The closed form still integrates to 1 for the sharpest component (exact vMF normaliser).
    emb, lat, lon = world.sample(200, 1)
    assert np.all(np.isfinite(world.log_prob(emb, lat, lon)))
    with pytest.raises(ValueError, match="families"):
        SyntheticWorld.make(num_types=3, families=4)
    with pytest.raises(ValueError, match="places"):
        SyntheticWorld.make(places=np.ones((3, 3)))


def test_city_directions_are_unit_vectors_on_land() -> None:
    xyz = syn.city_directions()
    assert xyz.shape[1] == 3 and xyz.shape[0] > 100_000
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=1e-12)
