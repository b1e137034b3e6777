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
    "run_titles",
    "chunk_seed",
    "compare_runs",
    "predict_file",
    "prdc_samples",
]


_LABELS = ("country", "region", "sub-region", "city")


def _labels(data) -> dict[str, np.ndarray] | None:
    """The dataset's own administrative labels (OSV-5M columns), if it has them."""
    if all(c in data.extra for c in ("country", "region", "city")):
        return {c: data.extra[c] for c in _LABELS if c in data.extra}
    return None


def _truth_keys(labels: list[dict[str, np.ndarray] | None]):
    """Administrative keys of the truth from the labels of every chunk, or None."""
    from globeflow.metrics.admin import keys_from_labels

    if not labels or any(part is None for part in labels):
        return None
    return keys_from_labels({c: np.concatenate([part[c] for part in labels]) for c in labels[0]})


def prdc_samples(
    model: Method, emb: np.ndarray, options: dict, *, guidance: float, unconditional: bool = False
) -> np.ndarray:
    """Model locations Y (N, 2) for the generative metrics (Appendix C), N = len(emb).

    Conditional protocol: one draw from p(y | c_i) per test embedding c_i at guidance ω; pooled,
    they are a sample of the model's marginal over the test images, scored against the true
    test locations X. ``unconditional``: N draws from the null condition (the zero embedding the
    model saw under condition dropout), the model's own unconditional distribution.
    """
    sample_opts = {k: v for k, v in options.items() if k not in ("strategy", "guidance")}
    if not unconditional:
        return model.sample(emb, 1, guidance=guidance, **sample_opts)[:, 0]
    if not model.has_unconditional:
        raise ValueError(
            f"--prdc-unconditional: method {model.name!r} was not trained with condition dropout, "
            "so it has no unconditional distribution"
        )
    null = np.zeros((1, emb.shape[1]), dtype=np.float32)
    return model.sample(null, len(emb), guidance=0.0, **sample_opts)[0]


def check_predictions(pred: np.ndarray, source: object, model: object = None, *, start: int = 0) -> np.ndarray:
    """``pred`` (N, 2) unchanged if every row is finite; else a ``ValueError`` naming the rows
    (a model that answers NaN says so instead of writing NaN coordinates). ``start``: the row
    of ``source`` that ``pred[0]`` estimates (a chunk of a streamed file)."""
    bad = start + np.flatnonzero(~np.isfinite(pred).all(axis=1))
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
    prdc, prdc_guidance, reuse, uncond = _prdc_plan(model, model_dir, options, prdc)
    density, density_rows = _density_plan(model, density)

    # One pass over the file, chunk by chunk: memory is a chunk of embeddings plus, per row,
    # the coordinates (truth, estimate, PRDC draws) and the label keys, never all embeddings.
    preds, truths, keys, fakes, nulls, dens_emb = [], [], [], [], [], []
    predict_seconds = prdc_seconds = 0.0
    seen = 0
    for i, chunk in enumerate(_chunks(data_path, model.embedding_dim, rows)):
        opts = {**options, "seed": chunk_seed(options.get("seed", 0), i)}
        start = time.perf_counter()
        pred = model.predict(chunk.embeddings, **opts, progress=progress)
        preds.append(check_predictions(pred, data_path, model, start=seen))  # names the file's rows
        predict_seconds += time.perf_counter() - start
        truths.append(np.stack([chunk.latitude, chunk.longitude], axis=1))
        keys.append(_labels(chunk))
        start = time.perf_counter()
        if prdc is not False and not reuse:
            fakes.append(prdc_samples(model, chunk.embeddings, opts, guidance=prdc_guidance))
        if uncond:
            nulls.append(prdc_samples(model, chunk.embeddings, opts, guidance=0.0, unconditional=True))
        prdc_seconds += time.perf_counter() - start
        if density is not None and (density_rows is None or seen < density_rows):
            dens_emb.append(chunk.embeddings[: None if density_rows is None else density_rows - seen])
        seen += len(chunk)
    if not preds:
        raise ValueError(f"{data_path}: no rows to evaluate")
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    metrics = distance_metrics(pred, truth)
    true_keys = _truth_keys(keys)
    metrics.update(admin_accuracy(pred, truth, true_keys=true_keys))
    metrics["admin_truth"] = "labels" if true_keys is not None else "reverse_geocoded"
    metrics["predict_seconds"] = predict_seconds
    metrics["strategy"] = options["strategy"]
    metrics["guidance"] = options["guidance"]
    if prdc is not False:
        start = time.perf_counter()
        metrics.update(_prdc_metrics(truth, pred if reuse else np.concatenate(fakes), nulls, prdc_guidance))
        metrics["prdc_seconds"] = prdc_seconds + time.perf_counter() - start
    if density is not None:
        from globeflow.metrics import density_metrics

        emb = np.concatenate(dens_emb)
        start = time.perf_counter()
        metrics.update(density_metrics(model, emb, truth[: len(emb)], **density, progress=progress))
        metrics["density_seconds"] = time.perf_counter() - start
    return metrics


