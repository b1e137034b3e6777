"""The command line end to end: train → predict → evaluate, and bad files fed to every command."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import globeflow
from globeflow.cli import main
from globeflow.data import SyntheticWorld, write_parquet, write_world_dataset


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    world = SyntheticWorld.make(num_types=3, dim=8, seed=3)
    return write_world_dataset(out, world, n_train=1024, n_test=64, seed=3)


@pytest.fixture(scope="module")
def run_dir(world_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "rfm"
    code = main([
        "train", "--data", str(world_files["train"]), "--out", str(out), "--method", "rfm",
        "--train-steps", "30", "--batch-size", "64", "--width", "32", "--depth", "2",
        "--warmup-steps", "5", "--seed", "1", "--no-progress",
    ])
    assert code == 0
    return out


def test_train_writes_resolved_config(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["method"] == "rfm"
    assert config["model"]["net"]["dim"] == 32 and config["model"]["net"]["depth"] == 2
    assert config["model"]["schedule"] == {"name": "skewed_sigmoid", "alpha": -3.0, "beta": 7.0}
    assert config["train"]["train_steps"] == 30 and config["train"]["lr"] == 8e-4
    assert config["train"]["optimizer"] == "adamw" and config["train"]["ema_decay"] == 0.999
    assert (run_dir / "model.safetensors").is_file()
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log and all({"step", "loss", "lr"} <= set(row) for row in log)


def test_predict_and_evaluate_agree_with_independent_recomputation(run_dir, world_files, tmp_path):
    preds = tmp_path / "preds.parquet"
    assert main(["predict", "--model", str(run_dir), "--data", str(world_files["test"]), "--out", str(preds),
                 "--guidance", "2", "--sample-steps", "8", "--seed", "5"]) == 0
    table = pq.read_table(preds).to_pydict()
    assert {"pred_latitude", "pred_longitude", "latitude", "longitude", "id"} <= set(table)
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(run_dir), "--data", str(world_files["test"]), "--out", str(metrics_path),
                 "--guidance", "2", "--sample-steps", "8", "--seed", "5", "--strategy", "sample"]) == 0
    metrics = json.loads(metrics_path.read_text())
    # Recompute from the predictions with an independent haversine.
    lat1, lon1 = np.radians(table["pred_latitude"]), np.radians(table["pred_longitude"])
    lat2, lon2 = np.radians(table["latitude"]), np.radians(table["longitude"])
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    d = 2 * 6371.0 * np.arcsin(np.sqrt(a))
    assert metrics["n"] == 64
    assert math.isclose(metrics["geoscore"], float(np.mean(5000 * np.exp(-d / 1492.7))), rel_tol=1e-6)
    assert math.isclose(metrics["distance_km"], float(d.mean()), rel_tol=1e-6)
    assert math.isclose(metrics["median_distance_km"], float(np.median(d)), rel_tol=1e-6)
    for r in (1, 25, 200, 750, 2500):
        assert metrics[f"acc_{r}km"] == pytest.approx(float(np.mean(d < r)))


def test_python_api_contract(run_dir):
    import torch

    model = globeflow.load(run_dir)
    emb = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    latlon = model.predict(emb, guidance=2.0, sample_steps=16, seed=0)
    assert latlon.shape == (5, 2) and latlon.dtype == np.float64
    samples = model.sample(torch.from_numpy(emb), num_samples=64, guidance=0.0, sample_steps=16, seed=0)
    assert samples.shape == (5, 64, 2) and samples.dtype == np.float64
    assert np.all((samples[..., 1] >= -180) & (samples[..., 1] < 180)) and np.all(np.abs(samples[..., 0]) <= 90)


def _write_bad(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def _bad_files(tmp_path):
    emb = [[0.1] * 8, [0.2] * 8]
    files = {
        "missing column `latitude`": _write_bad(tmp_path / "nolat.parquet", embedding=emb, longitude=[0.0, 1.0]),
        "NaN": _write_bad(tmp_path / "nan.parquet", embedding=[[0.1] * 8, [float("nan")] + [0.0] * 7],
                          latitude=[0.0, 1.0], longitude=[0.0, 1.0]),
        "91": _write_bad(tmp_path / "lat.parquet", embedding=emb, latitude=[0.0, 91.0], longitude=[0.0, 1.0]),
        "-181": _write_bad(tmp_path / "lon.parquet", embedding=emb, latitude=[0.0, 1.0], longitude=[-181.0, 1.0]),
        "length": _write_bad(tmp_path / "ragged.parquet", embedding=[[0.1] * 8, [0.1] * 7],
                             latitude=[0.0, 1.0], longitude=[0.0, 1.0]),
        "empty": _write_bad(tmp_path / "empty.parquet", embedding=pa.array([], pa.list_(pa.float32())),
                            latitude=pa.array([], pa.float64()), longitude=pa.array([], pa.float64())),
    }
    (tmp_path / "garbage.parquet").write_bytes(b"not a parquet file at all")
    files["garbage.parquet"] = tmp_path / "garbage.parquet"
    np.savez(tmp_path / "bad.npz", embeddings=np.ones((2, 8)), latitude=np.array([0.0, 95.0]), longitude=np.zeros(2))
    files["95"] = tmp_path / "bad.npz"
    return files


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_bad_files_get_clear_errors(command, run_dir, tmp_path, capsys):
    for expected, path in _bad_files(tmp_path).items():
        if command == "train":
            argv = ["train", "--data", str(path), "--out", str(tmp_path / "r"), "--train-steps", "2", "--no-progress"]
        else:
            argv = [command, "--model", str(run_dir), "--data", str(path), "--out", str(tmp_path / "o.x")]
        if command == "predict" and expected == "missing column `latitude`":
            continue  # predict does not need coordinates
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (command, path, err)
        assert path.name in err and expected.lower() in err.lower(), (command, expected, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_embedding_length_must_match_model(command, run_dir, tmp_path, capsys):
    path = tmp_path / "wide.parquet"
    write_parquet(path, np.ones((3, 16), np.float32), np.zeros(3), np.zeros(3))
    code = main([command, "--model", str(run_dir), "--data", str(path), "--out", str(tmp_path / "o.x")])
    err = capsys.readouterr().err
    assert code == 2 and "wide.parquet" in err and "16" in err and "8" in err, err


def test_missing_model_dir_is_named(tmp_path, world_files, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(world_files["test"]),
                 "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err


def test_train_refuses_to_mix_runs(run_dir, world_files, capsys):
    code = main(["train", "--data", str(world_files["train"]), "--out", str(run_dir), "--method", "flow",
                 "--train-steps", "2", "--width", "32", "--depth", "2", "--no-progress"])
    assert code == 2 and "different model" in capsys.readouterr().err


def test_resume_continues_to_more_steps(world_files, tmp_path):
    out = tmp_path / "resume"
    common = ["--data", str(world_files["train"]), "--out", str(out), "--width", "16", "--depth", "1",
              "--batch-size", "32", "--warmup-steps", "2", "--checkpoint-every", "5", "--no-progress"]
    assert main(["train", *common, "--train-steps", "10"]) == 0
    assert main(["train", *common, "--train-steps", "20"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 20 and steps == sorted(set(steps))


def test_same_seed_trains_the_same_model(world_files, tmp_path):
    """--seed fixes the initial weights too, whatever state torch's global generator is in."""
    import torch
    from safetensors.torch import load_file

    common = ["--data", str(world_files["train"]), "--width", "16", "--depth", "1", "--batch-size", "32",
              "--train-steps", "3", "--warmup-steps", "1", "--seed", "7", "--no-progress"]
    weights = []
    for i, global_seed in enumerate((123, 456)):
        torch.manual_seed(global_seed)  # another process starts from another state
        assert main(["train", *common, "--out", str(tmp_path / f"r{i}")]) == 0
        weights.append(load_file(tmp_path / f"r{i}" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_quick_demo(tmp_path, capsys):
    assert main(["demo", "--synthetic", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best achievable GeoScore" in out and "true p(y | c)" in out
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert 0 <= metrics["geoscore"] <= 5000 and metrics["best_achievable_geoscore"] > 0


def test_unavailable_device_is_reported(run_dir, world_files, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["evaluate", "--model", str(run_dir), "--data", str(world_files["test"]),
                 "--out", str(tmp_path / "m.json"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA is not available" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flag, value", [("--heldout-rows", "0"), ("--heldout-rows", "-3"), ("--density-rows", "-1"), ("--trajectories", "-2")]
)
def test_demo_rejects_bad_row_counts(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "d"), flag, value])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
