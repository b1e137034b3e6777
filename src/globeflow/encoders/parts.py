"""A text encoder that reads the parts of a place query: name | admin1 | country.

A sentence embedding of "Springfield, Illinois" barely differs from one of "Springfield,
Ohio" (minilm cosine 0.88, more than to "Chicago, Illinois", 0.80): the admin1 part is
drowned by the name. ``minilm-parts`` splits the query at its commas into three **roles**
and embeds each role's text separately with minilm:

* ``country``: the last part, when it names a country (:func:`country_code_of`: ISO 3166
  names, alpha-3 codes and a few aliases such as "USA", case- and accent-insensitive; never
  alpha-2 codes, which collide with US states: "IL", "CA", "IN");
* ``name``: the first remaining part (a text without commas is all name, unless it is a
  country: "Kenya" fills the country role);
* ``admin1``: the parts in between, joined by ", ".

The embedding is the concatenation [e(name), e(admin1), e(country), m] of the three 384-d
unit vectors (zeros for an absent role) and the 3 presence flags m ∈ {0, 1}³, so the network
sees which roles were given (the learned "absent" token is the first layer's weight on m):
D = 3·384 + 3 = 1155. ``minilm-parts-whole`` appends the whole-string embedding as well
(D = 1539), keeping what minilm knows of the query as a sentence (free text with commas).

Each distinct part is embedded once: every query of a dataset is assembled from the vectors
of ~150 k unique names, ~4 k admin1 names and ~250 country names, which makes covering
every place under every template cheap (:meth:`MiniLMParts.encode_parts`). Part vectors are
keyed by the text as the uncased minilm tokenizer sees it (lower case, accents stripped),
so "Zürich", "zurich" and "Zurich" share one vector (they have identical token ids).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from globeflow.encoders.base import TextEncoder

__all__ = ["ROLES", "MiniLMParts", "assemble", "country_code_of", "part_key", "split_query"]

ROLES = ("name", "admin1", "country")

# Spellings people type for countries whose ISO names are formal ("Russian Federation") or
# absent from pycountry's fields. Keys are compared folded (see _fold).
_ALIASES = {
    "US": "US", "U.S.": "US", "USA": "US", "U.S.A.": "US", "United States of America": "US", "America": "US",
    "UK": "GB", "U.K.": "GB", "Great Britain": "GB", "Britain": "GB",
    "Russia": "RU", "South Korea": "KR", "Korea": "KR", "North Korea": "KP", "Iran": "IR", "Syria": "SY",
    "Vietnam": "VN", "Laos": "LA", "Bolivia": "BO", "Venezuela": "VE", "Tanzania": "TZ", "Moldova": "MD",
    "Czech Republic": "CZ", "Ivory Coast": "CI", "Macedonia": "MK", "Swaziland": "SZ", "Burma": "MM",
    "The Netherlands": "NL", "Holland": "NL", "Vatican": "VA", "Cape Verde": "CV", "East Timor": "TL",
    "Brunei": "BN", "Turkey": "TR", "Palestine": "PS", "Kosovo": "XK", "Taiwan": "TW",
    "Democratic Republic of the Congo": "CD", "DR Congo": "CD", "DRC": "CD", "Republic of the Congo": "CG",
    "Congo": "CG", "Micronesia": "FM", "Falkland Islands": "FK", "Caribbean Netherlands": "BQ",
    "Cocos Islands": "CC", "Saint Martin": "MF", "Saint Helena": "SH", "Sint Maarten": "SX",
    "Vatican City": "VA", "British Virgin Islands": "VG", "U.S. Virgin Islands": "VI",
}  # fmt: skip


def _fold(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(ascii_text.lower().split())


@functools.lru_cache(maxsize=2)
def _country_table(fold: bool) -> dict[str, str]:
    """Spelling -> ISO alpha-2 code (folded spellings when ``fold``)."""
    import pycountry

    key: Callable[[str], str] = _fold if fold else (lambda s: s)
    table: dict[str, str] = {}
    for c in pycountry.countries:
        for attr in ("name", "common_name", "official_name", "alpha_3"):
            value = getattr(c, attr, None)
            if value:
                table.setdefault(key(value), c.alpha_2)
                table.setdefault(key(_fold_keep_case(value)), c.alpha_2)  # "Cote d'Ivoire" as typed
    for spelling, cc in _ALIASES.items():
        table[key(spelling)] = cc
    table.pop("", None)
    return table


def _fold_keep_case(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def country_code_of(text: str, *, fold: bool = True) -> str | None:
    """ISO alpha-2 code of the country ``text`` names, or None. ``fold``: ignore case and accents."""
    t = text.strip()
    return _country_table(fold).get(_fold(t) if fold else t)


def split_query(text: str) -> tuple[str, str, str]:
    """(name, admin1, country) texts of a query; '' for an absent role (see the module doc).

    >>> split_query("Springfield, Illinois, United States")
    ('Springfield', 'Illinois', 'United States')
    >>> split_query("Paris, France"), split_query("Kenya"), split_query("Springfield, IL")
    (('Paris', '', 'France'), ('', '', 'Kenya'), ('Springfield', 'IL', ''))
    """
    parts = [p.strip() for p in str(text).split(",")]
    parts = [p for p in parts if p]
    if not parts:
        return "", "", ""
    country = ""
    if country_code_of(parts[-1]) is not None:
        country = parts.pop()
    if not parts:
        return "", "", country
    return parts[0], ", ".join(parts[1:]), country


def part_key(text: str) -> str:
    """The text as the uncased minilm tokenizer sees it (lower case, accents stripped,
    whitespace collapsed): equal keys have equal token ids, hence equal embeddings."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    stripped = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return " ".join(stripped.split())


