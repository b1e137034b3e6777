"""Writers for answers: JSON Lines, CSV, GeoJSON (RFC 7946), KML 2.2 and an offline HTML report.

Every writer takes *records*: one JSON-ready dict per input (``query`` or ``image``, plus the
fields of :meth:`globeflow.answers.Answer.to_dict` and, when drawn, ``map`` — the PNG's path
relative to the report). GeoJSON and KML also take the :class:`~globeflow.viz.answer_maps.AnswerMap`
of each answer, whose rasters give the 50/90% regions as polygons (from the zoom raster when
there is one, else from the world map). Files are written atomically.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.io import write_text
from globeflow.viz.export import hpd_polygons, wrapped_polygons

__all__ = [
    "answers_csv_text",
    "answers_geojson",
    "answers_jsonl_text",
    "region_polygons",
    "slugify",
    "write_answer_files",
    "write_answers_csv",
    "write_answers_jsonl",
    "write_html_report",
    "write_kml",
]

#: How many modes / countries get their own CSV columns (all of them are in the JSON cells).
CSV_TOP = 3


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def _printable(text: str) -> str:
    """``text`` with the characters XML 1.0 forbids (C0 controls but tab/newline/return, DEL,
    lone surrogates) written as visible ``\\xNN`` escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: control characters escaped, and a leading
    ``=``, ``+``, ``-``, ``@`` (or tab / carriage return) — which Excel, LibreOffice and Google
    Sheets would evaluate as a formula — prefixed with ``'`` (OWASP's CSV-injection advice).
    Numbers pass unchanged."""
    if not isinstance(value, str):
        return value
    value = _printable(value)
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        value = "'" + value
    return value


def _label(record: dict[str, Any]) -> str:
    return str(record.get("query") or record.get("image") or "")


# ----------------------------------------------------------------------------- regions
def region_polygons(amap: Any, level: float) -> list[list[np.ndarray]]:
    """Polygons of the level-``level`` HPD region drawn in ``amap``: [exterior, *holes] each,
    rings (K, 2) closed (longitude, latitude), exterior counter-clockwise, holes clockwise.

    From the zoom raster when there is one (a city-scale region is below the world raster's
    resolution), else from the world map. A zoom raster crossing the antimeridian is cut
    there: the region comes out whole, as polygons that meet along ±180°.
    """
    tau = amap.thresholds[level]
    zoom = amap.zoom
    if zoom is None:
        return hpd_polygons(amap.world.lat, amap.world.lon, amap.world.log_prob, tau)
    return wrapped_polygons(zoom.lat, zoom.lon, zoom.log_prob, tau)


def _summary_properties(record: dict[str, Any]) -> dict[str, Any]:
    """The estimate's properties: the numbers, and the words of
    :func:`globeflow.describe.answer_record` (place, sentence, how sure, warnings)."""
    countries = record.get("countries") or []
    place = record.get("place") or {}
    return {
        "label": _label(record),
        "place": place.get("label"),
        "place_phrase": place.get("phrase"),
        "sentence": record.get("sentence"),
        "localizability_bits": record.get("localizability_bits"),
        "localizability_category": record.get("localizability_category"),
        "localizability_meaning": record.get("localizability_meaning"),
        "hpd50_area_km2": record.get("hpd50_area_km2"),
        "hpd90_area_km2": record.get("hpd90_area_km2"),
        "top_country": countries[0]["code"] if countries else None,
        "top_country_name": countries[0]["name"] if countries else None,
        "top_country_probability": countries[0]["probability"] if countries else None,
        "regions_calibrated": bool(record.get("regions_calibrated", False)),
        "calibration": record.get("calibration"),
        "warnings": [
            dict(w) if isinstance(w, dict) else {"code": "other", "message": str(w)}
            for w in record.get("warnings") or ()
        ],
    }


def answers_geojson(records: Sequence[dict[str, Any]], maps: Sequence[Any | None]) -> dict[str, Any]:
    """GeoJSON FeatureCollection: per record a Point ``estimate``, a Point per ``mode`` (with
    its rank and mass) and, when its map is given, a MultiPolygon per ``region`` (50% and 90%).
    Positions are (longitude, latitude) as RFC 7946 wants; ``kind`` tells the features apart."""
    features = []
    for record, amap in zip(records, maps):
        base = _summary_properties(record)
        features.append(
            {
                "type": "Feature",
                "properties": {**base, "kind": "estimate"},
                "geometry": {"type": "Point", "coordinates": [record["longitude"], record["latitude"]]},
            }
        )
        for rank, m in enumerate(record.get("modes") or [], start=1):
            features.append(
                {
                    "type": "Feature",
                    "properties": {
                        "label": base["label"],
                        "kind": "mode",
                        "rank": rank,
                        "mass": m["mass"],
                        "place": m.get("place"),
                        "place_phrase": m.get("place_phrase"),
                    },
                    "geometry": {"type": "Point", "coordinates": [m["longitude"], m["latitude"]]},
                }
            )
        if amap is None:
            continue
        for level in sorted(amap.thresholds, reverse=True):  # larger first: smaller draws on top
            polys = region_polygons(amap, level)
            features.append(
                {
                    "type": "Feature",
                    "properties": {
                        "label": base["label"],
                        "kind": "region",
                        "level": level,
                        "density": amap.kind,
                        "regions_calibrated": base["regions_calibrated"],
                        "calibration": record.get("calibration"),
                        "area_km2": record.get(f"hpd{round(100 * level)}_area_km2"),
                    },
                    "geometry": {
                        "type": "MultiPolygon",
                        "coordinates": [[ring.tolist() for ring in poly] for poly in polys],
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


# ----------------------------------------------------------------------------- KML
def _coords(ring: np.ndarray) -> str:
    return " ".join(f"{lon:.6f},{lat:.6f}" for lon, lat in ring)


def _kml_value(value: Any) -> str:
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _kml_estimate(folder: ET.Element, record: dict[str, Any]) -> None:
    """The estimate's Placemark: its place, the words in the description and as ExtendedData."""
    pm = ET.SubElement(folder, "Placemark")
    props = _summary_properties(record)
    near = f" ({props['place_phrase']})" if props["place_phrase"] else ""
    ET.SubElement(pm, "name").text = f"estimate: {_label(record)}{near}"
    countries = record.get("countries") or []
    desc = [record["sentence"]] if record.get("sentence") else []
    desc.append("P(country): " + ", ".join(f"{c['name']} {100 * c['probability']:.0f}%" for c in countries[:3]))
    if props["localizability_category"]:
        desc.append(f"how sure: {props['localizability_category']} ({props['localizability_meaning']})")
    desc.append("regions: " + (record.get("calibration") or "uncalibrated (the model's own levels)"))
    desc += [f"warning: {w['message']}" for w in props["warnings"]]
    ET.SubElement(pm, "description").text = "\n".join(desc)
    # The same words as the GeoJSON properties, for GIS tools that read KML fields.
    data = ET.SubElement(pm, "ExtendedData")
    for key in ("place", "sentence", "localizability_category", "regions_calibrated", "top_country_probability"):
        ET.SubElement(ET.SubElement(data, "Data", name=key), "value").text = _kml_value(props[key])
    ET.SubElement(ET.SubElement(data, "Data", name="warnings"), "value").text = " | ".join(
        f"{w['code']}: {w['message']}" for w in props["warnings"]
    )
    ET.SubElement(
        ET.SubElement(pm, "Point"), "coordinates"
    ).text = f"{record['longitude']:.6f},{record['latitude']:.6f}"


