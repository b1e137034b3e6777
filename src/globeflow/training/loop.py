"""The training loop: seeded batches, LAMB/AdamW, EMA, JSONL log, exact resume, DDP.

:func:`train` trains any *method* object that exposes

* ``method.net: nn.Module`` -- every trainable parameter lives here;
* ``method.loss(x0, emb, generator, net=None) -> Tensor`` (scalar) -- draws its own
  noise / times / condition dropout from ``generator`` and evaluates ``net``
  (the DDP wrapper when distributed) or ``method.net`` when ``net`` is None;
* ``method.config() -> dict`` -- JSON description (stored in ``model.safetensors``).

Files written into ``out_dir`` (rank 0 only)::

    train_config.json      resolved TrainConfig
    train_log.jsonl        one record per log interval
    checkpoint/            full training state (see checkpoint.py), every
                           ``checkpoint_every`` steps and at the end
    model.safetensors      EMA weights keyed like ``method.net.state_dict()``:
                           what inference loads

``config.json`` (the method description) belongs to the caller and is not touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from globeflow.io import atomic_write, save_json, save_weights
from globeflow.runs import CHECKPOINT_DIR, LOG_FILE, TRAIN_CONFIG_FILE, WEIGHTS_FILE

from .checkpoint import (
    capture_rng_state,
    has_training_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from .distributed import (
    DistContext,
    all_gather_object,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    rank_slice,
    setup_distributed,
    wrap_model,
)
from .ema import EMA
from .optim import OPTIMIZERS, build_optimizer, warmup_cosine

if TYPE_CHECKING:
    from globeflow.data.stream import TrainStream

__all__ = ["TrainConfig", "TrainResult", "TrainableMethod", "read_log", "train"]


# Fields whose change between an interrupted run and its resumption alters the
# training trajectory (others only affect logging/checkpoint cadence/placement).
_TRAJECTORY_FIELDS = (
    "train_steps", "batch_size", "lr", "warmup_steps", "weight_decay", "optimizer",
    "ema_decay", "grad_clip", "seed", "final_lr_ratio", "ema_warmup", "precision",
)


@runtime_checkable
class TrainableMethod(Protocol):
    """What :func:`train` needs from a method (see module docstring)."""

    net: nn.Module

    def loss(self, x0: Tensor, emb: Tensor, generator: torch.Generator, net: nn.Module | None = None) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: What :meth:`TrainConfig.validate` checks: (field, valid?, what it must be), in this order.
_FIELD_CHECKS: tuple[tuple[str, Any, str], ...] = (
    *(
        (name, lambda v: _is_int(v) and v > 0, "must be a positive integer")
        for name in ("train_steps", "batch_size", "checkpoint_every", "log_every")
    ),
    ("warmup_steps", lambda v: _is_int(v) and v >= 0, "must be a non-negative integer"),
    ("lr", lambda v: _is_num(v) and v > 0, "must be a positive finite number"),
    ("weight_decay", lambda v: _is_num(v) and v >= 0, "must be >= 0"),
    ("optimizer", lambda v: isinstance(v, str) and v.lower() in OPTIMIZERS, f"must be one of {list(OPTIMIZERS)}"),
    ("ema_decay", lambda v: _is_num(v) and 0.0 <= v <= 1.0, "must be in [0, 1]"),
    ("grad_clip", lambda v: v is None or (_is_num(v) and v >= 0), "must be None or a number >= 0"),
    ("seed", _is_int, "must be an integer"),
    ("final_lr_ratio", lambda v: _is_num(v) and 0.0 <= v <= 1.0, "must be in [0, 1]"),
    ("precision", lambda v: v in ("float32", "bfloat16"), "must be 'float32' or 'bfloat16'"),
    ("device", lambda v: isinstance(v, str) and bool(v), "must be a device string such as 'cpu' or 'cuda'"),
)


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
        train_steps: number of optimisation steps (> 0).
        batch_size: *global* batch size (> 0; divisible by the world size under DDP).
        lr: peak learning rate (> 0).
        warmup_steps: linear warm-up length (>= 0), then cosine decay to
            ``final_lr_ratio * lr`` at ``train_steps``.
        weight_decay: decoupled weight decay on matrices (biases / norm params: none).
        optimizer: ``"adamw"`` (default) or ``"lamb"`` (the paper's, for long large-batch
            runs: its trust ratio ‖w‖/‖u‖ grows the zero-initialised last layer of each
            residual block only by a factor ~(1 + lr) per step, so short runs underfit).
        ema_decay: EMA decay in [0, 1].
        grad_clip: max global gradient norm; None or 0 disables clipping.
        seed: seeds batch sampling, the loss generator and torch's global RNG.
        checkpoint_every: steps between checkpoints (> 0); one is always written at the end.
        log_every: steps between log records (> 0); one is always written at the end.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...; under torchrun with
            CUDA each rank uses ``cuda:<LOCAL_RANK>``.
        progress: show a tqdm bar (rank 0 only).
        final_lr_ratio: final lr as a fraction of ``lr`` (in [0, 1]).
        ema_warmup: use the ``min(decay, (1+n)/(10+n))`` EMA decay warm-up.
        find_unused_parameters: passed to DDP; needed if some parameters may get no
            gradient in a step.
        precision: ``"float32"`` or ``"bfloat16"``: the loss (forward and backward) runs
            under bfloat16 autocast; weights, optimiser state, EMA and the residual stream
            stay float32 (mixed precision, Micikevicius et al. 2018). On CPUs with AVX-512
            BF16/AMX the step is ~1.5-2× faster (docs/recipe.md).
    """

    train_steps: int = 10000
    batch_size: int = 512
    lr: float = 8e-4
    warmup_steps: int = 500
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    device: str = "cpu"
    progress: bool = True
    final_lr_ratio: float = 0.0
    ema_warmup: bool = True
    find_unused_parameters: bool = False
    precision: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field (in the order of :data:`_FIELD_CHECKS`)."""
        for name, valid, must in _FIELD_CHECKS:
            v = getattr(self, name)
            if not valid(v):
                raise ValueError(f"{name} {must}, got {v!r}")
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"device: invalid device string {self.device!r} ({e})") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {unknown}")
        return cls(**d)


@dataclass
class TrainResult:
    """Outcome of :func:`train` (identical on every rank).

    Attributes:
        out_dir: the run directory.
        model_path: ``out_dir/model.safetensors`` (EMA weights).
        checkpoint_dir: ``out_dir/checkpoint``.
        log_path: ``out_dir/train_log.jsonl``.
        step: steps completed (== ``config.train_steps``).
        resumed_from: step restored from the checkpoint, or None for a fresh run.
        final_loss: mean loss of the last log interval (None if unknown).
        elapsed_s: training wall time, cumulative over resumptions.
        world_size: number of data-parallel processes.
        rank: this process's rank (only rank 0 wrote files); lets a torchrun script
            restrict post-training work (evaluation, export) to rank 0.
    """

    out_dir: Path
    model_path: Path
    checkpoint_dir: Path
    log_path: Path
    step: int
    resumed_from: int | None
    final_loss: float | None
    elapsed_s: float
    world_size: int = 1
    rank: int = 0


def _derive_seed(*parts: Any) -> int:
    """Stable 63-bit seed from arbitrary parts (independent streams per purpose/rank)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``train_log.jsonl`` file; a torn last line (crash) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                out.append(rec)
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Keep only records with ``step <= step`` so a resumed run does not duplicate lines."""
    kept = [r for r in read_log(path) if r["step"] <= step]
    text = "".join(json.dumps(r) + "\n" for r in kept)

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, write)


def _check_inputs(method: Any, x0: Tensor, emb: Tensor) -> None:
    if not isinstance(getattr(method, "net", None), nn.Module) or not callable(getattr(method, "loss", None)):
        raise TypeError("method must have a `net` nn.Module and a `loss(x0, emb, generator, net=None)` method")
    if not isinstance(x0, Tensor) or x0.ndim != 2 or x0.shape[1] != 3:
        raise ValueError(f"x0 must be a (N, 3) tensor of unit xyz vectors, got shape {tuple(getattr(x0, 'shape', ()))}")
    if not isinstance(emb, Tensor) or emb.ndim != 2 or emb.shape[0] != x0.shape[0]:
        raise ValueError(
            f"emb must be a (N, D) tensor with N = {x0.shape[0]} rows, got shape {tuple(getattr(emb, 'shape', ()))}"
        )
    if x0.shape[0] == 0:
        raise ValueError("x0/emb are empty (N = 0)")


def train(
    method: TrainableMethod,
    x0: Tensor,
    emb: Tensor,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = True,
    stream: TrainStream | None = None,
) -> TrainResult:
    """Train ``method.net`` on ``(x0, emb)`` pairs; single-process or under torchrun.

    Args:
        method: see :class:`TrainableMethod`.
        x0: ``(N, 3)`` float32 unit vectors (targets). May stay on the CPU: each
            batch is gathered there and moved to ``config.device``.
        emb: ``(N, D)`` float32 frozen image embeddings, row-aligned with ``x0``.
        out_dir: run directory (created).
        config: hyper-parameters; validated here.
        resume: continue from ``out_dir/checkpoint`` if it holds a committed state.
            The result is bitwise identical to an uninterrupted run on the same
            device/thread configuration (CPU kernels are deterministic; on CUDA this
            additionally needs deterministic kernels). With ``resume=False`` an
            existing checkpoint and log are discarded.

    Each step k = 1..train_steps: lr = ``warmup_cosine(k, ...)``; ``batch_size``
    indices drawn uniformly *with replacement* from a seeded CPU generator (each
    rank keeps its slice); loss; backward; global-norm clipping; optimiser step;
    EMA update. Side effects: torch's global RNG is seeded from ``config.seed`` (or
    restored on resume), because nets may use it (dropout); on return
    ``method.net`` holds the raw (non-EMA) weights -- the EMA weights are in
    ``model.safetensors`` (``EMA.copy_to``-compatible keys).

    ``stream``: a :class:`~globeflow.data.stream.TrainStream` to read the batches from
    instead (``x0``/``emb`` are then ignored and may be None): bounded memory, each rank
    reads its own disjoint units, and the stream's position is saved in the checkpoint so
    that resuming stays bitwise exact.

    Raises:
        ValueError: invalid config or data shapes.
        FloatingPointError: non-finite gradient norm (detected at the next log or
            checkpoint step, so no non-finite state is ever checkpointed).
    """
    config.validate()
    if stream is None:
        _check_inputs(method, x0, emb)
    ctx = setup_distributed(config.device)
    try:
        return _train(method, x0, emb, Path(out_dir), config, resume, ctx, stream)
    finally:
        cleanup_distributed(ctx)


def _start_stream(stream: TrainStream, config: TrainConfig, ctx: DistContext) -> int:
    """Start this rank's part of the ``stream``; returns the rows of the whole dataset."""
    n_data = stream.num_rows
    stream.start(seed=config.seed, rank=ctx.rank, world_size=ctx.world_size, batch_rows=config.batch_size // ctx.world_size)
    return n_data


def _check_finite(nonfinite: Tensor, last_checked: int, step: int, ckpt_dir: Path) -> None:
    """Raise FloatingPointError if a gradient norm since step ``last_checked`` was not finite."""
    if bool(nonfinite.item()):
        raise FloatingPointError(
            f"non-finite gradient norm at a step in ({last_checked}, {step}]; "
            f"the last checkpoint in {ckpt_dir} predates it"
        )


def _write_log(log_file: IO[str] | None, record: dict) -> None:
    if log_file is not None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()


def _last_logged_loss(log_path: Path) -> float | None:
    records = read_log(log_path)
    return records[-1]["loss"] if records else None


def _json_config(method: TrainableMethod) -> dict:
    """``method.config()``, checked now rather than after the last step, when it is written
    into model.safetensors."""
    method_config = method.config()
    try:
        json.dumps(method_config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"method.config() must return a JSON-serialisable dict: {e}") from e
    return method_config


def _open_log(out_dir: Path, config: TrainConfig, ctx: DistContext, *, resumed: bool, start_step: int) -> IO[str] | None:
    """On the main rank: the run directory prepared (a stale checkpoint of a discarded run
    removed, the log cut back to ``start_step``, the training config written) and the log
    opened for appending; None on the other ranks."""
    if not ctx.is_main:
        return None
    ckpt_dir = out_dir / CHECKPOINT_DIR
    log_path = out_dir / LOG_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resumed and ckpt_dir.exists():
        # A stale checkpoint from a discarded run must not be resumed later.
        shutil.rmtree(ckpt_dir)
    _truncate_log(log_path, start_step)
    save_json(out_dir / TRAIN_CONFIG_FILE, config.to_dict())
    return open(log_path, "a", encoding="utf-8")


def _next_batch(
    x0: Tensor,
    emb: Tensor,
    stream: TrainStream | None,
    batch_size: int,
    batch_gen: torch.Generator,
    ctx: DistContext,
) -> tuple[Tensor, Tensor]:
    """This rank's rows of the step on its device: from its own units of the ``stream``, else
    its slice of a global batch of ``batch_size`` random rows of (``x0``, ``emb``)."""
    device = ctx.device
    if stream is not None:
        xb, eb = stream.next_batch()
        return xb.to(device, non_blocking=True), eb.to(device, non_blocking=True)
    idx = rank_slice(torch.randint(x0.shape[0], (batch_size,), generator=batch_gen), ctx)
    xb = x0[idx.to(x0.device)].to(device, non_blocking=True)
    eb = emb[idx.to(emb.device)].to(device, non_blocking=True)
    return xb, eb


def _resume(
    ckpt_dir: Path,
    config: TrainConfig,
    ctx: DistContext,
    state: tuple[nn.Module, EMA, torch.optim.Optimizer],
    generators: tuple[torch.Generator, torch.Generator],
    loss_acc: Tensor,
    stream: TrainStream | None,
    n_data: int,
) -> tuple[int, float, int]:
    """Restore the network, EMA, optimizer (``state``), the batch and loss ``generators``, this
    rank's ``loss_acc`` and the ``stream``'s position from the checkpoint in ``ckpt_dir``, warning
    when the run cannot continue exactly. Returns (step, elapsed seconds, loss count of the log)."""
    net, ema, optimizer = state
    batch_gen, loss_gen = generators
    device = ctx.device
    total = config.train_steps
    start_step, rng, extra = load_training_state(ckpt_dir, net, ema, optimizer)
    if start_step > total:
        raise ValueError(f"train_steps ({total}) is smaller than the step of the checkpoint in {ckpt_dir} ({start_step})")
    batch_gen.set_state(rng["batch"])
    ranks = rng["ranks"]
    if len(ranks) == ctx.world_size:
        restore_rng_state(ranks[ctx.rank], {"loss": loss_gen}, cuda_device=device)
        loss_acc.fill_(extra["log_loss_sums"][ctx.rank])
        if stream is not None and extra.get("data_stream"):
            stream.load_state_dict(extra["data_stream"][ctx.rank])
        elif (stream is not None) != bool(extra.get("data_stream")) and ctx.is_main:
            warnings.warn(
                f"resuming {ckpt_dir} with another data loader (streaming vs in memory): the batches "
                "start afresh, the run will differ from an uninterrupted one",
                stacklevel=4,
            )
    else:
        # Per-rank streams cannot be mapped onto a different number of ranks;
        # continue with fresh, seed- and step-derived streams (not bit-exact).
        warnings.warn(
            f"resuming a {len(ranks)}-process checkpoint with {ctx.world_size} processes: "
            "per-rank RNG streams are re-seeded, the run is not bitwise reproducible",
            stacklevel=4,
        )
        torch.manual_seed(_derive_seed(config.seed, "global", ctx.rank, start_step))
        loss_gen.manual_seed(_derive_seed(config.seed, "loss", ctx.rank, start_step))
        loss_acc.fill_(sum(extra["log_loss_sums"]) / ctx.world_size)
    saved_cfg = extra.get("train_config", {})
    changed = [k for k in _TRAJECTORY_FIELDS if k in saved_cfg and saved_cfg[k] != getattr(config, k)]
    if extra.get("n_data", n_data) != n_data:
        changed.append(f"dataset size {extra['n_data']} -> {n_data}")
    if changed and ctx.is_main:
        warnings.warn(
            f"resuming {ckpt_dir} with changed settings {changed}: the run will differ "
            "from an uninterrupted one",
            stacklevel=4,
        )
    return start_step, float(extra["elapsed_s"]), int(extra["log_loss_count"])


def _train(
    method: TrainableMethod,
    x0: Tensor,
    emb: Tensor,
    out_dir: Path,
    config: TrainConfig,
    resume: bool,
    ctx: DistContext,
    stream: TrainStream | None = None,
) -> TrainResult:
    if config.batch_size % ctx.world_size != 0:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the world size ({ctx.world_size})")
    device = ctx.device
    total = config.train_steps
    n_data = _start_stream(stream, config, ctx) if stream is not None else x0.shape[0]
    ckpt_dir = out_dir / CHECKPOINT_DIR
    log_path = out_dir / LOG_FILE
    method_config = _json_config(method)

    net = method.net.to(device)
    net.train()
    # DDP broadcasts rank 0's weights at construction, so EMA and optimizer are
    # built afterwards, from weights identical on all ranks.
    model = wrap_model(net, ctx, find_unused_parameters=config.find_unused_parameters)
    ema = EMA(net, config.ema_decay, warmup=config.ema_warmup)
    optimizer = build_optimizer(config.optimizer, net, lr=config.lr, weight_decay=config.weight_decay)

    # Batch indices come from a CPU generator shared (same seed) by all ranks: every
    # rank knows the whole global batch, which makes it world-size independent.
    batch_gen = torch.Generator(device="cpu")
    batch_gen.manual_seed(_derive_seed(config.seed, "batch"))
    # Noise/time/dropout of the loss must differ between ranks (they see different
    # samples), hence a per-rank stream; it lives on the compute device because
    # sampling on an accelerator requires a generator of that device.
    loss_gen = torch.Generator(device=device)
    loss_gen.manual_seed(_derive_seed(config.seed, "loss", ctx.rank))

    start_step = 0
    resumed_from: int | None = None
    elapsed_before = 0.0
    loss_acc = torch.zeros((), device=device)  # this rank's loss sum since the last log record
    loss_count = 0
    if resume and has_training_state(ckpt_dir):
        start_step, elapsed_before, loss_count = _resume(
            ckpt_dir, config, ctx, (net, ema, optimizer), (batch_gen, loss_gen), loss_acc, stream, n_data
        )
        resumed_from = start_step
    else:
        torch.manual_seed(_derive_seed(config.seed, "global", ctx.rank))

    log_file = _open_log(out_dir, config, ctx, resumed=resumed_from is not None, start_step=start_step)
    barrier(ctx)

    def save_checkpoint(step: int, elapsed: float) -> None:
        # Collective: every rank contributes its RNG streams and loss accumulator.
        mine = {
            "rng": capture_rng_state({"loss": loss_gen}, cuda_device=device),
            "loss_sum": float(loss_acc.item()),
            "data_stream": None if stream is None else stream.state_dict(),
        }
        gathered = all_gather_object(mine, ctx)
        if ctx.is_main:
            save_training_state(
                ckpt_dir,
                model=net,
                ema=ema,
                optimizer=optimizer,
                step=step,
                rng={"batch": batch_gen.get_state(), "ranks": [g["rng"] for g in gathered]},
                extra={
                    "elapsed_s": elapsed,
                    "log_loss_sums": [g["loss_sum"] for g in gathered],
                    "log_loss_count": loss_count,
                    "world_size": ctx.world_size,
                    "n_data": n_data,
                    "train_config": config.to_dict(),
                    **({"data_stream": [g["data_stream"] for g in gathered]} if stream is not None else {}),
                },
            )
        # Nobody runs ahead (or exits) while rank 0 is still writing.
        barrier(ctx)

    max_norm = config.grad_clip if config.grad_clip else math.inf
    bf16 = config.precision == "bfloat16"
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    last_checked = start_step
    final_loss: float | None = None
    pbar = tqdm(
        total=total,
        initial=start_step,
        disable=not (config.progress and ctx.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    t_start = t_last = time.perf_counter()
    step_last = start_step
    try:
        for step in range(start_step, total):
            k = step + 1
            lr = warmup_cosine(k, total, config.warmup_steps, config.lr, config.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr

            xb, eb = _next_batch(x0, emb, stream, config.batch_size, batch_gen, ctx)

            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = method.loss(xb, eb, loss_gen, net=model)
            if loss.ndim != 0:
                raise ValueError(f"method.loss must return a scalar, got shape {tuple(loss.shape)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Gradients are already all-reduced here, so the norm (and the
            # non-finite flag) is identical on every rank.
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
            # Accumulated on the device and checked only at log/checkpoint steps, to
            # avoid a host sync per step on accelerators.
            nonfinite |= ~torch.isfinite(grad_norm)
            optimizer.step()
            ema.update(net)
            loss_acc += loss.detach()
            loss_count += 1
            pbar.update(1)

            log_now = k % config.log_every == 0 or k == total
            ckpt_now = k % config.checkpoint_every == 0 or k == total
            if not (log_now or ckpt_now):
                continue
            _check_finite(nonfinite, last_checked, k, ckpt_dir)
            last_checked = k
            now = time.perf_counter()
            if log_now:
                mean_loss = all_reduce_sum(loss_acc.clone(), ctx).item() / (loss_count * ctx.world_size)
                record = {
                    "step": k,
                    "loss": mean_loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm.item()),
                    "elapsed_s": elapsed_before + (now - t_start),
                    "steps_per_s": (k - step_last) / max(now - t_last, 1e-9),
                }
                final_loss = mean_loss
                _write_log(log_file, record)
                pbar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.3g}")
                loss_acc.zero_()
                loss_count = 0
                t_last, step_last = now, k
            if ckpt_now:
                save_checkpoint(k, elapsed_before + (now - t_start))
    finally:
        pbar.close()
        if log_file is not None:
            log_file.close()

    elapsed = elapsed_before + (time.perf_counter() - t_start)
    model_path = out_dir / WEIGHTS_FILE
    if ctx.is_main:
        metadata = {"step": total, "weights": "ema", "ema_decay": config.ema_decay, "method": method_config}
        save_weights(model_path, ema.shadow, metadata=metadata)
    barrier(ctx)
    if final_loss is None:  # nothing left to train: report the last logged value
        final_loss = _last_logged_loss(log_path)
    return TrainResult(
        out_dir=out_dir,
        model_path=model_path,
        checkpoint_dir=ckpt_dir,
        log_path=log_path,
        step=total,
        resumed_from=resumed_from,
        final_loss=final_loss,
        elapsed_s=elapsed,
        world_size=ctx.world_size,
        rank=ctx.rank,
    )
