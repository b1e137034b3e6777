"""``globeflow predict`` and ``globeflow density`` as library pipelines, with their terminal text.

- :func:`predict_answers`: texts or photos → embeddings → :class:`~globeflow.answers.Answer`
  records (the rows of predict's JSONL/CSV), with maps, GeoJSON and KML on request; each
  answer in words (:func:`globeflow.describe.format_answer_text`) goes to its ``report``.
- :func:`density_row_report`: the density map, credible regions and localizability of one
  row of a file (through :func:`globeflow.viz.report.density_report`, like every density map);
  :func:`format_density_summary` is its terminal text.

Bad input raises ``ValueError`` (or ``DataError``) naming the option; nothing here parses
arguments or prints to stdout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ANSWER_SAMPLES",
    "PredictedAnswers",
    "density_row_report",
    "format_density_summary",
    "predict_answers",
]


#: Samples per answer of ``globeflow predict --text/IMAGE`` (``--samples``): the library's
#: :data:`globeflow.answers.ANSWER_SAMPLES`, repeated here because that module imports torch
#: and the CLI's ``--help`` must not (a test keeps the two equal).
ANSWER_SAMPLES = 256


@dataclass
class PredictedAnswers:
    """What :func:`predict_answers` made: one JSON-ready ``records`` dict per input (skipped
    photos keep their ``error``), the indices ``good`` of the answered ones, and the names of
    the model and the encoder."""

    records: list[dict[str, Any]]
    good: list[int]
    model: str
    encoder: str | None
    answers: list[Any] = field(default_factory=list)


def predict_answers(
    model: str | os.PathLike | None,
    *,
    texts: Sequence[str] | None = None,
    images: Sequence[str] | None = None,
    encoder: str | None = None,
    encoder_path: str | None = None,
    device: str = "cpu",
    num_samples: int | None = None,
    guidance: float = 0.0,
    seed: int = 0,
    density_steps: int = 8,
    calibrated: bool = True,
    map_dir: str | os.PathLike | None = None,
    geojson: str | os.PathLike | None = None,
    kml: str | os.PathLike | None = None,
    trajectories: int = 0,
    exact_maps: bool = False,
    report: Callable[[str], None] | None = None,
    progress: bool = True,
) -> PredictedAnswers:
    """Answers of ``model`` (a run directory, PLONK checkpoint, ``hf:ORG/NAME``; None: the
    shipped model) for ``texts`` or, without them, ``images``, embedded by ``encoder`` (default:
    the model's). ``map_dir`` (claimed as globeflow's output folder), ``geojson`` and ``kml``
    are written when given; ``trajectories`` denoising paths are drawn on each map.
    ``num_samples`` None: :data:`ANSWER_SAMPLES`. ``report`` receives one line per skipped
    photo and each answer in words (:func:`globeflow.describe.format_answer_text`, its
    warnings included); ``progress``: tqdm bars of the sampling and
    the maps on stderr."""
    from globeflow.answers import answer, answer_map_inputs
    from globeflow.api import load
    from globeflow.embed import encode_inputs
    from globeflow.pretrained import model_or_default
    from globeflow.runs import model_encoder, model_encoder_source
    from globeflow.viz.outputs import write_answer_files

    model_ref = model_or_default(model)
    method = load(model_ref, device=device)
    source = encoder_path
    if source is None and images and not texts:  # the weights the training photos were embedded with
        source = model_encoder_source(model_ref, encoder or model_encoder(model_ref, method))
    inputs = encode_inputs(
        method, model_ref, texts=texts, images=images, encoder=encoder, source=source, device=device, report=report
    )
    emb, good, records = inputs.embeddings, inputs.good, inputs.records
    answers: list[Any] = []
    if good:
        if map_dir is not None:
            from globeflow.io import claim_output_dir

            claim_output_dir(map_dir)
        answers = answer(
            method,
            emb,
            num_samples=ANSWER_SAMPLES if num_samples is None else num_samples,
            guidance=guidance,
            seed=seed,
            density_steps=density_steps,
            calibration="auto" if calibrated else None,
            progress=progress,
        )
        from globeflow.describe import explain_answers

        # Warnings, place names and the plain sentence into each record; each answer in words
        # (its warnings included) to `report`.
        answers = explain_answers(
            answers,
            [records[j] for j in good],
            texts=list(texts) if texts else None,
            embeddings=emb,
            model_dir=model_ref,
            report=report,
            method=method,
        )
        answered = [records[j] for j in good]
        truths = [(r["exif_latitude"], r["exif_longitude"]) if "exif_latitude" in r else None for r in answered]
        paths = trajectories if map_dir is not None else 0
        from_model = answer_map_inputs(method, emb, exact=exact_maps, log_prob_steps=density_steps, trajectories=paths)
        files = {"map_dir": map_dir, "geojson": geojson, "kml": kml}
        write_answer_files(answered, answers, **files, truths=truths, **from_model, progress=progress)
    for r in records:
        r.update(model=str(model_ref), encoder=inputs.encoder)
    return PredictedAnswers(records, list(good), str(model_ref), inputs.encoder, answers)


def density_row_report(
    model: str | os.PathLike,
    data: str | os.PathLike,
    row: int,
    *,
    out_png: str | os.PathLike,
    geojson: str | os.PathLike | None = None,
    raster: str | os.PathLike | None = None,
    resolution_deg: float = 1.0,
    levels: Sequence[float] = (0.5, 0.9, 0.95),
    num_samples: int = 1000,
    steps: int = 32,
    guidance: float = 0.0,
    seed: int = 0,
    calibrated: bool = True,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """The density report of row ``row`` of ``data`` under ``model`` (``globeflow density``):
    the PNG map ``out_png``, the regions as GeoJSON / ESRI ASCII grid when asked, and the
    summary of :func:`globeflow.viz.report.density_report` (with ``truth`` when the row has
    coordinates). ``steps`` RK4 steps serve both the samples and the map's exact log p;
    ``progress``: tqdm bars of those likelihood solves on stderr."""
    import numpy as np

    from globeflow.api import load
    from globeflow.data import read_dataset
    from globeflow.data.dataset import MAX_EMBEDDING_ABS
    from globeflow.viz.report import density_report

    method = load(model, device=device)
    if method.density_space != "S2":
        raise ValueError(
            f"method {method.name!r} has no density on the sphere (density_space={method.density_space!r})"
        )
    rows = read_dataset(data, require_coords=False, expected_dim=method.embedding_dim, max_abs=MAX_EMBEDDING_ABS)
    if not 0 <= row < len(rows):
        raise ValueError(f"--row: {row} is out of range for {data} ({len(rows)} rows)")
    truth = None
    if rows.latitude is not None and np.isfinite(rows.latitude[row]):
        truth = (float(rows.latitude[row]), float(rows.longitude[row]))
    return density_report(
        method,
        rows.embeddings[row : row + 1],
        out_png=out_png,
        geojson=geojson,
        ascii_grid=raster,
        truth=truth,
        resolution_deg=resolution_deg,
        levels=levels,
        num_samples=num_samples,
        seed=seed,
        guidance=guidance,
        title=f"{Path(model).name}: row {row}",
        log_prob_options={"steps": steps, "progress": progress},
        sample_options={"sample_steps": steps, "progress": progress},
        properties={"row": row, "model": str(model)},
        calibration="auto" if calibrated else None,
    )


def format_density_summary(
    summary: dict[str, Any],
    *,
    num_samples: int,
    out_png: str | os.PathLike,
    geojson: str | os.PathLike | None = None,
    raster: str | os.PathLike | None = None,
) -> str:
    """The terminal text of ``globeflow density`` for the ``summary`` of
    :func:`density_row_report` (estimate, localizability, log p of the truth, each region's
    area and whether it holds the truth, the files written)."""
    estimate, loc = summary["estimate"], summary["localizability"]
    lines = [
        f"estimate (densest of {num_samples} samples): {estimate[0]:.4f}, {estimate[1]:.4f}",
        f"localizability: {loc['bits']:.2f} ± {loc['stderr']:.2f} bits",
    ]
    truth = summary.get("truth")
    if truth is not None:
        lines.append(f"log p(true location) = {truth['log_prob']:.3f} nats/sr")
    for r in summary["regions"]:
        inside = ""
        if truth is not None:
            contains = truth["log_prob"] >= r["threshold_log_prob"]
            inside = "  (contains the true location)" if contains else "  (misses the true location)"
        lines.append(f"{100 * r['level']:.0f}% credible region: {r['area_km2']:.4g} km²{inside}")
    lines.append(f"regions: {summary['calibration'] or 'uncalibrated (the model levels)'}")
    lines.append(f"map: {out_png} ({summary['num_evaluations']} exact evaluations, {summary['map_seconds']:.1f} s)")
    if geojson:
        lines.append(f"regions: {geojson}")
    if raster:
        lines.append(f"raster: {raster}")
    return "\n".join(lines)