def _kml_modes(folder: ET.Element, record: dict[str, Any]) -> None:
    """One Placemark per mode, named by its place and mass."""
    for rank, m in enumerate(record.get("modes") or [], start=1):
        pm = ET.SubElement(folder, "Placemark")
        where = f"{m['place']} " if m.get("place") else ""
        ET.SubElement(pm, "name").text = f"mode {rank}: {where}({100 * m['mass']:.0f}%)"
        ET.SubElement(
            pm, "description"
        ).text = f"{m.get('place_phrase') or 'this place'}: {100 * m['mass']:.1f}% of the probability"
        ET.SubElement(ET.SubElement(pm, "Point"), "coordinates").text = f"{m['longitude']:.6f},{m['latitude']:.6f}"


def _kml_regions(folder: ET.Element, record: dict[str, Any], amap: Any) -> None:
    """One Placemark per credible region (widest first): Polygons with outer and inner boundaries."""
    for level in sorted(amap.thresholds, reverse=True):
        polys = region_polygons(amap, level)
        if not polys:
            continue
        pm = ET.SubElement(folder, "Placemark")
        calibrated = " (calibrated)" if record.get("regions_calibrated") else ""
        ET.SubElement(pm, "name").text = f"{100 * level:g}% region{calibrated}"
        ET.SubElement(pm, "styleUrl").text = f"#hpd{round(100 * level)}"
        multi = ET.SubElement(pm, "MultiGeometry")
        for poly in polys:
            polygon = ET.SubElement(multi, "Polygon")
            for k, ring in enumerate(poly):
                boundary = ET.SubElement(polygon, "outerBoundaryIs" if k == 0 else "innerBoundaryIs")
                ET.SubElement(ET.SubElement(boundary, "LinearRing"), "coordinates").text = _coords(ring)


