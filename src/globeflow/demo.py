"""``globeflow demo``: geolocate example queries (or photos) with the shipped model and write
answers, maps and an HTML report; ``--synthetic``: train and evaluate a small RFM on the
synthetic world against the Bayes-optimal GeoScore."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from globeflow.evaluate import evaluate_run, format_metrics, heldout_metrics
from globeflow.runs import HELDOUT_FILE, ModelConfig, train_run

__all__ = ["DEMO_QUERIES", "DEMO_SAMPLES", "QUICK_DEMO_QUERIES", "QUICK_DEMO_SAMPLES", "DemoOptions", "demo_answers", "demo_synthetic", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings (``globeflow demo --help``); None: the demo's default."""

    out: str | Path = "globeflow-demo"
    quick: bool = False
    seed: int = 0
    progress: bool = True
    synthetic: bool = False
    query: list[str] | None = None
    image: list[str] | None = None
    model: str | None = None
    encoder: str | None = None
    encoder_path: str | None = None
    samples: int | None = None
    density_steps: int = 8
    trajectories: int = 0
    exact_maps: bool = False
    uncalibrated: bool = False
    heldout_rows: int | None = None
    density_rows: int | None = None
    device: str = "cpu"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


#: The demo's queries: ambiguous names, then the same names made precise, regions, countries.
DEMO_QUERIES = (
    "Springfield",
    "Springfield, Illinois",
    "Paris",
    "Paris, Texas",
    "Kenya",
    "Bavaria",
    "Victoria",
    "San Jose",
)
QUICK_DEMO_QUERIES = ("Springfield", "Springfield, Illinois", "Kenya")

#: Samples per answer (``demo --samples``): the demo's 2-minute budget on a 2-core CPU
#: (docs/practitioners.md, Speed); ``--quick`` halves them.
DEMO_SAMPLES = 256
QUICK_DEMO_SAMPLES = 128


def run_demo(opts: DemoOptions) -> int:
    """Geolocate example queries with the shipped model (or --model); --synthetic: the old demo."""
    if opts.synthetic:
        return demo_synthetic(opts)
    if opts.model is None:
        from globeflow.pretrained import default_model_dir

        try:
            default_model_dir()
        except FileNotFoundError as err:
            print(f"{err}\nrunning the synthetic-world demo instead (globeflow demo --synthetic)", file=sys.stderr)
            return demo_synthetic(opts)
    return demo_answers(opts)


def print_answer(record: dict) -> None:
    """One answer in words (:func:`globeflow.describe.format_answer_text`), after a blank line."""
    from globeflow.describe import format_answer_text

    print("\n" + format_answer_text(record))


def _heldout_section(model: object, model_ref: str | Path, opts: DemoOptions, out: Path) -> tuple[dict | None, str]:
    """The model's metrics on its held-out queries, printed in words and saved as
    ``heldout_metrics.json``; (None, "") when the model ships no held-out file."""
    from globeflow.io import save_json

    quick = opts.quick
    heldout = Path(model_ref) / HELDOUT_FILE
    if not heldout.is_file():
        print(f"\nno held-out file at {heldout}: skipped the held-out evaluation")
        return None, ""
    rows = opts.heldout_rows if opts.heldout_rows is not None else (50 if quick else 500)
    density_rows = opts.density_rows if opts.density_rows is not None else (10 if quick else 50)
    metrics = heldout_metrics(
        model, heldout, rows=rows, density_rows=density_rows, seed=opts.seed, density_steps=opts.density_steps,
        progress=opts.progress,
    )  # fmt: skip
    save_json(out / "heldout_metrics.json", metrics)
    note = (
        f"First {metrics['n']} held-out queries of {heldout.name}: point estimates {metrics['strategy']} "
        f"at guidance {metrics['guidance']:g} (16 steps); NLL, localizability and HPD coverage on the first {metrics.get('n_density', 0)} "
        f"(32 samples, {opts.density_steps} RK4 steps; a calibrated model has the truth inside its 90% region about 90% of the time; "
        f"regions: {metrics.get('regions', 'uncalibrated')})."
    )
    print(f"\nheld-out ({note})")
    # In words, as the report shows them (the paper-style table is `globeflow evaluate`'s).
    from globeflow.describe import metric_rows

    print("\n".join(f"  {label}: {value}" for label, value in metric_rows(metrics)))
    return metrics, note


