"""Geographic coordinates ↔ unit vectors, and great-circle distances on the Earth.

Convention: x = cos φ cos λ, y = cos φ sin λ, z = sin φ with latitude φ and longitude λ
in degrees; longitudes are returned in [−180, 180).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EARTH_RADIUS_KM",
    "latlon_to_xyz",
    "xyz_to_latlon",
    "wrap_longitude",
    "great_circle_km",
]

#: Mean Earth radius in km used by every distance in globeflow (and by the GeoScore).
EARTH_RADIUS_KM = 6371.0


def wrap_longitude(lon: np.ndarray) -> np.ndarray:
    """Wrap longitudes in degrees into [−180, 180)."""
    out = (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0
    # A tiny negative remainder r gives r % 360 = 360 − |r|, which rounds to 360 → +180.
    return np.where(out >= 180.0, out - 360.0, out)


def latlon_to_xyz(lat: Tensor | np.ndarray, lon: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Degrees (...,) and (...,) -> unit vectors (..., 3); numpy in → numpy out, torch in → torch out."""
    if isinstance(lat, Tensor) or isinstance(lon, Tensor):
        lat_t = torch.deg2rad(torch.as_tensor(lat))
        lon_t = torch.deg2rad(torch.as_tensor(lon, dtype=lat_t.dtype, device=lat_t.device))
        c = torch.cos(lat_t)
        return torch.stack([c * torch.cos(lon_t), c * torch.sin(lon_t), torch.sin(lat_t)], dim=-1)
    lat_r = np.deg2rad(np.asarray(lat, dtype=np.float64))
    lon_r = np.deg2rad(np.asarray(lon, dtype=np.float64))
    c = np.cos(lat_r)
    return np.stack([c * np.cos(lon_r), c * np.sin(lon_r), np.sin(lat_r)], axis=-1)


def xyz_to_latlon(xyz: Tensor | np.ndarray) -> np.ndarray:
    """Vectors (..., 3) (need not be unit) -> float64 numpy (..., 2) of (latitude, longitude) degrees.

    Latitude uses ``atan2(z, hypot(x, y))``, accurate at the poles where ``asin`` is not;
    longitude is wrapped into [−180, 180).
    """
    if isinstance(xyz, Tensor):
        xyz = xyz.detach().to("cpu", torch.float64).numpy()
    xyz = np.asarray(xyz, dtype=np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lat = np.rad2deg(np.arctan2(z, np.hypot(x, y)))
    lon = wrap_longitude(np.rad2deg(np.arctan2(y, x)))
    return np.stack([lat, lon], axis=-1)


def great_circle_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting).

    Uses ``2R atan2(|a − b|, |a + b|)`` on unit vectors a, b: no loss of precision for nearby
    points (where the law of cosines fails) nor for antipodes (where haversine's ``asin`` does).
    The chord |a − b| is taken in haversine form from the coordinate differences, which keeps
    full relative precision down to sub-millimetre separations (rounding of a and b would not).
    """
    lat1, lon1, lat2, lon2 = (np.asarray(v, dtype=np.float64) for v in (lat1, lon1, lat2, lon2))
    a = latlon_to_xyz(lat1, lon1)
    b = latlon_to_xyz(lat2, lon2)
    a, b = np.broadcast_arrays(a, b)
    h = np.sin(np.deg2rad(lat2 - lat1) / 2.0) ** 2 + np.cos(np.deg2rad(lat1)) * np.cos(
        np.deg2rad(lat2)
    ) * np.sin(np.deg2rad(lon2 - lon1) / 2.0) ** 2
    chord = 2.0 * np.sqrt(h)
    other = np.linalg.norm(a + b, axis=-1)
    return 2.0 * EARTH_RADIUS_KM * np.arctan2(chord, other)
