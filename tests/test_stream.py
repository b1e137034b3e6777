"""Streaming data (globeflow.data.stream): chunked reads equal whole reads, the training
stream's epochs, determinism, exact resume, disjoint DDP ranks, pack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from globeflow.data import read_dataset
from globeflow.data.dataset import DataError
from globeflow.data.stream import TrainStream, iter_chunks, list_units, pack
from globeflow.io import load_weights

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import FakeMethod  # noqa: E402

from globeflow.training import TrainConfig, train  # noqa: E402

HERE = Path(__file__).parent
N, D = 1000, 8


def _write(path: Path, n: int = N, row_group: int = 100, bad_row: int | None = None) -> np.ndarray:
    """Parquet of ``n`` rows whose embedding column 0 is the row id; ``row_group`` rows per group."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, D)).astype(np.float32)
    emb[:, 0] = np.arange(n)
    lat, lon = rng.uniform(-80, 80, n), rng.uniform(-170, 170, n)
    if bad_row is not None:
        lat[bad_row] = 95.0
    table = pa.table(
        {
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), D),
            "latitude": lat,
            "longitude": lon,
            "id": np.arange(n),
        }
    )
    pq.write_table(table, path, row_group_size=row_group)
    return emb


def _stream(path: Path, *, seed: int = 1, rank: int = 0, world: int = 1, batch: int = 20, buffer: int = 200):
    s = TrainStream(path, buffer_rows=buffer, read_rows=30)
    s.start(seed=seed, rank=rank, world_size=world, batch_rows=batch)
    return s


def _ids(stream: TrainStream, steps: int) -> list[np.ndarray]:
    return [stream.next_batch()[1][:, 0].numpy().astype(int) for _ in range(steps)]


def test_chunks_equal_the_whole_file(tmp_path):
    emb = _write(tmp_path / "a.parquet")
    whole = read_dataset(tmp_path / "a.parquet")
    assert len(list_units(tmp_path / "a.parquet")) == 10  # one unit per row group
    chunks = list(iter_chunks(tmp_path / "a.parquet", require_coords=True, chunk_rows=64))
    assert max(len(c) for c in chunks) == 64
    np.testing.assert_array_equal(np.concatenate([c.embeddings for c in chunks]), emb)
    np.testing.assert_array_equal(np.concatenate([c.latitude for c in chunks]), whole.latitude)
    np.testing.assert_array_equal(np.concatenate([c.extra["id"] for c in chunks]), np.arange(N))


def test_chunk_errors_name_the_global_row(tmp_path):
    _write(tmp_path / "bad.parquet", bad_row=523)
    with pytest.raises(DataError) as err:
        list(iter_chunks(tmp_path / "bad.parquet", require_coords=True, chunk_rows=64))
    assert err.value.row == 523 and err.value.field == "latitude"


def test_an_epoch_reads_every_row_once_and_the_seed_fixes_the_order(tmp_path):
    _write(tmp_path / "a.parquet")
    # window 200 = 10 batches of 20; 1000 rows = 5 windows = 50 steps per epoch
    epoch = np.concatenate(_ids(_stream(tmp_path / "a.parquet"), 50))
    assert sorted(epoch) == list(range(N))
    again = np.concatenate(_ids(_stream(tmp_path / "a.parquet"), 50))
    other = np.concatenate(_ids(_stream(tmp_path / "a.parquet", seed=2), 50))
    np.testing.assert_array_equal(epoch, again)
    assert not np.array_equal(epoch, other)
    # shuffled well beyond row-group order: a batch is not a run of consecutive rows
    first = np.sort(epoch[:20])
    assert np.ptp(first) > 20
    # the next epoch visits the units in another order
    s = _stream(tmp_path / "a.parquet")
    _ids(s, 50)
    assert not np.array_equal(np.concatenate(_ids(s, 50)), epoch)


def test_resume_from_the_saved_position_is_exact(tmp_path):
    _write(tmp_path / "a.parquet")
    ref = _stream(tmp_path / "a.parquet")
    _ids(ref, 13)  # mid-window, mid-unit
    state = json.loads(json.dumps(ref.state_dict()))  # it is saved as JSON
    expected = _ids(ref, 60)  # crosses the epoch boundary
    resumed = _stream(tmp_path / "a.parquet")
    resumed.load_state_dict(state)
    for a, b in zip(expected, _ids(resumed, 60)):
        np.testing.assert_array_equal(a, b)
    other = TrainStream(tmp_path / "a.parquet", buffer_rows=100)
    other.start(seed=1, batch_rows=20)
    with pytest.raises(ValueError, match="buffer_rows"):
        other.load_state_dict(state)


def test_ranks_read_disjoint_rows(tmp_path):
    _write(tmp_path / "a.parquet")
    seen = [np.concatenate(_ids(_stream(tmp_path / "a.parquet", rank=r, world=2, batch=10, buffer=100), 50)) for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(N))
    # a single unit is split in slices, one per rank
    _write(tmp_path / "one.parquet", n=200, row_group=200)
    halves = [set(np.concatenate(_ids(_stream(tmp_path / "one.parquet", rank=r, world=2, batch=10, buffer=100), 10))) for r in (0, 1)]
    assert halves[0] | halves[1] == set(range(200)) and not halves[0] & halves[1]


def test_buffer_smaller_than_a_batch_is_refused(tmp_path):
    _write(tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="shuffle buffer"):
        _stream(tmp_path / "a.parquet", batch=64, buffer=32)