def _prdc_plan(model: Method, model_dir: object, options: dict, prdc: dict | bool | None) -> tuple:
    """How :func:`evaluate_run` scores the generative metrics: (``prdc`` as a dict, or False to
    skip them; ω of the scored samples — ``prdc["guidance"]``, else the estimate's; whether
    the point estimates themselves are those samples (one sample at that ω); whether the
    unconditional variant is scored). A run without an unconditional distribution skips that
    variant with a note when ``prdc["lenient"]`` (compare), else the method raises."""
    prdc = False if prdc is False else dict(prdc or {})
    guidance = options.get("guidance", 2.0)
    asked = None if prdc is False else prdc.get("guidance")
    reuse = prdc is not False and options.get("strategy", "sample") == "sample" and asked in (None, guidance)
    uncond = prdc is not False and bool(prdc.get("unconditional"))
    if uncond and not model.has_unconditional and prdc.get("lenient"):
        # compare: a run without condition dropout gets "–" in the uncond_* columns.
        print(f"{model_dir}: no unconditional distribution (no condition dropout); uncond_* left out", file=sys.stderr)
        uncond = False
    return prdc, guidance if asked is None else asked, reuse, uncond


def _density_plan(model: Method, density: dict | None) -> tuple[dict | None, int | None]:
    """The options of :func:`globeflow.metrics.density_metrics` and the rows they cover (None:
    all), from :func:`evaluate_run`'s ``density`` (None: no probabilistic metrics)."""
    if density is None:
        return None, None
    if model.density_space is None:
        raise ValueError(f"--density: method {model.name!r} has no likelihood")
    density = dict(density)
    return density, density.pop("rows", None)


#: Rows read at a time by :func:`evaluate_run` and :func:`predict_file` (64 MiB at D = 1024).
CHUNK_ROWS = 16_384


def chunk_seed(seed: int, chunk: int) -> int:
    """Seed of the ``chunk``-th chunk of a file: ``seed`` itself for the first, so that a file
    of one chunk gives what ``Method.predict`` gives on the whole array."""
    if chunk == 0:
        return int(seed)
    import hashlib

    return int.from_bytes(hashlib.sha256(repr((int(seed), "chunk", chunk)).encode()).digest()[:8], "little") >> 1


def _chunks(data_path: str | Path, embedding_dim: int, rows: int | None):
    """The file's rows with coordinates in chunks (all, or the first ``rows``), range-checked
    (:data:`~globeflow.data.dataset.MAX_EMBEDDING_ABS`) as they are fed to a model."""
    from globeflow.data.dataset import MAX_EMBEDDING_ABS
    from globeflow.data.stream import iter_chunks

    left = rows
    chunks = iter_chunks(
        data_path,
        require_coords=True,
        expected_dim=embedding_dim,
        chunk_rows=CHUNK_ROWS,
        max_abs=MAX_EMBEDDING_ABS,
        exact=True,  # chunk i: rows [i * CHUNK_ROWS, ...) whatever the layout, as predict_file
    )
    for chunk in chunks:
        if left is not None and len(chunk) > left:
            chunk = dataclasses.replace(
                chunk,
                embeddings=chunk.embeddings[:left],
                latitude=chunk.latitude[:left],
                longitude=chunk.longitude[:left],
                extra={c: v[:left] for c, v in chunk.extra.items()},
            )
        yield chunk
        if left is not None:
            left -= len(chunk)
            if left <= 0:
                return


