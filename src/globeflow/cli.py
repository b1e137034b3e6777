"""Command-line interface: argument parsing and thin commands; the work is in the library.

globeflow demo      geolocate place-name queries with the shipped model: answers, maps, HTML report
                    (--synthetic: train and evaluate a small model on the synthetic world)
globeflow synthetic write a synthetic world dataset (train/test Parquet + world.json)
globeflow train     train a method on embeddings
globeflow distill   distil a trained RFM run into a 1-2 step flow-map sampler (a new run directory)
globeflow predict   answers (modes, P(country), regions) for texts or photos; point estimates for a file
globeflow evaluate  GeoScore, distances, accuracies (radii; country/region/city), precision/
                    recall/density/coverage (--density: NLL, localizability, calibration)
globeflow compare   evaluate several runs on the same data and seeds into one table
globeflow density   density map, credible regions (GeoJSON, raster) for one row of a file
globeflow calibrate conformal calibration of a run's credible regions on held-out rows
globeflow embed     photos (a folder or a metadata CSV) -> Parquet of embeddings
globeflow serve     an offline web page (map, places, sentence) and a REST API over one model
globeflow models    the shipped, local and cached hub models, and the input each takes

Every library module is imported inside the command that needs it, so ``--help`` and argument
errors answer at once (no torch, matplotlib or numpy at import), and each command checks its
arguments before it loads a model. Library code raises ``ValueError`` / ``DataError`` /
``OSError``; :func:`main` prints them as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from globeflow.methods import METHOD_NAMES

__all__ = ["build_parser", "main", "train_config"]


class CLIError(Exception):
    """An error to report in one line, without a traceback."""


# ------------------------------------------------------------------------------- parsing
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


#: The guidance default of a point estimate (``Method.estimate_guidance``).
_ESTIMATE_GUIDANCE = "0 with --strategy mbr, 2 with sample/ensemble/mode/center"


def _add_sampling_args(p: argparse.ArgumentParser, guidance: float | None, guidance_help: str | None = None) -> None:
    default = (
        f"for point estimates of --data {_ESTIMATE_GUIDANCE}; 0 (the model's own density) for answers"
        if guidance is None
        else f"{guidance}"
    )
    default = guidance_help or default
    p.add_argument("--guidance", type=float, default=guidance, help=f"guidance scale ω of Eq. 13 (default {default})")
    p.add_argument(
        "--sample-steps", type=_positive_int, default=None, help="denoising steps (default 16; a distilled model: its jumps)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    p.add_argument("--solver", default=None, help="euler|heun|midpoint (flow, rfm) or ddim|heun (diffusion)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="network precision")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _add_uncalibrated_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="regions at the model's own levels, ignoring the run's conformal calibration (calibration.json)",
    )


def _add_answer_args(p: argparse.ArgumentParser, samples: str = "512") -> None:
    p.add_argument("--samples", type=_positive_int, default=None, help=f"samples per answer (default {samples})")
    p.add_argument(
        "--density-steps",
        type=_positive_int,
        default=8,
        help="RK4 steps of the likelihood ODE carrying log p along the samples (default 8)",
    )
    p.add_argument(
        "--trajectories",
        type=_nonnegative_int,
        default=0,
        metavar="N",
        help="draw N denoising paths of the sampler on each map (paper Figs. 1, 3; default 0)",
    )
    _add_uncalibrated_arg(p)
    p.add_argument(
        "--exact-maps",
        action="store_true",
        help="maps of the exact density (an ODE solve per map point: minutes per map) instead of the samples' kernel estimate",
    )


def _add_train_args(p: argparse.ArgumentParser, *, steps: int, batch: int, width: int, depth: int) -> None:
    p.add_argument("--method", choices=METHOD_NAMES, default="rfm", help="method (default rfm; see docs/methods/)")
    p.add_argument("--train-steps", type=_positive_int, default=steps)
    p.add_argument("--batch-size", type=_positive_int, default=batch)
    p.add_argument("--width", type=_positive_int, default=width, help="network width d")
    p.add_argument("--depth", type=_positive_int, default=depth, help="number of AdaLN blocks N")
    p.add_argument("--expansion", type=_positive_int, default=4, help="MLP expansion factor (4d hidden)")
    p.add_argument("--schedule", choices=("skewed_sigmoid", "sigmoid", "linear", "cosine"), default="skewed_sigmoid")
    p.add_argument("--schedule-alpha", type=float, default=None, help="α of the (skewed) sigmoid (default -3)")
    p.add_argument("--schedule-beta", type=float, default=None, help="β of the (skewed) sigmoid (default 7, sigmoid 3)")
    p.add_argument("--cond-drop", type=float, default=0.1, help="condition dropout for guidance (default 0.1)")
    p.add_argument(
        "--cond-depth", type=_positive_int, default=1, help="Linear layers of the embedding map (default 1; >1: MLP)"
    )
    p.add_argument(
        "--train-noise",
        choices=("schedule", "logit_normal", "uniform"),
        default=None,
        help="density of the training noise level κ (default: logit_normal for rfm, schedule for diffusion/flow, "
        "i.e. κ(t) with t ~ U[0,1]; docs/recipe.md)",
    )
    p.add_argument("--train-noise-mean", type=float, default=-1.0, help="logit_normal: mean m of logit κ (default -1)")
    p.add_argument("--train-noise-std", type=float, default=1.0, help="logit_normal: std s of logit κ (default 1)")
    p.add_argument("--components", type=_positive_int, default=None, help="vmf_mixture: K components (default 3)")
    p.add_argument(
        "--kappa-link",
        choices=("softplus", "exp"),
        default=None,
        help="vmf, vmf_mixture: κ activation (default softplus)",
    )
    p.add_argument("--num-components", type=_positive_int, default=None, help="mvmf: c components/cells (default 4096)")
    p.add_argument(
        "--log-kappa0",
        type=float,
        default=None,
        help="mvmf: one fixed log κ₀ for every component (default: κ from each cell's size)",
    )
    p.add_argument("--sh-degree", type=_positive_int, default=None, help="locdiffusion: SH degree L (default 31)")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument(
        "--optimizer",
        choices=("adamw", "lamb"),
        default="adamw",
        help="adamw (default) or lamb, the paper's optimizer for 1M-step runs (see docs/core.md)",
    )
    p.add_argument("--final-lr-ratio", type=float, default=0.0, help="final lr of the cosine decay / --lr (default 0)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument(
        "--no-ema-warmup", action="store_true", help="constant EMA decay (default: min(decay, (1+n)/(10+n)) warm-up)"
    )
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument(
        "--train-precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: mixed-precision autocast training (~2x faster on AVX-512 BF16 CPUs)",
    )
    p.add_argument("--checkpoint-every", type=_positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


#: Point estimates a method may offer (``predict(strategy=...)``; each method says which it has).
STRATEGIES = ("mbr", "sample", "ensemble", "mode", "center")


def _add_strategy_arg(p: argparse.ArgumentParser) -> None:
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


def _add_evaluation_args(p: argparse.ArgumentParser) -> None:
    # ω defaults by estimate, as in predict: MBR is the Bayes decision under the model's own
    # distribution (ω = 0); one sample is sharpened by ω = 2 as in the paper (docs/recipe.md).
    _add_sampling_args(p, guidance=None, guidance_help=_ESTIMATE_GUIDANCE)
    _add_strategy_arg(p)
    p.add_argument("--density", action="store_true", help="also NLL (Eq. 18), localizability and HPD coverage")
    # Defaults measured in docs/benchmarks.md (issue 12): coverage from ranks is unbiased at 32
    # samples; 16 graded RK4 steps for the samples; the NLL's own solve (1/S of the work) at 64.
    p.add_argument(
        "--density-samples", type=_positive_int, default=32, help="samples per row for the regions (default 32)"
    )
    p.add_argument(
        "--density-steps", type=_positive_int, default=16, help="RK4 steps of the samples' likelihood ODE (default 16)"
    )
    p.add_argument(
        "--nll-steps",
        type=_positive_int,
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
    p.add_argument("--density-rows", type=_positive_int, default=None, help="density metrics on the first N rows")
    _add_uncalibrated_arg(p)
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


def _add_overwrite_arg(p: argparse.ArgumentParser, *, folder: bool = False) -> None:
    what = "write into an existing folder that globeflow did not create" if folder else "replace existing output files"
    p.add_argument("--overwrite", action="store_true", help=f"{what} (an input is never overwritten)")


def build_parser() -> argparse.ArgumentParser:
    from globeflow import __version__

    parser = argparse.ArgumentParser(
        prog="globeflow",
        description="Probabilistic visual geolocation with diffusion and flow matching on the sphere.",
    )
    parser.add_argument("--version", action="version", version=f"globeflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="geolocate example queries with the shipped model; maps and an HTML report")
    p.add_argument("--out", default="globeflow-demo", help="output folder (default ./globeflow-demo)")
    _add_overwrite_arg(p, folder=True)
    p.add_argument("--quick", action="store_true", help="a much smaller run (for smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
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
    _add_answer_args(p)
    p.add_argument(
        "--heldout-rows", type=_positive_int, default=None, help="held-out rows for the metrics (default 500, quick 50)"
    )
    p.add_argument(
        "--density-rows",
        type=_nonnegative_int,
        default=None,
        help="of which with HPD coverage (default 50, quick 10; 0: none)",
    )
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("synthetic", help="write a synthetic world (known true density) as train/test Parquet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--types", type=_positive_int, default=4, help="number of scene types")
    p.add_argument("--dim", type=_positive_int, default=32, help="embedding dimension")
    p.add_argument("--sigma", type=float, default=0.35, help="embedding noise (ambiguity of the scene type)")
    p.add_argument("--train", type=_positive_int, default=20000, help="training rows")
    p.add_argument("--test", type=_positive_int, default=2000, help="test rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--components", type=_positive_int, default=3, help="most vMF components per type (default 3)")
    p.add_argument("--kappa-min", type=float, default=20.0, help="smallest vMF κ (default 20, ~1400 km)")
    p.add_argument("--kappa-max", type=float, default=2000.0, help="largest vMF κ (default 2000, ~140 km; 2e4 ~45 km)")
    p.add_argument(
        "--families",
        type=_positive_int,
        default=None,
        help="group the types into this many families of similar embeddings and unrelated places (default: none)",
    )
    p.add_argument("--family-spread", type=float, default=0.3, help="prototype spread within a family (default 0.3)")
    p.add_argument(
        "--places", choices=("uniform", "cities"), default="uniform", help="component centres: uniform or GeoNames cities"
    )
    _add_overwrite_arg(p, folder=True)

    p = sub.add_parser("train", help="train a method on a Parquet/NPZ file of embeddings and coordinates")
    p.add_argument(
        "--data", required=True, help="training data (.parquet, .npz, or WebDataset shards: .tar, folder, {a..b})"
    )
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    p.add_argument(
        "--embedding-key", default=None, help="WebDataset: the .npy entry holding the embedding (default: the only one)"
    )
    _add_train_args(p, steps=10000, batch=512, width=512, depth=12)
    p.add_argument(
        "--loader",
        choices=("auto", "memory", "stream"),
        default="auto",
        help="memory: read the file into RAM; stream: bounded memory (docs/scale.md); "
        "auto (default): stream Parquet larger than the shuffle buffer, Arrow and WebDataset",
    )
    p.add_argument(
        "--shuffle-buffer", type=_positive_int, default=None, help="stream: rows of the shuffle window (default 32768)"
    )

    p = sub.add_parser("pack", help="convert a dataset once into a memory-mappable Arrow IPC file (optional)")
    p.add_argument("src", help="Parquet, NPZ, Arrow or WebDataset shards")
    p.add_argument("dest", help="output .arrow file")
    p.add_argument("--shuffle-seed", type=int, default=None, help="also permute the rows (two passes, bounded memory)")
    p.add_argument("--embedding-key", default=None, help="WebDataset: the .npy entry holding the embedding")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DEST")

    p = sub.add_parser("distill", help="distil a trained RFM run into a 1-2 step flow-map sampler (a new run)")
    p.add_argument("--model", required=True, help="run directory of a trained RFM model (the teacher)")
    p.add_argument("--out", required=True, help="new run directory for the distilled model")
    p.add_argument("--steps", type=_positive_int, default=2, help="jumps per sample by default (default 2)")
    p.add_argument("--data", default=None, help="embeddings to condition on (default: the teacher's training data)")
    p.add_argument("--init", default=None, help="a distilled run of the same teacher to continue training from")
    p.add_argument("--teacher-steps", type=_positive_int, default=32, help="Heun steps of the teacher (default 32)")
    p.add_argument("--embeddings", type=_positive_int, default=4096, help="embeddings of the trajectories")
    p.add_argument("--samples-per-embedding", type=_positive_int, default=4, help="trajectories per embedding")
    p.add_argument("--omega-max", type=float, default=4.0, help="guidance range [0, ω_max] learnt (default 4)")
    p.add_argument("--train-steps", type=_positive_int, default=2500)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=_nonnegative_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress lines")

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
    _add_strategy_arg(p)
    _add_overwrite_arg(p)
    _add_answer_args(p)
    _add_sampling_args(p, guidance=None)

    p = sub.add_parser("evaluate", help="GeoScore, distances and accuracies of point estimates")
    p.add_argument("--model", required=True, help="run directory of a trained model")
    p.add_argument("--data", required=True, help="test data with latitude/longitude (.parquet or .npz)")
    p.add_argument("--out", required=True, help="output JSON with the metrics")
    _add_evaluation_args(p)
    _add_overwrite_arg(p)

    p = sub.add_parser("compare", help="evaluate several runs on the same data and seeds: one table")
    p.add_argument("models", nargs="+", metavar="RUN", help="run directories (or PLONK checkpoints) to compare")
    p.add_argument("--data", required=True, help="test data with latitude/longitude (.parquet or .npz)")
    p.add_argument(
        "--out", required=True, help="output Markdown table, e.g. t.md; it also writes the metrics beside it as t.json"
    )
    _add_evaluation_args(p)
    _add_overwrite_arg(p)

    p = sub.add_parser("density", help="density map and credible regions of one row of a file")
    p.add_argument("--model", required=True, help="run directory of a trained model")
    p.add_argument("--data", required=True, help="embeddings (.parquet or .npz); coordinates optional")
    p.add_argument("--row", type=int, default=0, help="row of the file (default 0)")
    p.add_argument("--out", required=True, help="output PNG map")
    p.add_argument("--geojson", default=None, help="also write the credible regions as GeoJSON")
    p.add_argument("--raster", default=None, help="also write the HPD levels as an ESRI ASCII grid (.asc)")
    p.add_argument("--resolution", type=float, default=1.0, help="map resolution in degrees (default 1)")
    p.add_argument("--samples", type=_positive_int, default=1000, help="samples with exact log p (default 1000)")
    p.add_argument("--levels", default="0.5,0.9,0.95", help="credible levels (default 0.5,0.9,0.95)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance ω of the density (default 0)")
    p.add_argument("--steps", type=_positive_int, default=32, help="RK4 steps of the likelihood ODE (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    _add_uncalibrated_arg(p)
    _add_overwrite_arg(p)

    p = sub.add_parser(
        "calibrate", help="conformal calibration of a run's credible regions on held-out rows (docs/calibration.md)"
    )
    p.add_argument("--model", required=True, help="run directory of a trained model")
    p.add_argument("--data", required=True, help="held-out rows with latitude/longitude, not used in training")
    p.add_argument("--out", default=None, help="output JSON (default: RUN/calibration.json, used by default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing calibration file")
    p.add_argument("--samples", type=_positive_int, default=32, help="model samples per row (default 32)")
    p.add_argument("--steps", type=_positive_int, default=8, help="RK4 steps of the likelihood ODE (default 8)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance ω of the density (default 0)")
    p.add_argument(
        "--calibration-fraction",
        type=float,
        default=1.0,
        help="share of the rows that calibrate (a seeded split; the rest are recorded as test rows; default 1)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the calibration/test split (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and the score randomisation")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("embed", help="embed photos (a folder or a metadata CSV) into a Parquet file")
    p.add_argument("--encoder", default="efficientnet-lite0", help="encoder name (default efficientnet-lite0, offline)")
    p.add_argument("--encoder-path", default=None, help="hub id or local directory of the encoder's weights")
    p.add_argument("--images", required=True, help="folder of photos, or CSV (OSV-5M, YFCC/Im2GPS style)")
    p.add_argument("--image-root", default=None, help="CSV: folder the image ids/paths are relative to")
    p.add_argument("--out", required=True, help="output Parquet (resumed if present)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--workers", type=_positive_int, default=2, help="image decoding threads (default 2)")
    p.add_argument("--device", default="cpu", help="torch device (under torchrun, cuda means cuda:LOCAL_RANK)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("serve", help="an offline web page and REST API (POST /v1/locate) over one model")
    p.add_argument(
        "--model", default=None, help="run directory, PLONK checkpoint directory or hf:ORG/NAME (default: shipped)"
    )
    p.add_argument("--encoder", default=None, help="encoder of the texts/photos (default: the model's)")
    p.add_argument("--encoder-path", default=None, help="hub id or local directory of the encoder's weights")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--samples", type=_positive_int, default=256, help="samples per answer (default 256)")
    p.add_argument("--density-steps", type=_positive_int, default=8, help="RK4 steps of the likelihood ODE (default 8)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo accepted, in MB (default 10)")
    p.add_argument("--max-batch", type=_positive_int, default=16, help="most inputs per request (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")

    p = sub.add_parser("models", help="list the shipped, local and cached hub models and what input each takes")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="folders to search for run directories (default: .)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    return parser


# ------------------------------------------------------------------------------- commands
def _fields_of(cls: type, args: argparse.Namespace) -> dict:
    """The arguments named like the fields of dataclass ``cls`` (the option is the field's name)."""
    from dataclasses import fields

    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def train_config(args: argparse.Namespace):
    """The :class:`~globeflow.training.TrainConfig` of ``globeflow train``'s arguments."""
    from globeflow.training import TrainConfig

    # --no-ema-warmup and --train-precision are the options whose names differ from the fields.
    return TrainConfig(
        **_fields_of(TrainConfig, args),
        ema_warmup=not args.no_ema_warmup,
        precision=args.train_precision,
        progress=not args.no_progress,
    )


def _model_config(args: argparse.Namespace):
    from globeflow.runs import ModelConfig

    return ModelConfig(**_fields_of(ModelConfig, args))


def cmd_train(args: argparse.Namespace) -> int:
    from globeflow.runs import is_main_process, train_run

    out = train_run(
        args.data,
        args.out,
        _model_config(args),
        train_config(args),
        embedding_key=args.embedding_key,
        loader=args.loader,
        shuffle_buffer=args.shuffle_buffer,
    )
    if is_main_process():
        print(f"trained model written to {out}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from globeflow.data.stream import pack

    rows = pack(
        args.src, args.dest, shuffle_seed=args.shuffle_seed, embedding_key=args.embedding_key, overwrite=args.overwrite
    )
    print(f"{rows} rows packed into {args.dest}")
    return 0


def _sample_options(args: argparse.Namespace) -> dict:
    # guidance None: the estimate's own (Method.estimate_guidance: 0 for mbr, 2 for one sample).
    return {
        "guidance": args.guidance,
        "sample_steps": args.sample_steps,
        "seed": args.seed,
        "solver": args.solver,
        "precision": args.precision,
    }


def _check_predict(args: argparse.Namespace) -> None:
    inputs = sum(x is not None and x != [] for x in (args.data, args.text, args.images or None))
    if inputs != 1:
        raise CLIError("give one of --data FILE, --text QUERY (repeatable) or IMAGE paths")
    if args.data is not None and args.out is None:
        raise CLIError("--out is required with --data")
    if args.text and any(not t.strip() for t in args.text):
        raise CLIError("--text: empty query")
    from globeflow.io import check_output_dir, check_outputs

    inputs = {"--data": args.data, **_model_inputs(args.model), "--encoder-path": args.encoder_path}
    inputs.update({f"IMAGE {i + 1}": p for i, p in enumerate(args.images or [])})
    outputs = {"--out": args.out, "--geojson": args.geojson, "--kml": args.kml}
    check_outputs(outputs, inputs, overwrite=args.overwrite)
    check_output_dir("--map-dir", args.map_dir, overwrite=args.overwrite)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.data is None:
        return _predict_answers(args)
    from globeflow.api import load
    from globeflow.evaluate import predict_file
    from globeflow.pretrained import model_or_default

    # The output guard ran in _check_predict (--out is never --data, an existing file needs
    # --overwrite); predict_file streams the file in chunks, range-checks the embeddings,
    # names NaN rows, keeps every input column and writes --out atomically.
    model = load(model_or_default(args.model), device=args.device)
    options = _sample_options(args)
    if args.strategy is not None:
        options["strategy"] = args.strategy
    rows = predict_file(model, args.data, args.out, options)
    print(f"{rows} predictions written to {args.out}")
    return 0


def _predict_answers(args: argparse.Namespace) -> int:
    """Answers for ``--text`` queries or photos: JSONL/CSV, and maps/GeoJSON/KML on request."""
    from globeflow.io import write_text
    from globeflow.predict import predict_answers
    from globeflow.viz.outputs import answers_csv_text, answers_jsonl_text

    res = predict_answers(
        args.model, texts=args.text, images=args.images, encoder=args.encoder, encoder_path=args.encoder_path,
        device=args.device, num_samples=args.samples or 512, guidance=0.0 if args.guidance is None else args.guidance,
        seed=args.seed, density_steps=args.density_steps, calibrated=not args.uncalibrated, map_dir=args.map_dir,
        geojson=args.geojson, kml=args.kml, trajectories=args.trajectories, exact_maps=args.exact_maps, report=_stderr,
    )  # fmt: skip
    records, good = res.records, res.good
    text = answers_csv_text(records) if args.format == "csv" else answers_jsonl_text(records)
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)
        _stderr(f"{len(good)} answers ({len(records) - len(good)} skipped) written to {args.out}")
    for what, path in (("maps", args.map_dir), ("GeoJSON", args.geojson), ("KML", args.kml)):
        if path is not None and good:
            _stderr(f"{what}: {path}")
    return 0 if good else 2


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_embed(args: argparse.Namespace) -> int:
    from globeflow.embed import collect_inputs, embed_images
    from globeflow.encoders import ImageEncoder, get_encoder
    from globeflow.training.distributed import env_world

    world = env_world()
    rank, world_size, local = world if world is not None else (0, 1, 0)
    device = args.device
    if world_size > 1 and device.startswith("cuda"):
        import torch

        # One GPU per process; more processes than GPUs share them round-robin.
        device = f"cuda:{local % max(1, torch.cuda.device_count())}"
    encoder = get_encoder(args.encoder, source=args.encoder_path, device=device)
    if not isinstance(encoder, ImageEncoder):
        raise CLIError(f"--encoder {args.encoder} is a text encoder; embed needs an image encoder")
    items = collect_inputs(args.images, image_root=args.image_root)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = embed_images(
        encoder,
        items,
        out,
        batch_size=args.batch_size,
        workers=args.workers,
        rank=rank,
        world_size=world_size,
        progress=not args.no_progress,
        report=_stderr,
    )
    if rank == 0:
        print(summary.format())
    return 0


def _evaluation_settings(args: argparse.Namespace) -> tuple[dict, dict | None, dict | bool]:
    # guidance None and strategy None: the method's own estimate, resolved by evaluate_run.
    options = {**_sample_options(args), "strategy": args.strategy}
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

    options, density, prdc = _evaluation_settings(args)
    metrics = evaluate_run(args.model, args.data, options, device=args.device, density=density, prdc=prdc)
    resolved = {"strategy": metrics["strategy"], "guidance": metrics["guidance"]}  # the defaults as applied
    metrics["settings"] = {**options, **resolved, **({"density": density} if density else {}), "prdc": prdc}
    save_json(args.out, metrics)
    print(format_metrics(metrics, title=Path(args.model).name))
    if "regions" in metrics:
        print(f"credible regions: {metrics['regions']}")
    print(f"metrics written to {args.out}")
    return 0


def _run_titles(models: list[str]) -> list[str]:
    """Short, distinct row titles: the run folder's name, else its path."""
    names = [Path(m.rstrip("/")).name or m for m in models]
    return [n if names.count(n) == 1 else m for n, m in zip(names, models)]


def cmd_compare(args: argparse.Namespace) -> int:
    """Evaluate several runs on the same data with the same seeds; one table, one row per run."""
    from globeflow.evaluate import evaluate_run, format_table
    from globeflow.io import save_json, write_text

    options, density, prdc = _evaluation_settings(args)
    if prdc:
        prdc["lenient"] = True
    rows = []
    for title, model in zip(_run_titles(args.models), args.models):
        metrics = evaluate_run(model, args.data, options, device=args.device, density=density, prdc=prdc)
        rows.append((title, metrics))
        _stderr(f"{title}: GeoScore {metrics['geoscore']:.1f}")
    table = format_table(rows)
    out = Path(args.out)
    write_text(out, table + "\n")
    runs = {m: {"title": t, "metrics": r} for (t, r), m in zip(rows, args.models)}
    settings = {**options, **({"density": density} if density else {}), "prdc": prdc, "data": str(args.data)}
    save_json(out.with_suffix(".json"), {"settings": settings, "runs": runs})
    print(table)
    print(f"table written to {out} (metrics: {out.with_suffix('.json')})")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from globeflow.data import SyntheticWorld, write_world_dataset

    from globeflow.data.synthetic import city_directions
    from globeflow.io import claim_output_dir

    if args.families is not None and args.families > args.types:
        raise CLIError(f"--families ({args.families}) must not exceed --types ({args.types})")
    if not 0 < args.kappa_min <= args.kappa_max:
        raise CLIError(f"need 0 < --kappa-min <= --kappa-max, got {args.kappa_min} and {args.kappa_max}")
    claim_output_dir(args.out)
    world = SyntheticWorld.make(
        num_types=args.types,
        dim=args.dim,
        sigma=args.sigma,
        seed=args.seed,
        max_components=args.components,
        kappa_range=(args.kappa_min, args.kappa_max),
        families=args.families,
        family_spread=args.family_spread,
        places=city_directions() if args.places == "cities" else None,
    )
    paths = write_world_dataset(args.out, world, args.train, args.test, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from globeflow.demo import DemoOptions, run_demo
    from globeflow.io import claim_output_dir

    claim_output_dir(args.out)
    return run_demo(DemoOptions(**_fields_of(DemoOptions, args), progress=not args.no_progress))


def _model_inputs(model: str | None) -> dict:
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


def _check_density(args: argparse.Namespace) -> None:
    args.levels = _parse_levels(args.levels)
    if not 0.05 <= args.resolution <= 10.0:
        raise CLIError(f"--resolution: expected degrees in [0.05, 10], got {args.resolution}")
    from globeflow.io import check_outputs

    outputs = {"--out": args.out, "--geojson": args.geojson, "--raster": args.raster}
    check_outputs(outputs, {"--data": args.data, **_model_inputs(args.model)}, overwrite=args.overwrite)


def _check_evaluate(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    check_outputs({"--out": args.out}, {"--data": args.data, **_model_inputs(args.model)}, overwrite=args.overwrite)


def _check_compare(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    out = Path(args.out)
    if out.suffix.lower() == ".json":
        raise CLIError(
            f"--out {out}: compare writes a Markdown table there and its metrics beside it as .json; "
            "give a table name such as results.md"
        )
    inputs = {"--data": args.data}
    for m in args.models:
        inputs.update({f"{k} ({m})": v for k, v in _model_inputs(m).items()})
    check_outputs({"--out": out, "--out's metrics": out.with_suffix(".json")}, inputs, overwrite=args.overwrite)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_sh_degree(args: argparse.Namespace) -> None:
    """locdiffusion's latent has (L+1)² coefficients; the SH tables over the 10000 decoding and
    2048 training anchors (float64 while built) and the network's first and last layers (with
    gradients, AdamW moments and EMA) grow with it: refuse what cannot fit before allocating."""
    if getattr(args, "method", None) != "locdiffusion" or args.sh_degree is None:
        return
    d = (args.sh_degree + 1) ** 2
    need = 8 * d * (10000 + 2048 + args.batch_size) + 4 * 5 * 2 * args.width * d
    have = _physical_memory()
    if have is not None and need > have:
        raise CLIError(
            f"--sh-degree {args.sh_degree}: (L+1)² = {d:,} coefficients need about {need / 2**30:,.0f} GiB "
            f"of memory, more than this machine's {have / 2**30:,.0f} GiB; the paper uses L = 31"
        )


def _check_train(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    _check_sh_degree(args)

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; train writes a run directory")
    check_outputs({"--out": out / "config.json"}, {"--data": args.data}, overwrite=True)
    if Path(args.data).exists() and Path(args.data).resolve() == out.resolve():
        raise CLIError(f"--out {out} is the input --data; choose a new run directory")


def _check_embed(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    inputs = {"--images": args.images if Path(args.images).is_file() else None, "--encoder-path": args.encoder_path}
    # --out is resumed when it holds embeddings of the same encoder (checked by embed_images).
    check_outputs({"--out": args.out}, inputs, overwrite=True)


def _check_pack(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    check_outputs({"DEST": args.dest}, {"SRC": args.src}, overwrite=args.overwrite)


def _check_folder_out(args: argparse.Namespace) -> None:
    from globeflow.io import check_output_dir

    check_output_dir("--out", args.out, overwrite=args.overwrite)


def _parse_levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"--levels: expected comma-separated numbers in (0, 1), got {text!r}") from None
    if not levels or not all(0.0 < v < 1.0 for v in levels):
        raise CLIError(f"--levels: every level must be in (0, 1), got {text!r}")
    return levels


def cmd_density(args: argparse.Namespace) -> int:
    """Density map, credible regions and localizability of one row of a file."""
    from globeflow.predict import density_row_report, format_density_summary

    summary = density_row_report(
        args.model, args.data, args.row, out_png=args.out, geojson=args.geojson, raster=args.raster,
        resolution_deg=args.resolution, levels=args.levels, num_samples=args.samples, steps=args.steps,
        guidance=args.guidance, seed=args.seed, calibrated=not args.uncalibrated, device=args.device,
    )  # fmt: skip
    print(
        format_density_summary(
            summary, num_samples=args.samples, out_png=args.out, geojson=args.geojson, raster=args.raster
        )
    )
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from globeflow.training.distill import DistillConfig, distill_run

    cfg = DistillConfig(
        steps=args.steps,
        teacher_steps=args.teacher_steps,
        embeddings=args.embeddings,
        samples_per_embedding=args.samples_per_embedding,
        omega_max=args.omega_max,
        train_steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        progress=not args.no_progress,
    )
    log = None if args.no_progress else (lambda record: print(json.dumps(record), flush=True))
    out = distill_run(args.model, args.out, cfg, data=args.data, init=args.init, log=log)
    print(f"distilled model written to {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit and store the conformal calibration of a run's credible regions."""
    from globeflow.density.calibration import calibrate_run

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
    cal = res.calibration
    print(
        f"calibrated on {cal.n} rows of {args.data} ({len(res.test_rows)} left as test rows), "
        f"{cal.num_samples} samples, {cal.steps} RK4 steps, ω = {cal.guidance:g}, in {res.seconds:.1f} s"
    )
    print("nominal  model level  coverage before (calibration rows)")
    for a in (0.5, 0.9, 0.95):
        print(f"  {100 * a:4.0f}%   {float(cal.level(a)):.4f}       {100 * res.raw_coverage[f'{a:g}']:.1f}%")
    print(f"guarantee: coverage ≥ nominal and ≤ nominal + 1/(n+1) = +{1 / (cal.n + 1):.4f} on exchangeable rows")
    print(f"calibration written to {res.path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from globeflow.serve import Limits, Locator, serve

    if args.max_upload_mb <= 0:
        raise CLIError("--max-upload-mb must be positive")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_batch=args.max_batch)
    print("loading the model…", file=sys.stderr)
    locator = Locator(
        args.model,
        encoder=args.encoder,
        encoder_path=args.encoder_path,
        device=args.device,
        num_samples=args.samples,
        density_steps=args.density_steps,
        limits=limits,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: --host {args.host} makes the server reachable from other machines; it has no authentication",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"globeflow serve: {locator.name} ({locator.input_kind or 'embedding'} input) on http://{host}:{args.port}/ "
        f"(API docs: /docs; Ctrl-C to stop)",
        file=sys.stderr,
    )
    serve(locator, host=args.host, port=args.port)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from globeflow.models import format_models, list_models

    infos = list_models(args.dirs or None)
    if args.json:
        sys.stdout.write("".join(json.dumps(m.to_dict()) + "\n" for m in infos))
    else:
        print(format_models(infos))
    return 0


#: Checks of a command's arguments that need no library: they run before any model loads.
CHECKS = {
    "predict": _check_predict,
    "density": _check_density,
    "evaluate": _check_evaluate,
    "compare": _check_compare,
    "train": _check_train,
    "pack": _check_pack,
    "embed": _check_embed,
    "demo": _check_folder_out,
    "synthetic": _check_folder_out,
}
COMMANDS = {
    "distill": cmd_distill,
    "demo": cmd_demo,
    "synthetic": cmd_synthetic,
    "train": cmd_train,
    "pack": cmd_pack,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "density": cmd_density,
    "calibrate": cmd_calibrate,
    "embed": cmd_embed,
    "serve": cmd_serve,
    "models": cmd_models,
}


def _check_device(name: str) -> None:
    """Reject unknown or unavailable devices here rather than deep inside torch."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name}: MPS is not available on this machine")


def _explain(err: BaseException) -> str:
    """One line for a failure the library did not phrase itself (no traceback)."""
    text = str(err) or type(err).__name__
    if isinstance(err, FloatingPointError):
        return (
            f"the computation diverged ({text}); lower --lr, raise --warmup-steps or --grad-clip, "
            "or use --precision float32"
        )
    if isinstance(err, MemoryError):
        return f"out of memory ({text}); use smaller settings (--batch-size, --samples, --sh-degree, --width)"
    if isinstance(err, OSError) and err.errno == 28 and err.filename is None:
        return f"no space left on device: {text}"
    if type(err).__name__ == "SafetensorError":
        return f"weights file error: {text}"
    if type(err).__name__ in ("UnpicklingError",):
        return "refused to unpickle a file: globeflow loads weights as safetensors only (or torch files with weights_only=True)"
    if isinstance(err, (KeyError, TypeError, AttributeError, IndexError)):
        return f"malformed input ({type(err).__name__}: {text}); rerun with --debug for the traceback"
    return f"{type(err).__name__}: {text} (rerun with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from globeflow.io import CheckpointError  # light; DataError is a ValueError

    try:
        CHECKS.get(args.command, lambda _: None)(args)
        if hasattr(args, "device"):
            _check_device(args.device)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, CheckpointError, ValueError, FileNotFoundError, ImportError, OSError) as err:
        if args.debug:
            raise
        message = str(err)
        if "weights_only" in message:  # torch's advice to unpickle arbitrary code: never follow it
            message = _explain(type("UnpicklingError", (Exception,), {})(message))
        print(f"globeflow {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - every failure is one line unless --debug
        if args.debug:
            raise
        print(f"globeflow {args.command}: error: {_explain(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
