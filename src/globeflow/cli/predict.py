"""Answer commands: ``demo``, ``predict`` (answers for texts or photos; point estimates for a
file), ``density`` (the density report of one row) and ``calibrate`` (conformal calibration
of a run's credible regions)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from globeflow.cli.common import (
    CLIError,
    add_answer_args,
    add_overwrite_arg,
    add_progress_arg,
    add_sampling_args,
    add_strategy_arg,
    add_uncalibrated_arg,
    check_folder_out,
    fields_of,
    model_inputs,
    nonnegative_int,
    positive_int,
    sample_options,
    stderr,
)

__all__ = ["CHECKS", "COMMANDS", "PARSERS"]


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="geolocate example queries with the shipped model; maps and an HTML report")
    p.add_argument("--out", default="globeflow-demo", help="output folder (default ./globeflow-demo)")
    add_overwrite_arg(p, folder=True)
    p.add_argument("--quick", action="store_true", help="a much smaller run (for smoke tests)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the samples (and of --synthetic's data and training; default 0)"
    )
    add_progress_arg(p)
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="the synthetic-world demo instead: train a small RFM, compare with the Bayes-optimal GeoScore",
    )
    p.add_argument("--query", action="append", default=None, metavar="TEXT", help="a text query (repeatable)")
    p.add_argument(
        "--image", action="append", default=None, metavar="PATH", help="a photo (repeatable; --model, --encoder)"
    )
    p.add_argument("--model", default=None, help="run directory (default: the shipped geonames-text model)")
    p.add_argument("--encoder", default=None, help="encoder of the queries/photos (default: the model's)")
    p.add_argument("--encoder-path", default=None, help="hub id or local directory of the encoder's weights")
    add_answer_args(p, samples="256, quick 128")
    p.add_argument(
        "--heldout-rows", type=positive_int, default=None, help="held-out rows for the metrics (default 500, quick 50)"
    )
    p.add_argument(
        "--density-rows",
        type=nonnegative_int,
        default=None,
        help="of which with HPD coverage (default 50, quick 10; 0: none)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="answers for texts or photos; point estimates for a file of embeddings")
    p.add_argument(
        "--model", default=None, help="run directory, PLONK checkpoint directory, or hf:ORG/NAME (default: shipped)"
    )
    p.add_argument("--data", default=None, help="embeddings (.parquet or .npz); coordinates optional")
    p.add_argument("--text", action="append", default=None, metavar="QUERY", help="a text query (repeatable)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="photos to embed and geolocate (instead of --data)")
    p.add_argument(
        "--encoder", default=None, help="encoder for --text / IMAGE… (default: the model's, else efficientnet-lite0)"
    )
    p.add_argument("--encoder-path", default=None, help="hub id or local directory of the encoder's weights")
    p.add_argument(
        "--out", default=None, help="--data: output Parquet; --text/IMAGE…: output JSONL or CSV (default stdout)"
    )
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="--text/IMAGE… output (default jsonl)")
    p.add_argument("--map-dir", default=None, help="--text/IMAGE…: also write one PNG density map per input here")
    p.add_argument("--geojson", default=None, help="--text/IMAGE…: also write estimates, modes and 50/90%% regions")
    p.add_argument("--kml", default=None, help="--text/IMAGE…: the same as KML (Google Earth)")
    add_strategy_arg(p)
    add_overwrite_arg(p)
    add_answer_args(p)
    add_sampling_args(p, guidance=None)
    add_progress_arg(p)


def add_density(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("density", help="density map and credible regions of one row of a file")
    p.add_argument("--model", required=True, help="run directory of a trained model")
    p.add_argument("--data", required=True, help="embeddings (.parquet or .npz); coordinates optional")
    p.add_argument("--row", type=int, default=0, help="row of the file (default 0)")
    p.add_argument("--out", required=True, help="output PNG map")
    p.add_argument("--geojson", default=None, help="also write the credible regions as GeoJSON")
    p.add_argument("--raster", default=None, help="also write the HPD levels as an ESRI ASCII grid (.asc)")
    p.add_argument("--resolution", type=float, default=1.0, help="map resolution in degrees (default 1)")
    p.add_argument("--samples", type=positive_int, default=1000, help="samples with exact log p (default 1000)")
    p.add_argument("--levels", default="0.5,0.9,0.95", help="credible levels (default 0.5,0.9,0.95)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance ω of the density (default 0)")
    p.add_argument("--steps", type=positive_int, default=32, help="RK4 steps of the likelihood ODE (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_uncalibrated_arg(p)
    add_overwrite_arg(p)
    add_progress_arg(p)


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="conformal calibration of a run's credible regions on held-out rows (docs/calibration.md)"
    )
    p.add_argument("--model", required=True, help="run directory of a trained model")
    p.add_argument("--data", required=True, help="held-out rows with latitude/longitude, not used in training")
    p.add_argument("--out", default=None, help="output JSON (default: RUN/calibration.json, used by default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing calibration file")
    p.add_argument("--samples", type=positive_int, default=32, help="model samples per row (default 32)")
    p.add_argument("--steps", type=positive_int, default=8, help="RK4 steps of the likelihood ODE (default 8)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance ω of the density (default 0)")
    p.add_argument(
        "--calibration-fraction",
        type=float,
        default=1.0,
        help="share of the rows that calibrate (a seeded split; the rest are recorded as test rows; default 1)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the calibration/test split (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and the score randomisation (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def parse_levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"--levels: expected comma-separated numbers in (0, 1), got {text!r}") from None
    if not levels or not all(0.0 < v < 1.0 for v in levels):
        raise CLIError(f"--levels: every level must be in (0, 1), got {text!r}")
    return levels


def check_predict(args: argparse.Namespace) -> None:
    inputs = sum(x is not None and x != [] for x in (args.data, args.text, args.images or None))
    if inputs != 1:
        raise CLIError("give one of --data FILE, --text QUERY (repeatable) or IMAGE paths")
    if args.data is not None and args.out is None:
        raise CLIError("--out is required with --data")
    if args.text and any(not t.strip() for t in args.text):
        raise CLIError("--text: empty query")
    from globeflow.io import check_output_dir, check_outputs

    inputs = {"--data": args.data, **model_inputs(args.model), "--encoder-path": args.encoder_path}
    inputs.update({f"IMAGE {i + 1}": p for i, p in enumerate(args.images or [])})
    outputs = {"--out": args.out, "--geojson": args.geojson, "--kml": args.kml}
    check_outputs(outputs, inputs, overwrite=args.overwrite)
    check_output_dir("--map-dir", args.map_dir, overwrite=args.overwrite)


def check_density(args: argparse.Namespace) -> None:
    args.levels = parse_levels(args.levels)
    if not 0.05 <= args.resolution <= 10.0:
        raise CLIError(f"--resolution: expected degrees in [0.05, 10], got {args.resolution}")
    from globeflow.io import check_outputs

    outputs = {"--out": args.out, "--geojson": args.geojson, "--raster": args.raster}
    check_outputs(outputs, {"--data": args.data, **model_inputs(args.model)}, overwrite=args.overwrite)


def cmd_demo(args: argparse.Namespace) -> int:
    from globeflow.demo import DemoOptions, run_demo
    from globeflow.io import claim_output_dir

    claim_output_dir(args.out)
    return run_demo(DemoOptions(**fields_of(DemoOptions, args), progress=not args.no_progress))


def cmd_predict(args: argparse.Namespace) -> int:
    if args.data is None:
        return _predict_answers(args)
    from globeflow.api import load
    from globeflow.evaluate import predict_file
    from globeflow.pretrained import model_or_default

    # The output guard ran in check_predict (--out is never --data, an existing file needs
    # --overwrite); predict_file streams the file in chunks, range-checks the embeddings,
    # names NaN rows, keeps every input column and writes --out atomically.
    model = load(model_or_default(args.model), device=args.device)
    options = sample_options(args)
    if args.strategy is not None:
        options["strategy"] = args.strategy
    rows = predict_file(model, args.data, args.out, options, progress=not args.no_progress)
    print(f"{rows} predictions written to {args.out}")
    return 0


def _predict_answers(args: argparse.Namespace) -> int:
    """Answers for ``--text`` queries or photos: JSONL/CSV, and maps/GeoJSON/KML on request."""
    from globeflow.io import write_text
    from globeflow.predict import predict_answers
    from globeflow.viz.outputs import answers_csv_text, answers_jsonl_text

    res = predict_answers(
        args.model, texts=args.text, images=args.images, encoder=args.encoder, encoder_path=args.encoder_path,
        device=args.device, num_samples=args.samples, guidance=0.0 if args.guidance is None else args.guidance,
        seed=args.seed, density_steps=args.density_steps, calibrated=not args.uncalibrated, map_dir=args.map_dir,
        geojson=args.geojson, kml=args.kml, trajectories=args.trajectories, exact_maps=args.exact_maps, report=stderr,
        progress=not args.no_progress,
    )  # fmt: skip
    records, good = res.records, res.good
    text = answers_csv_text(records) if args.format == "csv" else answers_jsonl_text(records)
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)
        stderr(f"{len(good)} answers ({len(records) - len(good)} skipped) written to {args.out}")
    for what, path in (("maps", args.map_dir), ("GeoJSON", args.geojson), ("KML", args.kml)):
        if path is not None and good:
            stderr(f"{what}: {path}")
    return 0 if good else 2


def cmd_density(args: argparse.Namespace) -> int:
    """Density map, credible regions and localizability of one row of a file."""
    from globeflow.predict import density_row_report, format_density_summary

    summary = density_row_report(
        args.model, args.data, args.row, out_png=args.out, geojson=args.geojson, raster=args.raster,
        resolution_deg=args.resolution, levels=args.levels, num_samples=args.samples, steps=args.steps,
        guidance=args.guidance, seed=args.seed, calibrated=not args.uncalibrated, device=args.device,
        progress=not args.no_progress,
    )  # fmt: skip
    files = {"out_png": args.out, "geojson": args.geojson, "raster": args.raster}
    print(format_density_summary(summary, num_samples=args.samples, **files))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit and store the conformal calibration of a run's credible regions."""
    from globeflow.density.calibration import calibrate_run, format_calibration_run

    res = calibrate_run(
        args.model,
        args.data,
        out=args.out,
        overwrite=args.overwrite,
        num_samples=args.samples,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        calibration_fraction=args.calibration_fraction,
        split_seed=args.split_seed,
        device=args.device,
    )
    print(format_calibration_run(res, args.data))
    return 0


PARSERS = {"demo": add_demo, "predict": add_predict, "density": add_density, "calibrate": add_calibrate}
CHECKS = {"demo": check_folder_out, "predict": check_predict, "density": check_density}
COMMANDS = {"demo": cmd_demo, "predict": cmd_predict, "density": cmd_density, "calibrate": cmd_calibrate}
