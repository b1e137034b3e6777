"""Training commands: ``train`` (a method on embeddings) and ``distill`` (a trained RFM run
into a 1-2 step flow-map sampler)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from globeflow.cli.common import CLIError, fields_of, nonnegative_int, positive_int
from globeflow.methods import METHOD_NAMES

__all__ = ["CHECKS", "COMMANDS", "PARSERS", "model_config", "train_config"]


def add_train_args(p: argparse.ArgumentParser, *, steps: int, batch: int, width: int, depth: int) -> None:
    p.add_argument("--method", choices=METHOD_NAMES, default="rfm", help="method (default rfm; see docs/methods/)")
    p.add_argument("--train-steps", type=positive_int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--batch-size", type=positive_int, default=batch, help=f"rows per step (default {batch})")
    p.add_argument("--width", type=positive_int, default=width, help=f"network width d (default {width})")
    p.add_argument("--depth", type=positive_int, default=depth, help=f"number of AdaLN blocks N (default {depth})")
    p.add_argument("--expansion", type=positive_int, default=4, help="MLP expansion factor (default 4: 4d hidden)")
    p.add_argument(
        "--schedule",
        choices=("skewed_sigmoid", "sigmoid", "linear", "cosine"),
        default="skewed_sigmoid",
        help="noise schedule κ(t) (default skewed_sigmoid, Eq. 15; README, Methods)",
    )
    p.add_argument("--schedule-alpha", type=float, default=None, help="α of the (skewed) sigmoid (default -3)")
    p.add_argument("--schedule-beta", type=float, default=None, help="β of the (skewed) sigmoid (default 7, sigmoid 3)")
    p.add_argument("--cond-drop", type=float, default=0.1, help="condition dropout for guidance (default 0.1)")
    p.add_argument(
        "--cond-depth", type=positive_int, default=1, help="Linear layers of the embedding map (default 1; >1: MLP)"
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
    p.add_argument("--components", type=positive_int, default=None, help="vmf_mixture: K components (default 3)")
    p.add_argument(
        "--kappa-link",
        choices=("softplus", "exp"),
        default=None,
        help="vmf, vmf_mixture: κ activation (default softplus)",
    )
    p.add_argument("--num-components", type=positive_int, default=None, help="mvmf: c components/cells (default 4096)")
    p.add_argument(
        "--log-kappa0",
        type=float,
        default=None,
        help="mvmf: one fixed log κ₀ for every component (default: κ from each cell's size)",
    )
    p.add_argument("--sh-degree", type=positive_int, default=None, help="locdiffusion: SH degree L (default 31)")
    p.add_argument("--lr", type=float, default=8e-4, help="peak learning rate, after the warm-up (default 8e-4)")
    p.add_argument("--warmup-steps", type=int, default=500, help="steps of linear learning-rate warm-up (default 500)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="decoupled weight decay (default 0.05)")
    p.add_argument(
        "--optimizer",
        choices=("adamw", "lamb"),
        default="adamw",
        help="adamw (default) or lamb, the paper's optimizer for 1M-step runs (see docs/core.md)",
    )
    p.add_argument("--final-lr-ratio", type=float, default=0.0, help="final lr of the cosine decay / --lr (default 0)")
    p.add_argument(
        "--ema-decay",
        type=float,
        default=0.999,
        help="decay of the weights' moving average used at inference (default 0.999)",
    )
    p.add_argument(
        "--no-ema-warmup", action="store_true", help="constant EMA decay (default: min(decay, (1+n)/(10+n)) warm-up)"
    )
    p.add_argument(
        "--grad-clip", type=float, default=1.0, help="largest global gradient norm (default 1; 0: no clipping)"
    )
    p.add_argument(
        "--train-precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="float32 (default) or bfloat16: mixed-precision autocast training (~2x faster on AVX-512 BF16 CPUs)",
    )
    p.add_argument(
        "--checkpoint-every", type=positive_int, default=1000, help="steps between checkpoints (default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and noise (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method on a Parquet/NPZ file of embeddings and coordinates")
    p.add_argument(
        "--data", required=True, help="training data (.parquet, .npz, or WebDataset shards: .tar, folder, {a..b})"
    )
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    p.add_argument(
        "--embedding-key", default=None, help="WebDataset: the .npy entry holding the embedding (default: the only one)"
    )
    add_train_args(p, steps=10000, batch=512, width=512, depth=12)
    p.add_argument(
        "--loader",
        choices=("auto", "memory", "stream"),
        default="auto",
        help="memory: read the file into RAM; stream: bounded memory (docs/scale.md); "
        "auto (default): stream Parquet larger than the shuffle buffer, Arrow and WebDataset",
    )
    p.add_argument(
        "--shuffle-buffer", type=positive_int, default=None, help="stream: rows of the shuffle window (default 32768)"
    )


def add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a trained RFM run into a 1-2 step flow-map sampler (a new run)")
    p.add_argument("--model", required=True, help="run directory of a trained RFM model (the teacher)")
    p.add_argument("--out", required=True, help="new run directory for the distilled model")
    p.add_argument("--steps", type=positive_int, default=2, help="jumps per sample by default (default 2)")
    p.add_argument("--data", default=None, help="embeddings to condition on (default: the teacher's training data)")
    p.add_argument("--init", default=None, help="a distilled run of the same teacher to continue training from")
    p.add_argument("--teacher-steps", type=positive_int, default=32, help="Heun steps of the teacher (default 32)")
    # The budget options default to None: DistillConfig.for_device sizes them for --device.
    budget = "default {} on a CPU, {} on CUDA"
    p.add_argument(
        "--embeddings", type=positive_int, default=None, help="embeddings of the trajectories (" + budget.format(4096, 131072) + ")"
    )
    p.add_argument(
        "--samples-per-embedding", type=positive_int, default=None, help="trajectories per embedding (" + budget.format(4, 8) + ")"
    )
    p.add_argument("--omega-max", type=float, default=4.0, help="guidance range [0, ω_max] learnt (default 4)")
    p.add_argument("--train-steps", type=positive_int, default=None, help="optimizer steps (" + budget.format(2500, 12000) + ")")
    p.add_argument("--batch-size", type=positive_int, default=None, help="trajectories per step (" + budget.format(256, 4096) + ")")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate, after the warm-up (default 5e-4)")
    p.add_argument(
        "--warmup-steps", type=nonnegative_int, default=None, help="steps of linear learning-rate warm-up (" + budget.format(100, 200) + ")"
    )
    p.add_argument(
        "--ema-decay", type=float, default=None, help="EMA of the student's weights, 0 for none (" + budget.format(0, 0.9995) + ")"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the trajectories and the training (default 0)")
    p.add_argument("--device", default="cpu", help="torch device of the distillation (default cpu; the run saved is device-free)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines")


def train_config(args: argparse.Namespace):
    """The :class:`~globeflow.training.TrainConfig` of ``globeflow train``'s arguments."""
    from globeflow.training import TrainConfig

    # --no-ema-warmup and --train-precision are the options whose names differ from the fields.
    return TrainConfig(
        **fields_of(TrainConfig, args),
        ema_warmup=not args.no_ema_warmup,
        precision=args.train_precision,
        progress=not args.no_progress,
    )


