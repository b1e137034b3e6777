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

The parser and the thin ``cmd_*`` function of each command live in one module per command
group: :mod:`~globeflow.cli.predict` (demo, predict, density, calibrate),
:mod:`~globeflow.cli.data` (synthetic, pack, embed), :mod:`~globeflow.cli.train` (train,
distill), :mod:`~globeflow.cli.evaluate` (evaluate, compare) and :mod:`~globeflow.cli.serve`
(serve, models); what several share is in :mod:`~globeflow.cli.common`.

Every library module is imported inside the command that needs it, so ``--help`` and argument
errors answer at once (no torch, matplotlib or numpy at import), and each command checks its
arguments before it loads a model. Library code raises ``ValueError`` / ``DataError`` /
``OSError``; :func:`main` prints them as one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from globeflow.cli import data, evaluate, predict, serve, train
from globeflow.cli.common import CLIError
from globeflow.cli.train import train_config

__all__ = ["COMMANDS", "CHECKS", "CLIError", "build_parser", "main", "train_config"]

_GROUPS = (predict, data, train, evaluate, serve)

#: The subcommands in the order ``globeflow --help`` lists them.
ORDER = (
    "demo", "synthetic", "train", "pack", "distill", "predict", "evaluate", "compare", "density", "calibrate",
    "embed", "serve", "models",
)  # fmt: skip
_PARSERS = {name: add for g in _GROUPS for name, add in g.PARSERS.items()}
#: Checks of a command's arguments that need no library: they run before any model loads.
CHECKS = {name: check for g in _GROUPS for name, check in g.CHECKS.items()}
COMMANDS = {name: cmd for g in _GROUPS for name, cmd in g.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    from globeflow import __version__

    parser = argparse.ArgumentParser(
        prog="globeflow",
        description="Probabilistic visual geolocation with diffusion and flow matching on the sphere.",
    )
    parser.add_argument("--version", action="version", version=f"globeflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ORDER:
        _PARSERS[name](sub)
    return parser


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


def free_cpu_threads() -> int:
    """CPU threads for torch when ``OMP_NUM_THREADS`` is unset: the cores not already busy
    (CPU count minus the 1-minute load average, at least 1). OpenMP threads that share a core
    with other work wait on each other at every barrier: on a 2-core machine under load, two
    threads were 2x slower than one (docs/benchmarks.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available (some containers, Windows)
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


#: Commands that stream rows through bounded buffers; ``predict`` only with ``--data``.
_STREAMING = ("train", "evaluate", "embed", "pack")


def bound_heap() -> bool:
    """Serve every allocation of 1 MiB or more by its own mmap (glibc ``mallopt``), so that
    freed chunk buffers go back to the OS at once. glibc's default raises this threshold
    as large blocks are freed, up to 32 MiB; the chunk-sized arrays of a stream then come from
    the heap and fragment it, and the peak RSS of ``predict --data`` crept up with the rows
    (1.14 GB at 1 M rows, 1.38 GB at 5 M; with this, 1.00 and 1.06 GB). Returns whether it
    applied (glibc only)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, 1 << 20))


def _pick_threads() -> None:
    """Torch's CPU threads: ``OMP_NUM_THREADS`` when set (torch reads it), else
    :func:`free_cpu_threads`."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    torch.set_num_threads(free_cpu_threads())


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
            _pick_threads()
        if args.command in _STREAMING or (args.command == "predict" and getattr(args, "data", None)):
            bound_heap()
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
