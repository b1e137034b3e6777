"""Exponential moving average (EMA) of model weights.

Sampling from diffusion / flow-matching models is markedly better with EMA weights
than with the raw optimiser iterate, so the trainer keeps one and exports it as the
inference model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the underlying module of a (Distributed)DataParallel wrapper, else ``model``."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


class EMA:
    """EMA of a module's parameters; buffers are copied, not averaged.

    After each optimiser step call :meth:`update`::

        shadow <- d_n * shadow + (1 - d_n) * param

    with ``d_n = min(decay, (1 + n) / (10 + n))`` where ``n`` is the number of
    updates performed before this one (``warmup=True``, the default), or
    ``d_n = decay`` (``warmup=False``). The warm-up keeps the average from being
    dominated by the random initialisation for the first ~``1/(1-decay)`` steps
    (with decay 0.999 that would be ~1000 steps of mostly-init weights); it reaches
    ``decay`` after ``(10*decay - 1)/(1 - decay)`` updates (~9000 for 0.999).

    Buffers (e.g. BatchNorm running statistics) and non-floating-point entries are
    copied verbatim, because averaging statistics of different weight iterates has
    no meaning. The shadow is keyed exactly like ``model.state_dict()``, so
    ``model.load_state_dict(ema.shadow)`` (or :meth:`copy_to`) yields the EMA model
    and the shadow can be saved directly as an inference checkpoint.

    Args:
        model: the module to track (DDP/DataParallel wrappers are unwrapped).
        decay: target decay in [0, 1].
        warmup: use the ``(1 + n) / (10 + n)`` decay warm-up described above.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {decay!r}")
        model = unwrap_model(model)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        # remove_duplicate=False: a tied parameter appears under several state_dict
        # keys and every one of them must be averaged, otherwise copy_to() could load
        # the raw weights through the un-averaged alias.
        params = {k for k, _ in model.named_parameters(remove_duplicate=False)}
        # The shadow lives on the model's device so updates never cross devices.
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._averaged: list[str] = [
            k for k, v in self.shadow.items() if k in params and torch.is_floating_point(v)
        ]
        averaged = set(self._averaged)
        self._copied: list[str] = [k for k in self.shadow if k not in averaged]

    def decay_at(self, n: int) -> float:
        """Decay used by the update that follows ``n`` previous updates."""
        if self.warmup:
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        sd = unwrap_model(model).state_dict()
        d = self.decay_at(self.num_updates)
        self.num_updates += 1
        if self._averaged:
            shadow = [self.shadow[k] for k in self._averaged]
            current = [sd[k].detach() for k in self._averaged]
            # lerp(s, p, 1 - d) = s + (1 - d)(p - s) = d*s + (1 - d)*p; the fused
            # foreach kernel is one launch for all tensors on accelerators.
            torch._foreach_lerp_(shadow, current, 1.0 - d)
        for k in self._copied:
            self.shadow[k].copy_(sd[k])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the EMA weights (and copied buffers) into ``model`` in place."""
        unwrap_model(model).load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "warmup", "num_updates", "shadow": {name: Tensor}}`` (tensors not copied)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": dict(self.shadow),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output; shadow keys must match exactly.

        Values are copied into the existing shadow tensors, so they keep the model's
        device and dtype.
        """
        shadow = state["shadow"]
        missing = sorted(set(self.shadow) - set(shadow))
        unexpected = sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the model: missing={missing} unexpected={unexpected}")
        for k, v in shadow.items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"EMA state shape mismatch for {k!r}: {tuple(v.shape)} vs {tuple(self.shadow[k].shape)}")
            self.shadow[k].copy_(v)
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
