"""Conformal calibration of credible regions: the finite-sample law, closed-form models, files, wiring.

Laws checked:
* split conformal with continuous exchangeable scores covers with probability exactly
  ⌈(n+1)α⌉/(n+1) ∈ [α, α + 1/(n+1)] (Angelopoulos & Bates 2021, Thm. 1 / Appendix D);
* for an over-confident vMF model (samples and log p in closed form), the calibrated regions
  cover fresh rows at the nominal level while the model's own regions do not;
* the calibration survives save/load bit for bit; ``load`` attaches it, ``answer`` and
  ``evaluate --density`` use it by default and say so; the opt-outs work.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import globeflow
from globeflow.answers import answer
from globeflow.cli import main
from globeflow.data import write_parquet
from globeflow.density.calibration import (
    Calibration,
    calibrated_regions,
    conformal_level,
    conformal_split,
    fit_calibration,
    hpd_rank_scores,
    hpd_scores,
    load_calibration,
    save_calibration,
)
from globeflow.geometry import EARTH_RADIUS_KM, vmf_log_prob, vmf_sample, xyz_to_latlon
from globeflow.geometry.coords import latlon_to_xyz
from globeflow.methods import create_method


# ----------------------------------------------------------------------------- the law
@pytest.mark.parametrize(("n", "alpha"), [(10, 0.85), (19, 0.9), (99, 0.5), (99, 0.95), (40, 0.3)])
def test_split_conformal_coverage_is_exactly_ceil_n_plus_1_alpha_over_n_plus_1(n, alpha):
    """Scores u = V² (V uniform: any continuous law, here a miscalibrated one, F(u) = √u).
    Given the calibration set, the coverage of a fresh row is F(q̂) exactly; averaged over
    20,000 calibration sets it must be ⌈(n+1)α⌉/(n+1), which lies in [α, α + 1/(n+1)]."""
    rng = np.random.default_rng(n)
    reps = 20_000
    scores = rng.random((reps, n)) ** 2
    q = np.array([conformal_level(s, alpha) for s in scores])
    coverage = np.sqrt(np.minimum(q, 1.0))  # F(q̂): exact conditional coverage
    k = math.ceil((n + 1) * alpha)
    expected = min(k, n + 1) / (n + 1)
    assert alpha <= expected <= alpha + 1 / (n + 1)
    se = coverage.std() / math.sqrt(reps)
    assert abs(coverage.mean() - expected) < 4 * se + 1e-12
    # An off-by-one order statistic would be 1/(n+1) away: far outside the tolerance.
    assert 4 * se < 0.25 / (n + 1)


def test_conformal_level_edges():
    u = np.array([0.3, 0.1, 0.2, 0.4])  # n = 4: k = ⌈5α⌉
    assert conformal_level(u, 0.2) == pytest.approx(0.1)  # k = 1
    assert conformal_level(u, 0.4) == pytest.approx(0.2)  # k = 2 exactly, not 3
    assert conformal_level(u, 0.81) == 1.0  # k = 5 > n: the whole sphere
    with pytest.raises(ValueError, match="nominal"):
        conformal_level(u, 1.0)


def test_rank_scores_are_uniform_for_a_calibrated_model_and_cover_ties():
    """Truth and samples from the same law: P(u ≤ x) = x exactly on [0, S/(S+1)] for any S
    (here S = 7), and the tail [S/(S+1), 1) holds the remaining 1/(S+1)."""
    rng = np.random.default_rng(0)
    lp = rng.normal(size=(50_000, 8))
    u = hpd_rank_scores(lp[:, 0], lp[:, 1:], seed=1)
    x = np.linspace(0.05, 7 / 8, 12)
    cdf = (u[:, None] <= x).mean(axis=0)
    assert np.abs(cdf - x).max() < 4 * math.sqrt(0.25 / len(u))
    tail = u >= 7 / 8
    assert abs(tail.mean() - 1 / 8) < 4 * math.sqrt(0.11 / len(u)) and (u < 1).all()
    # The tail score grows with the gap below the least dense sample: Δ = 1 nat -> 7.5/8.
    assert hpd_rank_scores(np.array([-1.0]), np.zeros((1, 7)))[0] == pytest.approx(7.5 / 8)
    # A flat density (the uniform model): every sample ties with the truth, which is inside.
    flat = hpd_rank_scores(np.zeros(5), np.zeros((5, 16)))
    assert (flat < 1 / 17).all()


def test_split_is_deterministic_and_disjoint():
    a, b = conformal_split(2400, 0.5, seed=0)
    a2, b2 = conformal_split(2400, 0.5, seed=0)
    assert (a == a2).all() and (b == b2).all() and len(a) == len(b) == 1200
    assert not set(a.tolist()) & set(b.tolist()) and len(set(a.tolist()) | set(b.tolist())) == 2400


# ----------------------------------------------------------------------------- closed form
class _VMFModel:
    """A 'method' with density vMF(μ_c, κ) on S²: μ_c is the embedding itself (unit 3-vector)."""

    name = "vmf-oracle"
    density_space = "S2"
    embedding_dim = 3
    calibration = None

    def __init__(self, kappa: float) -> None:
        self.kappa = torch.tensor(float(kappa), dtype=torch.float64)

    def log_prob(self, emb, latlon, *, guidance=0.0, **_):
        x = torch.as_tensor(latlon_to_xyz(latlon[:, 0], latlon[:, 1]))
        return vmf_log_prob(x, torch.as_tensor(np.asarray(emb, np.float64)), self.kappa).numpy()

    def sample_with_log_prob(self, emb, num_samples, *, guidance=0.0, seed=0, **_):
        mu = torch.as_tensor(np.asarray(emb, np.float64))
        g = torch.Generator().manual_seed(seed)
        x = vmf_sample(mu, self.kappa.expand(len(mu)), num_samples, generator=g)  # (B, S, 3)
        lp = vmf_log_prob(x, mu[:, None], self.kappa).numpy()
        return SimpleNamespace(latlon=xyz_to_latlon(x.numpy()), log_prob=lp, xyz=x.numpy())


def _vmf_rows(n: int, kappa: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    mu = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    y = vmf_sample(mu, torch.full((n,), kappa, dtype=torch.float64), 1, generator=g)[:, 0]
    return mu.numpy(), xyz_to_latlon(y.numpy())


def test_calibrated_regions_of_an_overconfident_model_cover_fresh_rows_at_the_nominal_level():
    """Model κ = 200 for truths drawn with κ = 40: its own 90% region holds ~37% of truths.
    Averaged over 200 random splits of 3,000 rows (n = 300 calibrate, the rest test) the
    calibrated coverage lies in [α, α + 1/(n+1)] up to Monte Carlo error."""
    model = _VMFModel(200.0)
    emb, truth = _vmf_rows(3000, 40.0, seed=0)
    s = hpd_scores(model, emb, truth, num_samples=64, seed=3)
    raw90 = float((s.scores <= 0.9).mean())
    assert raw90 < 0.5  # the model is badly over-confident
    rng = np.random.default_rng(0)
    n = 300
    for alpha in (0.5, 0.9, 0.95):
        cov = []
        for _ in range(200):
            perm = rng.permutation(len(s.scores))
            q = conformal_level(s.scores[perm[:n]], alpha)
            cov.append((s.scores[perm[n:]] <= q).mean())
        cov = np.asarray(cov)
        se = cov.std() / math.sqrt(len(cov))
        assert alpha - 4 * se <= cov.mean() <= alpha + 1 / (n + 1) + 4 * se, (alpha, cov.mean())
    # One fit with its own fresh rows: within ±2 points of nominal at n = 1,000.
    cal = fit_calibration(model, emb[:1000], truth[:1000], num_samples=64, seed=5)
    emb2, truth2 = _vmf_rows(4000, 40.0, seed=1)
    fresh = hpd_scores(model, emb2, truth2, num_samples=64, seed=6)
    for alpha in (0.5, 0.9, 0.95):
        assert abs((fresh.scores <= cal.level(alpha)).mean() - alpha) < 0.02

    # Areas: the model's own 90% region is its κ = 200 cap; the calibrated one must be the
    # cap holding 90% of the truths' κ = 40 law (the same centre): area 2π(−log 0.1)/κ · R²,
    # beyond all 64 samples, so this checks the tail rule and its area extrapolation.
    def cap(kappa, level):
        return 2 * math.pi * -math.log(1 - level) / kappa * EARTH_RADIUS_KM**2

    tau, area_raw, _ = calibrated_regions(fresh.sample_log_prob, (0.9,), None)
    assert np.median(area_raw) == pytest.approx(cap(200, 0.9), rel=0.1)
    tau_cal, area_cal, q = calibrated_regions(fresh.sample_log_prob, (0.9,), cal)
    assert q[0] > 64 / 65  # beyond what 64 samples resolve
    assert np.median(area_cal) == pytest.approx(cap(40, 0.9), rel=0.1)
    # The thresholds alone (no randomisation) cover the fresh truths at 90 ± 2%.
    assert abs((fresh.truth_log_prob >= tau_cal[:, 0]).mean() - 0.9) < 0.02


# ----------------------------------------------------------------------------- files
def _calibration(n: int = 50) -> Calibration:
    u = np.random.default_rng(1).random(n)
    return Calibration(scores=np.sort(u), guidance=0.0, num_samples=32, steps=4, seed=0, source={"data": "x"})


def test_calibration_survives_save_and_load(tmp_path):
    cal = _calibration()
    path = save_calibration(tmp_path / "calibration.json", cal)
    back = load_calibration(path)
    assert np.array_equal(back.scores, cal.scores) and back.path == str(path)
    levels = np.linspace(0.01, 0.99, 99)
    assert np.array_equal(back.level(levels), cal.level(levels))
    assert (back.guidance, back.num_samples, back.steps, back.source) == (0.0, 32, 4, {"data": "x"})
    with pytest.raises(FileExistsError, match="overwrite"):
        save_calibration(path, cal)
    save_calibration(path, cal, overwrite=True)
    obj = json.loads(path.read_text())
    obj["scores"] = [0.5, 1.5]
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="scores"):
        load_calibration(path)


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("cal")
    rng = np.random.default_rng(0)
    data = base / "heldout.parquet"
    write_parquet(
        data, rng.normal(size=(12, 6)).astype(np.float32), rng.uniform(-80, 80, 12), rng.uniform(-180, 180, 12)
    )
    torch.manual_seed(0)
    model = create_method("rfm", 6, width=16, depth=1)
    for p in model.net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return globeflow.save(model, base / "run"), data


def test_load_attaches_the_calibration_and_answer_uses_it(run_and_data, tmp_path):
    run, data = run_and_data
    model = globeflow.load(run)
    assert model.calibration is None
    emb = np.random.default_rng(2).normal(size=(2, 6)).astype(np.float32)
    plain = answer(model, emb, num_samples=32, density_steps=2)
    assert plain[0].calibration is None and plain[0].to_dict()["regions_calibrated"] is False

    cal = _calibration()
    cal_path = tmp_path / "run" / "calibration.json"
    import shutil

    shutil.copytree(run, tmp_path / "run")
    save_calibration(cal_path, cal)
    model = globeflow.load(tmp_path / "run")
    assert model.calibration is not None and np.array_equal(model.calibration.scores, cal.scores)
    got = answer(model, emb, num_samples=32, density_steps=2)
    d = got[0].to_dict()
    assert d["regions_calibrated"] is True and "calibration.json" in d["calibration"]
    q = cal.level(np.array([0.5, 0.9]))
    assert got[0].region_levels == pytest.approx({0.5: q[0], 0.9: q[1]})
    # Same samples (same seed) as the uncalibrated answer: the areas are those of levels q̂.
    _, area, _ = calibrated_regions(plain[0].sample_log_prob[None], (0.5, 0.9), cal)
    assert got[0].hpd90_area_km2 == pytest.approx(area[0, 1]) and got[0].hpd50_area_km2 == pytest.approx(area[0, 0])
    # Opt-out, and a guidance the calibration was not fitted at.
    assert answer(model, emb, num_samples=32, density_steps=2, calibration=None)[0].calibration is None
    assert answer(model, emb, num_samples=32, density_steps=2, guidance=1.0)[0].calibration is None


def test_cli_calibrate_then_evaluate_uses_it(run_and_data, tmp_path, capsys):
    run, data = run_and_data
    import shutil

    shutil.copytree(run, tmp_path / "run")
    run = tmp_path / "run"
    args = ["calibrate", "--model", str(run), "--data", str(data), "--samples", "8", "--steps", "2"]
    assert main(args + ["--calibration-fraction", "0.5"]) == 0
    cal = load_calibration(run / "calibration.json")
    assert cal.n == 6 and len(cal.source["test_rows"]) == 6 and cal.source["data_sha256"]
    assert "guarantee" in capsys.readouterr().out
    assert main(args) == 2  # never overwritten without being asked
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0 and load_calibration(run / "calibration.json").n == 12
    out = tmp_path / "m.json"
    ev = ["evaluate", "--model", str(run), "--data", str(data), "--out", str(out), "--density", "--no-prdc"]
    ev += ["--density-samples", "8", "--density-steps", "2", "--sample-steps", "2"]
    assert main(ev) == 0
    m = json.loads(out.read_text())
    assert m["regions"].startswith("conformal") and "hpd90_coverage_uncalibrated" in m
    assert "credible regions: conformal" in capsys.readouterr().out
    assert main(ev + ["--uncalibrated", "--overwrite"]) == 0  # --out exists: replacing it is asked for
    m = json.loads(out.read_text())
    assert m["regions"] == "uncalibrated" and "hpd90_coverage_uncalibrated" not in m


def test_the_shipped_model_is_calibrated_on_half_of_its_heldout_rows():
    from globeflow.pretrained import default_model_dir, heldout_path

    if not (default_model_dir() / "calibration.json").is_file():
        pytest.skip("calibration.json of the shipped model not built yet: command in docs/calibration.md")
    model = globeflow.load(default_model_dir())
    cal = model.calibration
    assert cal is not None and cal.guidance == 0.0
    cal_rows, test_rows = conformal_split(
        cal.source["data_rows"], cal.source["calibration_fraction"], cal.source["split_seed"]
    )
    assert cal.source["calibration_rows"] == cal_rows.tolist() and cal.source["test_rows"] == test_rows.tolist()
    assert cal.n == len(cal_rows) >= 1000 and len(test_rows) >= 1000
    from globeflow.density.calibration import file_sha256

    assert cal.source["data_sha256"] == file_sha256(heldout_path())
    # Calibration rows' own coverage at the calibrated levels: ⌈(n+1)α⌉/n by construction.
    for alpha in (0.5, 0.9, 0.95):
        k = math.ceil((cal.n + 1) * alpha)
        assert (cal.scores <= cal.level(alpha)).sum() == k
