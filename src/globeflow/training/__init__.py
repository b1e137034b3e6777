"""Training: LAMB/AdamW, EMA, crash-safe training state, exact resume, DDP under torchrun.

File I/O (atomic writes, JSON, safetensors weights) is :mod:`globeflow.io`.

Typical use::

    from globeflow.training import TrainConfig, train
    result = train(method, x0, emb, "runs/fm", TrainConfig(train_steps=20000, device="cuda"))
    # result.model_path -> EMA weights for inference

Run data-parallel with ``torchrun --nproc_per_node=K script.py`` (no code change).
"""

from .checkpoint import (
    capture_rng_state,
    has_training_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from .distributed import DistContext, cleanup_distributed, rank_slice, setup_distributed, wrap_model
from .ema import EMA, unwrap_model
from .loop import TrainableMethod, TrainConfig, TrainResult, read_log, train
from .optim import OPTIMIZERS, Lamb, build_optimizer, param_groups_for_weight_decay, warmup_cosine

__all__ = [
    "EMA",
    "OPTIMIZERS",
    "DistContext",
    "Lamb",
    "TrainConfig",
    "TrainResult",
    "TrainableMethod",
    "build_optimizer",
    "capture_rng_state",
    "cleanup_distributed",
    "has_training_state",
    "load_training_state",
    "param_groups_for_weight_decay",
    "rank_slice",
    "read_log",
    "restore_rng_state",
    "save_training_state",
    "setup_distributed",
    "train",
    "unwrap_model",
    "warmup_cosine",
    "wrap_model",
]
