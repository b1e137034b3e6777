"""The work behind ``globeflow serve``: one model (and its encoder) per process, inputs -> records.

:class:`Locator` loads a model once, finds the encoder its embeddings came from (the run's
``config.json``, or the PLONK provenance), and turns texts, photos or embeddings into the
records ``globeflow predict`` writes (:meth:`globeflow.answers.Answer.to_dict` plus ``query``
/ ``image``, ``model``, ``encoder``), with the place names, plain sentence, category and
warnings of :func:`globeflow.describe.describe`, and — for the web page — the 50/90% regions
and modes as GeoJSON and the density as a Web-Mercator PNG overlay.

Everything here is synchronous and not thread-safe: the web app runs it on ONE worker thread
(requests queue there), so the event loop never blocks on the model.
"""

from __future__ import annotations

import base64
import io
import math
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["InputError", "Limits", "Locator", "mercator_overlay"]

#: Web Mercator's latitude limit (degrees): Leaflet's default map ends there.
MERCATOR_MAX_LAT = 85.0511287798
#: The density overlay shows densities down to this fraction of the peak.
OVERLAY_RANGE = 1e-2
#: Opacity of the overlay at the peak (the basemap and the region lines stay readable).
OVERLAY_MAX_ALPHA = 0.6


class InputError(ValueError):
    """Bad input, with the request ``field`` it concerns and the HTTP ``status`` it deserves."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Request limits: photo bytes, inputs per request, characters per text, samples per answer,
    and requests waiting for the model before new ones are turned away (503)."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_batch: int = 16
    max_text_chars: int = 500
    max_samples: int = 4096
    max_queue: int = 32


def _model_encoder_name(model_ref: str | None, method: Any) -> str | None:
    from globeflow.io import load_json

    plonk = getattr(method, "plonk", None)
    if isinstance(plonk, dict) and plonk.get("encoder"):
        return plonk["encoder"]
    if model_ref is not None and (Path(model_ref) / "config.json").is_file():
        cfg = load_json(Path(model_ref) / "config.json")
        if isinstance(cfg, dict) and isinstance(cfg.get("encoder"), dict):
            return cfg["encoder"].get("name")
    return None


def _load_model(model: str | None, name: str | None, device: str) -> tuple[Any, str, str | None]:
    """``(method, model reference, display name)`` of ``model``: a run directory, ``hf:`` id,
    a shipped model by name (``globeflow models``), or ``None`` for the default model."""
    from globeflow.api import load
    from globeflow.pretrained import DEFAULT_MODEL, default_model_dir

    if model is None:
        model = str(default_model_dir())
        name = name or DEFAULT_MODEL
    elif not Path(model).exists() and not model.startswith("hf:"):
        from globeflow.pretrained import _ROOT

        if (_ROOT / model / "config.json").is_file():  # a shipped model by name (globeflow models)
            name = name or model
            model = str(default_model_dir(model))
    return load(model, device=device), model, name


def _pick_encoder(
    encoder: Any, encoder_path: str | None, model: str | None, method: Any, embedding_dim: int, device: str
) -> Any:
    """The encoder instance: ``encoder`` (an instance or registry name), else the model's own,
    else the offline encoder of ``embedding_dim`` (``None``: the model takes embeddings).
    ``ValueError`` when its dimension is not the model's."""
    from globeflow.encoders import ENCODERS, Encoder, get_encoder

    if isinstance(encoder, Encoder):
        out = encoder
    else:
        enc_name = encoder or _model_encoder_name(model, method)
        if enc_name is None:  # nothing recorded: the offline encoder of that dimension, if any
            enc_name = next((n for n, s in ENCODERS.items() if s.offline and s.dim == embedding_dim), None)
        out = None if enc_name is None else get_encoder(enc_name, source=encoder_path, device=device)
    if out is not None and out.dim != embedding_dim:
        raise ValueError(
            f"encoder: {out.name} gives {out.dim}-d embeddings but the model expects "
            f"{embedding_dim}-d; run `globeflow models` to see which encoder each model takes"
        )
    return out


def _colormap() -> np.ndarray:
    """256 RGB colours (uint8): matplotlib's ``magma_r`` (the PNG maps' scale) from its pale
    end to deep purple, without the black end (the map beneath must stay readable)."""
    from matplotlib import colormaps

    return (colormaps["magma_r"](np.linspace(0.05, 0.8, 256))[:, :3] * 255).astype(np.uint8)


