"""Recipe levers of issue 12: training noise-level densities, bf16 training, the embedding path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from globeflow.methods import build_method, create_method
from globeflow.paths.noise_levels import LogitNormal, ScheduleDensity, UniformLevel, make_noise_density
from globeflow.paths.schedules import make_schedule
from globeflow.training import TrainConfig, train

DENSITIES = [
    ScheduleDensity(make_schedule("skewed_sigmoid")),
    ScheduleDensity(make_schedule("skewed_sigmoid", alpha=-7.0, beta=3.0)),
    ScheduleDensity(make_schedule("cosine")),
    LogitNormal(0.0, 1.0),
    LogitNormal(-1.0, 0.7),
    LogitNormal(1.5, 2.0),
    UniformLevel(),
]


@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: str(d.config()))
def test_noise_level_density_integrates_to_one(density) -> None:
    # Substitute κ = σ(u): ∫₀¹ p(κ) dκ = ∫ p(σ(u)) σ(u)(1 − σ(u)) du, smooth on a wide u grid
    # (the end-point singularities of the schedules' densities become integrable tails).
    u = torch.linspace(-30.0, 30.0, 300_001, dtype=torch.float64)
    k = torch.sigmoid(u)
    integrand = density.pdf(k) * k * (1.0 - k)
    total = torch.trapezoid(integrand, u).item()
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: str(d.config()))
def test_noise_level_samples_follow_the_density(density) -> None:
    """Kolmogorov–Smirnov distance between samples and the CDF integrated from ``pdf``."""
    g = torch.Generator().manual_seed(0)
    samples = density.sample(20_000, generator=g).squeeze(-1).double()
    assert samples.shape == (20_000,) and float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    u = torch.linspace(-30.0, 30.0, 200_001, dtype=torch.float64)
    k = torch.sigmoid(u)
    cdf = torch.cumulative_trapezoid(density.pdf(k) * k * (1.0 - k), u)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), cdf])
    emp = torch.searchsorted(torch.sort(samples).values, k, right=True).double() / samples.numel()
    ks = (emp - cdf).abs().max().item()
    assert ks < 1.63 / math.sqrt(samples.numel()) + 2e-3  # 1 % level of the KS statistic


def test_schedule_density_keeps_the_default_training_draws() -> None:
    """train_noise=None and the explicit 'schedule' density draw exactly the same κ."""
    method = create_method("rfm", 8, width=32, depth=1)
    explicit = create_method("rfm", 8, width=32, depth=1, train_noise={"name": "schedule"})
    a = method._draw_train_kappa(64, torch.Generator().manual_seed(3))
    b = explicit._draw_train_kappa(64, torch.Generator().manual_seed(3))
    t = torch.rand(64, 1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, method.schedule.kappa(t), rtol=0, atol=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "train_noise" not in method.config()


def test_train_noise_and_cond_depth_round_trip_through_config() -> None:
    method = create_method("rfm", 8, width=32, depth=1, cond_depth=3, train_noise={"name": "logit_normal", "mean": -1.0})
    cfg = method.config()
    assert cfg["train_noise"] == {"name": "logit_normal", "mean": -1.0, "std": 1.0}
    assert cfg["net"]["cond_depth"] == 3
    again = build_method(cfg)
    assert again.config() == cfg
    again.net.load_state_dict(method.net.state_dict())  # same architecture, same keys
    assert "cond_depth" not in create_method("rfm", 8, width=32, depth=1).config()["net"]
    with pytest.raises(ValueError, match="train_noise"):
        make_noise_density({"name": "logit_normal", "std": -1.0}, method.schedule)
    with pytest.raises(ValueError, match="train_noise"):
        make_noise_density({"name": "beta"}, method.schedule)


def test_cond_depth_adds_an_mlp_on_the_embedding() -> None:
    torch.manual_seed(0)
    method = create_method("rfm", 8, width=32, depth=1, cond_depth=2)
    mapper = method.net.cond_mapper
    assert isinstance(mapper, torch.nn.Sequential) and len(mapper) == 3
    emb = torch.randn(4, 8)
    expected = mapper[2](torch.nn.functional.silu(mapper[0](emb)))
    torch.testing.assert_close(method.net.embed_condition(emb), expected)


def test_bf16_loss_at_init_matches_fp32() -> None:
    """Mixed precision changes rounding only: the loss at initialisation agrees to ~1 %."""
    torch.manual_seed(0)
    method = create_method("rfm", 16, width=128, depth=4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.nn.functional.normalize(torch.randn(2048, 3, generator=g), dim=-1)
    emb = torch.randn(2048, 16, generator=g)
    fp32 = method.loss(x0, emb, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = method.loss(x0, emb, torch.Generator().manual_seed(1))
    assert bf16.dtype == torch.float32  # the loss itself is reduced in float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=1e-2)
    assert bf16.item() != fp32.item()  # the autocast path really ran in bfloat16


def test_bf16_training_runs_and_keeps_float32_weights(tmp_path) -> None:
    torch.manual_seed(0)
    method = create_method("rfm", 8, width=32, depth=1)
    x0 = torch.nn.functional.normalize(torch.randn(256, 3), dim=-1)
    emb = torch.randn(256, 8)
    cfg = TrainConfig(train_steps=20, batch_size=64, warmup_steps=2, log_every=10, progress=False, precision="bfloat16")
    res = train(method, x0, emb, tmp_path / "run", cfg)
    assert res.final_loss is not None and math.isfinite(res.final_loss)
    assert all(p.dtype == torch.float32 for p in method.net.parameters())
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")


def test_logit_normal_pdf_closed_form() -> None:
    d = LogitNormal(-0.5, 1.3)
    k = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    z = (torch.log(k / (1 - k)) + 0.5) / 1.3
    expected = torch.exp(-0.5 * z**2) / (math.sqrt(2 * math.pi) * 1.3 * k * (1 - k))
    torch.testing.assert_close(d.pdf(k), expected)
    assert np.isclose(UniformLevel().pdf(torch.tensor([0.3])).item(), 1.0)


def test_geoscore_mbr_picks_the_expected_score_maximiser() -> None:
    from globeflow.metrics.distance import geoscore
    from globeflow.geometry.coords import great_circle_km
    from globeflow.methods.base import geoscore_mbr

    rng = np.random.default_rng(0)
    # Row 0: three points around Paris and one in Tokyo -> the central Paris point.
    row0 = np.array([[48.85, 2.35], [49.5, 2.35], [48.2, 2.35], [35.7, 139.7]])
    samples = np.stack([row0, np.column_stack([rng.uniform(-60, 60, 4), rng.uniform(-180, 180, 4)])])
    best = geoscore_mbr(samples)
    np.testing.assert_array_equal(best[0], row0[0])
    # Row 1: brute force over the candidates with the GeoScore itself.
    s = samples[1]
    d = great_circle_km(s[:, None, 0], s[:, None, 1], s[None, :, 0], s[None, :, 1])
    np.testing.assert_array_equal(best[1], s[geoscore(d).sum(axis=1).argmax()])
    with pytest.raises(ValueError, match="samples"):
        geoscore_mbr(np.zeros((2, 3)))


def test_mbr_beats_one_sample_on_the_true_conditional() -> None:
    """On an ambiguous world a single exact draw scores well below the Bayes estimate; MBR
    over exact draws gets most of the way (the reason for ``--strategy mbr``)."""
    from globeflow.data import SyntheticWorld
    from globeflow.methods.base import geoscore_mbr
    from globeflow.metrics import distance_metrics

    world = SyntheticWorld.make(num_types=8, dim=16, sigma=0.5, seed=0, families=2)
    emb, lat, lon = world.sample(400, 1)
    truth = np.column_stack([lat, lon])
    one = distance_metrics(world.sample_conditional(emb, 1, seed=2)[:, 0], truth)["geoscore"]
    mbr = distance_metrics(geoscore_mbr(world.sample_conditional(emb, 32, seed=2)), truth)["geoscore"]
    bayes = world.best_geoscore(emb, lat, lon)
    assert one < 0.85 * bayes and mbr > 0.9 * bayes


def test_cli_train_noise_defaults() -> None:
    """rfm trains with logit-normal(−1, 1) levels by default (docs/recipe.md); diffusion and
    flow keep κ(t), t ~ U[0, 1]; an explicit flag wins."""
    from globeflow.cli import build_parser
    from globeflow.cli.train import model_config as _model_config

    def resolved(*extra: str):
        return _model_config(build_parser().parse_args(["train", "--data", "x", "--out", "y", *extra])).train_noise_config()

    assert resolved() == {"name": "logit_normal", "mean": -1.0, "std": 1.0}
    assert resolved("--method", "flow") is None and resolved("--method", "diffusion") is None
    assert resolved("--train-noise", "schedule") is None
    assert resolved("--train-noise", "uniform") == {"name": "uniform"}
    assert resolved("--method", "flow", "--train-noise", "logit_normal", "--train-noise-mean", "0")["mean"] == 0.0