def predict_file(
    model: Method,
    data_path: str | Path,
    out: str | Path,
    options: dict,
    *,
    chunk_rows: int | None = None,
    progress: bool = True,
) -> int:
    """Point estimates for every row of ``data_path`` written to the Parquet file ``out``, chunk
    by chunk: every input column but the embedding (an ``id``..., ``latitude``/``longitude``
    when present), then ``pred_latitude``/``pred_longitude``. Memory: one chunk, whatever the
    rows. Returns the rows. Chunk ``i`` (rows ``[i * chunk_rows, (i + 1) * chunk_rows)``,
    whatever the file's row groups) is sampled with :func:`chunk_seed` ``(seed, i)``;
    ``chunk_rows`` (default :data:`CHUNK_ROWS`, as :func:`evaluate_run` reads) must equal
    evaluate's for the two to score and write the same estimates.

    Checks, chunk by chunk, as the file is read: embeddings within
    :data:`~globeflow.data.dataset.MAX_EMBEDDING_ABS` and finite estimates
    (:func:`check_predictions`); a ``DataError``/``ValueError`` names the file's row.
    Written atomically (:func:`globeflow.io.atomic_write`: a temporary file beside ``out``,
    with page checksums, renamed at the end): a failure or a kill leaves ``out`` as it was.
    Whether ``out`` may be written at all (never an input, ``--overwrite``) is the caller's
    check (:func:`globeflow.io.check_outputs`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from globeflow.data.dataset import MAX_EMBEDDING_ABS
    from globeflow.data.parquet import fixed_size_list
    from globeflow.data.stream import iter_chunks
    from globeflow.io import atomic_write

    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        writer = None
        chunks = iter_chunks(
            data_path,
            require_coords=False,
            expected_dim=model.embedding_dim,
            chunk_rows=CHUNK_ROWS if chunk_rows is None else chunk_rows,
            max_abs=MAX_EMBEDDING_ABS,
            exact=True,  # a row's estimate: a function of (seed, its row), not of row groups
        )
        try:
            for i, chunk in enumerate(tqdm(chunks, desc="predict", unit="chunk", disable=not progress)):
                opts = {**options, "seed": chunk_seed(options.get("seed", 0), i)}
                pred = check_predictions(model.predict(chunk.embeddings, **opts), data_path, model, start=rows)
                cols = {
                    k: (fixed_size_list(np.ascontiguousarray(v)) if v.ndim == 2 else pa.array(v))
                    for k, v in chunk.extra.items()
                }
                if chunk.latitude is not None:
                    cols["latitude"], cols["longitude"] = pa.array(chunk.latitude), pa.array(chunk.longitude)
                cols["pred_latitude"], cols["pred_longitude"] = pa.array(pred[:, 0]), pa.array(pred[:, 1])
                table = pa.table(cols)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, write_page_checksum=True)
                elif table.schema != writer.schema:
                    raise ValueError(
                        f"{data_path}: rows {rows}.. have columns {table.schema.names}, "
                        f"earlier rows {writer.schema.names}"
                    )
                writer.write_table(table)
                rows += len(pred)
            if writer is None:
                raise ValueError(f"{data_path}: no rows to predict")
        finally:
            if writer is not None:
                writer.close()

    atomic_write(out, write)
    return rows


def _prdc_metrics(truth: np.ndarray, fake: np.ndarray, nulls: list[np.ndarray], guidance: float) -> dict:
    """Precision/recall/density/coverage of one draw per embedding at ω (``fake``: the point
    estimates themselves when they are such draws), and of the null condition's draws."""
    from globeflow.metrics import prdc_latlon

    metrics = {k: v for k, v in prdc_latlon(truth, fake).items() if k not in ("n_real", "n_fake")}
    metrics["prdc_guidance"] = float(guidance)
    if nulls:
        uncond = prdc_latlon(truth, np.concatenate(nulls))
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

    def present(keys: list[str]) -> list[str]:
        return [k for k in keys if any(k in m for _, m in rows)]

    pkeys = present(DENSITY_KEYS) + present(PRDC_KEYS) + present(UNCOND_PRDC_KEYS)
    if pkeys:
        if present(DENSITY_KEYS):
            pkeys.append("n_density")
        out += "\n\n" + _table(pkeys, rows)
    return out


