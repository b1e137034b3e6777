"""Evaluation commands: ``evaluate`` (one run's metrics) and ``compare`` (several runs on the
same data and seeds, one table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from globeflow.cli.common import (
    ESTIMATE_GUIDANCE,
    CLIError,
    add_overwrite_arg,
    add_progress_arg,
    add_sampling_args,
    add_strategy_arg,
    add_uncalibrated_arg,
    model_inputs,
    positive_int,
    sample_options,
    stderr,
)

__all__ = ["CHECKS", "COMMANDS", "PARSERS"]


def add_evaluation_args(p: argparse.ArgumentParser) -> None:
    # ω defaults by estimate, as in predict: MBR is the Bayes decision under the model's own
    # distribution (ω = 0); one sample is sharpened by ω = 2 as in the paper (docs/recipe.md).
    add_sampling_args(p, guidance=None, guidance_help=ESTIMATE_GUIDANCE)
    add_strategy_arg(p)
    p.add_argument("--density", action="store_true", help="also NLL (Eq. 18), localizability and HPD coverage")
    # Defaults measured in docs/benchmarks.md (issue 12): coverage from ranks is unbiased at 32
    # samples; 16 graded RK4 steps for the samples; the NLL's own solve (1/S of the work) at 64.
    p.add_argument(
        "--density-samples", type=positive_int, default=32, help="samples per row for the regions (default 32)"
    )
    p.add_argument(
        "--density-steps", type=positive_int, default=16, help="RK4 steps of the samples' likelihood ODE (default 16)"
    )
    p.add_argument(
        "--nll-steps",
        type=positive_int,
        default=64,
        help="RK4 steps of the true locations' likelihood ODE, for the NLL and the ranks (default 64)",
    )
    p.add_argument("--density-guidance", type=float, default=0.0, help="guidance ω of the density (default 0)")
    p.add_argument(
        "--density-precision",
        choices=("float32", "bfloat16"),
        default="bfloat16",
        help="products of the samples' likelihood ODE (default bfloat16: faster, error in docs/benchmarks.md; "
        "the true locations' solve is float32)",
    )
    p.add_argument(
        "--density-rows", type=positive_int, default=None, help="density metrics on the first N rows (default: all)"
    )
    add_uncalibrated_arg(p)
    p.add_argument("--no-prdc", action="store_true", help="skip precision/recall/density/coverage")
    p.add_argument(
        "--prdc-guidance",
        type=float,
        default=None,
        help="ω of the samples scored by the generative metrics (default: --guidance, reusing the estimates)",
    )
    p.add_argument(
        "--prdc-unconditional",
        action="store_true",
        help="also uncond_precision … from N samples of the null condition (Table B's variant)",
    )
    add_progress_arg(p)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="GeoScore, distances and accuracies of point estimates")
    p.add_argument("--model", required=True, help="run directory of a trained model")
    p.add_argument("--data", required=True, help="test data with latitude/longitude (.parquet or .npz)")
    p.add_argument("--out", required=True, help="output JSON with the metrics")
    add_evaluation_args(p)
    add_overwrite_arg(p)


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="evaluate several runs on the same data and seeds: one table")
    p.add_argument("models", nargs="+", metavar="RUN", help="run directories (or PLONK checkpoints) to compare")
    p.add_argument("--data", required=True, help="test data with latitude/longitude (.parquet or .npz)")
    p.add_argument(
        "--out", required=True, help="output Markdown table, e.g. t.md; it also writes the metrics beside it as t.json"
    )
    add_evaluation_args(p)
    add_overwrite_arg(p)


def check_evaluate(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    check_outputs({"--out": args.out}, {"--data": args.data, **model_inputs(args.model)}, overwrite=args.overwrite)


def check_compare(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    out = Path(args.out)
    if out.suffix.lower() == ".json":
        raise CLIError(
            f"--out {out}: compare writes a Markdown table there and its metrics beside it as .json; "
            "give a table name such as results.md"
        )
    inputs = {"--data": args.data}
    for m in args.models:
        inputs.update({f"{k} ({m})": v for k, v in model_inputs(m).items()})
    check_outputs({"--out": out, "--out's metrics": out.with_suffix(".json")}, inputs, overwrite=args.overwrite)


def evaluation_settings(args: argparse.Namespace) -> tuple[dict, dict | None, dict | bool]:
    """The options of :func:`globeflow.evaluate.evaluate_run` from evaluate's / compare's
    arguments: sampling options, density metrics (None: off) and PRDC (False: off)."""
    # guidance None and strategy None: the method's own estimate, resolved by evaluate_run.
    options = {**sample_options(args), "strategy": args.strategy}
    density = None
    if args.density:
        density = {
            "num_samples": args.density_samples,
            "steps": args.density_steps,
            "guidance": args.density_guidance,
            "precision": args.density_precision,
            "truth_steps": args.nll_steps,
            "seed": args.seed,
            "rows": args.density_rows,
            "calibration": None if args.uncalibrated else "auto",
        }
    prdc = False if args.no_prdc else {"guidance": args.prdc_guidance, "unconditional": args.prdc_unconditional}
    return options, density, prdc


def cmd_evaluate(args: argparse.Namespace) -> int:
    from globeflow.evaluate import evaluate_run, format_metrics
    from globeflow.io import save_json

    options, density, prdc = evaluation_settings(args)
    progress = not args.no_progress
    metrics = evaluate_run(
        args.model, args.data, options, device=args.device, density=density, prdc=prdc, progress=progress
    )
    resolved = {"strategy": metrics["strategy"], "guidance": metrics["guidance"]}  # the defaults as applied
    metrics["settings"] = {**options, **resolved, **({"density": density} if density else {}), "prdc": prdc}
    save_json(args.out, metrics)
    print(format_metrics(metrics, title=Path(args.model).name))
    if "regions" in metrics:
        print(f"credible regions: {metrics['regions']}")
    print(f"metrics written to {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Evaluate several runs on the same data with the same seeds; one table, one row per run."""
    from globeflow.evaluate import compare_runs
    from globeflow.io import save_json, write_text

    options, density, prdc = evaluation_settings(args)
    table, record = compare_runs(
        args.models, args.data, options, device=args.device, density=density, prdc=prdc, report=stderr,
        progress=not args.no_progress,
    )  # fmt: skip
    out = Path(args.out)
    write_text(out, table + "\n")
    save_json(out.with_suffix(".json"), record)
    print(table)
    print(f"table written to {out} (metrics: {out.with_suffix('.json')})")
    return 0


PARSERS = {"evaluate": add_evaluate, "compare": add_compare}
CHECKS = {"evaluate": check_evaluate, "compare": check_compare}
COMMANDS = {"evaluate": cmd_evaluate, "compare": cmd_compare}
