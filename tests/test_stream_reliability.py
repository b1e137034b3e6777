"""Where streaming (issue 17) meets reliability (issue 18): the chunked paths keep every
check of the whole-file paths, naming the file's rows, and stay atomic / idempotent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import globeflow
from globeflow.cli import main
from globeflow.data import DataError, read_dataset
from globeflow.data.dataset import MAX_EMBEDDING_ABS
from globeflow.data.stream import TrainStream, iter_chunks, pack
from globeflow.methods import create_method

sys.path.insert(0, str(Path(__file__).parent))
D = 6


def _parquet(path: Path, n: int, *, big_row: int | None = None, row_group: int = 16) -> Path:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, D)).astype(np.float32)
    if big_row is not None:
        emb[big_row, 2] = 1e15  # finite float32, far outside what a model accepts
    table = pa.table(
        {
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), D),
            "latitude": rng.uniform(-60, 60, n),
            "longitude": rng.uniform(-170, 170, n),
            "id": [f"r{i}" for i in range(n)],
        }
    )
    pq.write_table(table, path, row_group_size=row_group)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = create_method("rfm", D, width=16, depth=1)
    return globeflow.save(m, tmp_path_factory.mktemp("runs") / "rfm")


def test_range_check_of_streamed_reads_names_the_file_row(tmp_path):
    src = _parquet(tmp_path / "big.parquet", 50, big_row=37)
    assert len(read_dataset(src)) == 50  # files may hold any finite float32
    with pytest.raises(DataError, match=r"row 37.*exceeds") as err:
        list(iter_chunks(src, require_coords=True, chunk_rows=10, max_abs=MAX_EMBEDDING_ABS))
    assert err.value.row == 37
    arrow = tmp_path / "big.arrow"
    pack(src, arrow)
    with pytest.raises(DataError, match=r"row 37"):
        read_dataset(arrow, max_abs=MAX_EMBEDDING_ABS)
    s = TrainStream(src, buffer_rows=20, read_rows=7, max_abs=MAX_EMBEDDING_ABS, prefetch=False)
    s.start(seed=0, batch_rows=10)
    with pytest.raises(DataError, match=r"exceeds"):
        for _ in range(10):  # every row is read within 5 windows
            s.next_batch()


def test_predict_of_a_chunked_file_refuses_huge_rows_past_the_first_chunk(run, tmp_path, capsys, monkeypatch):
    import globeflow.evaluate as ev

    monkeypatch.setattr(ev, "CHUNK_ROWS", 8)
    src = _parquet(tmp_path / "d.parquet", 40, big_row=29)
    out = tmp_path / "p.parquet"
    assert main(["predict", "--model", str(run), "--data", str(src), "--out", str(out), "--sample-steps", "1"]) == 2
    assert "row 29" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".p.parquet*"))


def test_predict_file_names_nan_rows_of_the_file_and_writes_nothing(run, tmp_path):
    from globeflow.evaluate import predict_file

    src = _parquet(tmp_path / "d.parquet", 30, row_group=30)  # chunks: rows 0-9, 10-19, 20-29
    model = globeflow.load(run)
    real = model.predict

    calls = []

    def nan_on_row_3_of_chunk_2(emb, **opts):
        pred = real(emb, **opts)
        if len(calls) == 2:  # the third chunk: rows 20..29 of the file
            pred[3] = np.nan
        calls.append(len(emb))
        return pred

    model.predict = nan_on_row_3_of_chunk_2
    out = tmp_path / "p.parquet"
    out.write_bytes(b"earlier output")
    with pytest.raises(ValueError, match=r"row\(s\) 23 of"):
        predict_file(model, src, out, {"sample_steps": 1, "seed": 0}, chunk_rows=10, progress=False)
    assert out.read_bytes() == b"earlier output" and not list(tmp_path.glob(".p.parquet*"))


def test_predict_keeps_every_input_column_and_writes_page_checksums(run, tmp_path):
    from globeflow.evaluate import predict_file

    src = _parquet(tmp_path / "d.parquet", 30)
    out = tmp_path / "p.parquet"
    rows = predict_file(globeflow.load(run), src, out, {"sample_steps": 1}, chunk_rows=7, progress=False)
    t = pq.read_table(out)
    assert rows == 30 and t.column_names == ["id", "latitude", "longitude", "pred_latitude", "pred_longitude"]
    assert t["id"].to_pylist() == [f"r{i}" for i in range(30)]
    # a flipped bit in a data page is caught on read
    raw = bytearray(out.read_bytes())
    pf = pq.ParquetFile(out)
    col = pf.metadata.row_group(0).column(3)
    raw[col.data_page_offset + col.total_compressed_size - 3] ^= 0x10
    bad = tmp_path / "flipped.parquet"
    bad.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="(?i)checksum|corrupt|CRC"):
        pq.ParquetFile(bad, page_checksum_verification=True).read()


def test_evaluate_scores_what_predict_writes_over_several_chunks(run, tmp_path, monkeypatch):
    import json

    import globeflow.evaluate as ev
    from globeflow.metrics import distance_metrics

    monkeypatch.setattr(ev, "CHUNK_ROWS", 8)
    src = _parquet(tmp_path / "d.parquet", 30)
    common = ["--model", str(run), "--data", str(src), "--sample-steps", "1"]
    assert main(["evaluate", *common, "--no-prdc", "--out", str(tmp_path / "m.json")]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "p.parquet")]) == 0
    t = pq.read_table(tmp_path / "p.parquet")
    pred = np.stack([t["pred_latitude"].to_numpy(), t["pred_longitude"].to_numpy()], 1)
    truth = np.stack([t["latitude"].to_numpy(), t["longitude"].to_numpy()], 1)
    metrics = json.loads((tmp_path / "m.json").read_text())
    # The method's own estimate (MBR for rfm), the same that predict wrote.
    assert metrics["strategy"] == "mbr" and metrics["n"] == 30
    assert metrics["geoscore"] == pytest.approx(distance_metrics(pred, truth)["geoscore"], rel=1e-12)


def test_pack_refuses_to_overwrite_its_source(tmp_path, capsys):
    src = _parquet(tmp_path / "d.arrow.parquet", 10)
    arrow = tmp_path / "d.arrow"
    assert main(["pack", str(src), str(arrow)]) == 0
    before = arrow.read_bytes()
    assert main(["pack", str(arrow), str(arrow), "--overwrite"]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err and arrow.read_bytes() == before
    assert main(["pack", str(src), str(arrow)]) == 2 and arrow.read_bytes() == before


def test_streaming_merge_keeps_each_id_once_across_batches(tmp_path, monkeypatch):
    """The k-way merge de-duplicates ids that the output and the parts both hold (a kill
    between replacing ``out`` and removing the parts), across merge batches too."""
    from globeflow import embed

    monkeypatch.setattr(embed, "_MERGE_ROWS", 3)
    items = [embed.EmbedItem(id=f"p{i}", path=Path(f"p{i}.jpg"), extra={}) for i in range(10)]
    parts = tmp_path / "e.parquet.parts"
    parts.mkdir()

    def part(path: Path, ids: list[int]) -> None:
        n = len(ids)
        pq.write_table(
            pa.table(
                {
                    "id": [f"p{i}" for i in ids],
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 4).astype(np.float32)), 4),
                    "latitude": np.zeros(n),
                    "longitude": np.zeros(n),
                    "location_source": ["exif"] * n,
                }
            ),
            path,
        )

    out = tmp_path / "e.parquet"
    part(parts / "rank0-000000.parquet", [0, 2, 4, 6, 8])
    part(parts / "rank1-000000.parquet", [1, 3, 5, 7, 9])
    assert embed._merge(out, parts, items, {"name": "fake"}) == 10
    first = pq.read_table(out)
    # the kill: the same parts are back beside the merged output, plus a new one
    parts.mkdir()
    part(parts / "rank0-000000.parquet", [0, 2, 4, 6, 8])
    part(parts / "rank1-000000.parquet", [1, 3, 5, 7, 9])
    assert embed._merge(out, parts, items, {"name": "fake"}) == 10
    again = pq.read_table(out)
    assert again.column("id").to_pylist() == [f"p{i}" for i in range(10)]
    assert again.equals(first) and not parts.exists()


def test_streamed_shards_name_the_sample_and_detect_truncation(tmp_path):
    """Training streams shards by default: the reliability checks of shards apply there too."""
    import tarfile

    from globeflow.data.webdataset import write_webdataset

    emb = np.ones((50, 4), dtype=np.float32)
    emb[27, 1] = np.nan
    bad = write_webdataset(tmp_path / "nan.tar", emb, np.zeros(50), np.zeros(50))
    with pytest.raises(DataError, match=r"row 27") as err:
        list(iter_chunks(bad, require_coords=True, chunk_rows=10))
    assert err.value.row == 27
    shard = write_webdataset(tmp_path / "s.tar", np.ones((50, 4)), np.zeros(50), np.zeros(50))
    with tarfile.open(shard, "r|*") as tf:
        offsets = [m.offset for m in tf]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: offsets[40]])  # at a sample boundary: 20 of 50 samples
    s = TrainStream(cut, buffer_rows=40, read_rows=8, prefetch=False)
    s.start(seed=0, batch_rows=10)
    with pytest.raises(DataError, match=r"cut.tar.*truncated shard"):
        for _ in range(4):
            s.next_batch()


def test_a_rows_estimate_does_not_depend_on_the_files_row_groups(run, tmp_path):
    """predict/evaluate seed chunk i (rows [i*c, (i+1)*c)); the chunks are cut at those rows
    whatever the row groups, so re-writing a file with other row groups changes no estimate."""
    from globeflow.evaluate import predict_file

    a = _parquet(tmp_path / "a.parquet", 40, row_group=16)
    b = _parquet(tmp_path / "b.parquet", 40, row_group=7)
    sizes = [len(c) for c in iter_chunks(b, require_coords=True, chunk_rows=10, exact=True)]
    assert sizes == [10, 10, 10, 10]
    joined = np.concatenate([c.embeddings for c in iter_chunks(b, require_coords=True, chunk_rows=9, exact=True)])
    np.testing.assert_array_equal(joined, read_dataset(a).embeddings)
    model = globeflow.load(run)
    for src in (a, b):
        predict_file(
            model,
            src,
            tmp_path / f"p-{src.stem}.parquet",
            {"sample_steps": 2, "seed": 3},
            chunk_rows=10,
            progress=False,
        )
    pa_, pb = (pq.read_table(tmp_path / f"p-{s}.parquet") for s in ("a", "b"))
    np.testing.assert_array_equal(pa_["pred_latitude"].to_numpy(), pb["pred_latitude"].to_numpy())
    np.testing.assert_array_equal(pa_["pred_longitude"].to_numpy(), pb["pred_longitude"].to_numpy())


def test_streaming_merge_keeps_ids_no_longer_listed_once_and_last(tmp_path, monkeypatch):
    """Ids of the existing output that the input no longer lists keep their rows, once, after
    the listed ones, also when a kill left their parts beside the output."""
    from globeflow import embed

    monkeypatch.setattr(embed, "_MERGE_ROWS", 3)
    items = [embed.EmbedItem(id=f"p{i}", path=Path(f"p{i}.jpg"), extra={}) for i in range(10)]
    parts = tmp_path / "e.parquet.parts"

    def part(path: Path, ids: list[int]) -> None:
        emb = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 4).astype(np.float32)), 4)
        n = len(ids)
        pq.write_table(
            pa.table(
                {"id": [f"p{i}" for i in ids], "embedding": emb, "latitude": np.zeros(n), "longitude": np.zeros(n)}
            ),
            path,
        )

    out = tmp_path / "e.parquet"
    parts.mkdir()
    part(parts / "rank0-000000.parquet", [0, 2, 4, 6, 8])
    part(parts / "rank1-000000.parquet", [1, 3, 5, 7, 9])
    assert embed._merge(out, parts, items, {"name": "fake"}) == 10
    parts.mkdir()  # a kill left rank1's part; the input now lists p0..p4 and a new p10
    part(parts / "rank1-000000.parquet", [1, 3, 5, 7, 9])
    part(parts / "rank0-000001.parquet", [10])
    items = [embed.EmbedItem(id=f"p{i}", path=Path(f"p{i}.jpg"), extra={}) for i in [0, 1, 2, 3, 4, 10]]
    assert embed._merge(out, parts, items, {"name": "fake"}) == 11
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == [f"p{i}" for i in [0, 1, 2, 3, 4, 10, 5, 6, 7, 8, 9]]
    assert t.column("location_source").to_pylist() == [""] * 11  # a column the parts lack: filled
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(emb[:, 0], [0, 1, 2, 3, 4, 10, 5, 6, 7, 8, 9])
    assert not parts.exists()
