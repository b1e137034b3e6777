"""Data-parallel training under ``torchrun`` (PyTorch DDP).

:func:`globeflow.training.train` calls :func:`setup_distributed` itself, so the
same script runs single-process (``python train.py``) or data-parallel
(``torchrun --nproc_per_node=K train.py``) without changes:

* the process group is initialised from the ``RANK`` / ``WORLD_SIZE`` /
  ``LOCAL_RANK`` environment that torchrun sets (gloo for CPU, nccl for CUDA);
* every rank draws the *global* batch indices from the same seeded generator and
  keeps its own contiguous slice (:func:`rank_slice`), so the global batch is
  independent of the world size and resuming is exact;
* gradients are averaged by DDP; only rank 0 writes files, logs and progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistContext",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "env_world",
    "rank_slice",
    "setup_distributed",
    "wrap_model",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the (possibly trivial) process group.

    Attributes:
        rank: global rank (0 in single-process runs).
        world_size: number of processes.
        local_rank: rank on this node (selects the CUDA device).
        device: device this rank computes on.
        owns_group: True if :func:`setup_distributed` created the process group and
            :func:`cleanup_distributed` must destroy it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the torchrun environment, or None if absent."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world, local


def setup_distributed(device: str | torch.device = "cpu") -> DistContext:
    """Initialise data parallelism if launched by torchrun, else a single-process context.

    * Already-initialised process group (user launched it): reused, not destroyed later.
    * torchrun with ``WORLD_SIZE > 1``: process group with backend ``nccl`` for CUDA
      devices and ``gloo`` otherwise; CUDA ranks use ``cuda:<LOCAL_RANK>`` (the index
      in ``device`` is ignored, as each rank must own a different GPU).
    * Otherwise: ``DistContext(device=device)``.
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        return DistContext(rank, world, local, device, owns_group=False)

    env = env_world()
    if env is None or env[1] <= 1:
        return DistContext(device=device)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this PyTorch build")
    rank, world, local = env
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local, device, owns_group=True)


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Synchronise all ranks (no-op when not distributed)."""
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """In-place sum of ``tensor`` over ranks (returned for convenience)."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when single-process).

    Uses pickle over the process group; only for small control data (RNG states),
    never for weights.
    """
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_model(net: nn.Module, ctx: DistContext, *, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``net`` in DDP when distributed (else return it unchanged).

    DDP broadcasts rank 0's parameters and buffers at construction, so ranks whose
    networks were initialised with different seeds still start identical.
    ``find_unused_parameters`` must be True if some parameters can receive no
    gradient in a step (e.g. a learned null-condition embedding that no sample of
    a batch happened to use); it costs an extra graph traversal per step.
    """
    if not ctx.is_distributed:
        return net
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        net, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def rank_slice(global_indices: Tensor, ctx: DistContext) -> Tensor:
    """This rank's contiguous share of a global batch ``(B,)`` -> ``(B // world_size,)``.

    ``B`` must be divisible by the world size: DDP averages per-rank mean losses,
    which equals the global-batch mean only for equal shares.
    """
    b = global_indices.shape[0]
    if b % ctx.world_size != 0:
        raise ValueError(f"batch_size ({b}) must be divisible by the world size ({ctx.world_size})")
    per = b // ctx.world_size
    return global_indices[ctx.rank * per : (ctx.rank + 1) * per]
