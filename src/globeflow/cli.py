"""Command-line interface: argument parsing and typed configs only; the work is in the library.

globeflow demo      geolocate place-name queries with the shipped model: answers, maps, HTML report
                    (--synthetic: train and evaluate a small model on the synthetic world)
globeflow synthetic write a synthetic world dataset (train/test Parquet + world.json)
globeflow train     train a method on embeddings
globeflow predict   answers (modes, P(country), regions) for texts or photos; point estimates for a file
globeflow evaluate  GeoScore, distances, accuracies (radii; country/region/city), precision/
                    recall/density/coverage (--density: NLL, localizability, calibration)
globeflow compare   evaluate several runs on the same data and seeds into one table
globeflow density   density map, credible regions (GeoJSON, raster) for one row of a file
globeflow embed     photos (a folder or a metadata CSV) -> Parquet of embeddings
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ModelConfig", "main"]

METHOD_NAMES = ("diffusion", "flow", "rfm", "uniform", "vmf", "vmf_mixture", "mvmf", "locdiffusion")


@dataclass(frozen=True)
class ModelConfig:
    """Model hyper-parameters as given on the command line (resolved into the run's config.json)."""

    method: str = "rfm"
    width: int = 512
    depth: int = 12
    expansion: int = 4
    schedule: str = "skewed_sigmoid"
    schedule_alpha: float | None = None
    schedule_beta: float | None = None
    cond_drop: float = 0.1
    cond_depth: int = 1
    train_noise: str | None = None  # None: logit_normal(-1, 1) for rfm, the schedule otherwise
    train_noise_mean: float = -1.0
    train_noise_std: float = 1.0
    # Method-specific (None: the method's default; see docs/methods/).
    components: int | None = None
    kappa_link: str | None = None
    num_components: int | None = None
    log_kappa0: float | None = None
    sh_degree: int | None = None

    def method_options(self) -> dict:
        """Options of ``create_method`` beyond the shared ones, for the chosen method only."""
        by_method = {
            "vmf": {"kappa_link": self.kappa_link},
            "vmf_mixture": {"kappa_link": self.kappa_link, "components": self.components},
            "mvmf": {"num_components": self.num_components, "log_kappa0": self.log_kappa0},
            "locdiffusion": {"degree": self.sh_degree},
        }
        return {k: v for k, v in by_method.get(self.method, {}).items() if v is not None}

    def train_noise_config(self) -> dict | None:
        """The training noise-level density (None: κ(t) with t ~ U[0, 1], the schedule's).

        Default for rfm: logit-normal(−1, 1), more training near the data; measured better on
        the NLL in docs/recipe.md (diffusion and flow were not measured and keep the schedule).
        """
        name = self.train_noise
        if name is None:
            name = "logit_normal" if self.method == "rfm" else "schedule"
        if name == "schedule":
            return None
        if name == "logit_normal":
            return {"name": "logit_normal", "mean": self.train_noise_mean, "std": self.train_noise_std}
        return {"name": name}

    def schedule_params(self) -> dict:
        params = {}
        if self.schedule_alpha is not None:
            params["alpha"] = self.schedule_alpha
        if self.schedule_beta is not None:
            params["beta"] = self.schedule_beta
        return params


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


def _add_sampling_args(p: argparse.ArgumentParser, guidance: float | None, guidance_help: str | None = None) -> None:
    default = (
        "2 for point estimates of --data, 0 (the model's own density) for answers"
        if guidance is None
        else f"{guidance}"
    )
    default = guidance_help or default
    p.add_argument("--guidance", type=float, default=guidance, help=f"guidance scale ω of Eq. 13 (default {default})")
    p.add_argument("--sample-steps", type=_positive_int, default=16, help="denoising steps (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    p.add_argument("--solver", default=None, help="euler|heun|midpoint (flow, rfm) or ddim|heun (diffusion)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="network precision")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


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


def _add_evaluation_args(p: argparse.ArgumentParser) -> None:
    # ω defaults by strategy: MBR is the Bayes decision under the model's own distribution
    # (ω = 0); one sample is sharpened by ω = 2 as in the paper (docs/recipe.md).
    _add_sampling_args(p, guidance=None, guidance_help="0 with --strategy mbr, 2 with sample/ensemble")
    p.add_argument(
        "--strategy",
        choices=("mbr", "sample", "ensemble"),
        default=None,
        help="point estimate: mbr (default for diffusion/flow/rfm): of 32 samples the one with the highest mean "
        "GeoScore to the others (docs/recipe.md); sample: one sample (the paper's; default for the baselines); "
        "ensemble: the densest of 32 (Appendix A)",
    )
    p.add_argument("--density", action="store_true", help="also NLL (Eq. 18), localizability and HPD coverage")
    p.add_argument("--density-samples", type=_positive_int, default=128, help="samples per row for the regions")
    p.add_argument("--density-steps", type=_positive_int, default=32, help="RK4 steps of the likelihood ODE")
    p.add_argument("--density-guidance", type=float, default=0.0, help="guidance ω of the density (default 0)")
    p.add_argument("--density-rows", type=_positive_int, default=None, help="density metrics on the first N rows")
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


def build_parser() -> argparse.ArgumentParser:
    from globeflow import __version__

    parser = argparse.ArgumentParser(
        prog="globeflow",
        description="Probabilistic visual geolocation with diffusion and flow matching on the sphere.",
    )
    parser.add_argument("--version", action="version", version=f"globeflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="geolocate example queries with the shipped model; maps and an HTML report")
    p.add_argument("--out", default="globeflow-demo", help="output folder (default ./globeflow-demo)")
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

    p = sub.add_parser("train", help="train a method on a Parquet/NPZ file of embeddings and coordinates")
    p.add_argument(
        "--data", required=True, help="training data (.parquet, .npz, or WebDataset shards: .tar, folder, {a..b})"
    )
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    p.add_argument(
        "--embedding-key", default=None, help="WebDataset: the .npy entry holding the embedding (default: the only one)"
    )
    _add_train_args(p, steps=10000, batch=512, width=512, depth=12)

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
    _add_answer_args(p)
    _add_sampling_args(p, guidance=None)

    p = sub.add_parser("evaluate", help="GeoScore, distances and accuracies of point estimates")
    p.add_argument("--model", required=True, help="run directory of a trained model")
    p.add_argument("--data", required=True, help="test data with latitude/longitude (.parquet or .npz)")
    p.add_argument("--out", required=True, help="output JSON with the metrics")
    _add_evaluation_args(p)

    p = sub.add_parser("compare", help="evaluate several runs on the same data and seeds: one table")
    p.add_argument("models", nargs="+", metavar="RUN", help="run directories (or PLONK checkpoints) to compare")
    p.add_argument("--data", required=True, help="test data with latitude/longitude (.parquet or .npz)")
    p.add_argument("--out", required=True, help="output Markdown table (the metrics go next to it as .json)")
    _add_evaluation_args(p)

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
    return parser


# ------------------------------------------------------------------------------- commands
def _train_config(args: argparse.Namespace):
    from globeflow.training import TrainConfig

    return TrainConfig(
        train_steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        ema_decay=args.ema_decay,
        ema_warmup=not args.no_ema_warmup,
        final_lr_ratio=args.final_lr_ratio,
        precision=args.train_precision,
        grad_clip=args.grad_clip,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        progress=not args.no_progress,
    )


def _model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        method=args.method,
        width=args.width,
        depth=args.depth,
        expansion=args.expansion,
        schedule=args.schedule,
        schedule_alpha=args.schedule_alpha,
        schedule_beta=args.schedule_beta,
        cond_drop=args.cond_drop,
        cond_depth=args.cond_depth,
        train_noise=args.train_noise,
        train_noise_mean=args.train_noise_mean,
        train_noise_std=args.train_noise_std,
        components=getattr(args, "components", None),
        kappa_link=getattr(args, "kappa_link", None),
        num_components=getattr(args, "num_components", None),
        log_kappa0=getattr(args, "log_kappa0", None),
        sh_degree=getattr(args, "sh_degree", None),
    )


def _read_training_data(data_path: str | Path, out: Path, embedding_key: str | None):
    """Parquet/NPZ in memory, or WebDataset shards memory-mapped through a cache in ``out``."""
    from globeflow.data import read_dataset
    from globeflow.data.webdataset import is_webdataset, read_webdataset

    if is_webdataset(data_path):
        return read_webdataset(data_path, cache_dir=out / "data_cache", embedding_key=embedding_key)
    if embedding_key is not None:
        raise CLIError("--embedding-key applies to WebDataset shards only")
    return read_dataset(data_path, require_coords=True)


def _encoder_of(data_path: str | Path) -> dict | None:
    """The encoder settings ``globeflow embed`` stored in a Parquet file, if any."""
    from globeflow.embed import read_embed_metadata

    if Path(data_path).suffix.lower() not in (".parquet", ".pq") or not Path(data_path).is_file():
        return None
    try:
        return read_embed_metadata(data_path)
    except (OSError, ValueError):
        return None


def train_run(
    data_path: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg, *, embedding_key: str | None = None
) -> Path:
    """Train ``model_cfg`` on ``data_path`` into run directory ``out`` (resuming if possible)."""
    import torch

    from globeflow.api import CONFIG_FILE
    from globeflow.geometry import latlon_to_xyz
    from globeflow.methods import create_method
    from globeflow.training import train
    from globeflow.training.checkpoint import load_json, save_json
    from globeflow.training.loop import _derive_seed

    data = _read_training_data(data_path, Path(out), embedding_key)
    # The network's initial weights (and MvMF's component placement) come from torch's global
    # generator, which this torch build seeds at random in every process: seed it from --seed so
    # that the same command trains the same model.
    torch.manual_seed(_derive_seed(train_cfg.seed, "init"))
    method = create_method(
        model_cfg.method,
        data.dim,
        width=model_cfg.width,
        depth=model_cfg.depth,
        expansion=model_cfg.expansion,
        schedule=model_cfg.schedule,
        schedule_params=model_cfg.schedule_params(),
        cond_drop=model_cfg.cond_drop,
        **({"cond_depth": model_cfg.cond_depth} if model_cfg.cond_depth != 1 else {}),
        **({"train_noise": model_cfg.train_noise_config()} if model_cfg.train_noise_config() is not None else {}),
        **model_cfg.method_options(),
    )
    x0 = torch.from_numpy(latlon_to_xyz(data.latitude, data.longitude)).float()
    emb = torch.from_numpy(data.embeddings)
    if callable(getattr(method, "prepare", None)):
        # Data-dependent set-up before training (MvMF places its components on the data).
        method.prepare(x0, emb)
    out = Path(out)
    resolved = {
        "model": method.config(),
        "train": dataclasses.asdict(train_cfg),
        "data": {"path": str(Path(data_path).resolve()), "rows": len(data), "embedding_dim": data.dim},
        "cli": dataclasses.asdict(model_cfg),
    }
    encoder = _encoder_of(data_path)
    if encoder is not None:  # predict on photos uses the same encoder by default
        resolved["encoder"] = encoder
    config_path = out / CONFIG_FILE
    if config_path.is_file():
        previous = load_json(config_path)
        if previous.get("model") != resolved["model"]:
            raise CLIError(
                f"{out} already holds a run of a different model ({config_path}); choose a new --out or delete it"
            )
    out.mkdir(parents=True, exist_ok=True)
    if _is_main_process():  # under torchrun only rank 0 writes files
        save_json(config_path, resolved)
    if not any(p.requires_grad for p in method.net.parameters()):
        # Nothing to train (uniform): the run directory is the config and the (empty) weights.
        if _is_main_process():
            from globeflow.api import WEIGHTS_FILE
            from globeflow.training import save_weights

            save_weights(out / WEIGHTS_FILE, method.net.state_dict(), metadata={"step": 0, "method": method.config()})
        return out
    # The trainer writes the EMA weights, which inference loads, to out/model.safetensors.
    train(method, x0, emb, out, train_cfg)
    return out


def _is_main_process() -> bool:
    """True unless this is a non-zero rank launched by torchrun."""
    from globeflow.training.distributed import env_world

    world = env_world()
    return world is None or world[0] == 0


def _sample_options(args: argparse.Namespace) -> dict:
    return {
        "guidance": 2.0 if args.guidance is None else args.guidance,
        "sample_steps": args.sample_steps,
        "seed": args.seed,
        "solver": args.solver,
        "precision": args.precision,
    }


def _predict_points(model, data, args: argparse.Namespace) -> np.ndarray:
    return model.predict(data.embeddings, **_sample_options(args), progress=True)


def cmd_train(args: argparse.Namespace) -> int:
    out = train_run(args.data, args.out, _model_config(args), _train_config(args), embedding_key=args.embedding_key)
    if _is_main_process():
        print(f"trained model written to {out}")
    return 0


def _model_ref(model: str | None) -> str:
    """``--model``, or the shipped model's run directory."""
    if model is not None:
        return model
    from globeflow.pretrained import default_model_dir

    return str(default_model_dir())


def cmd_predict(args: argparse.Namespace) -> int:
    from globeflow.api import load
    from globeflow.data import read_dataset, write_parquet

    inputs = sum(x is not None and x != [] for x in (args.data, args.text, args.images or None))
    if inputs != 1:
        raise CLIError("give one of --data FILE, --text QUERY (repeatable) or IMAGE paths")
    if args.data is None:
        return _predict_answers(args)
    if args.out is None:
        raise CLIError("--out is required with --data")
    model = load(_model_ref(args.model), device=args.device)
    data = read_dataset(args.data, require_coords=False, expected_dim=model.embedding_dim)
    pred = _predict_points(model, data, args)
    columns = dict(data.extra)
    columns["pred_latitude"] = pred[:, 0]
    columns["pred_longitude"] = pred[:, 1]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_parquet(args.out, None, data.latitude, data.longitude, extra=columns)
    print(f"{len(pred)} predictions written to {args.out}")
    return 0


def _model_encoder(model_ref: str) -> str | None:
    """The encoder a model expects: PLONK provenance, or what ``globeflow embed`` recorded."""
    from globeflow.api import CONFIG_FILE
    from globeflow.training.checkpoint import load_json

    path = Path(model_ref)
    if (path / CONFIG_FILE).is_file():
        cfg = load_json(path / CONFIG_FILE)
        if isinstance(cfg, dict) and isinstance(cfg.get("encoder"), dict):
            return cfg["encoder"].get("name")
    return None


def _encode_texts(model, model_ref: str, texts: list[str], encoder: str | None, encoder_path, device: str):
    """Embed ``texts`` with the model's text encoder (or ``encoder``) -> ((N, D), encoder name)."""
    from globeflow.encoders import TextEncoder, get_encoder

    name = encoder or _model_encoder(model_ref) or "minilm"
    enc = get_encoder(name, source=encoder_path, device=device)
    if not isinstance(enc, TextEncoder):
        raise CLIError(f"--encoder {name} is not a text encoder (text queries need one, e.g. minilm)")
    if enc.dim != model.embedding_dim:
        raise CLIError(f"--encoder {name} gives {enc.dim}-d embeddings but the model expects {model.embedding_dim}-d")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise CLIError("--text: empty query")
    return enc.encode_texts(texts), name


def _encode_images(model, model_ref: str, paths: list[str], encoder: str | None, encoder_path, device: str):
    """Embed photos -> (embeddings (N_ok, D), index of each embedded photo in ``records``,
    records: one dict per path with ``image``, EXIF GPS if any, or the ``error``; encoder name)."""
    from globeflow.embed import EmbedItem
    from globeflow.encoders import DEFAULT_IMAGE_ENCODER, ImageEncoder, get_encoder
    from globeflow.encoders.preprocess import ImageError, load_image

    name = encoder or getattr(model, "plonk", {}).get("encoder") or _model_encoder(model_ref)
    name = name or DEFAULT_IMAGE_ENCODER
    enc = get_encoder(name, source=encoder_path, device=device)
    if not isinstance(enc, ImageEncoder):
        raise CLIError(f"--encoder {name} is not an image encoder")
    if enc.dim != model.embedding_dim:
        raise CLIError(f"--encoder {name} gives {enc.dim}-d embeddings but the model expects {model.embedding_dim}-d")
    pixels, good, records = [], [], []
    for path in paths:
        item = EmbedItem(path, Path(path))
        try:
            img = load_image(item.path)
        except (ImageError, FileNotFoundError) as err:
            print(f"skipped {err}", file=sys.stderr)
            records.append({"image": path, "error": str(err)})
            continue
        pixels.append(enc.preprocess(img))
        good.append(len(records))
        gps = img.info.get("gps")
        records.append({"image": path, **({"exif_latitude": gps[0], "exif_longitude": gps[1]} if gps else {})})
    emb = np.zeros((0, model.embedding_dim), np.float32)
    if pixels:
        emb = np.concatenate([enc.encode_pixels(np.stack(pixels[i : i + 32])) for i in range(0, len(pixels), 32)])
    return emb, good, records, name


def _answers(model, emb: np.ndarray, args: argparse.Namespace, *, default_samples: int = 512) -> list:
    """:func:`globeflow.answers.answer` with the command's settings (guidance 0 by default)."""
    from globeflow.answers import answer

    guidance = getattr(args, "guidance", None)
    return answer(
        model,
        emb,
        num_samples=args.samples or default_samples,
        guidance=0.0 if guidance is None else guidance,
        seed=args.seed,
        density_steps=args.density_steps,
    )


def _predict_answers(args: argparse.Namespace) -> int:
    """Answers for ``--text`` queries or photos: JSONL/CSV, and maps/GeoJSON/KML on request."""
    from globeflow.api import load
    from globeflow.viz.outputs import answers_csv_text, write_answer_files, write_text

    model_ref = _model_ref(args.model)
    model = load(model_ref, device=args.device)
    if args.text:
        emb, name = _encode_texts(model, model_ref, args.text, args.encoder, args.encoder_path, args.device)
        good, records = list(range(len(args.text))), [{"query": t} for t in args.text]
    else:
        emb, good, records, name = _encode_images(
            model, model_ref, args.images, args.encoder, args.encoder_path, args.device
        )
    answered = []
    if good:
        answers = _answers(model, emb, args)
        for j, ans in zip(good, answers):
            records[j].update(ans.to_dict())
        answered = [records[j] for j in good]
        truths = [
            (records[j]["exif_latitude"], records[j]["exif_longitude"]) if "exif_latitude" in records[j] else None
            for j in good
        ]
        write_answer_files(
            answered,
            answers,
            method=model,
            emb=emb,
            map_dir=args.map_dir,
            geojson=args.geojson,
            kml=args.kml,
            exact=args.exact_maps,
            log_prob_steps=args.density_steps,
            truths=truths,
            trajectories=args.trajectories,
        )
    for r in records:
        r.update(model=str(model_ref), encoder=name)
    if args.format == "csv":
        text = answers_csv_text(records)
    else:
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)
        print(f"{len(good)} answers ({len(records) - len(good)} skipped) written to {args.out}", file=sys.stderr)
    for what, path in (("maps", args.map_dir), ("GeoJSON", args.geojson), ("KML", args.kml)):
        if path is not None and good:
            print(f"{what}: {path}", file=sys.stderr)
    return 0 if good else 2


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
        report=lambda msg: print(msg, file=sys.stderr),
    )
    if rank == 0:
        print(summary.format())
    return 0