def write_kml(path: str | os.PathLike, records: Sequence[dict[str, Any]], maps: Sequence[Any | None]) -> Path:
    """KML 2.2 document: one Folder per record with Placemarks for the estimate, the modes and
    the 50/90% regions (Polygons, outer and inner boundaries), for Google Earth and GIS tools."""
    ns = "http://www.opengis.net/kml/2.2"
    root = ET.Element("kml", xmlns=ns)
    doc = ET.SubElement(root, "Document")
    ET.SubElement(doc, "name").text = "globeflow answers"
    for level, color in ((0.5, "7f4f6e0b"), (0.9, "3fa85f1f")):  # aabbggrr
        style = ET.SubElement(doc, "Style", id=f"hpd{round(100 * level)}")
        ET.SubElement(ET.SubElement(style, "LineStyle"), "width").text = "2"
        ET.SubElement(ET.SubElement(style, "PolyStyle"), "color").text = color
    for record, amap in zip(records, maps):
        folder = ET.SubElement(doc, "Folder")
        ET.SubElement(folder, "name").text = _label(record)
        _kml_estimate(folder, record)
        _kml_modes(folder, record)
        if amap is not None:
            _kml_regions(folder, record, amap)
    ET.indent(root)
    for el in root.iter():  # a control character in a query would make the KML not well-formed
        if el.text:
            el.text = _printable(el.text)
    text = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    return write_text(path, text)