def format_metrics(metrics: dict, title: str = "") -> str:
    """Markdown tables in the style of the paper's Table 1 (and Table 2 when densities are present)."""
    return format_table([(title, metrics)])


def run_titles(models: list[str]) -> list[str]:
    """Short, distinct row titles of runs: the run folder's name, else its path."""
    names = [Path(m.rstrip("/")).name or m for m in models]
    return [n if names.count(n) == 1 else m for n, m in zip(names, models)]


def compare_runs(
    models: list[str],
    data_path: str | Path,
    options: dict,
    *,
    device: str = "cpu",
    density: dict | None = None,
    prdc: dict | bool = False,
    report=None,
    progress: bool = True,
) -> tuple[str, dict]:
    """:func:`evaluate_run` of each run of ``models`` on ``data_path`` with the same ``options``
    and seeds (``globeflow compare``). Returns the Markdown table (:func:`format_table`, one row
    per run) and its JSON record ``{"settings": ..., "runs": {model: {"title", "metrics"}}}``.
    A run without an unconditional distribution gets "–" in the uncond_* columns instead of an
    error. ``report`` receives one line per run as it finishes."""
    if prdc:
        prdc = {**prdc, "lenient": True}
    rows = []
    for title, model in zip(run_titles(models), models):
        metrics = evaluate_run(
            model, data_path, options, device=device, density=density, prdc=prdc, progress=progress
        )
        rows.append((title, metrics))
        if report is not None:
            report(f"{title}: GeoScore {metrics['geoscore']:.1f}")
    runs = {m: {"title": t, "metrics": r} for (t, r), m in zip(rows, models)}
    settings = {**options, **({"density": density} if density else {}), "prdc": prdc, "data": str(data_path)}
    return format_table(rows), {"settings": settings, "runs": runs}


def heldout_metrics(
    model: Method,
    path: str | Path,
    *,
    rows: int,
    density_rows: int,
    seed: int = 0,
    density_steps: int = 8,
    density_samples: int = 32,
    progress: bool = False,
) -> dict:
    """GeoScore, distances and country accuracy of the method's own point estimates (those of
    ``predict``: MBR at ω = 0 for the generative methods; 16 steps) on the first ``rows`` rows of a held-out file, and the NLL, localizability and HPD
    coverage on the first ``density_rows`` of them (``density_samples`` samples each,
    ``density_steps`` RK4 steps). Coverage counts the truth's HPD rank among the samples, so a
    calibrated model expects hpd90_coverage = 0.90 even from 32 samples; the regions are the
    run's conformally calibrated ones when it has a calibration.json. ``progress``: tqdm bars
    of the sampling and the likelihood solves on stderr."""
    density = None
    if density_rows > 0 and model.density_space == "S2":
        density = {"rows": density_rows, "num_samples": density_samples, "seed": seed, "steps": density_steps}
    options = {"guidance": None, "sample_steps": None, "seed": seed}
    metrics = evaluate_run(model, path, options, density=density, prdc=False, rows=rows, progress=progress)
    # The demo's table shows the point metrics it explains and the calibration of its regions.
    dropped = ("acc_city", "admin_truth", "log_prob_mean", "density_space", "density_samples")
    return {k: v for k, v in metrics.items() if k not in dropped}
