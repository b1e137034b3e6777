"""What several commands share: argument types, option groups, the checks of a command's
files, and :class:`CLIError`. Only argparse and the standard library at import."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = [
    "ESTIMATE_GUIDANCE",
    "STRATEGIES",
    "CLIError",
    "add_answer_args",
    "add_overwrite_arg",
    "add_progress_arg",
    "add_sampling_args",
    "add_strategy_arg",
    "add_uncalibrated_arg",
    "check_folder_out",
    "fields_of",
    "model_inputs",
    "nonnegative_int",
    "positive_int",
    "sample_options",
    "stderr",
]


class CLIError(Exception):
    """An error to report in one line, without a traceback."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


#: The guidance default of a point estimate (``Method.estimate_guidance``).
ESTIMATE_GUIDANCE = "0 with --strategy mbr, 2 with sample/ensemble/mode/center"

#: Point estimates a method may offer (``predict(strategy=...)``; each method says which it has).
STRATEGIES = ("mbr", "sample", "ensemble", "mode", "center")


def add_sampling_args(p: argparse.ArgumentParser, guidance: float | None, guidance_help: str | None = None) -> None:
    default = (
        f"for point estimates of --data {ESTIMATE_GUIDANCE}; 0 (the model's own density) for answers"
        if guidance is None
        else f"{guidance}"
    )
    default = guidance_help or default
    p.add_argument("--guidance", type=float, default=guidance, help=f"guidance scale ω of Eq. 13 (default {default})")
    p.add_argument(
        "--sample-steps",
        type=positive_int,
        default=None,
        help="denoising steps (default 16; a distilled model: its jumps)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    p.add_argument(
        "--solver",
        default=None,
        help="euler|heun|midpoint (flow, rfm) or ddim|heun (diffusion) "
        "(default: the method's own, euler for flow/rfm, ddim for diffusion)",
    )
    p.add_argument(
        "--precision", choices=("float32", "bfloat16"), default="float32", help="network precision (default float32)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_uncalibrated_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="regions at the model's own levels, ignoring the run's conformal calibration (calibration.json)",
    )


def add_answer_args(p: argparse.ArgumentParser, samples: str = "256") -> None:
    p.add_argument("--samples", type=positive_int, default=None, help=f"samples per answer (default {samples})")
    p.add_argument(
        "--density-steps",
        type=positive_int,
        default=8,
        help="RK4 steps of the likelihood ODE carrying log p along the samples (default 8)",
    )
    p.add_argument(
        "--trajectories",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="draw N denoising paths of the sampler on each map (paper Figs. 1, 3; default 0)",
    )
    add_uncalibrated_arg(p)
    p.add_argument(
        "--exact-maps",
        action="store_true",
        help="maps of the exact density (an ODE solve per map point: minutes per map) instead of the samples' kernel estimate",
    )


def add_strategy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="point estimate: the method's own (default; what predict writes: mbr for the generative methods, "
        "the mode for vmf/vmf_mixture/mvmf, the centre of 16 samples for locdiffusion, one sample otherwise); "
        "mbr (of 32 samples the one with the highest mean GeoScore to the others, docs/recipe.md), "
        "sample (one draw, the paper's Table 1), ensemble (the densest of 32, Appendix A), mode or center "
        "where the method has them",
    )


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def add_overwrite_arg(p: argparse.ArgumentParser, *, folder: bool = False) -> None:
    what = "write into an existing folder that globeflow did not create" if folder else "replace existing output files"
    p.add_argument("--overwrite", action="store_true", help=f"{what} (an input is never overwritten)")


def fields_of(cls: type, args: argparse.Namespace) -> dict:
    """The arguments named like the fields of dataclass ``cls`` (the option is the field's name)."""
    from dataclasses import fields

    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def sample_options(args: argparse.Namespace) -> dict:
    # guidance None: the estimate's own (Method.estimate_guidance: 0 for mbr, 2 for one sample).
    return {
        "guidance": args.guidance,
        "sample_steps": args.sample_steps,
        "seed": args.seed,
        "solver": args.solver,
        "precision": args.precision,
    }


def model_inputs(model: str | None) -> dict:
    """The files a command reads from ``--model``: a run directory's own files (an output such
    as RUN/metrics.json beside them is not an input), else the path itself (a whole folder)."""
    if model is None:
        return {}
    from globeflow import runs

    run = Path(model)
    if not (run / runs.CONFIG_FILE).is_file():
        return {"--model": model}
    names = (runs.CONFIG_FILE, runs.WEIGHTS_FILE, runs.TRAIN_CONFIG_FILE, runs.LOG_FILE, runs.HELDOUT_FILE)
    files = {f"--model's {n}": run / n for n in names}
    files["--model's checkpoint"] = run / runs.CHECKPOINT_DIR
    return files


def check_folder_out(args: argparse.Namespace) -> None:
    from globeflow.io import check_output_dir

    check_output_dir("--out", args.out, overwrite=args.overwrite)


def stderr(message: str) -> None:
    print(message, file=sys.stderr)