def mercator_overlay(
    lat: np.ndarray,
    lon: np.ndarray,
    log_prob: np.ndarray,
    vmax: float,
    *,
    height: int | None = None,
    feather: float = 0.0,
) -> dict[str, Any]:
    """A density raster on a latitude/longitude grid -> PNG overlay for a Web-Mercator map.

    ``lat`` (H,) south→north and ``lon`` (W,) pixel centres in degrees, ``log_prob`` (H, W).
    Rows are resampled to equal steps in Mercator y (Leaflet stretches an image overlay
    linearly in projected coordinates, so a lat/lon raster would sit at wrong latitudes).
    Colour and opacity follow p / p_max on a log scale from 1 (dark, opaque) to
    :data:`OVERLAY_RANGE` (transparent), ``vmax`` being log p_max. ``feather``: fraction of
    the width/height over which the opacity fades out at the edges (a zoom raster blends into
    the world raster beneath instead of showing its box). Returns
    ``{"url": data URL of the PNG, "bounds": [[south, west], [north, east]]}``.
    """
    from PIL import Image

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    lp = np.asarray(log_prob, dtype=np.float64)
    dlat = (lat[-1] - lat[0]) / max(len(lat) - 1, 1)
    dlon = (lon[-1] - lon[0]) / max(len(lon) - 1, 1)
    south = max(lat[0] - dlat / 2, -MERCATOR_MAX_LAT)
    north = min(lat[-1] + dlat / 2, MERCATOR_MAX_LAT)

    def merc(phi):
        return np.log(np.tan(np.pi / 4 + np.radians(phi) / 2))

    h = int(height or min(1024, 2 * len(lat)))
    y = np.linspace(merc(north), merc(south), h)  # image rows top (north) to bottom
    row_lat = np.degrees(2 * np.arctan(np.exp(y)) - np.pi / 2)
    f = np.clip(np.interp(row_lat, lat, np.arange(len(lat), dtype=np.float64)), 0, len(lat) - 1)
    i0 = np.floor(f).astype(int)
    i1 = np.minimum(i0 + 1, len(lat) - 1)
    w = (f - i0)[:, None]
    img = (1 - w) * lp[i0] + w * lp[i1]
    rel = np.clip((img - vmax) / math.log(10.0) / -math.log10(OVERLAY_RANGE) + 1.0, 0.0, 1.0)  # 1 at peak, 0 at floor
    rgb = _colormap()[np.round(rel * 255).astype(int)]
    alpha = np.where(rel > 0, 255 * OVERLAY_MAX_ALPHA * (0.15 + 0.85 * rel), 0.0)
    if feather > 0:

        def ramp(n):
            t = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / (feather * n)
            return np.clip(t, 0.0, 1.0)

        alpha = alpha * ramp(alpha.shape[0])[:, None] * ramp(alpha.shape[1])[None, :]
    alpha = np.round(alpha).astype(np.uint8)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"url": url, "bounds": [[south, lon[0] - dlon / 2], [north, lon[-1] + dlon / 2]]}


