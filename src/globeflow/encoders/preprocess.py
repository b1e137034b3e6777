"""Image loading and per-model preprocessing with Pillow + numpy (no torchvision).

Loading (:func:`load_image`) applies the EXIF orientation and brings every Pillow mode to
8-bit RGB: transparency is composited onto white (as transformers' CLIP processor does),
16-bit and 32-bit integer images are rescaled rather than clipped, CMYK goes through Pillow's
conversion. :class:`ImageTransform` then crops, resizes and normalises an RGB image into the
(3, H, W) float32 array a backbone expects.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import IO

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageError", "ImageTransform", "gps_from_exif", "load_image", "to_rgb"]

# A decompression bomb is an error like any other bad file, not a process-wide warning.
Image.MAX_IMAGE_PIXELS = 200_000_000

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class ImageError(ValueError):
    """A file that is not a readable image; ``reason`` is a short category for summaries:
    ``"not an image"``, ``"truncated"``, ``"corrupt"``, ``"too large"`` or ``"missing"``."""

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


def _reason(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "missing"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image"
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too large"
    if "truncated" in str(err).lower():
        return "truncated"
    return "corrupt"


def load_image(source: str | os.PathLike | IO[bytes]) -> Image.Image:
    """Open, fully decode and orient an image; returns an 8-bit RGB ``PIL.Image``.

    Raises :class:`ImageError` for anything Pillow cannot decode completely (a truncated
    JPEG is an error here, not a grey band at the bottom).
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) for some damaged files; treat them as damaged.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                exif_gps = gps_from_exif(img)
                oriented = ImageOps.exif_transpose(img)
                rgb = to_rgb(oriented)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        reason = _reason(err)
        raise ImageError(f"{name}: {reason} ({type(err).__name__}: {err})", reason) from None
    rgb.info["gps"] = exif_gps
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (transparency over white; high bit depths rescaled)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":
            # 32-bit integer images from 16-bit PNGs hold 0..65535; genuinely wider ranges
            # are rescaled by their maximum.
            top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        else:  # float images: [0, 1] is the convention, anything wider is rescaled
            top = 1.0 if a.max(initial=0) <= 1.0 else float(a.max())
        g = np.clip(np.rint(a / max(top, 1e-12) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _rational(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        num, den = value
        return float(num) / float(den)


def gps_from_exif(img: Image.Image) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees from the EXIF GPS IFD, or None when absent or invalid."""
    try:
        gps = img.getexif().get_ifd(0x8825)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is just "no location"
        return None
    try:
        lat_dms, lon_dms = gps[2], gps[4]
        lat = sum(_rational(v) / 60.0**i for i, v in enumerate(lat_dms))
        lon = sum(_rational(v) / 60.0**i for i, v in enumerate(lon_dms))
        lat_ref = str(gps.get(1, "N")).strip("\x00 ").upper()
        lon_ref = str(gps.get(3, "E")).strip("\x00 ").upper()
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    lat = -lat if lat_ref.startswith("S") else lat
    lon = -lon if lon_ref.startswith("W") else lon
    if not (np.isfinite(lat) and np.isfinite(lon) and abs(lat) <= 90.0 and abs(lon) <= 180.0):
        return None
    return float(lat), float(lon)


@dataclass(frozen=True)
class ImageTransform:
    """Crop -> resize -> scale -> normalise, as one backbone's training pipeline did.

    ``crop``:
      * ``"shortest_edge"``: resize the shortest side to ``resize`` then center-crop
        ``size`` x ``size`` (CLIP's processor);
      * ``"square"``: center-crop the largest square, then resize to ``size`` (PLONK's
        DINOv2 pipeline, ``CenterCrop(ratio="1:1")`` then ``Resize``);
      * ``"fraction"``: center-crop a square of ``crop_fraction`` times the shortest side,
        then resize to ``size`` (the TF EfficientNet eval pipeline, 224/256).

    Pixels are divided by 255 then normalised by ``mean``/``std`` (per RGB channel, in that
    0-1 scale).
    """

    size: int
    crop: str = "shortest_edge"
    resize: int | None = None
    crop_fraction: float = 1.0
    resample: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"image transform: size must be a positive integer, got {self.size!r}")
        if self.crop not in ("shortest_edge", "square", "fraction"):
            raise ValueError(f"image transform: unknown crop {self.crop!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"image transform: resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"image transform: crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("image transform: mean and std need 3 values, std > 0")

    def config(self) -> dict:
        return asdict(self)

    def geometry(self, img: Image.Image) -> Image.Image:
        """The crop and resize only: RGB image -> ``size`` x ``size`` RGB image."""
        resample = _RESAMPLE[self.resample]
        w, h = img.size
        if self.crop == "shortest_edge":
            target = self.resize or self.size
            # Same rounding as transformers' get_resize_output_image_size: the long side is
            # int(target * long / short), the short side exactly target.
            if w <= h:
                new = (target, int(target * h / w))
            else:
                new = (int(target * w / h), target)
            if new != (w, h):
                img = img.resize(new, resample=resample)
            # transformers' center_crop offsets are (W - w) // 2.
            return _center_crop(img, self.size, self.size, floor=True)
        side = min(w, h)
        if self.crop == "fraction":
            side = max(1, round(side * self.crop_fraction))
        img = _center_crop(img, side, side)
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), resample=resample)
        return img

    def __call__(self, img: Image.Image) -> np.ndarray:
        """RGB image -> (3, size, size) float32, normalised."""
        a = np.asarray(self.geometry(to_rgb(img)), dtype=np.float32) * np.float32(1.0 / 255.0)
        a = (a - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))


def _center_crop(img: Image.Image, crop_w: int, crop_h: int, *, floor: bool = False) -> Image.Image:
    """Center crop; offsets ``int(round((W - w) / 2))`` as torchvision, or ``(W - w) // 2``."""
    w, h = img.size
    if (w, h) == (crop_w, crop_h):
        return img
    if crop_w > w or crop_h > h:
        # Pad with black like torchvision's center_crop, then crop.
        canvas = Image.new(img.mode, (max(w, crop_w), max(h, crop_h)))
        canvas.paste(img, ((max(w, crop_w) - w) // 2, (max(h, crop_h) - h) // 2))
        img, (w, h) = canvas, canvas.size
    if floor:
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
    else:
        left, top = round((w - crop_w) / 2.0), round((h - crop_h) / 2.0)
    return img.crop((left, top, left + crop_w, top + crop_h))
