"""The ASGI app of ``globeflow serve``: a web page and a REST API over one :class:`Locator`.

Routes: ``GET /`` the page (``?q=QUERY`` runs that query on load), ``POST /v1/locate`` (JSON
``{"text"}``, ``{"texts"}``, ``{"embedding"}``, ``{"embeddings"}`` or a multipart ``photo``),
``GET /v1/answers/{id}.geojson|.kml`` (downloads of a recent answer), ``GET /v1/models``,
``GET /v1/basemap.geojson``, ``GET /v1/admin1.geojson`` (state/province lines, fetched by the
page when zoomed in), ``GET /health``, ``GET /docs`` (Swagger UI, vendored) and
``GET /openapi.json``. Nothing is fetched from outside: Leaflet and Swagger UI ship in
``static/vendor`` and the basemap is Natural Earth data inside the package.

The app only parses requests and calls the library. The model runs on ONE worker thread
(requests queue there, at most ``limits.max_queue`` waiting; more get 503), so the event loop
keeps serving the page, the health check and the errors while a query computes.
Errors are JSON ``{"error": {"status", "field", "message"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from globeflow.serve.locator import InputError, Limits, Locator

__all__ = ["create_app"]

_STATIC = resources.files("globeflow.serve") / "static"

_LOCATE_SCHEMA = {
    "type": "object",
    "description": "Exactly one of text, texts, embedding, embeddings.",
    "properties": {
        "text": {"type": "string", "example": "Canton, Ohio"},
        "texts": {"type": "array", "items": {"type": "string"}, "example": ["Lyon", "Springfield"]},
        "embedding": {"type": "array", "items": {"type": "number"}, "description": "D numbers (see /v1/models)"},
        "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "samples": {"type": "integer", "description": "samples per answer (default: the server's)"},
        "seed": {"type": "integer"},
        "overlay": {"type": "boolean", "description": "add the density as PNG overlays (the web page's map)"},
    },
}
_PHOTO_SCHEMA = {
    "type": "object",
    "properties": {"photo": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    "required": ["photo"],
}


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "field": field, "message": message}}, status_code=status)


class _Worker:
    """One thread for the model, with a bound on the requests waiting for it."""

    def __init__(self, max_queue: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="globeflow-model")
        self._max = int(max_queue)
        self._pending = 0
        self._lock = threading.Lock()

    async def run(self, fn, *args, **kwargs):
        with self._lock:
            if self._pending >= self._max:
                raise InputError("request", f"the server is busy ({self._pending} requests waiting); retry later", 503)
            self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        finally:
            with self._lock:
                self._pending -= 1

    @property
    def pending(self) -> int:
        return self._pending

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@functools.lru_cache(maxsize=1)
def _admin1_gzip() -> bytes:
    """:func:`globeflow.basemap.admin1_geojson`, gzipped once per process."""
    import gzip

    from globeflow.basemap import admin1_geojson

    return gzip.compress(admin1_geojson().encode(), compresslevel=6, mtime=0)


@functools.lru_cache(maxsize=1)
def basemap_geojson() -> str:
    """Natural Earth 1:110m countries as a GeoJSON FeatureCollection (one MultiPolygon per
    country, ``kind: country``, ``name``), a label point per country larger than ~2 square
    degrees (``kind: label``), and 30° graticule lines (``kind: graticule``)."""
    ref = resources.files("globeflow.viz") / "data" / "ne_110m_countries.npz"
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as d:
        pts = d["lonlat"].astype(np.float64) / float(d["scale"])
        off, owner, names = d["ring_offsets"], d["ring_country"], d["country_names"]
    polys: dict[int, list] = {}
    label_at: dict[int, tuple[float, list]] = {}
    for k in range(len(off) - 1):
        r = pts[off[k] : off[k + 1]]
        polys.setdefault(int(owner[k]), []).append([np.round(r, 2).tolist()])
        # Label point: the area-weighted centroid of the country's largest ring.
        x, y = r[:, 0], r[:, 1]
        cross = x[:-1] * y[1:] - x[1:] * y[:-1]
        area = cross.sum() / 2
        if abs(area) > label_at.get(int(owner[k]), (0.0, None))[0] and abs(area) > 1e-9:
            cx = ((x[:-1] + x[1:]) * cross).sum() / (6 * area)
            cy = ((y[:-1] + y[1:]) * cross).sum() / (6 * area)
            label_at[int(owner[k])] = (abs(area), [round(float(cx), 2), round(float(cy), 2)])
    features = [
        {
            "type": "Feature",
            "properties": {"name": str(names[i]), "kind": "country"},
            "geometry": {"type": "MultiPolygon", "coordinates": p},
        }
        for i, p in sorted(polys.items())
    ]
    features += [
        {
            "type": "Feature",
            "properties": {"name": str(names[i]), "kind": "label"},
            "geometry": {"type": "Point", "coordinates": c},
        }
        for i, (a, c) in sorted(label_at.items())
        if a > 2.0  # square degrees: no labels on small islands and city states
    ]
    lines = [[[lon, lat] for lat in range(-85, 86, 5)] for lon in range(-180, 181, 30)]
    lines += [[[lon, lat] for lon in range(-180, 181, 5)] for lat in range(-60, 61, 30)]
    features.append(
        {
            "type": "Feature",
            "properties": {"kind": "graticule"},
            "geometry": {"type": "MultiLineString", "coordinates": lines},
        }
    )
    return json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"))


def _lifespan(worker: _Worker):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.shutdown()  # queued requests are cancelled; the running one finishes

    return lifespan


def create_app(locator: Locator) -> FastAPI:
    """The FastAPI app answering with ``locator`` (loaded once, before the app is built)."""
    from globeflow import __version__

    limits = locator.limits
    worker = _Worker(limits.max_queue)
    app = FastAPI(
        title="globeflow",
        version=__version__,
        description=(
            "Where was this written or photographed? Answers with a probability map: the most likely "
            "places (modes) with their probability, P(country), the 50% and 90% regions, and a plain sentence."
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan(worker),
    )
    app.state.locator = locator
    app.state.worker = worker
    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")

    @app.exception_handler(InputError)
    async def _input_error(request: Request, err: InputError) -> JSONResponse:
        return _error(err.status, err.field, err.message)

    @app.middleware("http")
    async def _size_limit(request: Request, call_next):
        # Refuse an oversized body from its header, before reading it.
        length = request.headers.get("content-length")
        if request.method == "POST" and length is not None:
            try:
                too_big = int(length) > limits.max_upload_bytes + 64 * 1024
            except ValueError:
                return _error(400, "content-length", "not a number")
            if too_big:
                return _error(
                    413, "photo", f"request of {int(length):,} bytes; the limit is {limits.max_upload_bytes:,} bytes"
                )
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((_STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="globeflow API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
        )

    @app.get("/health", summary="Liveness: the model is loaded")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": locator.name, "queued": worker.pending}

    @app.get("/v1/models", summary="The loaded model and the models this installation knows")
    def models() -> dict[str, Any]:
        from globeflow.models import list_models

        known = [m.to_dict() for m in list_models([], hub_known=True)]
        return {"loaded": locator.info(), "available": known}

    @app.get("/v1/basemap.geojson", include_in_schema=False)
    def basemap() -> Response:
        return Response(
            basemap_geojson(), media_type="application/geo+json", headers={"Cache-Control": "max-age=86400"}
        )

    @app.get("/v1/admin1.geojson", include_in_schema=False)
    def admin1(request: Request) -> Response:
        # ~1.8 MB of JSON, ~0.45 MB gzipped: sent compressed to any client that accepts it.
        headers = {"Cache-Control": "max-age=86400", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(_admin1_gzip(), media_type="application/geo+json", headers=headers)
        from globeflow.basemap import admin1_geojson

        return Response(admin1_geojson(), media_type="application/geo+json", headers=headers)

    @app.get("/v1/answers/{answer_id}.{fmt}", summary="Download a recent answer as GeoJSON or KML")
    def download(answer_id: str, fmt: str) -> Response:
        if fmt not in ("geojson", "kml"):
            raise InputError("format", f"expected geojson or kml, got {fmt!r}", 404)
        try:
            text = locator.export(answer_id, fmt)
        except KeyError:
            raise InputError(
                "id", f"no recent answer {answer_id!r} (the server keeps the last ones only)", 404
            ) from None
        media = "application/geo+json" if fmt == "geojson" else "application/vnd.google-earth.kml+xml"
        return Response(
            text,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="globeflow-{answer_id}.{fmt}"'},
        )

    @app.post(
        "/v1/locate",
        summary="Geolocate texts, photos or embeddings",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _LOCATE_SCHEMA},
                    "multipart/form-data": {"schema": _PHOTO_SCHEMA},
                },
            }
        },
    )
    async def locate(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            emb_fn, labels, opts = await _parse_photos(request, locator)
        elif ctype.startswith("application/json") or not ctype:
            emb_fn, labels, opts = await _parse_json(request, locator)
        else:
            raise InputError("content-type", f"expected application/json or multipart/form-data, got {ctype!r}", 415)

        def work():
            emb = emb_fn()
            return locator.locate(emb, labels, **opts)

        records = await worker.run(work)
        return JSONResponse({"model": locator.name, "answers": records})

    return app


def _options(body: dict[str, Any], locator: Locator) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if "samples" in body:
        s = body["samples"]
        if not isinstance(s, int) or isinstance(s, bool) or not 16 <= s <= locator.limits.max_samples:
            raise InputError("samples", f"expected an integer from 16 to {locator.limits.max_samples}", 422)
        opts["num_samples"] = s
    if "seed" in body:
        if not isinstance(body["seed"], int) or isinstance(body["seed"], bool):
            raise InputError("seed", "expected an integer", 422)
        opts["seed"] = body["seed"]
    if "overlay" in body:
        opts["overlay"] = bool(body["overlay"])
    return opts


_INPUT_KEYS = ("text", "texts", "embedding", "embeddings")


async def _read_body(request: Request, lim_bytes: int) -> bytes:
    # Read at most the upload limit, also when no Content-Length was sent (chunked bodies).
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > lim_bytes:
            raise InputError("body", f"larger than {lim_bytes:,} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_request(raw: bytes) -> tuple[dict[str, Any], str]:
    """The request object and its one input key; :class:`InputError` naming the field."""
    if not raw:
        raise InputError("body", 'empty request; send JSON like {"text": "Canton, Ohio"} or a multipart photo', 400)
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise InputError("body", f"not valid JSON ({err})", 400) from None
    if not isinstance(body, dict):
        raise InputError("body", "expected a JSON object", 422)
    keys = [k for k in _INPUT_KEYS if k in body]
    if len(keys) != 1:
        raise InputError("body", "give exactly one of text, texts, embedding, embeddings", 422)
    unknown = set(body) - {*_INPUT_KEYS, "samples", "seed", "overlay"}
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown field", 422)
    return body, keys[0]


def _checked_texts(texts: Any, key: str, lim: Limits) -> list[str]:
    if not isinstance(texts, list) or not texts:
        raise InputError(key, "expected a non-empty list of strings", 422)
    if len(texts) > lim.max_batch:
        raise InputError(key, f"{len(texts)} texts; at most {lim.max_batch} per request", 413)
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise InputError(key, "expected non-empty strings", 422)
        if len(t) > lim.max_text_chars:
            raise InputError(key, f"a text of {len(t)} characters; at most {lim.max_text_chars}", 413)
    return texts


def _checked_embeddings(value: Any, key: str, locator: Locator) -> np.ndarray:
    lim = locator.limits
    if key == "embeddings":
        if not isinstance(value, list) or not value:
            raise InputError(key, "expected a non-empty list of embeddings", 422)
        if len(value) > lim.max_batch:
            raise InputError(key, f"{len(value)} embeddings; at most {lim.max_batch} per request", 413)
    emb = locator.check_embeddings(value, key)
    if key == "embeddings" and emb.shape[0] != len(value):
        raise InputError(key, "expected a list of embeddings", 422)
    return emb


async def _parse_json(request: Request, locator: Locator):
    raw = await _read_body(request, locator.limits.max_upload_bytes)
    body, key = _json_request(raw)
    opts = _options(body, locator)
    if key in ("text", "texts"):
        texts = _checked_texts([body["text"]] if key == "text" else body["texts"], key, locator.limits)
        if locator.input_kind != "text":
            locator.embed_texts([])  # raises the InputError that says what the model takes
        return (lambda: locator.embed_texts(texts)), [{"query": t} for t in texts], opts
    emb = _checked_embeddings(body[key], key, locator)
    return (lambda: emb), [{"embedding_index": i} for i in range(emb.shape[0])], opts


async def _parse_photos(request: Request, locator: Locator):
    from PIL import UnidentifiedImageError

    from globeflow.encoders.preprocess import ImageError, load_image

    lim = locator.limits
    if locator.input_kind != "image":
        locator.embed_images([])  # the InputError that says what the model takes
    form = await request.form(max_files=lim.max_batch + 1, max_fields=8)
    files = [v for k, v in form.multi_items() if k == "photo" and not isinstance(v, str)]
    if not files:
        raise InputError("photo", "no file in the form field 'photo'", 422)
    if len(files) > lim.max_batch:
        raise InputError("photo", f"{len(files)} photos; at most {lim.max_batch} per request", 413)
    opts = {}
    if "overlay" in form:
        opts["overlay"] = str(form["overlay"]).lower() in ("1", "true", "yes")
    images, labels = [], []
    for f in files:
        data = await f.read(lim.max_upload_bytes + 1)
        if len(data) > lim.max_upload_bytes:
            raise InputError("photo", f"{f.filename}: larger than {lim.max_upload_bytes:,} bytes", 413)
        try:
            img = load_image(io.BytesIO(data))
        except (ImageError, UnidentifiedImageError, OSError, ValueError) as err:
            raise InputError("photo", f"{f.filename}: not an image we can read ({err})", 415) from None
        images.append(img)
        gps = img.info.get("gps")
        labels.append({"image": f.filename, **({"exif_latitude": gps[0], "exif_longitude": gps[1]} if gps else {})})
    return (lambda: locator.embed_images(images)), labels, opts
