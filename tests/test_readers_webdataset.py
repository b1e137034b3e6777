"""WebDataset shards: streamed, memory-mapped for training, usable by ``globeflow train``."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from globeflow.cli import main
from globeflow.data import DataError, iter_webdataset, read_dataset, read_webdataset, write_webdataset
from globeflow.data import webdataset as wds


def _data(n: int, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32), rng.uniform(-80, 80, n), rng.uniform(-179, 179, n))


def _shards(folder: Path, sizes=(5, 4, 3), **kw):
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, n in enumerate(sizes):
        e, la, lo = _data(n, seed=i)
        write_webdataset(folder / f"train-{i:03d}.tar", e, la, lo, keys=[f"s{i}_{j}" for j in range(n)], **kw)
        parts.append((e, la, lo))
    return [np.concatenate(x) for x in zip(*parts)]


def test_stream_and_memory_map_round_trip(tmp_path: Path) -> None:
    emb, lat, lon = _shards(tmp_path / "shards")
    samples = list(iter_webdataset(tmp_path / "shards"))
    assert [s.key for s in samples][:2] == ["s0_0", "s0_1"] and len(samples) == 12
    ds = read_webdataset(tmp_path / "shards", cache_dir=tmp_path / "cache")
    assert isinstance(ds.embeddings, np.memmap)
    np.testing.assert_array_equal(ds.embeddings, emb)
    np.testing.assert_allclose(ds.latitude, lat)
    np.testing.assert_allclose(ds.longitude, lon)
    assert ds.extra["key"][-1] == "s2_2"
    # Same data through the other spellings of the shard list, and through read_dataset.
    for spec in (str(tmp_path / "shards" / "train-{000..002}.tar"), str(tmp_path / "shards" / "*.tar")):
        np.testing.assert_array_equal(read_webdataset(spec, cache_dir=tmp_path / "cache").embeddings, emb)
    np.testing.assert_array_equal(read_dataset(tmp_path / "shards").embeddings, emb)


def test_cache_is_reused_until_a_shard_changes(tmp_path: Path, monkeypatch) -> None:
    _shards(tmp_path / "s")
    read_webdataset(tmp_path / "s", cache_dir=tmp_path / "c")
    built = []
    real = wds._build_cache
    monkeypatch.setattr(wds, "_build_cache", lambda *a, **k: (built.append(1), real(*a, **k)))
    read_webdataset(tmp_path / "s", cache_dir=tmp_path / "c")
    assert built == []
    e, la, lo = _data(2, seed=9)
    write_webdataset(tmp_path / "s" / "train-001.tar", e, la, lo)
    ds = read_webdataset(tmp_path / "s", cache_dir=tmp_path / "c")
    assert built == [1] and len(ds) == 5 + 2 + 3


def test_plonk_style_named_embeddings(tmp_path: Path) -> None:
    e, la, lo = _data(3)
    write_webdataset(tmp_path / "a.tar", e, la, lo, embedding_key="street_clip")
    got = list(iter_webdataset(tmp_path / "a.tar"))  # the only .npy entry
    np.testing.assert_array_equal(np.stack([s.embedding for s in got]), e)
    assert [s.key for s in iter_webdataset(tmp_path / "a.tar", embedding_key="street_clip")] == [s.key for s in got]
    with pytest.raises(DataError, match="no 'dinov2' .npy entry"):
        list(iter_webdataset(tmp_path / "a.tar", embedding_key="dinov2"))


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32))
    return buf.getvalue()


def test_bad_shards_name_shard_sample_and_field(tmp_path: Path) -> None:
    _tar(tmp_path / "two.tar", {"k.a.npy": _npy([1, 2]), "k.b.npy": _npy([1, 2]), "k.json": b"{}"})
    with pytest.raises(DataError, match=r"two.tar.*sample 'k' has 2 .npy entries"):
        list(iter_webdataset(tmp_path / "two.tar"))
    _tar(tmp_path / "nocoord.tar", {"k.npy": _npy([1, 2]), "k.json": json.dumps({"city": "x"}).encode()})
    with pytest.raises(DataError, match=r"nocoord.tar.*field `latitude`.*no latitude/longitude"):
        list(iter_webdataset(tmp_path / "nocoord.tar"))
    _tar(tmp_path / "range.tar", {"k.npy": _npy([1, 2]), "k.json": b'{"lat": 95, "lon": 0}'})
    with pytest.raises(DataError, match=r"row 0, field `latitude`.*95"):
        read_webdataset(tmp_path / "range.tar", cache_dir=tmp_path / "c")
    _tar(tmp_path / "nan.tar", {"k.npy": _npy([1, np.nan]), "k.json": b'{"lat": 5, "lon": 0}'})
    with pytest.raises(DataError, match=r"non-finite"):
        read_webdataset(tmp_path / "nan.tar", cache_dir=tmp_path / "c")
    good = tmp_path / "good.tar"
    write_webdataset(good, *_data(50))
    (tmp_path / "cut.tar").write_bytes(good.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"cut.tar.*corrupt or truncated"):
        list(iter_webdataset(tmp_path / "cut.tar"))
    with pytest.raises(DataError, match="shard not found"):
        read_webdataset(tmp_path / "missing-{0..1}.tar")


def test_globeflow_train_reads_shards(tmp_path: Path) -> None:
    _shards(tmp_path / "shards", sizes=(40, 40))
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(tmp_path / "shards"),
            "--out",
            str(run),
            "--width",
            "16",
            "--depth",
            "1",
            "--train-steps",
            "3",
            "--batch-size",
            "8",
            "--warmup-steps",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0 and (run / "model.safetensors").is_file()
    # shards are streamed (no cache anywhere), and nothing is written beside them
    assert json.loads((run / "config.json").read_text())["data"]["loader"] == "stream"
    assert not (run / "data_cache").exists()
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["train-000.tar", "train-001.tar"]
    import globeflow

    model = globeflow.load(run)
    assert model.predict(np.zeros((2, 8), np.float32), sample_steps=2).shape == (2, 2)


def test_default_cache_is_the_user_cache_not_beside_the_shards(tmp_path: Path, monkeypatch) -> None:
    _shards(tmp_path / "shards", sizes=(5,))
    monkeypatch.setenv("GLOBEFLOW_CACHE", str(tmp_path / "usercache"))
    read_webdataset(tmp_path / "shards")
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["train-000.tar"]
    assert any((tmp_path / "usercache" / "webdataset").iterdir())
