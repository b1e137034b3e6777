"""Evaluating a run: point-estimate metrics (Table 1), generative metrics (Appendix C) and
probabilistic metrics (Table 2) of a method on a file with true locations, and their tables."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from globeflow.data import GeoDataset
    from globeflow.methods import Method

__all__ = [
    "DENSITY_KEYS",
    "POINT_KEYS",
    "PRDC_KEYS",
    "UNCOND_PRDC_KEYS",
    "check_predictions",
    "estimate_guidance",
    "estimate_strategy",
    "evaluate_run",
    "format_metrics",
    "format_table",
    "format_value",
    "heldout_metrics",
    "prdc_samples",
]


def _truth_keys(data):
    """Administrative keys of the truth from the dataset's own labels (OSV-5M columns), if it has them."""
    from globeflow.metrics.admin import keys_from_labels

    if all(c in data.extra for c in ("country", "region", "city")):
        return keys_from_labels(
            {c: data.extra[c] for c in ("country", "region", "sub-region", "city") if c in data.extra}
        )
    return None


def prdc_samples(model: Method, emb: np.ndarray, options: dict, *, guidance: float, unconditional: bool = False) -> np.ndarray:
    """Model locations Y (N, 2) for the generative metrics (Appendix C), N = len(emb).

    Conditional protocol: one draw from p(y | c_i) per test embedding c_i at guidance ω; pooled,
    they are a sample of the model's marginal over the test images, scored against the true
    test locations X. ``unconditional``: N draws from the null condition (the zero embedding the
    model saw under condition dropout), the model's own unconditional distribution.
    """
    sample_opts = {k: v for k, v in options.items() if k not in ("strategy", "guidance")}
    if not unconditional:
        return model.sample(emb, 1, guidance=guidance, **sample_opts)[:, 0]
    if float(getattr(model, "cond_drop", 0.0)) <= 0.0:
        raise ValueError(
            f"--prdc-unconditional: method {model.name!r} was not trained with condition dropout, "
            "so it has no unconditional distribution"
        )
    null = np.zeros((1, emb.shape[1]), dtype=np.float32)
    return model.sample(null, len(emb), guidance=0.0, **sample_opts)[0]


def check_predictions(pred: np.ndarray, source: object, model: object = None) -> np.ndarray:
    """``pred`` (N, 2) unchanged if every row is finite; else a ``ValueError`` naming the rows
    (a model that answers NaN says so instead of writing NaN coordinates)."""
    bad = np.flatnonzero(~np.isfinite(pred).all(axis=1))
    if bad.size:
        shown = ", ".join(str(int(r)) for r in bad[:10]) + (f", … ({bad.size} in all)" if bad.size > 10 else "")
        name = getattr(model, "name", "the model")
        raise ValueError(
            f"{name} produced NaN/inf estimates for row(s) {shown} of {source} "
            "(diverged or corrupt weights, or inputs far from the training data)"
        )
    return pred


def estimate_strategy(model: Method, strategy: str | None) -> str:
    """``strategy``, or the method's own estimate (what ``model.predict`` and so ``globeflow
    predict`` give without one): ``mbr`` for the generative methods, ``mode`` for vmf/mvmf,
    ``center`` for locdiffusion, ``sample`` otherwise."""
    if strategy is not None:
        return strategy
    import inspect

    # A predict that names its own default wins over the class attribute (an override that
    # predates ``default_strategy``); predict(strategy=None) resolves to the attribute.
    param = inspect.signature(model.predict).parameters.get("strategy")
    if param is not None and isinstance(param.default, str):
        return param.default
    return str(getattr(model, "default_strategy", "sample"))


def estimate_guidance(model: Method, strategy: str, guidance: float | None) -> float:
    """``guidance``, or the ω ``model.predict`` uses for ``strategy`` without one (0 for mbr,
    2 for one sample: :meth:`~globeflow.methods.Method.estimate_guidance`)."""
    if guidance is not None:
        return float(guidance)
    own = getattr(model, "estimate_guidance", None)
    return float(own(strategy)) if callable(own) else 2.0


