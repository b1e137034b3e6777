"""The baselines (uniform, vMF, vMF mixture, MvMF) against known answers.

Each is fitted with a plain Adam loop on samples of a known law (the trainer is tested
elsewhere; this keeps the tests to seconds), then checked for the parameters it must recover,
the normalisation of its density, its save/load round trip and its input validation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import globeflow
from globeflow.geometry import latlon_to_xyz, vmf_sample, xyz_to_latlon
from globeflow.geometry.harmonics import sphere_quadrature
from globeflow.methods import ALL_METHODS, BASELINE_METHODS, build_method, create_method
from globeflow.methods.mvmf import MvMF, adaptive_partition, kappa_half_mass
from globeflow.methods.uniform import Uniform
from globeflow.methods.vmf import VMFRegression
from globeflow.methods.vmf_mixture import VMFMixture


def _unit(lat: float, lon: float) -> torch.Tensor:
    return torch.tensor(latlon_to_xyz(np.array([lat]), np.array([lon])), dtype=torch.float32)[0]


def _fit(method, x0: torch.Tensor, emb: torch.Tensor, steps: int, lr: float, batch: int = 256) -> None:
    """Adam on minibatches with the learning rate annealed to 0 (cosine).

    The tests compare the fit with the maximum-likelihood answer on all of ``x0``. A constant
    learning rate leaves the last iterate jittering by the minibatch noise (about 0.7° for a
    κ = 50 mean at batch 128, the size of the tolerance), so whether a test passed depended on
    the exact random stream (thread count, BLAS, library versions). Annealing to 0 averages that
    noise out and the last iterate settles at the full-data optimum.
    """
    opt = torch.optim.Adam(method.net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / steps)))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x0), (batch,), generator=g)
        loss = method.loss(x0[idx], emb[idx], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return math.degrees(math.acos(min(1.0, float((a / a.norm()) @ (b / b.norm())))))


def _integral(method, emb: np.ndarray) -> np.ndarray:
    """∫ p(y | c) dΩ by a product Gauss rule (exact for the smooth densities used here)."""
    pts, w = sphere_quadrature(200, 400)
    lat_lon = xyz_to_latlon(pts)
    lp = method.log_prob(emb, np.broadcast_to(lat_lon, (len(emb), *lat_lon.shape)))
    return (np.exp(lp) * w.numpy()[None]).sum(axis=1)


# ------------------------------------------------------------------------------ uniform
def test_uniform_density_and_samples():
    m = Uniform(4)
    emb = np.zeros((3, 4), dtype=np.float32)
    lp = m.log_prob(emb, np.array([[0.0, 0.0], [45.0, 10.0], [-90.0, 170.0]]))
    np.testing.assert_allclose(lp, -math.log(4 * math.pi), rtol=1e-6)
    res = m.sample_with_log_prob(emb, 2000, seed=1)
    xyz = res.xyz.reshape(-1, 3)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=1e-6)
    # Uniform on S²: mean 0 (±4σ with σ = 1/√(3n)) and each coordinate's square averages 1/3.
    assert np.abs(xyz.mean(axis=0)).max() < 4 / math.sqrt(3 * len(xyz))
    assert np.abs((xyz**2).mean(axis=0) - 1 / 3).max() < 0.02


# ------------------------------------------------------------------------------ vMF
def test_vmf_recovers_known_mean_and_concentration():
    torch.manual_seed(0)
    mu, kappa = _unit(35.0, 20.0), 50.0
    x0 = vmf_sample(mu[None], torch.tensor([kappa]), 8192, generator=torch.Generator().manual_seed(1))[0]
    emb = torch.ones(len(x0), 2)
    m = VMFRegression(2, width=32, depth=1)
    _fit(m, x0, emb, steps=200, lr=1e-2, batch=128)
    with torch.no_grad():
        p = m.params(emb[:1])
    # MLE of κ from n = 8192 draws has a ~1 % standard error; μ a ~0.1° one.
    assert _angle_deg(p.mu[0, 0].detach(), mu) < 1.0
    assert float(p.kappa[0, 0]) == pytest.approx(kappa, rel=0.08)
    lat, lon = m.predict(np.ones((1, 2)))[0]
    assert lat == pytest.approx(35.0, abs=1.0) and lon == pytest.approx(20.0, abs=1.5)


def test_vmf_mixture_separates_two_modes_and_is_normalised():
    torch.manual_seed(0)
    mus = torch.stack([_unit(40.0, -100.0), _unit(-20.0, 60.0)])  # ~150° apart
    g = torch.Generator().manual_seed(2)
    comp = (torch.rand(8192, generator=g) < 0.35).long()  # weights 0.65 / 0.35
    x0 = vmf_sample(mus[comp], torch.full((8192,), 80.0), 1, generator=g)[:, 0]
    emb = torch.ones(len(x0), 2)
    m = VMFMixture(2, width=32, depth=1, components=3)
    _fit(m, x0, emb, steps=300, lr=1e-2, batch=128)
    with torch.no_grad():
        p = m.params(emb[:1])
    w, mu = p.log_w[0].exp(), p.mu[0]
    near = torch.stack([mu @ mus[0], mu @ mus[1]])  # (2, K) cosines
    owner = near.argmax(dim=0)
    for k, target in ((0, 0.65), (1, 0.35)):
        mass = float(w[owner == k].sum())
        assert mass == pytest.approx(target, abs=0.05), (k, w, owner)
        heaviest = int(torch.where(owner == k, w, torch.zeros(())).argmax())
        assert _angle_deg(mu[heaviest], mus[k]) < 3.0
    # Point estimate = mean of the heaviest component = the 0.65 mode.
    assert _angle_deg(torch.tensor(latlon_to_xyz(*m.predict(np.ones((1, 2)))[0])), mus[0]) < 3.0
    assert _integral(m, np.ones((1, 2), np.float32))[0] == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------------------ MvMF
def test_partition_tiles_the_sphere_with_the_requested_cells():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 3))
    x[:2500] = np.array([1.0, 0.2, 0.1]) + 0.05 * rng.standard_normal((2500, 3))  # a dense cluster
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for c in (16, 100, 1024):
        p = adaptive_partition(x, c)
        assert len(p.centres) == c
        np.testing.assert_allclose(np.linalg.norm(p.centres, axis=1), 1.0, atol=1e-12)
        # The cells tile the sphere (areas sum to 4π) and hold every point exactly once.
        assert p.areas.sum() == pytest.approx(4 * math.pi, rel=1e-12)
        assert p.counts.sum() == 5000
    small = adaptive_partition(x, 1024)
    # Adaptivity: the cluster's cells are smaller than the rest's.
    in_cluster = small.centres @ np.array([1.0, 0.2, 0.1]) / np.linalg.norm([1.0, 0.2, 0.1]) > 0.99
    assert np.median(small.areas[in_cluster]) < 0.2 * np.median(small.areas[~in_cluster])


def test_kappa_half_mass_puts_half_the_mass_in_the_cap():
    areas = np.array([4 * math.pi / 6, 1.0, 1e-2, 1e-6, 1e-9])
    k = kappa_half_mass(areas)
    h = areas / (2 * math.pi)
    mass = -np.expm1(-k * h) / -np.expm1(-2 * k)
    np.testing.assert_allclose(mass, 0.5, rtol=1e-9)
    np.testing.assert_allclose(k[2:], 2 * math.pi * math.log(2) / areas[2:], rtol=1e-6)  # small-cell limit


def _two_class_world(n: int, seed: int):
    """Class 0: modes A, B, C with weights 0.5/0.3/0.2; class 1: 0.1/0.2/0.7 (κ = 3000, ~115 km)."""
    modes = torch.stack([_unit(48.0, 2.0), _unit(-33.0, 151.0), _unit(40.0, -74.0)])
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, 2, (n,), generator=g)
    comp = torch.multinomial(weights[cls], 1, generator=g)[:, 0]
    x0 = vmf_sample(modes[comp], torch.full((n,), 3000.0), 1, generator=g)[:, 0]
    return x0, torch.nn.functional.one_hot(cls, 2).float(), modes, weights


def test_mvmf_recovers_the_mixture_weights():
    x0, emb, modes, weights = _two_class_world(6000, seed=0)
    m = MvMF(2, num_components=64)
    m.prepare(x0)
    _fit(m, x0, emb, steps=300, lr=0.05)
    with torch.no_grad():
        gamma = m.net(torch.eye(2)).exp()  # (2, c)
    owner = (m.net.means.float() @ modes.T).argmax(dim=1)  # nearest mode of each component
    close = (m.net.means.float() @ modes.T).max(dim=1).values > math.cos(math.radians(10))
    for cls in range(2):
        for k in range(3):
            mass = float(gamma[cls][close & (owner == k)].sum())
            assert mass == pytest.approx(float(weights[cls, k]), abs=0.04), (cls, k)
    # Eq. 7: the heaviest component sits at the heaviest mode of the class.
    pred = torch.tensor(latlon_to_xyz(*m.predict(np.eye(2, dtype=np.float32)).T)).float()
    assert _angle_deg(pred[0], modes[0]) < 5 and _angle_deg(pred[1], modes[2]) < 5
    assert _integral(m, np.eye(2, dtype=np.float32)) == pytest.approx([1.0, 1.0], abs=2e-3)


def test_mvmf_does_not_degrade_as_c_grows():
    x0, emb, _, _ = _two_class_world(6000, seed=0)
    xt, et, _, _ = _two_class_world(2000, seed=1)
    nll = []
    for c in (16, 64, 256):
        m = MvMF(2, num_components=c)
        m.prepare(x0)
        _fit(m, x0, emb, steps=300, lr=0.05)
        nll.append(-float(m.log_prob_xyz(et, xt[:, None]).mean()))
    # Finer cells -> sharper components where the data are (true NLL of this world ≈ −6.1).
    assert nll[1] < nll[0] - 0.5 and nll[2] < nll[1] + 0.05, nll


def test_mvmf_fixed_kappa0_and_large_c_in_float64():
    x0, emb, _, _ = _two_class_world(2000, seed=0)
    m = MvMF(2, num_components=1 << 15, log_kappa0=16.0)
    m.prepare(x0)
    assert torch.allclose(m.net.log_kappas, torch.full((1 << 15,), 16.0, dtype=torch.float64))
    # At κ = e¹⁶ the density at a component's own mean is κ/2π, even from float32 inputs
    # (whose |x| − 1 ~ 6e-8 would cost ~0.5 nat if x were not renormalised in float64).
    means = m.net.means[:3].float()
    comp = m._component_log_prob(means)
    np.testing.assert_allclose(comp[torch.arange(3), torch.arange(3)].numpy(), 16.0 - math.log(2 * math.pi), atol=2e-3)
    loss = m.loss(x0[:64], emb[:64], torch.Generator())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(m.net.linear.weight.grad).all()


def test_mvmf_needs_prepare():
    m = MvMF(2, num_components=16)
    with pytest.raises(ValueError, match="prepare"):
        m.loss(torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1, 2), torch.Generator())
    with pytest.raises(ValueError, match="prepare"):
        m.predict(np.zeros((1, 2)))


# ------------------------------------------------------------------------------ registry, save/load, inputs
@pytest.mark.parametrize("name", sorted(BASELINE_METHODS))
def test_save_load_round_trip_and_bad_inputs(name, tmp_path):
    torch.manual_seed(0)
    options = {"degree": 3, "decode_anchors": 500, "radius_km": 800.0} if name == "locdiffusion" else {}
    if name == "mvmf":
        options = {"num_components": 16}
    m = create_method(name, 4, width=32, depth=2, **options)
    if name == "mvmf":
        m.prepare(torch.nn.functional.normalize(torch.randn(100, 3), dim=-1))
    globeflow.save(m, tmp_path)
    loaded = globeflow.load(tmp_path)
    assert type(loaded) is type(m) and loaded.config() == m.config()
    emb = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(emb, seed=3), m.predict(emb, seed=3), atol=1e-5)
    assert loaded.sample(emb, 5, seed=1).shape == (3, 5, 2)
    if m.density_space == "S2":
        pts = np.array([[10.0, 20.0], [-30.0, 100.0], [80.0, -170.0]])
        np.testing.assert_allclose(loaded.log_prob(emb, pts), m.log_prob(emb, pts), rtol=1e-5)
    else:
        with pytest.raises(NotImplementedError):
            m.log_prob(emb, np.zeros((3, 2)))
    bad = emb.copy()
    bad[1, 2] = np.nan
    for call in (lambda e: m.predict(e), lambda e: m.sample(e, 2)):
        with pytest.raises(ValueError, match="non-finite"):
            call(bad)
        with pytest.raises(ValueError, match="embedding"):
            call(emb[:, :3])
    if m.density_space == "S2":
        with pytest.raises(ValueError, match="latitude"):
            m.log_prob(emb, np.array([[95.0, 0.0]] * 3))
    with pytest.raises(ValueError, match="option"):
        create_method(name, 4, not_an_option=1)


def test_registry_lists_every_method():
    assert set(ALL_METHODS) == {"diffusion", "flow", "rfm", "uniform", "vmf", "vmf_mixture", "mvmf", "locdiffusion"}
    with pytest.raises(ValueError, match="unknown method"):
        build_method({"method": "nope"})
    with pytest.raises(ValueError, match="components"):
        VMFMixture(2, components=0)


def test_cli_trains_uniform_and_mvmf(tmp_path):
    from globeflow.cli import main
    from globeflow.data import write_parquet

    x0, emb, _, _ = _two_class_world(600, seed=0)
    ll = xyz_to_latlon(x0)
    data = tmp_path / "train.parquet"
    write_parquet(data, emb.numpy(), ll[:, 0], ll[:, 1])
    assert (
        main(["train", "--method", "uniform", "--data", str(data), "--out", str(tmp_path / "u"), "--no-progress"]) == 0
    )
    assert isinstance(globeflow.load(tmp_path / "u"), Uniform)
    args = ["train", "--method", "mvmf", "--num-components", "32", "--data", str(data), "--out", str(tmp_path / "m")]
    assert main([*args, "--train-steps", "20", "--batch-size", "64", "--warmup-steps", "2", "--no-progress"]) == 0
    m = globeflow.load(tmp_path / "m")
    assert isinstance(m, MvMF) and bool(m.net.prepared) and m.num_components == 32
    assert (
        main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(tmp_path / "e.json")]) == 0
    )
