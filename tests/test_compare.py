"""``globeflow evaluate`` / ``compare`` end to end, recomputed independently from ``predict``'s output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import globeflow
from globeflow.cli import main
from globeflow.data import read_dataset, write_parquet
from globeflow.methods import create_method
from globeflow.metrics import admin_accuracy, distance_metrics, load_gazetteer, prdc_latlon

LABELLED = {  # truth with OSV-5M-style labels (one without a sub-region, like Andorra)
    "city": ["Paris", "Springfield", "Encamp"],
    "sub-region": ["Paris", "Sangamon County", ""],
    "region": ["Ile-de-France", "Illinois", "Encamp"],
    "country": ["FR", "US", "AD"],
}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 60
    base = np.array([[48.8566, 2.3522], [39.8017, -89.6437], [42.5345, 1.5803]])
    latlon = base[np.arange(n) % 3] + rng.normal(0, 0.5, (n, 2))
    extra = {c: np.array([v[i % 3] for i in range(n)], dtype=object) for c, v in LABELLED.items()}
    path = tmp_path_factory.mktemp("data") / "test.parquet"
    write_parquet(path, rng.normal(size=(n, 6)).astype(np.float32), latlon[:, 0], latlon[:, 1], extra=extra)
    return path, latlon


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    rfm = create_method("rfm", 6, width=16, depth=1)
    for p in rfm.net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return globeflow.save(create_method("uniform", 6), root / "uniform"), globeflow.save(rfm, root / "rfm")


def test_evaluate_all_keys_recomputed(data_file, runs, tmp_path):
    path, truth = data_file
    out, preds = tmp_path / "m.json", tmp_path / "p.parquet"
    # One sample per row, so that the generative metrics reuse the estimates (checked below).
    common = ["--data", str(path), "--sample-steps", "2", "--seed", "3", "--guidance", "0", "--strategy", "sample"]
    assert main(["evaluate", "--model", str(runs[1]), "--out", str(out), *common]) == 0
    assert main(["predict", "--model", str(runs[1]), "--out", str(preds), *common]) == 0
    m = json.loads(out.read_text())
    import pyarrow.parquet as pq

    t = pq.read_table(preds)
    pred = np.stack([t["pred_latitude"].to_numpy(), t["pred_longitude"].to_numpy()], axis=1)
    for key, value in distance_metrics(pred, truth).items():
        assert m[key] == pytest.approx(value, rel=1e-9), key
    # The truth's admin keys come from the file's labels; reverse-geocoding them agrees here.
    assert m["admin_truth"] == "labels"
    for key, value in admin_accuracy(pred, truth).items():
        assert m[key] == pytest.approx(value), key
    # PRDC: the point estimates (one sample per embedding at ω = --guidance) against the truth.
    for key, value in prdc_latlon(truth, pred).items():
        if key in m:
            assert m[key] == pytest.approx(value), key
    assert {"precision", "recall", "density", "coverage"} <= m.keys() and m["prdc_guidance"] == 0.0


def test_evaluate_defaults_to_mbr_at_guidance_zero(data_file, runs, tmp_path):
    """The default point estimate of a generative model is MBR over 32 samples of ω = 0."""
    from globeflow.methods.base import geoscore_mbr

    path, truth = data_file
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(runs[1]), "--data", str(path), "--out", str(out),
                 "--sample-steps", "2", "--seed", "3", "--no-prdc"]) == 0  # fmt: skip
    m = json.loads(out.read_text())
    assert m["strategy"] == "mbr" and m["guidance"] == 0.0
    assert m["settings"]["strategy"] == "mbr" and m["settings"]["guidance"] == 0.0
    model = globeflow.load(runs[1])
    emb = read_dataset(path).embeddings
    samples = model.sample(emb, 32, guidance=0.0, sample_steps=2, seed=3)
    mbr = geoscore_mbr(samples)
    assert m["geoscore"] == pytest.approx(distance_metrics(mbr, truth)["geoscore"], rel=1e-9)
    # It is the method's own estimate: predict (API and CLI) writes the same points by default.
    np.testing.assert_allclose(model.predict(emb, sample_steps=2, seed=3), mbr)
    preds = tmp_path / "p.parquet"
    assert main(["predict", "--model", str(runs[1]), "--data", str(path), "--out", str(preds),
                 "--sample-steps", "2", "--seed", "3"]) == 0  # fmt: skip
    import pyarrow.parquet as pq

    t = pq.read_table(preds)
    np.testing.assert_allclose(np.stack([t["pred_latitude"].to_numpy(), t["pred_longitude"].to_numpy()], axis=1), mbr)
    # The baselines keep one sample (their predict has no MBR).
    out = tmp_path / "uniform.json"
    assert main(["evaluate", "--model", str(runs[0]), "--data", str(path), "--out", str(out), "--no-prdc"]) == 0
    assert json.loads(out.read_text())["strategy"] == "sample"


def test_compare_side_by_side(data_file, runs, tmp_path):
    path, _ = data_file
    out = tmp_path / "table.md"
    args = ["compare", *map(str, runs), "--data", str(path), "--out", str(out), "--sample-steps", "2"]
    assert main(args + ["--density", "--density-samples", "8", "--density-steps", "2", "--prdc-unconditional"]) == 0
    table = out.read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| model | geoscore") and "acc_country" in lines[0] and "acc_city" in lines[0]
    assert lines[2].startswith("| uniform |") and lines[3].startswith("| rfm |")
    assert "precision" in table and "uncond_coverage" in table and "nll" in table
    res = json.loads(out.with_suffix(".json").read_text())
    uni = res["runs"][str(runs[0])]["metrics"]
    assert uni["nll"] == pytest.approx(math.log2(4 * math.pi) / 3, abs=1e-6)  # float32 log p
    assert uni["nll"] == pytest.approx(1.2173, abs=2e-4)  # the rounded value
    # Same seeds as evaluate: compare's numbers for a run equal evaluate's.
    one = tmp_path / "one.json"
    eargs = ["--data", str(path), "--sample-steps", "2", "--no-prdc"]
    assert main(["evaluate", "--model", str(runs[1]), "--out", str(one), *eargs]) == 0
    single = json.loads(one.read_text())
    rfm = res["runs"][str(runs[1])]["metrics"]
    for key in ("geoscore", "distance_km", "acc_country", "acc_region", "acc_city", "acc_200km"):
        assert rfm[key] == single[key], key
    assert "precision" not in single


def test_unconditional_needs_condition_dropout(data_file, runs, tmp_path):
    path, _ = data_file
    code = main([
        "evaluate", "--model", str(runs[0]), "--data", str(path), "--out", str(tmp_path / "m.json"),
        "--prdc-unconditional",
    ])  # fmt: skip
    assert code == 2


def test_gazetteer_loaded_once():
    assert load_gazetteer() is load_gazetteer()