def evaluate_run(
    model_dir: str | Path | Method,
    data_path: str | Path,
    options: dict,
    *,
    device: str = "cpu",
    density: dict | None = None,
    prdc: dict | None = None,
    rows: int | None = None,
    progress: bool = True,
) -> dict:
    """Metrics of ``model_dir`` (a run directory, or an already loaded method) on ``data_path``
    (which must have coordinates), or on its first ``rows`` rows.

    Always: the point-estimate metrics (GeoScore, distances, accuracies at radii) and the
    administrative accuracies (truth from the file's ``country``/``region``/``sub-region``/
    ``city`` columns when present, else reverse-geocoded). ``prdc``: ``{"guidance": ω or None,
    "unconditional": bool}`` for precision/recall/density/coverage (None: ω of the point
    estimate, whose samples are reused when ``strategy == "sample"``); ``False`` skips them.
    ``density``: options of :func:`globeflow.metrics.density_metrics` (plus ``rows``, to compute
    them on the first rows only); None skips the probabilistic metrics.
    """
    from globeflow.api import load
    from globeflow.methods import Method
    from globeflow.metrics import admin_accuracy, distance_metrics

    if rows is not None and rows < 1:
        raise ValueError(f"rows: expected a positive number of rows, got {rows}")
    model = model_dir if isinstance(model_dir, Method) else load(model_dir, device=device)
    # One code path with ``globeflow predict``: the same estimate (the method's own unless a
    # strategy is given) is scored; the settings record which one it was.
    # The defaults are resolved here, as predict resolves them, so that the metrics (and the
    # generative metrics, which reuse ω) record the estimate that was scored.
    options = dict(options)
    options["strategy"] = estimate_strategy(model, options.get("strategy"))
    options["guidance"] = estimate_guidance(model, options["strategy"], options.get("guidance"))
    data = _first_rows(data_path, model.embedding_dim, rows)
    truth = np.stack([data.latitude, data.longitude], axis=1)
    start = time.perf_counter()
    pred = check_predictions(model.predict(data.embeddings, **options, progress=progress), data_path, model)
    elapsed = time.perf_counter() - start
    metrics = distance_metrics(pred, truth)
    true_keys = _truth_keys(data)
    metrics.update(admin_accuracy(pred, truth, true_keys=true_keys))
    metrics["admin_truth"] = "labels" if true_keys is not None else "reverse_geocoded"
    metrics["predict_seconds"] = elapsed
    metrics["strategy"] = options["strategy"]
    metrics["guidance"] = options["guidance"]
    if prdc is not False:
        start = time.perf_counter()
        metrics.update(_prdc_metrics(model, data.embeddings, truth, pred, options, dict(prdc or {}), label=model_dir))
        metrics["prdc_seconds"] = time.perf_counter() - start
    if density is not None:
        from globeflow.metrics import density_metrics

        if model.density_space is None:
            raise ValueError(f"--density: method {model.name!r} has no likelihood")
        density = dict(density)
        rows = density.pop("rows", None) or len(truth)
        start = time.perf_counter()
        metrics.update(density_metrics(model, data.embeddings[:rows], truth[:rows], **density))
        metrics["density_seconds"] = time.perf_counter() - start
    return metrics


def _first_rows(data_path: str | Path, embedding_dim: int, rows: int | None) -> GeoDataset:
    """The file's rows with coordinates (all, or the first ``rows``)."""
    from globeflow.data import read_dataset
    from globeflow.data.dataset import MAX_EMBEDDING_ABS

    data = read_dataset(data_path, require_coords=True, expected_dim=embedding_dim, max_abs=MAX_EMBEDDING_ABS)
    if rows is None:
        return data
    first = slice(0, rows)
    return dataclasses.replace(
        data,
        embeddings=data.embeddings[first],
        latitude=data.latitude[first],
        longitude=data.longitude[first],
        extra={c: v[first] for c, v in data.extra.items()},
    )


def _prdc_metrics(
    model: Method, emb: np.ndarray, truth: np.ndarray, pred: np.ndarray, options: dict, prdc: dict, *, label: object
) -> dict:
    """Precision/recall/density/coverage of one draw per embedding at ω (the point estimates
    themselves when they are such draws), and of the null condition on request."""
    from globeflow.metrics import prdc_latlon

    guidance = prdc.get("guidance")
    guidance = options["guidance"] if guidance is None else guidance
    if options["strategy"] == "sample" and guidance == options["guidance"]:
        fake = pred  # the point estimates are already one draw per embedding at this ω
    else:
        fake = prdc_samples(model, emb, options, guidance=guidance)
    metrics = {k: v for k, v in prdc_latlon(truth, fake).items() if k not in ("n_real", "n_fake")}
    metrics["prdc_guidance"] = float(guidance)
    if prdc.get("unconditional") and float(getattr(model, "cond_drop", 0.0)) <= 0.0 and prdc.get("lenient"):
        # compare: a run without condition dropout gets "–" in the uncond_* columns.
        print(f"{label}: no unconditional distribution (no condition dropout); uncond_* left out", file=sys.stderr)
    elif prdc.get("unconditional"):
        fake = prdc_samples(model, emb, options, guidance=0.0, unconditional=True)
        uncond = prdc_latlon(truth, fake)
        metrics.update({f"uncond_{k}": uncond[k] for k in PRDC_KEYS})
    return metrics


