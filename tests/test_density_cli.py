"""``globeflow evaluate --density`` and ``globeflow density`` end to end, with closed-form answers.

A Riemannian flow-matching model whose output layer is zero has the velocity field 0, so its
density is exactly uniform: NLL (Eq. 18) = log₂(4π)/3 = 1.2173, localizability = −log₂ 4π bits,
every credible region is the whole sphere (area 4πR²) and covers every true location.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import globeflow
from globeflow.cli import main
from globeflow.data import read_dataset, write_parquet
from globeflow.geometry import EARTH_RADIUS_KM
from globeflow.methods import create_method


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "test.parquet"
    write_parquet(
        path, rng.normal(size=(12, 6)).astype(np.float32), rng.uniform(-80, 80, 12), rng.uniform(-180, 180, 12)
    )
    return path


def _save(tmp_path, *, zero: bool):
    torch.manual_seed(0)
    model = create_method("rfm", 6, width=16, depth=1)
    if zero:
        torch.nn.init.zeros_(model.net.final_linear.weight)
        torch.nn.init.zeros_(model.net.final_linear.bias)
    else:
        for p in model.net.parameters():
            torch.nn.init.normal_(p, std=0.2)
    return globeflow.save(model, tmp_path / ("zero" if zero else "random"))


def test_evaluate_density_of_the_uniform_model(data_file, tmp_path):
    run = _save(tmp_path, zero=True)
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--model", str(run), "--data", str(data_file), "--out", str(out), "--density"]
    assert main(args + ["--density-samples", "16", "--density-steps", "4", "--sample-steps", "2"]) == 0
    m = json.loads(out.read_text())
    assert m["nll"] == pytest.approx(math.log2(4 * math.pi) / 3, abs=1e-6)
    assert m["nll"] == pytest.approx(1.2173, abs=2e-4)  # the rounded value
    assert m["localizability_mean"] == pytest.approx(-math.log2(4 * math.pi), abs=1e-6)
    assert m["hpd50_coverage"] == m["hpd90_coverage"] == m["hpd95_coverage"] == 1.0
    assert m["hpd90_area_km2_median"] == pytest.approx(4 * math.pi * EARTH_RADIUS_KM**2, rel=1e-6)
    assert m["n_density"] == 12 and m["settings"]["density"]["num_samples"] == 16


def test_evaluate_density_rows_and_ensemble(data_file, tmp_path):
    run = _save(tmp_path, zero=False)
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--model", str(run), "--data", str(data_file), "--out", str(out), "--density"]
    assert (
        main(args + ["--density-rows", "3", "--density-samples", "8", "--density-steps", "4", "--strategy", "ensemble"])
        == 0
    )
    m = json.loads(out.read_text())
    assert m["n_density"] == 3 and m["n"] == 12
    model = globeflow.load(run)
    data = read_dataset(data_file)
    truth = np.stack([data.latitude, data.longitude], axis=1)
    log_p = model.log_prob(data.embeddings[:3], truth[:3], steps=64)  # --nll-steps (default 64)
    assert m["nll"] == pytest.approx(-log_p.mean() / (3 * math.log(2)), rel=1e-5)


def test_ensemble_predict_keeps_the_densest_sample(tmp_path):
    model = globeflow.load(_save(tmp_path, zero=False))
    emb = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    res = model.sample_with_log_prob(emb, 8, guidance=1.0, seed=3)
    best = res.latlon[np.arange(4), res.log_prob.argmax(axis=1)]
    np.testing.assert_allclose(model.predict(emb, guidance=1.0, seed=3, strategy="ensemble", ensemble_size=8), best)


def test_density_command_writes_map_regions_and_raster(data_file, tmp_path, capsys):
    run = _save(tmp_path, zero=False)
    png, gj, asc = tmp_path / "map.png", tmp_path / "regions.geojson", tmp_path / "levels.asc"
    args = ["density", "--model", str(run), "--data", str(data_file), "--row", "2", "--out", str(png)]
    args += ["--geojson", str(gj), "--raster", str(asc), "--resolution", "5", "--samples", "200", "--steps", "8"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "90% credible region" in text and "localizability" in text and "log p(true location)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    regions = json.loads(gj.read_text())
    assert [f["properties"]["level"] for f in regions["features"]] == [0.95, 0.9, 0.5]
    areas = [f["properties"]["area_km2"] for f in regions["features"]]
    assert areas[0] > areas[1] > areas[2] > 0
    header = asc.read_text().splitlines()[:6]
    assert header[0].split() == ["ncols", "72"] and header[1].split() == ["nrows", "36"]


def test_density_command_errors_name_the_field(data_file, tmp_path, capsys):
    run = _save(tmp_path, zero=False)
    base = ["density", "--model", str(run), "--data", str(data_file), "--out", str(tmp_path / "m.png")]
    assert main(base + ["--row", "99"]) == 2
    assert "--row" in capsys.readouterr().err
    assert main(base + ["--levels", "0.5,1.5"]) == 2
    assert "--levels" in capsys.readouterr().err