def _truth_keys(data):
    """Administrative keys of the truth from the dataset's own labels (OSV-5M columns), if it has them."""
    from globeflow.metrics.admin import keys_from_labels

    if all(c in data.extra for c in ("country", "region", "city")):
        return keys_from_labels(
            {c: data.extra[c] for c in ("country", "region", "sub-region", "city") if c in data.extra}
        )
    return None


def prdc_samples(model, emb: np.ndarray, options: dict, *, guidance: float, unconditional: bool = False) -> np.ndarray:
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
        raise CLIError(
            f"--prdc-unconditional: method {model.name!r} was not trained with condition dropout, "
            "so it has no unconditional distribution"
        )
    null = np.zeros((1, emb.shape[1]), dtype=np.float32)
    return model.sample(null, len(emb), guidance=0.0, **sample_opts)[0]


def evaluate_run(
    model_dir,
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
    from globeflow.data import read_dataset
    from globeflow.methods import Method
    from globeflow.metrics import admin_accuracy, density_metrics, distance_metrics, prdc_latlon

    if rows is not None and rows < 1:
        raise ValueError(f"rows: expected a positive number of rows, got {rows}")
    model = model_dir if isinstance(model_dir, Method) else load(model_dir, device=device)
    data = read_dataset(data_path, require_coords=True, expected_dim=model.embedding_dim)
    if rows is not None:
        first = slice(0, rows)
        data = dataclasses.replace(
            data,
            embeddings=data.embeddings[first],
            latitude=data.latitude[first],
            longitude=data.longitude[first],
            extra={c: v[first] for c, v in data.extra.items()},
        )
    truth = np.stack([data.latitude, data.longitude], axis=1)
    if options.get("strategy", "") is None:
        # MBR needs samples: the generative methods' default; the baselines keep one sample.
        from globeflow.methods.base import GenerativeMethod

        options = {**options, "strategy": "mbr" if isinstance(model, GenerativeMethod) else "sample"}
    if options.get("guidance", 2.0) is None:
        options = {**options, "guidance": 0.0 if options.get("strategy") == "mbr" else 2.0}
    start = time.perf_counter()
    pred = model.predict(data.embeddings, **options, progress=progress)
    elapsed = time.perf_counter() - start
    metrics = distance_metrics(pred, truth)
    true_keys = _truth_keys(data)
    metrics.update(admin_accuracy(pred, truth, true_keys=true_keys))
    metrics["admin_truth"] = "labels" if true_keys is not None else "reverse_geocoded"
    metrics["predict_seconds"] = elapsed
    metrics["strategy"] = options.get("strategy", "sample")
    metrics["guidance"] = options.get("guidance", 2.0)
    if prdc is not False:
        prdc = dict(prdc or {})
        guidance = prdc.get("guidance")
        guidance = options.get("guidance", 2.0) if guidance is None else guidance
        start = time.perf_counter()
        if options.get("strategy", "sample") == "sample" and guidance == options.get("guidance", 2.0):
            fake = pred  # the point estimates are already one draw per embedding at this ω
        else:
            fake = prdc_samples(model, data.embeddings, options, guidance=guidance)
        metrics.update({k: v for k, v in prdc_latlon(truth, fake).items() if k not in ("n_real", "n_fake")})
        metrics["prdc_guidance"] = float(guidance)
        if prdc.get("unconditional") and float(getattr(model, "cond_drop", 0.0)) <= 0.0 and prdc.get("lenient"):
            # compare: a run without condition dropout gets "–" in the uncond_* columns.
            print(
                f"{model_dir}: no unconditional distribution (no condition dropout); uncond_* left out", file=sys.stderr
            )
        elif prdc.get("unconditional"):
            fake = prdc_samples(model, data.embeddings, options, guidance=0.0, unconditional=True)
            uncond = prdc_latlon(truth, fake)
            metrics.update({f"uncond_{k}": uncond[k] for k in ("precision", "recall", "density", "coverage")})
        metrics["prdc_seconds"] = time.perf_counter() - start
    if density is not None:
        if model.density_space is None:
            raise CLIError(f"--density: method {model.name!r} has no likelihood")
        density = dict(density)
        rows = density.pop("rows", None) or len(truth)
        start = time.perf_counter()
        metrics.update(density_metrics(model, data.embeddings[:rows], truth[:rows], **density))
        metrics["density_seconds"] = time.perf_counter() - start
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


def _format_value(key: str, value) -> str:
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
        cells = [_format_value(k, metrics.get(k)) for k in keys]
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


def _evaluation_settings(args: argparse.Namespace) -> tuple[dict, dict | None, dict | bool]:
    # guidance None and strategy None are resolved per model by evaluate_run.
    options = {**_sample_options(args), "guidance": args.guidance, "strategy": args.strategy}
    density = None
    if args.density:
        density = {
            "num_samples": args.density_samples,
            "steps": args.density_steps,
            "guidance": args.density_guidance,
            "seed": args.seed,
            "rows": args.density_rows,
        }
    prdc = False if args.no_prdc else {"guidance": args.prdc_guidance, "unconditional": args.prdc_unconditional}
    return options, density, prdc


def cmd_evaluate(args: argparse.Namespace) -> int:
    from globeflow.training.checkpoint import save_json

    options, density, prdc = _evaluation_settings(args)
    metrics = evaluate_run(args.model, args.data, options, device=args.device, density=density, prdc=prdc)
    resolved = {"strategy": metrics["strategy"], "guidance": metrics["guidance"]}  # the defaults as applied
    metrics["settings"] = {**options, **resolved, **({"density": density} if density else {}), "prdc": prdc}
    save_json(args.out, metrics)
    print(format_metrics(metrics, title=Path(args.model).name))
    print(f"metrics written to {args.out}")
    return 0


def _run_titles(models: list[str]) -> list[str]:
    """Short, distinct row titles: the run folder's name, else its path."""
    names = [Path(m.rstrip("/")).name or m for m in models]
    return [n if names.count(n) == 1 else m for n, m in zip(names, models)]


def cmd_compare(args: argparse.Namespace) -> int:
    """Evaluate several runs on the same data with the same seeds; one table, one row per run."""
    from globeflow.training.checkpoint import save_json

    options, density, prdc = _evaluation_settings(args)
    if prdc:
        prdc["lenient"] = True
    rows = []
    for title, model in zip(_run_titles(args.models), args.models):
        metrics = evaluate_run(model, args.data, options, device=args.device, density=density, prdc=prdc)
        rows.append((title, metrics))
        print(f"{title}: GeoScore {metrics['geoscore']:.1f}", file=sys.stderr)
    table = format_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n", encoding="utf-8")
    runs = {m: {"title": t, "metrics": r} for (t, r), m in zip(rows, args.models)}
    settings = {**options, **({"density": density} if density else {}), "prdc": prdc, "data": str(args.data)}
    save_json(out.with_suffix(".json"), {"settings": settings, "runs": runs})
    print(table)
    print(f"table written to {out} (metrics: {out.with_suffix('.json')})")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from globeflow.data import SyntheticWorld, write_world_dataset

    from globeflow.data.synthetic import city_directions

    if args.families is not None and args.families > args.types:
        raise CLIError(f"--families ({args.families}) must not exceed --types ({args.types})")
    if not 0 < args.kappa_min <= args.kappa_max:
        raise CLIError(f"need 0 < --kappa-min <= --kappa-max, got {args.kappa_min} and {args.kappa_max}")
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Geolocate example queries with the shipped model (or --model); --synthetic: the old demo."""
    if args.synthetic:
        return _demo_synthetic(args)
    if args.model is None:
        from globeflow.pretrained import default_model_dir

        try:
            default_model_dir()
        except FileNotFoundError as err:
            print(f"{err}\nrunning the synthetic-world demo instead (globeflow demo --synthetic)", file=sys.stderr)
            return _demo_synthetic(args)
    return _demo_answers(args)


def _print_answer(label: str, record: dict) -> None:
    print(f"\n{label}")
    print(f"  estimate: {record['latitude']:.4f}, {record['longitude']:.4f}")
    modes = ", ".join(
        f"({m['latitude']:.2f}, {m['longitude']:.2f}) {100 * m['mass']:.0f}%" for m in record["modes"][:3]
    )
    print(f"  modes: {modes}")
    countries = ", ".join(f"{c['name']} {100 * c['probability']:.0f}%" for c in record["countries"][:4])
    print(f"  P(country): {countries}")
    if record.get("localizability_bits") is not None:
        print(
            f"  localizability: {record['localizability_bits']:.2f} bits   "
            f"90% region: {record['hpd90_area_km2']:,.0f} km²   50% region: {record['hpd50_area_km2']:,.0f} km²"
        )


def heldout_metrics(
    model,
    path: str | Path,
    *,
    rows: int,
    density_rows: int,
    seed: int = 0,
    density_steps: int = 8,
    density_samples: int = 32,
) -> dict:
    """GeoScore, distances and country accuracy of the point estimates (ω = 2, 16 steps, the
    paper's) on the first ``rows`` rows of a held-out file, and the NLL, localizability and HPD
    coverage on the first ``density_rows`` of them (``density_samples`` samples each,
    ``density_steps`` RK4 steps). The HPD thresholds are quantiles of few samples: with 32, a
    calibrated model expects an hpd90_coverage of ≈ 0.88 (the truth must beat the 4th–5th
    lowest of 32 sample log-densities: 1 − 4.1/33), not 0.90."""
    density = None
    if density_rows > 0 and model.density_space == "S2":
        density = {"rows": density_rows, "num_samples": density_samples, "seed": seed, "steps": density_steps}
    options = {"guidance": 2.0, "sample_steps": 16, "seed": seed}
    metrics = evaluate_run(model, path, options, density=density, prdc=False, rows=rows, progress=False)
    # The demo's table shows the point metrics it explains and the calibration of its regions.
    dropped = ("acc_city", "admin_truth", "log_prob_mean", "density_space", "density_samples", "hpd95_coverage")
    return {k: v for k, v in metrics.items() if k not in dropped}


def _demo_answers(args: argparse.Namespace) -> int:
    """Queries (or photos) → answers printed, maps, answers.jsonl/.geojson, report.html,
    then the model's metrics on its held-out queries."""
    from globeflow.api import load
    from globeflow.pretrained import HELDOUT_FILE
    from globeflow.training.checkpoint import save_json
    from globeflow.viz.outputs import write_answer_files, write_answers_jsonl, write_html_report

    t0 = time.perf_counter()
    quick = args.quick
    out = Path(args.out)
    model_ref = _model_ref(args.model)
    model = load(model_ref, device=args.device)
    if args.image:
        emb, good, records, name = _encode_images(
            model, model_ref, args.image, args.encoder, args.encoder_path, args.device
        )
        records = [records[j] for j in good]
        if not records:
            raise CLIError("--image: no photo could be read")
        truths = [(r["exif_latitude"], r["exif_longitude"]) if "exif_latitude" in r else None for r in records]
    else:
        queries = args.query or list(QUICK_DEMO_QUERIES if quick else DEMO_QUERIES)
        emb, name = _encode_texts(model, model_ref, queries, args.encoder, args.encoder_path, args.device)
        records, truths = [{"query": q} for q in queries], None
    print(f"model: {model_ref} ({model.name}, {model.embedding_dim}-d {name} embeddings)")
    start = time.perf_counter()
    # 256 samples: the demo's 2-minute budget on a 2-core CPU (docs/practitioners.md, Speed).
    answers = _answers(model, emb, args, default_samples=128 if quick else 256)
    answer_seconds = time.perf_counter() - start
    for r, a in zip(records, answers):
        r.update(a.to_dict())
        _print_answer(r.get("query") or r.get("image"), r)
    start = time.perf_counter()
    write_answer_files(
        records,
        answers,
        method=model,
        emb=emb,
        map_dir=out / "maps",
        geojson=out / "answers.geojson",
        exact=args.exact_maps,
        log_prob_steps=args.density_steps,
        truths=truths,
        link_base=out,
        trajectories=args.trajectories,
        width_px=900 if quick else 1400,  # --quick: smaller PNGs, faster to draw
    )
    map_seconds = time.perf_counter() - start
    write_answers_jsonl(out / "answers.jsonl", records)
    print(
        f"\n{len(records)} answers in {answer_seconds:.1f} s ({answers[0].num_samples} samples each), maps in {map_seconds:.1f} s"
    )
    metrics, note = None, ""
    heldout = Path(model_ref) / HELDOUT_FILE
    if heldout.is_file():
        rows = args.heldout_rows if args.heldout_rows is not None else (50 if quick else 500)
        density_rows = args.density_rows if args.density_rows is not None else (10 if quick else 50)
        metrics = heldout_metrics(
            model, heldout, rows=rows, density_rows=density_rows, seed=args.seed, density_steps=args.density_steps
        )
        save_json(out / "heldout_metrics.json", metrics)
        note = (
            f"First {metrics['n']} held-out queries of {heldout.name}: point estimates at guidance 2 "
            f"(16 steps); NLL, localizability and HPD coverage on the first {metrics.get('n_density', 0)} "
            f"(32 samples, {args.density_steps} RK4 steps; a calibrated model expects hpd90_coverage ≈ 0.88 "
            "with 32 samples)."
        )
        print(f"\nheld-out ({note})")
        print(format_metrics(metrics, title=Path(model_ref).name))
    else:
        print(f"\nno held-out file at {heldout}: skipped the held-out evaluation")
    write_html_report(
        out / "report.html",
        records,
        title="globeflow: where is it?",
        intro=(
            f"Answers of {model_ref} ({model.name}) to {len(records)} inputs, from "
            f"{answers[0].num_samples} samples each with their exact log-density "
            f"({args.density_steps} RK4 steps). Maps: "
            + ("the model's exact density." if args.exact_maps else "kernel estimate from those samples.")
        ),
        metrics=metrics,
        metrics_note=note,
    )
    print(f"\nreport: {out / 'report.html'}  maps: {out / 'maps'}  answers: {out / 'answers.jsonl'}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


def _demo_synthetic(args: argparse.Namespace) -> int:
    """Synthetic world → train RFM → evaluate, compared with the Bayes-optimal GeoScore."""
    from globeflow.data import SyntheticWorld, read_dataset, write_world_dataset
    from globeflow.metrics import distance_metrics
    from globeflow.training import TrainConfig
    from globeflow.training.checkpoint import save_json

    out = Path(args.out)
    quick = args.quick
    world = SyntheticWorld.make(num_types=4, dim=32, seed=args.seed)
    paths = write_world_dataset(out / "data", world, 2000 if quick else 20000, 200 if quick else 1000, seed=args.seed)
    print(f"synthetic world with {world.num_types} scene types written to {out / 'data'}")
    model_cfg = ModelConfig(method="rfm", width=64 if quick else 128, depth=2 if quick else 3)
    # The paper's optimisation settings (AdamW, lr 8e-4, warm-up, cosine decay, EMA 0.999),
    # shortened to 2000 steps of a small network so that the demo takes about two minutes.
    train_cfg = TrainConfig(
        train_steps=60 if quick else 2000,
        batch_size=128 if quick else 256,
        warmup_steps=10 if quick else 500,
        checkpoint_every=1000,
        seed=args.seed,
        progress=not args.no_progress,
    )
    run_dir = train_run(paths["train"], out / "run", model_cfg, train_cfg)
    options = {"guidance": 2.0, "sample_steps": 16, "seed": 0, "solver": None, "precision": "float32"}
    metrics = evaluate_run(run_dir, paths["test"], options)
    test = read_dataset(paths["test"])
    truth = np.stack([test.latitude, test.longitude], axis=1)
    best = world.best_geoscore(test.embeddings, test.latitude, test.longitude)
    # What one draw from the *true* p(y | c) scores: the target of an unguided single sample.
    true_sample = distance_metrics(world.sample_conditional(test.embeddings, 1, seed=0)[:, 0], truth)["geoscore"]
    metrics["best_achievable_geoscore"] = best
    metrics["true_sample_geoscore"] = true_sample
    save_json(out / "metrics.json", metrics)
    print(format_metrics(metrics, title="RFM S² (demo, ω = 2)"))
    print(f"GeoScore of one sample from the true p(y | c):            {true_sample:.1f}")
    print(f"best achievable GeoScore (Bayes-optimal point estimate):   {best:.1f}")
    print(f"model: {run_dir}  metrics: {out / 'metrics.json'}")
    return 0


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
    from globeflow.api import load
    from globeflow.data import read_dataset
    from globeflow.density import density_map_for_method
    from globeflow.density.localizability import localizability_from_log_prob
    from globeflow.viz.export import (
        hpd_level_raster,
        region_thresholds,
        regions_geojson,
        write_esri_ascii,
        write_geojson,
    )
    from globeflow.viz.maps import plot_density_map

    levels = _parse_levels(args.levels)
    if not 0.05 <= args.resolution <= 10.0:
        raise CLIError(f"--resolution: expected degrees in [0.05, 10], got {args.resolution}")
    model = load(args.model, device=args.device)
    if model.density_space != "S2":
        raise CLIError(f"method {model.name!r} has no density on the sphere (density_space={model.density_space!r})")
    data = read_dataset(args.data, require_coords=False, expected_dim=model.embedding_dim)
    if not 0 <= args.row < len(data):
        raise CLIError(f"--row: {args.row} is out of range for {args.data} ({len(data)} rows)")
    emb = data.embeddings[args.row : args.row + 1]
    options = {"steps": args.steps}
    start = time.perf_counter()
    dmap, samples = density_map_for_method(
        model,
        emb,
        args.resolution,
        num_samples=args.samples,
        seed=args.seed,
        guidance=args.guidance,
        sample_options={"sample_steps": args.steps},
        log_prob_options=options,
    )
    elapsed = time.perf_counter() - start
    best = int(np.argmax(samples.log_prob[0]))
    estimate = samples.latlon[0, best]
    truth = None
    if data.latitude is not None and np.isfinite(data.latitude[args.row]):
        truth = (float(data.latitude[args.row]), float(data.longitude[args.row]))
    regions = region_thresholds(dmap, levels, samples.log_prob[0])
    loc = localizability_from_log_prob(samples.log_prob)
    title = f"{Path(args.model).name}: row {args.row}"
    plot_density_map(
        dmap,
        args.out,
        samples=samples.latlon[0],
        estimate=estimate,
        truth=truth,
        regions=[(r["level"], r["threshold_log_prob"]) for r in regions],
        title=title,
    )
    print(f"estimate (densest of {args.samples} samples): {estimate[0]:.4f}, {estimate[1]:.4f}")
    print(f"localizability: {loc.bits[0]:.2f} ± {loc.stderr[0]:.2f} bits")
    if truth is not None:
        log_p_true = float(model.log_prob(emb, np.array([truth]), guidance=args.guidance, **options)[0])
        print(f"log p(true location) = {log_p_true:.3f} nats/sr")
    for r in regions:
        inside = ""
        if truth is not None:
            inside = (
                "  (contains the true location)"
                if log_p_true >= r["threshold_log_prob"]
                else "  (misses the true location)"
            )
        print(f"{100 * r['level']:.0f}% credible region: {r['area_km2']:.4g} km²{inside}")
    print(f"map: {args.out} ({dmap.num_evaluations} exact evaluations, {elapsed:.1f} s)")
    if args.geojson:
        props = {"row": args.row, "model": str(args.model)}
        write_geojson(
            args.geojson, regions_geojson(dmap, levels, sample_log_prob=samples.log_prob[0], properties=props)
        )
        print(f"regions: {args.geojson}")
    if args.raster:
        thresholds = [(r["level"], r["threshold_log_prob"]) for r in regions]
        write_esri_ascii(args.raster, dmap.lat, dmap.lon, hpd_level_raster(dmap, thresholds))
        print(f"raster: {args.raster}")
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "synthetic": cmd_synthetic,
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "density": cmd_density,
    "embed": cmd_embed,
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


def main(argv: list[str] | None = None) -> int:
    from globeflow.data import DataError
    from globeflow.training.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "device"):
            _check_device(args.device)
        return COMMANDS[args.command](args)
    except (CLIError, DataError, CheckpointError, ValueError, FileNotFoundError, ImportError, OSError) as err:
        print(f"globeflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