# ----------------------------------------------------------------------------- JSONL, CSV
def write_answers_jsonl(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    """One JSON object per line (no NaN: ``allow_nan=False`` fails loudly instead)."""
    return write_text(path, answers_jsonl_text(records))


def answers_jsonl_text(records: Sequence[dict[str, Any]]) -> str:
    """One JSON object a line (``globeflow predict``'s default output)."""
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """The words of a record as scalar cells: ``place``/``place_phrase`` (the estimate's nearest
    town) and ``warnings`` ("code: message" joined by " | ")."""
    r = dict(record)
    place = r.pop("place", None)
    if isinstance(place, dict):
        r["place"], r["place_phrase"] = place.get("label"), place.get("phrase")
    if "warnings" in r:
        warn = r.pop("warnings") or []
        r["warnings"] = " | ".join(f"{w['code']}: {w['message']}" if isinstance(w, dict) else str(w) for w in warn)
    return r


def answers_csv_text(records: Sequence[dict[str, Any]]) -> str:
    """CSV with one row per record: the scalar fields (with the estimate's ``place`` and
    ``place_phrase`` and the ``warnings`` as text), ``mode{k}_latitude/longitude/mass/place`` and
    ``country{k}_code/name/probability`` for k = 1…3, and the full lists as JSON cells
    (``modes_json``, ``countries_json``)."""
    records = [_flat(r) for r in records]
    scalar = []
    for r in records:
        for k, v in r.items():
            if not isinstance(v, (list, dict)) and k not in scalar:
                scalar.append(k)
    cols = list(scalar)
    for k in range(1, CSV_TOP + 1):
        cols += [f"mode{k}_latitude", f"mode{k}_longitude", f"mode{k}_mass", f"mode{k}_place"]
    for k in range(1, CSV_TOP + 1):
        cols += [f"country{k}_code", f"country{k}_name", f"country{k}_probability"]
    cols += ["modes_json", "countries_json"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in records:
        row = {k: r.get(k) for k in scalar}
        modes, countries = r.get("modes") or [], r.get("countries") or []
        for k, m in enumerate(modes[:CSV_TOP], start=1):
            row.update(
                {
                    f"mode{k}_latitude": m["latitude"],
                    f"mode{k}_longitude": m["longitude"],
                    f"mode{k}_mass": m["mass"],
                    f"mode{k}_place": m.get("place"),
                }
            )
        for k, c in enumerate(countries[:CSV_TOP], start=1):
            row.update(
                {
                    f"country{k}_code": c["code"],
                    f"country{k}_name": c["name"],
                    f"country{k}_probability": c["probability"],
                }
            )
        row["modes_json"] = json.dumps(modes)
        row["countries_json"] = json.dumps(countries)
        w.writerow({k: csv_cell(v) for k, v in row.items()})
    return buf.getvalue()


def write_answers_csv(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    """Write :func:`answers_csv_text` atomically."""
    return write_text(path, answers_csv_text(records))


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 1.5em .5em 0;font-size:.9em;display:inline-table;vertical-align:top}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;border:1px solid #eee}
.note{color:#666;font-size:.85em}
table.summary{display:table;width:100%;margin:1em 0}.warn,ul.warnings{color:#8a3b00}
p.sentence{font-size:1.05em;font-weight:600}
"""


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


_NUMBER = re.compile(r"^[-–+×]?[\d.,]+(\s?(%|km²|km|bits|s))?( \(.*\))?$|^–$")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; cells that read as numbers ("12.5%", "27,000 km²") are right-aligned."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = ""
    for row in rows:
        cells = "".join(
            f'<td class="num">{html.escape(str(c))}</td>'
            if k and _NUMBER.match(str(c))
            else f"<td>{html.escape(str(c))}</td>"
            for k, c in enumerate(row)
        )
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{th}</tr>{body}</table>"


def _warning_messages(record: dict[str, Any]) -> list[str]:
    return [w.get("message", "") if isinstance(w, dict) else str(w) for w in record.get("warnings") or ()]


def _place_phrase(record: dict[str, Any]) -> str:
    place = record.get("place") or {}
    return place.get("phrase") or f"{record['latitude']:.4f}, {record['longitude']:.4f}"


def _top_country(record: dict[str, Any]) -> str:
    countries = record.get("countries") or []
    return f"{countries[0]['name']} ({100 * countries[0]['probability']:.0f}%)" if countries else "–"


def _summary_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per answer: what a reader needs before the details."""
    head = "".join(f"<th>{h}</th>" for h in ("input", "most likely", "in words", "top country", "how sure", "warnings"))
    body = []
    for k, r in enumerate(records):
        warn = _warning_messages(r)
        cells = [
            f'<a href="#answer-{k}">{html.escape(_label(r))}</a>',
            html.escape(_place_phrase(r)),
            html.escape(r.get("sentence") or ""),
            html.escape(_top_country(r)),
            html.escape(r.get("localizability_category") or "–"),
            "<br>".join(f'<span class="warn">{html.escape(w)}</span>' for w in warn) or "none",
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="summary"><tr>{head}</tr>{"".join(body)}</table>'


def _record_facts(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of one answer's facts table."""
    from globeflow.describe import format_area

    sure = r.get("localizability_category")
    bits = r.get("localizability_bits")
    summary = [
        ("most likely", _place_phrase(r)),
        ("estimate (lat, lon)", f"{r['latitude']:.4f}, {r['longitude']:.4f}"),
        ("how sure", f"{sure}: {r.get('localizability_meaning', '')}" if sure else "–"),
        ("localizability", "–" if bits is None else f"{bits:.1f} bits"),
        ("50% region", "–" if r.get("hpd50_area_km2") is None else format_area(r["hpd50_area_km2"])),
        ("90% region", "–" if r.get("hpd90_area_km2") is None else format_area(r["hpd90_area_km2"])),
        ("regions", "conformally calibrated" if r.get("regions_calibrated") else "model levels (uncalibrated)"),
    ]
    if r.get("true_latitude") is not None:
        summary.append(("true location", f"{r['true_latitude']:.4f}, {r['true_longitude']:.4f}"))
    return summary


def _record_section(k: int, r: dict[str, Any]) -> list[str]:
    """The HTML parts of answer ``k``: heading, sentence, warnings, facts, modes, P(country), map."""
    parts = [f'<h2 id="answer-{k}">{html.escape(_label(r))}</h2>']
    if r.get("sentence"):
        parts.append(f'<p class="sentence">{html.escape(r["sentence"])}</p>')
    warn = _warning_messages(r)
    if warn:
        parts.append('<ul class="warnings">' + "".join(f"<li>{html.escape(w)}</li>" for w in warn) + "</ul>")
    parts.append(_table(["", "value"], _record_facts(r)))
    modes = [
        (
            j,
            m.get("place_phrase") or m.get("place") or "",
            f"{m['latitude']:.3f}, {m['longitude']:.3f}",
            f"{100 * m['mass']:.1f}%",
        )
        for j, m in enumerate(r.get("modes") or [], start=1)
    ]
    parts.append(_table(["place", "near", "lat, lon", "probability"], modes))
    countries = [(c["name"], c["code"], f"{100 * c['probability']:.1f}%") for c in r.get("countries") or []]
    parts.append(_table(["country", "code", "probability"], countries))
    if r.get("map"):
        src = html.escape(Path(r["map"]).as_posix(), quote=True)
        parts.append(f'<p><img src="{src}" alt="density map: {html.escape(_label(r), quote=True)}"></p>')
    return parts


def write_html_report(
    path: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    *,
    title: str = "globeflow answers",
    intro: str = "",
    metrics: dict[str, Any] | None = None,
    metrics_note: str = "",
) -> Path:
    """A self-contained HTML page (no scripts, no network) of :func:`globeflow.describe.answer_record`
    records: a summary table at the top (input, most likely place, the plain sentence, top
    country with its probability, how sure, warnings), then per record its place and
    estimate, the sentence, how sure, the 50/90% region areas, the warnings, the modes with
    their places and P(country) tables, and its map (``record["map"]``, a path relative to the
    page); then ``metrics`` as a table with labels in words
    (:func:`globeflow.describe.metric_rows`)."""
    from globeflow.describe import metric_rows

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    if records:
        parts.append(_summary_table(records))
    for k, r in enumerate(records):
        parts += _record_section(k, r)
    if metrics:
        parts.append("<h2>Held-out evaluation</h2>")
        if metrics_note:
            parts.append(f'<p class="note">{html.escape(metrics_note)}</p>')
        parts.append(_table(["measure", "value"], metric_rows(metrics)))
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))


# ----------------------------------------------------------------------------- all at once
def slugify(text: str, taken: set[str] | None = None) -> str:
    """A file-name-safe, lower-case ASCII slug of ``text``, unique within ``taken`` (updated)."""
    import re
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:60] or "item"
    if taken is not None:
        base, k = slug, 2
        while slug in taken:
            slug, k = f"{base}-{k}", k + 1
        taken.add(slug)
    return slug


def write_answer_files(
    records: list[dict[str, Any]],
    answers: Sequence[Any],
    *,
    map_dir: str | os.PathLike | None = None,
    geojson: str | os.PathLike | None = None,
    kml: str | os.PathLike | None = None,
    log_prob_fns: Sequence[Any] | None = None,
    truths: Sequence[Sequence[float] | None] | None = None,
    link_base: str | os.PathLike | None = None,
    trajectories: Sequence[np.ndarray | None] | None = None,
    width_px: int = 1400,
    progress: bool = False,
) -> list[Any]:
    """Maps, GeoJSON and KML of ``answers`` (one per record): draws ``map_dir``/<slug>.png for
    each (recording its path in ``record["map"]``, relative to ``link_base`` when given) and
    writes ``geojson``/``kml``. Returns the :class:`~globeflow.viz.answer_maps.AnswerMap` of
    each answer (None when nothing asked). Per answer, optionally: ``log_prob_fns``, the
    model's exact log-density (exact maps instead of the samples' kernel estimate);
    ``trajectories`` (T + 1, N, 2), denoising paths drawn on the map (both from
    :func:`globeflow.answers.answer_map_inputs`); ``width_px``: the world panel's width;
    ``progress``: a tqdm bar of the maps on stderr."""
    from tqdm.auto import tqdm

    from globeflow.describe import map_annotations
    from globeflow.viz.answer_maps import answer_map, plot_answer_map

    if map_dir is None and geojson is None and kml is None:
        return [None] * len(answers)
    maps, taken = [], set()
    bar = tqdm(zip(records, answers), total=len(answers), desc="maps", unit="map", disable=not progress)
    for i, (record, ans) in enumerate(bar):
        amap = answer_map(ans, log_prob_fn=None if log_prob_fns is None else log_prob_fns[i])
        maps.append(amap)
        if map_dir is not None:
            png = Path(map_dir) / f"{slugify(_label(record), taken)}.png"
            truth = None if truths is None else truths[i]
            paths = None if trajectories is None else trajectories[i]
            place = (record.get("place") or {}).get("phrase")
            title = f"{_label(record)}: most likely {place}" if place else _label(record)
            # The words and marks (legend, towns, scale bar) come from globeflow.describe; viz draws.
            zoom = amap.zoom
            extent = None if zoom is None else (zoom.lat[0], zoom.lat[-1], zoom.lon[0], zoom.lon[-1])
            words = map_annotations(extent, kind=amap.kind, calibrated=bool(record.get("regions_calibrated")))
            plot_answer_map(
                ans, amap, png, truth=truth, title=title, trajectories=paths, width_px=width_px, annotations=words
            )
            record["map"] = os.path.relpath(png, link_base) if link_base is not None else str(png)
    if geojson is not None:
        text = json.dumps(answers_geojson(records, maps), separators=(",", ":"), allow_nan=False)
        write_text(geojson, text + "\n")
    if kml is not None:
        write_kml(kml, records, maps)
    return maps