def assemble(roles: Sequence[tuple[str, str, str]], vectors: dict[str, np.ndarray] | Callable, dim: int) -> np.ndarray:
    """(N, 3·dim + 3) float32 from the role texts of N queries and a part-key -> vector map.

    ``vectors``: a dict (or a function) from :func:`part_key` of a part to its (dim,) vector.
    """
    get = vectors.__getitem__ if isinstance(vectors, dict) else vectors
    out = np.zeros((len(roles), 3 * dim + 3), np.float32)
    for i, r in enumerate(roles):
        for k, part in enumerate(r):
            if part:
                out[i, k * dim : (k + 1) * dim] = get(part_key(part))
                out[i, 3 * dim + k] = 1.0
    return out


class MiniLMParts(TextEncoder):
    """minilm on the parts of a query: [e(name), e(admin1), e(country), flags(, e(query))].

    ``whole``: also append the whole-string embedding. ``base``: the minilm encoder to use
    (default: the packaged one). Part vectors are memoised in :attr:`cache` (part key ->
    float32 vector); a dataset builder fills it in bulk with :meth:`encode_parts`.
    """

    def __init__(self, *, whole: bool = False, base: TextEncoder | None = None, path=None, device: str = "cpu"):
        if base is None:
            # The process's one minilm (globeflow.encoders.shared_encoder): the familiarity
            # check of an answer (globeflow.novelty) uses the same model, loaded once.
            from globeflow.encoders import shared_encoder

            base = shared_encoder("minilm", path, device)
        self.base = base
        self.model = base.model
        self.whole = bool(whole)
        self.name = "minilm-parts-whole" if self.whole else "minilm-parts"
        self.part_dim = int(base.dim)
        self.dim = 3 * self.part_dim + 3 + (self.part_dim if self.whole else 0)
        self.cache: dict[str, np.ndarray] = {}

    def encode_parts(self, parts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """(P, part_dim) vectors of ``parts`` (memoised by :func:`part_key`)."""
        keys = [part_key(p) for p in parts]
        todo = sorted({k for k in keys if k not in self.cache}, key=lambda k: (len(k), k))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for k, v in zip(chunk, self.base.encode_texts(chunk)):
                self.cache[k] = np.asarray(v, np.float32)
        if not keys:
            return np.zeros((0, self.part_dim), np.float32)
        return np.stack([self.cache[k] for k in keys])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got a single string")
        roles = [split_query(t) for t in texts]
        self.encode_parts([p for r in roles for p in r if p])
        out = assemble(roles, self.cache, self.part_dim)
        if self.whole:
            out = np.concatenate([out, np.asarray(self.base.encode_texts(list(texts)), np.float32)], axis=1)
        return out

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "dim": self.dim,
            "base": self.base.settings(),
            "roles": list(ROLES),
            "whole": self.whole,
            "layout": "concat(name, admin1, country, presence flags" + (", whole)" if self.whole else ")"),
        }