def test_pack_keeps_every_row_and_shuffles(tmp_path):
    emb = _write(tmp_path / "a.parquet")
    assert pack(tmp_path / "a.parquet", tmp_path / "p.arrow", batch_rows=128) == N
    plain = np.concatenate([c.embeddings for c in iter_chunks(tmp_path / "p.arrow", require_coords=True)])
    np.testing.assert_array_equal(plain, emb)
    assert len(list_units(tmp_path / "p.arrow")) == 8  # 128-row record batches
    with pytest.raises(FileExistsError):
        pack(tmp_path / "a.parquet", tmp_path / "p.arrow")
    pack(tmp_path / "a.parquet", tmp_path / "s.arrow", shuffle_seed=0, buckets=3)
    chunks = list(iter_chunks(tmp_path / "s.arrow", require_coords=True))
    shuffled = np.concatenate([c.embeddings for c in chunks])
    ids = shuffled[:, 0].astype(int)
    assert sorted(ids) == list(range(N)) and not np.array_equal(ids, np.arange(N))
    np.testing.assert_array_equal(shuffled, emb[ids])  # rows moved whole
    np.testing.assert_array_equal(np.concatenate([c.extra["id"] for c in chunks]), ids)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _cfg(**kw) -> TrainConfig:
    base = dict(train_steps=24, batch_size=16, lr=1e-2, warmup_steps=4, checkpoint_every=10, log_every=4, progress=False, seed=5)
    return TrainConfig(**{**base, **kw})


def test_training_from_the_stream_resumes_bitwise(tmp_path):
    _write(tmp_path / "a.parquet", n=300, row_group=50)
    data = tmp_path / "a.parquet"
    ref = FakeMethod(emb_dim=D, seed=1)
    train(ref, None, None, tmp_path / "ref", _cfg(), stream=TrainStream(data, buffer_rows=64, read_rows=16))
    crashing = FakeMethod(emb_dim=D, seed=1, fail_at_call=14)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing, None, None, tmp_path / "run", _cfg(), stream=TrainStream(data, buffer_rows=64, read_rows=16))
    resumed = FakeMethod(emb_dim=D, seed=1)
    res = train(resumed, None, None, tmp_path / "run", _cfg(), stream=TrainStream(data, buffer_rows=64, read_rows=16))
    assert res.resumed_from == 10
    for k, v in ref.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    a, b = load_weights(tmp_path / "ref" / "model.safetensors"), load_weights(res.model_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
def test_two_processes_on_the_stream_agree_and_read_disjoint_rows(tmp_path):
    _write(tmp_path / "a.parquet", n=400, row_group=50)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HERE / "_stream_worker.py"), str(tmp_path / "a.parquet"), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    w0, w1 = (load_weights(tmp_path / f"final_rank{r}.safetensors") for r in (0, 1))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # identical weights on both ranks
    rows = [json.loads((tmp_path / f"rows_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in rows)
    r0, r1 = set(rows[0]["rows"]), set(rows[1]["rows"])
    assert len(rows[0]["rows"]) == 8 * 8 and len(r0) == 64  # 8 steps x 8 rows, no repeats in an epoch
    assert not r0 & r1  # disjoint data
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert len(state["extra"]["data_stream"]) == 2  # each rank's position is in the checkpoint


def test_read_dataset_reads_a_packed_arrow_file(tmp_path):
    emb = _write(tmp_path / "a.parquet")
    pack(tmp_path / "a.parquet", tmp_path / "p.arrow", batch_rows=300)
    ds = read_dataset(tmp_path / "p.arrow", expected_dim=D)
    np.testing.assert_array_equal(ds.embeddings, emb)
    np.testing.assert_array_equal(ds.extra["id"], np.arange(N))
    with pytest.raises(DataError, match="embedding dimension"):
        read_dataset(tmp_path / "p.arrow", expected_dim=D + 1)


def test_predict_file_streams_chunks_in_order_and_atomically(tmp_path):
    from globeflow.evaluate import predict_file
    from globeflow.methods import create_method

    _write(tmp_path / "a.parquet", n=300, row_group=50)
    torch.manual_seed(0)
    model = create_method("rfm", D, width=16, depth=1)
    opts = {"guidance": 1.0, "sample_steps": 2, "seed": 3}
    assert predict_file(model, tmp_path / "a.parquet", tmp_path / "p.parquet", opts, chunk_rows=64, progress=False) == 300
    out = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert out["id"] == list(range(300)) and len(out["pred_latitude"]) == 300
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # the first chunk (rows 0-63: chunks are cut at multiples of chunk_rows, across row groups)
    # is Method.predict with the seed
    first = model.predict(read_dataset(tmp_path / "a.parquet").embeddings[:64], **opts)
    np.testing.assert_array_equal(np.array(out["pred_latitude"][:64]), first[:, 0])


def test_evaluate_in_chunks_counts_every_row(tmp_path, monkeypatch):
    import globeflow.evaluate as ev
    from globeflow.methods import create_method

    _write(tmp_path / "a.parquet", n=300, row_group=50)
    torch.manual_seed(0)
    model = create_method("rfm", D, width=16, depth=1)
    monkeypatch.setattr(ev, "CHUNK_ROWS", 64)
    m = ev.evaluate_run(model, tmp_path / "a.parquet", {"guidance": 1.0, "sample_steps": 2}, progress=False)
    assert m["n"] == 300 and 0.0 <= m["coverage"] <= 1.0
    assert ev.evaluate_run(model, tmp_path / "a.parquet", {"sample_steps": 2}, prdc=False, rows=100, progress=False)["n"] == 100


def test_api_finiteness_check_reports_rows_across_blocks(monkeypatch):
    import globeflow.methods.base as base

    monkeypatch.setattr(base, "_FINITE_BLOCK", 8)
    a = np.zeros((40, 4), np.float32)
    a[3, 1], a[30, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"rows \[3, 30\]"):
        base.as_embedding(a, 4)
