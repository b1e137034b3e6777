"""Training: LAMB/AdamW, EMA, crash-safe checkpoints, exact resume, DDP under torchrun.

Typical use::

    from globeflow.training import TrainConfig, train
    result = train(method, x0, emb, "runs/fm", TrainConfig(train_steps=20000, device="cuda"))
    # result.model_path -> EMA weights for inference

Run data-parallel with ``torchrun --nproc_per_node=K script.py`` (no code change).
"""

from globeflow.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_write,
    load_json,
    load_weights,
    load_weights_metadata,
    save_json,
    save_weights,
)

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
    "CheckpointError",
    "CheckpointNotFoundError",
    "DistContext",
    "Lamb",
    "TrainConfig",
    "TrainResult",
    "TrainableMethod",
    "atomic_write",
    "build_optimizer",
    "capture_rng_state",
    "cleanup_distributed",
    "has_training_state",
    "load_json",
    "load_training_state",
    "load_weights",
    "load_weights_metadata",
    "param_groups_for_weight_decay",
    "rank_slice",
    "read_log",
    "restore_rng_state",
    "save_json",
    "save_training_state",
    "save_weights",
    "setup_distributed",
    "train",
    "unwrap_model",
    "warmup_cosine",
    "wrap_model",
]