def demo_answers(opts: DemoOptions) -> int:
    """Queries (or photos) → answers printed, maps, answers.jsonl/.geojson, report.html,
    then the model's metrics on its held-out queries."""
    from globeflow.answers import answer, answer_map_inputs
    from globeflow.api import load
    from globeflow.embed import encode_inputs
    from globeflow.pretrained import model_or_default
    from globeflow.viz.outputs import write_answer_files, write_answers_jsonl, write_html_report

    t0 = time.perf_counter()
    quick = opts.quick
    out = Path(opts.out)
    model_ref = model_or_default(opts.model)
    model = load(model_ref, device=opts.device)
    queries = None if opts.image else opts.query or list(QUICK_DEMO_QUERIES if quick else DEMO_QUERIES)
    inputs = encode_inputs(
        model, model_ref, texts=queries, images=opts.image, encoder=opts.encoder, source=opts.encoder_path,
        device=opts.device, report=_stderr,
    )  # fmt: skip
    emb, name, records = inputs.embeddings, inputs.encoder, [inputs.records[j] for j in inputs.good]
    if not records:
        raise ValueError("--image: no photo could be read")
    truths = [(r["exif_latitude"], r["exif_longitude"]) if "exif_latitude" in r else None for r in records]
    print(f"model: {model_ref} ({model.name}, {model.embedding_dim}-d {name} embeddings)")
    start = time.perf_counter()
    num_samples = opts.samples or (QUICK_DEMO_SAMPLES if quick else DEMO_SAMPLES)
    answers = answer(
        model,
        emb,
        num_samples=num_samples,
        guidance=0.0,
        seed=opts.seed,
        density_steps=opts.density_steps,
        calibration=None if opts.uncalibrated else "auto",
        progress=opts.progress,
    )
    from globeflow.describe import explain_answers

    answers = explain_answers(
        answers, records, texts=None if opts.image else queries, embeddings=emb, model_dir=model_ref, report=None,
        method=model,
    )
    answer_seconds = time.perf_counter() - start
    for r in records:
        print_answer(r)
    start = time.perf_counter()
    from_model = answer_map_inputs(
        model, emb, exact=opts.exact_maps, log_prob_steps=opts.density_steps, trajectories=opts.trajectories
    )
    write_answer_files(
        records,
        answers,
        map_dir=out / "maps",
        geojson=out / "answers.geojson",
        truths=truths,
        link_base=out,
        width_px=900 if quick else 1400,  # --quick: smaller PNGs, faster to draw
        **from_model,
        progress=opts.progress,
    )
    map_seconds = time.perf_counter() - start
    write_answers_jsonl(out / "answers.jsonl", records)
    print(
        f"\n{len(records)} answers in {answer_seconds:.1f} s ({answers[0].num_samples} samples each), maps in {map_seconds:.1f} s"
    )
    metrics, note = _heldout_section(model, model_ref, opts, out)
    write_html_report(
        out / "report.html",
        records,
        title="globeflow: where is it?",
        intro=(
            f"Answers of {model_ref} ({model.name}) to {len(records)} inputs, from "
            f"{answers[0].num_samples} samples each with their exact log-density "
            f"({opts.density_steps} RK4 steps). Maps: "
            + ("the model's exact density." if opts.exact_maps else "kernel estimate from those samples.")
        ),
        metrics=metrics,
        metrics_note=note,
    )
    print(f"\nreport: {out / 'report.html'}  maps: {out / 'maps'}  answers: {out / 'answers.jsonl'}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


def demo_synthetic(opts: DemoOptions) -> int:
    """Synthetic world → train RFM → evaluate, compared with the Bayes-optimal GeoScore."""
    from globeflow.data import SyntheticWorld, read_dataset, write_world_dataset
    from globeflow.metrics import distance_metrics
    from globeflow.io import save_json
    from globeflow.training import TrainConfig

    out = Path(opts.out)
    quick = opts.quick
    world = SyntheticWorld.make(num_types=4, dim=32, seed=opts.seed)
    paths = write_world_dataset(out / "data", world, 2000 if quick else 20000, 200 if quick else 1000, seed=opts.seed)
    print(f"synthetic world with {world.num_types} scene types written to {out / 'data'}")
    model_cfg = ModelConfig(method="rfm", width=64 if quick else 128, depth=2 if quick else 3)
    # The paper's optimisation settings (AdamW, lr 8e-4, warm-up, cosine decay, EMA 0.999),
    # shortened to 2000 steps of a small network so that the demo takes about two minutes.
    train_cfg = TrainConfig(
        train_steps=60 if quick else 2000,
        batch_size=128 if quick else 256,
        warmup_steps=10 if quick else 500,
        checkpoint_every=1000,
        seed=opts.seed,
        progress=opts.progress,
    )
    run_dir = train_run(paths["train"], out / "run", model_cfg, train_cfg)
    # The method's own point estimate (predict's: MBR at ω = 0), as globeflow evaluate scores it.
    options = {"guidance": None, "sample_steps": 16, "seed": 0, "solver": None, "precision": "float32"}
    metrics = evaluate_run(run_dir, paths["test"], options)
    test = read_dataset(paths["test"])
    truth = np.stack([test.latitude, test.longitude], axis=1)
    best = world.best_geoscore(test.embeddings, test.latitude, test.longitude)
    # What one draw from the *true* p(y | c) scores: the target of an unguided single sample.
    true_sample = distance_metrics(world.sample_conditional(test.embeddings, 1, seed=0)[:, 0], truth)["geoscore"]
    metrics["best_achievable_geoscore"] = best
    metrics["true_sample_geoscore"] = true_sample
    save_json(out / "metrics.json", metrics)
    print(format_metrics(metrics, title=f"RFM S² (demo, {metrics['strategy']}, ω = {metrics['guidance']:g})"))
    print(f"GeoScore of one sample from the true p(y | c):            {true_sample:.1f}")
    print(f"best achievable GeoScore (Bayes-optimal point estimate):   {best:.1f}")
    print(f"model: {run_dir}  metrics: {out / 'metrics.json'}")
    return 0