#: Columns of the point-estimate table (Table 1 of the paper, with the radii of its YFCC part).
POINT_KEYS = [
    "geoscore",
    "distance_km",
    "median_distance_km",
    "acc_country",
    "acc_region",
    "acc_city",
    "acc_1km",
    "acc_25km",
    "acc_200km",
    "acc_750km",
    "acc_2500km",
    "n",
]
#: Columns of the probabilistic table (Table 2 of the paper, with calibration).
DENSITY_KEYS = [
    "nll",
    "localizability_mean",
    "hpd50_coverage",
    "hpd90_coverage",
    "hpd95_coverage",
    "hpd90_area_km2_median",
]
#: Generative metrics (Appendix C, Table B); ``uncond_*`` for the null-condition variant.
PRDC_KEYS = ["precision", "recall", "density", "coverage"]
UNCOND_PRDC_KEYS = [f"uncond_{k}" for k in PRDC_KEYS]


def format_value(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "n" or key == "n_density":
        return str(value)
    if key in PRDC_KEYS or key in UNCOND_PRDC_KEYS:
        return f"{value:.3f}"
    if key.startswith("acc_") or key.endswith("_coverage"):
        return f"{100 * value:.1f}%"
    if key == "nll":
        return f"{value:.4f}"
    if key.endswith("area_km2_median"):
        return f"{value:.4g}"
    return f"{value:.2f}" if key == "localizability_mean" else f"{value:.1f}"


def _table(keys: list[str], rows: list[tuple[str, dict]]) -> str:
    head = "| " + " | ".join(["model"] + keys) + " |"
    sep = "|" + "---|" * (len(keys) + 1)
    lines = [head, sep]
    for title, metrics in rows:
        cells = [format_value(k, metrics.get(k)) for k in keys]
        lines.append("| " + " | ".join([title or "model"] + cells) + " |")
    return "\n".join(lines)


def format_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown tables of several runs, one row each: Table 1 (point estimates) and, for the
    keys any run has, Table 2 (probabilistic and generative metrics)."""
    out = _table(POINT_KEYS, rows)
    present = lambda keys: [k for k in keys if any(k in m for _, m in rows)]
    pkeys = present(DENSITY_KEYS) + present(PRDC_KEYS) + present(UNCOND_PRDC_KEYS)
    if pkeys:
        if present(DENSITY_KEYS):
            pkeys.append("n_density")
        out += "\n\n" + _table(pkeys, rows)
    return out


def format_metrics(metrics: dict, title: str = "") -> str:
    """Markdown tables in the style of the paper's Table 1 (and Table 2 when densities are present)."""
    return format_table([(title, metrics)])


def heldout_metrics(
    model: Method,
    path: str | Path,
    *,
    rows: int,
    density_rows: int,
    seed: int = 0,
    density_steps: int = 8,
    density_samples: int = 32,
) -> dict:
    """GeoScore, distances and country accuracy of the method's own point estimates (those of
    ``predict``: MBR at ω = 0 for the generative methods; 16 steps) on the first ``rows`` rows of a held-out file, and the NLL, localizability and HPD
    coverage on the first ``density_rows`` of them (``density_samples`` samples each,
    ``density_steps`` RK4 steps). Coverage counts the truth's HPD rank among the samples, so a
    calibrated model expects hpd90_coverage = 0.90 even from 32 samples; the regions are the
    run's conformally calibrated ones when it has a calibration.json."""
    density = None
    if density_rows > 0 and model.density_space == "S2":
        density = {"rows": density_rows, "num_samples": density_samples, "seed": seed, "steps": density_steps}
    options = {"guidance": None, "sample_steps": None, "seed": seed}
    metrics = evaluate_run(model, path, options, density=density, prdc=False, rows=rows, progress=False)
    # The demo's table shows the point metrics it explains and the calibration of its regions.
    dropped = ("acc_city", "admin_truth", "log_prob_mean", "density_space", "density_samples", "hpd95_coverage")
    return {k: v for k, v in metrics.items() if k not in dropped}