class Locator:
    """A loaded model and its encoder, answering texts, photos and embeddings.

    ``model``: what :func:`globeflow.api.load` takes (default: the shipped model); or pass an
    already built ``method`` (tests). ``encoder``: a registry name, or an
    :class:`~globeflow.encoders.Encoder` instance (tests: random weights); default the
    model's own. ``num_samples`` (None: :data:`globeflow.answers.ANSWER_SAMPLES`),
    ``density_steps``, ``seed``: defaults of every answer.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        method: Any = None,
        encoder: Any = None,
        encoder_path: str | None = None,
        device: str = "cpu",
        num_samples: int | None = None,
        density_steps: int = 8,
        seed: int = 0,
        limits: Limits | None = None,
        name: str | None = None,
        cache_size: int = 64,
    ) -> None:
        self.limits = limits or Limits()
        if method is None:
            method, model, name = _load_model(model, name, device)
        self.method = method
        self.model_ref = model
        self.name = name or (Path(model).name if model and not model.startswith("hf:") else model) or method.name
        self.embedding_dim = int(method.embedding_dim)
        if num_samples is None:
            from globeflow.answers import ANSWER_SAMPLES as num_samples
        self.num_samples = int(num_samples)
        self.density_steps = int(density_steps)
        self.seed = int(seed)
        self.encoder = _pick_encoder(encoder, encoder_path, model, method, self.embedding_dim, device)
        self.input_kind = None if self.encoder is None else self.encoder.kind
        self._novelty = self._load_novelty(model)
        self._cache: OrderedDict[str, tuple[list[dict], list[Any]]] = OrderedDict()
        self._cache_size = int(cache_size)

    # ---------------------------------------------------------------------------- info
    def _load_novelty(self, model: str | None):
        """Held-out embeddings of the model (``heldout.parquet``), if it ships them."""
        from globeflow.describe import reference_novelty

        probe = np.zeros((1, self.embedding_dim), np.float32)
        return reference_novelty(model, self.embedding_dim, self.method.novelty_view(probe)[0].shape[-1])

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` reports about the loaded model."""
        return {
            "name": self.name,
            "model": self.model_ref,
            "method": self.method.name,
            "input": self.input_kind or "embedding",
            "encoder": None if self.encoder is None else self.encoder.name,
            "embedding_dim": self.embedding_dim,
            "has_density": getattr(self.method, "density_space", None) == "S2",
            "num_samples": self.num_samples,
            "limits": self.limits.__dict__,
        }

    # ---------------------------------------------------------------------------- inputs
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, D) with the model's text encoder; :class:`InputError` if it has none."""
        from globeflow.encoders import TextEncoder

        if not isinstance(self.encoder, TextEncoder):
            raise InputError(
                "text",
                f"model {self.name} takes {self.input_kind or 'embeddings'}, not text; "
                "a text model is the shipped geonames-text (globeflow serve without --model)",
                400,
            )
        return np.asarray(self.encoder.encode_texts(list(texts)), dtype=np.float32)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> (N, D) with the model's image encoder; :class:`InputError` if it has none."""
        from globeflow.encoders import ImageEncoder

        if not isinstance(self.encoder, ImageEncoder):
            raise InputError(
                "photo",
                f"model {self.name} takes {self.input_kind or 'embeddings'}, not photos; "
                "run `globeflow models` to see the models that take photos",
                400,
            )
        return np.asarray(self.encoder.encode_images(list(images)), dtype=np.float32)

    def check_embeddings(self, emb: Any, field: str = "embedding") -> np.ndarray:
        """A (N, D) float32 array of finite numbers, or :class:`InputError` naming ``field``."""
        try:
            e = np.asarray(emb, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(field, "expected a list of numbers (or a list of such lists)", 422) from None
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2 or e.shape[1] != self.embedding_dim:
            got = e.shape[-1] if e.ndim >= 1 else 0
            raise InputError(field, f"expected {self.embedding_dim} numbers per embedding, got {got}", 422)
        if not np.isfinite(e).all():
            raise InputError(field, "NaN or infinite values", 422)
        return e

    # ---------------------------------------------------------------------------- answers
    def locate(
        self,
        emb: np.ndarray,
        labels: Sequence[dict[str, Any]],
        *,
        num_samples: int | None = None,
        seed: int | None = None,
        overlay: bool = False,
    ) -> list[dict[str, Any]]:
        """Records for embeddings ``emb`` (N, D), one per ``labels`` dict (``query``/``image``).

        Every record gets an ``id`` under which :meth:`export` finds it again (for downloads)."""
        from globeflow.answers import answer
        from globeflow.describe import add_warnings, answer_record, describe
        from globeflow.encoders import TextEncoder
        from globeflow.viz.answer_maps import answer_map
        from globeflow.viz.outputs import answers_geojson

        emb = self.check_embeddings(emb)
        answers = answer(
            self.method,
            emb,
            num_samples=int(num_samples or self.num_samples),
            seed=self.seed if seed is None else int(seed),
            density_steps=self.density_steps,
        )
        feats, known = self.method.novelty_view(emb)
        unlike = None if self._novelty is None else self._novelty.unlike(feats)
        texts = [lab.get("query") for lab in labels]
        if not all(isinstance(t, str) for t in texts):
            texts = None
        # The familiarity check embeds the queries' names with minilm: the model's own encoder
        # when it is minilm (no second model in memory), else the process-wide minilm.
        minilm = isinstance(self.encoder, TextEncoder) and self.encoder.name == "minilm"
        embed = self.encoder.encode_texts if minilm else None
        answers = add_warnings(answers, texts=texts, embed=embed, unlike_training=unlike, known=known)
        records = []
        for lab, ans, d in zip(labels, answers, describe(answers)):
            rec = answer_record(ans, d, lab)
            rec.update(model=self.name, encoder=None if self.encoder is None else self.encoder.name)
            amap = answer_map(ans)
            rec["geojson"] = answers_geojson([rec], [amap])
            if overlay:
                rec["overlay"] = self._overlays(amap)
            rec["id"] = uuid.uuid4().hex[:16]
            self._remember(rec["id"], rec, amap)
            records.append(rec)
        return records

    def _overlays(self, amap: Any) -> list[dict[str, Any]]:
        world = amap.world
        vmax = float(np.max(world.log_prob))
        if amap.zoom is not None:
            vmax = max(vmax, float(np.max(amap.zoom.log_prob)))
        out = [mercator_overlay(world.lat, world.lon, world.log_prob, vmax)]
        if amap.zoom is not None:
            z = amap.zoom
            out.append(mercator_overlay(z.lat, z.lon, z.log_prob, vmax, height=2 * len(z.lat), feather=0.2))
        return out

    def _remember(self, key: str, record: dict[str, Any], amap: Any) -> None:
        slim = {k: v for k, v in record.items() if k not in ("geojson", "overlay")}
        self._cache[key] = ([slim], [amap])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def export(self, key: str, fmt: str) -> str:
        """A remembered answer as GeoJSON or KML text; KeyError when forgotten or unknown."""
        import json
        import tempfile

        from globeflow.viz.outputs import answers_geojson, write_kml

        records, maps = self._cache[key]
        if fmt == "geojson":
            return json.dumps(answers_geojson(records, maps), allow_nan=False) + "\n"
        if fmt == "kml":
            with tempfile.TemporaryDirectory() as tmp:
                return write_kml(Path(tmp) / "answer.kml", records, maps).read_text(encoding="utf-8")
        raise ValueError(f"format: expected geojson or kml, got {fmt!r}")
