"""globeflow serve: the REST API (good and bad requests), the server, and the page in a real browser.

The browser tests drive Debian's chromium (``apt-get install -y chromium``) with Playwright
and skip when either is missing. Any request that leaves 127.0.0.1 fails the test. With
``GLOBEFLOW_SCREENSHOT=PATH`` the ``?q=`` test saves a screenshot of the page there (the
README's docs/figures/serve.png).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from globeflow.geometry.coords import EARTH_RADIUS_KM  # noqa: E402
from globeflow.describe import add_warnings, area_comparison, describe, localizability_category, nearest_places  # noqa: E402
from globeflow.serve import Limits, Locator, create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLES = 64  # per answer: enough for modes and regions, seconds per query on a CPU


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def text_locator():
    """The shipped geonames-text model with its minilm encoder (offline), loaded once."""
    return Locator(num_samples=SAMPLES, limits=Limits(max_upload_bytes=200_000, max_batch=4, max_text_chars=100))


def _photo_model(tmp: Path):
    """A random-weight image model: a tiny RFM on 32-d embeddings of a tiny random CLIP
    vision tower (the streetclip architecture), saved as a run directory."""
    import torch

    transformers = pytest.importorskip("transformers")

    from globeflow.api import save
    from globeflow.encoders import get_encoder
    from globeflow.methods import build_method

    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=336, patch_size=56
    )
    enc = get_encoder("streetclip", model=transformers.CLIPVisionModel(cfg))
    method = build_method(
        {
            "method": "rfm",
            "net": {"cond_dim": 32, "dim": 32, "depth": 1, "expansion": 2},
            "schedule": {"name": "skewed_sigmoid"},
        }
    )
    run = save(method, tmp / "photo-run", extra={"encoder": enc.settings()})
    calls = []
    forward = enc.forward

    def spy(pixels):
        calls.append(tuple(pixels.shape))
        return forward(pixels)

    enc.forward = spy
    return run, enc, calls


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    run, enc, calls = _photo_model(tmp_path_factory.mktemp("serve"))
    loc = Locator(str(run), encoder=enc, num_samples=SAMPLES, limits=Limits(max_upload_bytes=200_000, max_batch=2))
    return loc, calls


@pytest.fixture(scope="module")
def client(text_locator):
    with TestClient(create_app(text_locator)) as c:
        yield c


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _error(resp, status: int, field: str) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["status"] == status and err["field"] == field
    return err["message"]


def test_locator_names_its_model_and_checks_the_encoder(text_locator):
    """A shipped model by name, a built method (its own name; no offline encoder of its
    dimension: embeddings only), and an encoder of the wrong dimension, named."""
    from globeflow.methods import build_method
    from globeflow.pretrained import default_model_dir

    by_name = Locator("geonames-text", num_samples=8)
    assert by_name.name == "geonames-text" and by_name.model_ref == str(default_model_dir("geonames-text"))
    assert by_name.encoder.name == text_locator.encoder.name and by_name.input_kind == "text"
    method = build_method({"method": "rfm", "net": {"cond_dim": 32, "dim": 32, "depth": 1, "expansion": 2}})
    bare = Locator(method=method)
    assert bare.name == method.name and bare.encoder is None and bare.input_kind is None
    assert bare.info()["input"] == "embedding" and Locator(method=method, name="mine").name == "mine"
    with pytest.raises(ValueError, match=r"encoder: minilm gives 384-d embeddings but the model expects 32-d"):
        Locator(method=method, encoder="minilm")


# ------------------------------------------------------------------------------ describe (library)
def test_area_comparison_reads_as_a_multiple_of_a_known_area():
    import re

    from globeflow.describe import REFERENCE_AREAS

    ref = dict(REFERENCE_AREAS)
    for km2 in np.geomspace(60.0, 2.5e8, 60):
        text = area_comparison(float(km2))
        m = re.fullmatch(r"about (?:([\d.]+) times )?the size of (.+)", text)
        assert m, text
        ratio = float(m.group(1) or 1.0)
        # The multiple times the reference gives back the area (2 significant digits; "about
        # the size" within 25%), and the reference is one a reader can scale from (ratio ≤ ~5).
        assert ratio * ref[m.group(2)] == pytest.approx(km2, rel=0.25 if m.group(1) is None else 0.05)
        assert 0.8 <= ratio <= 6.0
    assert area_comparison(2e7) == "about 2 times the size of the United States"
    assert area_comparison(30689.0) == "about the size of Belgium"
    assert area_comparison(10.0) == "smaller than Manhattan"
    assert area_comparison(4 * math.pi * EARTH_RADIUS_KM**2) == "about 100% of the Earth's surface"
    with pytest.raises(ValueError, match="area_km2"):
        area_comparison(float("nan"))


def test_localizability_category_follows_the_effective_area():
    # L bits <-> a uniform spread over R²·2^-L km²: the uniform sphere (L = -log2 4π) is "unsure".
    cat, _, area = localizability_category(-math.log2(4 * math.pi))
    assert cat == "unsure" and area == pytest.approx(4 * math.pi * EARTH_RADIUS_KM**2, rel=1e-9)
    assert localizability_category(20.0)[0] == "pinpointed"  # 39 km²
    assert localizability_category(None, 3e5)[0] == "regional"
    assert localizability_category(None, None)[0] == "unknown"


def test_nearest_places_and_the_plain_sentence():
    canton, sea = nearest_places(np.array([[40.7989, -81.3784], [0.0, -30.0]]))
    assert canton.label == "Canton, Ohio, US" and canton.phrase == "near Canton, Ohio, United States"
    assert sea.distance_km > 400 and sea.phrase.startswith("about ")

    from _answer_helpers import FixedVMF

    from globeflow.answers import answer
    from globeflow.geometry.coords import latlon_to_xyz

    emb = latlon_to_xyz(np.array([40.7989, 0.0]), np.array([-81.3784, -30.0])).astype(np.float32)
    a_canton, a_sea = answer(FixedVMF(3e4), emb, num_samples=256, seed=0)
    d_canton, d_sea = describe([a_canton, a_sea])
    assert d_canton.sentence.startswith("90% likely within an area ")
    assert "most likely near Canton, Ohio, United States" in d_canton.sentence
    w_canton, w_sea = add_warnings([a_canton, a_sea])
    assert not w_canton.warnings
    assert [w.code for w in w_sea.warnings] == ["at_sea"] and "at sea" in w_sea.warnings[0].message


# ------------------------------------------------------------------------------ API
def test_health_models_and_offline_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/v1/models").json()
    assert info["loaded"]["input"] == "text" and info["loaded"]["embedding_dim"] == 1795  # v2 + grounding (minilm-parts-grounded)
    assert any(m["input"] == "image" for m in info["available"])
    docs = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    spec = client.get("/openapi.json").json()
    assert "/v1/locate" in spec["paths"]
    for url in (
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/leaflet/leaflet.js",
        "/static/app.js",
    ):
        assert client.get(url).status_code == 200
    base = client.get("/v1/basemap.geojson").json()
    assert len([f for f in base["features"] if f["properties"]["kind"] == "country"]) == 177
    # State/province lines: gzipped for a browser, plain otherwise, the same GeoJSON either way.
    zipped = client.get("/v1/admin1.geojson", headers={"Accept-Encoding": "gzip"})
    plain = client.get("/v1/admin1.geojson", headers={"Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert zipped.json() == plain.json() and plain.json()["features"][0]["properties"]["kind"] == "admin1"
    assert int(zipped.headers["content-length"]) < 0.4 * len(plain.content)


def test_locate_text_has_the_predict_fields_places_and_sentence(client):
    r = client.post("/v1/locate", json={"text": "Canton, Ohio"})
    assert r.status_code == 200, r.text
    (a,) = r.json()["answers"]
    for key in (
        "query",
        "latitude",
        "longitude",
        "modes",
        "countries",
        "localizability_bits",
        "hpd50_area_km2",
        "hpd90_area_km2",
        "num_samples",
        "model",
        "encoder",
    ):
        assert key in a
    assert a["num_samples"] == SAMPLES and a["encoder"] == "minilm-parts-grounded"
    assert a["place"]["label"] and a["sentence"].startswith("90% likely within an area")
    assert all(m["place"] for m in a["modes"])
    # The same words and warnings as predict's records (globeflow.describe.answer_record).
    assert a["localizability_category"] and a["place"]["phrase"] in a["sentence"]
    assert all(set(w) == {"code", "message"} for w in a["warnings"])
    assert sum(m["mass"] for m in a["modes"]) <= 1 + 1e-9
    # The estimate is the top mode, and its place is the nearest town to it.
    assert (a["latitude"], a["longitude"]) == (a["modes"][0]["latitude"], a["modes"][0]["longitude"])
    assert a["place"]["label"] == nearest_places(np.array([[a["latitude"], a["longitude"]]]))[0].label
    kinds = [f["properties"]["kind"] for f in a["geojson"]["features"]]
    assert kinds.count("region") == 2 and kinds.count("mode") == len(a["modes"])
    # Same seed, same answer: the query in a shared link reproduces the page.
    again = client.post("/v1/locate", json={"texts": ["Canton, Ohio"]}).json()["answers"][0]
    assert (again["latitude"], again["longitude"]) == (a["latitude"], a["longitude"])

    gj = client.get(f"/v1/answers/{a['id']}.geojson")
    assert gj.status_code == 200 and gj.headers["content-type"].startswith("application/geo+json")
    assert "attachment" in gj.headers["content-disposition"]
    assert len(gj.json()["features"]) == len(a["geojson"]["features"])
    kml = client.get(f"/v1/answers/{a['id']}.kml")
    assert kml.status_code == 200
    ET.fromstring(kml.content)  # well-formed
    _error(client.get("/v1/answers/0000.kml"), 404, "id")


def test_locate_embedding_and_overlay(client, text_locator):
    emb = text_locator.embed_texts(["Lyon"])[0].tolist()
    r = client.post("/v1/locate", json={"embedding": emb, "overlay": True, "samples": 32, "seed": 1})
    assert r.status_code == 200, r.text
    (a,) = r.json()["answers"]
    assert a["num_samples"] == 32 and a["embedding_index"] == 0
    (world, *_) = a["overlay"]
    assert world["url"].startswith("data:image/png;base64,")
    (s, w), (n, e) = world["bounds"]
    assert -85.06 <= s < n <= 85.06 and w == pytest.approx(-180) and e == pytest.approx(180)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "body"),
        ({"text": "a", "texts": ["b"]}, 422, "body"),
        ({"text": ""}, 422, "text"),
        ({"text": 3}, 422, "text"),
        ({"text": "x" * 101}, 413, "text"),
        ({"texts": ["a"] * 5}, 413, "texts"),
        ({"texts": []}, 422, "texts"),
        ({"embedding": [0.1, 0.2]}, 422, "embedding"),
        ({"embedding": "abc"}, 422, "embedding"),
        ({"embedding": [float("nan")] * 1795}, 422, "embedding"),
        ({"embeddings": [[0.0] * 1795] * 5}, 413, "embeddings"),
        ({"text": "a", "samples": 3}, 422, "samples"),
        ({"text": "a", "colour": "red"}, 422, "colour"),
        ([1, 2], 422, "body"),
        ({"text": "x" * 250_000}, 413, "body"),
        ({"embeddings": []}, 422, "embeddings"),
        ({"embeddings": [0.0, 1.0]}, 422, "embeddings"),
        ({"text": "a", "seed": "1"}, 422, "seed"),
    ],
)
def test_bad_json_requests_get_4xx_naming_the_field(client, body, status, field):
    if (
        isinstance(body, dict)
        and body.get("embedding")
        and isinstance(body["embedding"][0], float)
        and math.isnan(body["embedding"][0])
    ):
        r = client.post("/v1/locate", content=json.dumps(body), headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/locate", json=body)
    _error(r, status, field)


def test_bad_bodies_and_photos_on_a_text_model(client):
    _error(client.post("/v1/locate", content=b"{nope", headers={"content-type": "application/json"}), 400, "body")
    _error(client.post("/v1/locate", content=b"", headers={"content-type": "application/json"}), 400, "body")
    _error(client.post("/v1/locate", content=b"x", headers={"content-type": "text/plain"}), 415, "content-type")
    msg = _error(client.post("/v1/locate", files={"photo": ("a.jpg", _jpeg(), "image/jpeg")}), 400, "photo")
    assert "globeflow models" in msg

    # A chunked body (no Content-Length) is cut off at the limit too.
    def chunks():
        yield b'{"text": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    r = client.post("/v1/locate", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413, "body")
    # Larger than the limit: refused from the Content-Length header, before reading the body.
    big = b"0" * 400_000
    _error(client.post("/v1/locate", files={"photo": ("big.jpg", big, "image/jpeg")}), 413, "photo")


def test_photo_reaches_the_encoder_and_bad_uploads_are_refused(photo):
    loc, calls = photo
    with TestClient(create_app(loc)) as c:
        before = len(calls)
        r = c.post("/v1/locate", files={"photo": ("street.jpg", _jpeg(), "image/jpeg")}, data={"overlay": "true"})
        assert r.status_code == 200, r.text
        (a,) = r.json()["answers"]
        assert a["image"] == "street.jpg" and a["encoder"] == "streetclip" and a["overlay"]
        assert calls[before:] == [(1, 3, 336, 336)]  # the photo went through the encoder's forward pass
        _error(c.post("/v1/locate", files={"photo": ("notes.txt", b"hello, not a photo", "text/plain")}), 415, "photo")
        _error(c.post("/v1/locate", files=[("photo", ("a.jpg", _jpeg(), "image/jpeg"))] * 3), 413, "photo")
        _error(c.post("/v1/locate", data={"other": "x"}, files={"x": ("a.jpg", b"1", "image/jpeg")}), 422, "photo")
        msg = _error(c.post("/v1/locate", json={"text": "Paris"}), 400, "text")
        assert "geonames-text" in msg
        emb = np.zeros(32).tolist()
        assert c.post("/v1/locate", json={"embedding": emb}).status_code == 200


def test_model_runs_on_one_worker_thread_and_the_loop_stays_free(text_locator):
    """A slow query does not block /health; concurrent queries queue on the worker thread."""
    app = create_app(text_locator)
    gate = threading.Event()
    seen = []
    real = text_locator.locate

    def slow(*args, **kwargs):
        seen.append(threading.current_thread().name)
        gate.wait(30)
        return real(*args, **kwargs)

    text_locator.locate = slow
    try:
        with TestClient(app) as c:
            results = []
            threads = [
                threading.Thread(target=lambda q=q: results.append(c.post("/v1/locate", json={"text": q})))
                for q in ("Lyon", "Nagoya")
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 20
            while not seen and time.monotonic() < deadline:
                time.sleep(0.02)
            t0 = time.monotonic()
            h = c.get("/health").json()
            assert time.monotonic() - t0 < 2.0 and h["queued"] == 2  # one running, one waiting
            gate.set()
            for t in threads:
                t.join(60)
    finally:
        text_locator.locate = real
    assert [r.status_code for r in results] == [200, 200]
    assert len(set(seen)) == 1 and seen[0].startswith("globeflow-model")


# ------------------------------------------------------------------------------ a real server, a real browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn on a free 127.0.0.1 port in a thread; always stopped by :meth:`stop`."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_the_cli_server_binds_localhost_and_answers(text_locator):
    import urllib.request

    with _Server(create_app(text_locator)) as url:
        assert urlparse(url).hostname == "127.0.0.1"
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert json.load(r)["status"] == "ok"
        with urllib.request.urlopen(url + "/", timeout=10) as r:
            page = r.read().decode()
        assert "/static/vendor/leaflet/leaflet.js" in page and "http" not in page.replace("http-equiv", "")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class _Watch:
    """Console errors, page errors and requests that leave the server (aborted) of one page."""

    def __init__(self, page, base: str) -> None:
        self.errors: list[str] = []
        self.external: list[str] = []
        self.local: list[str] = []  # paths asked of this server, in order
        host = urlparse(base).netloc
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def route(r):
            u = urlparse(r.request.url)
            if u.netloc == host:
                self.local.append(u.path)
            if u.scheme in ("data", "blob") or u.netloc == host:
                return r.continue_()
            self.external.append(r.request.url)
            return r.abort()

        page.route("**/*", route)


def test_page_runs_a_query_from_the_link_and_draws_regions_and_modes(browser, text_locator):
    with _Server(create_app(text_locator)) as base:
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        watch = _Watch(page, base)
        page.goto(base + "/?q=Springfield")
        page.wait_for_selector("body[data-state=done]", timeout=120_000)
        assert page.input_value("#q") == "Springfield"
        assert page.locator("#sentence").inner_text().startswith("90% likely within an area")
        assert page.locator("path.region").count() == 2  # the 50% and 90% regions
        n_modes = page.locator("#modes tbody tr").count()
        assert n_modes >= 1 and page.locator("path.mode").count() == n_modes
        assert page.locator("#countries tbody tr").count() >= 1
        assert page.locator(".leaflet-image-layer").count() >= 1  # the density overlay
        assert page.locator("path.leaflet-interactive").count() > 100  # the basemap's countries
        # State/province lines: fetched from this server (once) when zoomed in to 4, hidden below.
        page.evaluate("map.setView([40, -86], 5)")
        page.wait_for_selector("path.admin1", state="attached", timeout=30_000)
        assert page.locator("path.admin1").count() == 1
        assert [p for p in watch.local if p.endswith("/admin1.geojson")] == ["/v1/admin1.geojson"]
        page.evaluate("map.setZoom(3)")
        page.wait_for_selector("path.admin1", state="detached", timeout=10_000)
        page.evaluate("map.setZoom(6)")
        page.wait_for_selector("path.admin1", state="attached", timeout=10_000)
        assert sum(p.endswith("/admin1.geojson") for p in watch.local) == 1
        assert page.get_attribute("#dl-kml", "href").endswith(".kml")
        # A text model says so, and which models take photos and how to get one.
        assert "reads text, not photos" in page.locator("#photo-note").inner_text()
        assert "globeflow models" in page.locator("#photo-note").text_content()
        shot = os.environ.get("GLOBEFLOW_SCREENSHOT")
        if shot:
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            page.wait_for_timeout(300)
            page.screenshot(path=shot)
        # The docs page works offline too.
        page.goto(base + "/docs")
        page.wait_for_selector(".opblock", timeout=60_000)
        page.close()
    assert watch.external == [] and watch.errors == []


def test_page_sends_a_dropped_photo_through_the_encoder(browser, photo, tmp_path):
    loc, calls = photo
    path = tmp_path / "street.jpg"
    path.write_bytes(_jpeg())
    with _Server(create_app(loc)) as base:
        page = browser.new_page()
        watch = _Watch(page, base)
        page.goto(base + "/")
        page.wait_for_selector("#drop:not([hidden])")
        # At world scale the state/province lines are not fetched.
        assert page.evaluate("map.getZoom()") < 4 and "/v1/basemap.geojson" in watch.local
        assert not any(p.endswith("/admin1.geojson") for p in watch.local)
        before = len(calls)
        page.set_input_files("#file", str(path))
        page.wait_for_selector("body[data-state=done]", timeout=120_000)
        assert calls[before:] == [(1, 3, 336, 336)]
        assert page.locator("path.mode").count() >= 1
        page.close()
    assert watch.external == [] and watch.errors == []


def test_globeflow_serve_command_starts_answers_and_stops():
    """`globeflow serve` as a user starts it: a subprocess on a free port, always terminated."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "globeflow", "serve", "--port", str(port), "--samples", "32", "--max-batch", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    assert json.load(r)["model"] == "geonames-text"
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "globeflow serve did not come up"
                time.sleep(0.5)
        req = urllib.request.Request(
            base + "/v1/locate",
            data=json.dumps({"text": "Lyon"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            (a,) = json.load(r)["answers"]
        assert a["num_samples"] == 32 and a["countries"] and a["sentence"]
        req = urllib.request.Request(
            base + "/v1/locate",
            data=json.dumps({"texts": ["a", "b", "c"]}).encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 413 and json.load(err.value)["error"]["field"] == "texts"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("peak_lat", [-60.0, 0.0, 40.0, 70.0])
def test_mercator_overlay_puts_each_latitude_where_leaflet_draws_it(peak_lat):
    """Leaflet stretches an image linearly in Web-Mercator y: the overlay's densest row must
    sit at the Mercator y of the raster's densest latitude (a lat/lon image would not)."""
    import base64

    from globeflow.serve.locator import mercator_overlay

    lat = np.arange(-89.5, 90.0, 1.0)
    lon = np.arange(-179.5, 180.0, 1.0)
    lp = np.repeat(-np.abs(lat - peak_lat)[:, None] / 5.0, lon.size, axis=1)
    ov = mercator_overlay(lat, lon, lp, float(lp.max()), height=1024)
    png = Image.open(io.BytesIO(base64.b64decode(ov["url"].split(",", 1)[1])))
    alpha = np.asarray(png)[..., 3].astype(float)
    # Centre of the brightest rows (alpha is quantised to 8 bits: a plateau around the peak).
    row = (np.flatnonzero(alpha[:, 0] == alpha[:, 0].max()).mean() + 0.5) / alpha.shape[0]  # 0: north edge
    (south, _), (north, _) = ov["bounds"]

    def merc(phi):
        return np.log(np.tan(np.pi / 4 + np.radians(phi) / 2))

    y = merc(north) - row * (merc(north) - merc(south))
    assert np.degrees(2 * np.arctan(np.exp(y)) - np.pi / 2) == pytest.approx(peak_lat, abs=0.2)
    assert alpha[:, 0].max() == pytest.approx(255 * 0.6, abs=1)  # peak opacity
    assert (alpha[:, 0] == 0).any()  # below 1/100 of the peak: transparent