def model_config(args: argparse.Namespace):
    """The :class:`~globeflow.runs.ModelConfig` of ``globeflow train``'s arguments."""
    from globeflow.runs import ModelConfig

    return ModelConfig(**fields_of(ModelConfig, args))


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_sh_degree(args: argparse.Namespace) -> None:
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


def check_train(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    check_sh_degree(args)

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; train writes a run directory")
    check_outputs({"--out": out / "config.json"}, {"--data": args.data}, overwrite=True)
    if Path(args.data).exists() and Path(args.data).resolve() == out.resolve():
        raise CLIError(f"--out {out} is the input --data; choose a new run directory")


def cmd_train(args: argparse.Namespace) -> int:
    from globeflow.runs import is_main_process, train_run

    out = train_run(
        args.data,
        args.out,
        model_config(args),
        train_config(args),
        embedding_key=args.embedding_key,
        loader=args.loader,
        shuffle_buffer=args.shuffle_buffer,
    )
    if is_main_process():
        print(f"trained model written to {out}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from globeflow.training.distill import DistillConfig, distill_run

    sized = ("embeddings", "samples_per_embedding", "train_steps", "batch_size", "warmup_steps", "ema_decay")
    cfg = DistillConfig.for_device(
        args.device,
        steps=args.steps,
        teacher_steps=args.teacher_steps,
        omega_max=args.omega_max,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
        **{k: getattr(args, k) for k in sized if getattr(args, k) is not None},
    )
    log = None if args.no_progress else (lambda record: print(json.dumps(record), flush=True))
    out = distill_run(args.model, args.out, cfg, data=args.data, init=args.init, log=log, device=args.device)
    print(f"distilled model written to {out}")
    return 0


PARSERS = {"train": add_train, "distill": add_distill}
CHECKS = {"train": check_train}
COMMANDS = {"train": cmd_train, "distill": cmd_distill}
