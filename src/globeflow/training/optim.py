"""Optimisers and learning-rate schedule used by the trainer.

* :class:`Lamb` -- layer-wise adaptive large-batch optimiser (You et al. 2019,
  "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes").
* :func:`build_optimizer` -- LAMB or AdamW with the usual split of parameters into
  a weight-decayed group (matrices) and a non-decayed group (biases, norm layers,
  any other 1-D parameter).
* :func:`warmup_cosine` -- linear warm-up followed by cosine decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Lamb",
    "OPTIMIZERS",
    "build_optimizer",
    "param_groups_for_weight_decay",
    "warmup_cosine",
]

#: Names accepted by :func:`build_optimizer`.
OPTIMIZERS: tuple[str, ...] = ("lamb", "adamw")

# Module types whose parameters are never weight-decayed: their weights are scales /
# shifts of normalised activations, and decaying them towards 0 fights the
# normalisation rather than regularising capacity.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
)
if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments + decoupled weight decay + per-tensor trust ratio.

    For every parameter tensor ``w`` with gradient ``g`` at step ``t`` (1-based)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        u = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps) + weight_decay * w
        r = ||w|| / ||u||          (r = 1 if ||w|| == 0 or ||u|| == 0)
        r = min(r, trust_clip)     (only if trust_clip is not None)
        w = w - lr * r * u

    The trust ratio makes the step size of each tensor proportional to its norm,
    which is what lets LAMB use very large batches/learning rates. Norms are
    Frobenius norms over the whole tensor ("layer" = parameter tensor).

    Parameter groups accept an extra boolean key ``adapt`` (default True). With
    ``adapt=False`` the trust ratio is fixed to 1 (plain AdamW-style update). This
    follows the reference BERT implementation (``exclude_from_layer_adaptation``
    defaults to the weight-decay exclusions): a bias initialised at 0 would
    otherwise only ever move by ``lr * ||b||`` per step and stay stuck near 0.
    :func:`build_optimizer` sets ``adapt=False`` on the no-decay group.

    Args:
        params: iterable of tensors or of parameter-group dicts.
        lr: learning rate (> 0).
        betas: Adam moment decays, each in [0, 1).
        eps: added to the denominator, >= 0 (1e-6 as in the paper's BERT runs).
        weight_decay: decoupled weight decay coefficient (>= 0), added to the update
            *before* the trust ratio, as in the paper.
        trust_clip: optional upper bound on the trust ratio.

    Optimizer state per parameter: ``step`` (int), ``exp_avg`` and ``exp_avg_sq``
    (tensors shaped like the parameter). ``state_dict`` / ``load_state_dict`` are the
    standard :class:`torch.optim.Optimizer` ones.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        trust_clip: float | None = None,
    ) -> None:
        if not (lr > 0.0 and math.isfinite(lr)):
            raise ValueError(f"Lamb: lr must be a positive finite number, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb: betas must be two numbers in [0, 1), got {betas!r}")
        if not eps >= 0.0:
            raise ValueError(f"Lamb: eps must be >= 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Lamb: weight_decay must be >= 0, got {weight_decay!r}")
        if trust_clip is not None and not trust_clip > 0.0:
            raise ValueError(f"Lamb: trust_clip must be > 0 or None, got {trust_clip!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            trust_clip=trust_clip,
            adapt=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Perform one optimisation step. ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr: float = group["lr"]
            eps: float = group["eps"]
            wd: float = group["weight_decay"]
            trust_clip: float | None = group["trust_clip"]
            adapt: bool = group.get("adapt", True)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1
                t = state["step"]
                exp_avg: Tensor = state["exp_avg"]
                exp_avg_sq: Tensor = state["exp_avg_sq"]

                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bias_c1 = 1.0 - beta1**t
                bias_c2 = 1.0 - beta2**t

                denom = (exp_avg_sq / bias_c2).sqrt_().add_(eps)
                update = (exp_avg / bias_c1).div_(denom)
                if wd != 0.0:
                    update.add_(p, alpha=wd)

                if adapt:
                    # Kept as tensors (no .item()) so the step never forces a
                    # host-device synchronisation on accelerators.
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    ok = (w_norm > 0) & (u_norm > 0)
                    trust = torch.where(ok, w_norm / torch.where(ok, u_norm, 1.0), 1.0)
                    if trust_clip is not None:
                        trust = trust.clamp(max=trust_clip)
                    p.add_(update * (trust * -lr))
                else:
                    p.add_(update, alpha=-lr)
        return loss


def _is_no_decay(name: str, param: Tensor, owner: nn.Module | None) -> bool:
    """Whether a parameter belongs to the no-weight-decay group."""
    if param.ndim <= 1:  # biases, norm scales/shifts, scalar temperatures, ...
        return True
    if name.rsplit(".", 1)[-1] == "bias":
        return True
    return owner is not None and isinstance(owner, _NORM_TYPES)


def param_groups_for_weight_decay(
    model_or_params: nn.Module | Iterable[Tensor] | Iterable[tuple[str, Tensor]],
    weight_decay: float,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Decayed: parameters with ``ndim >= 2`` that are not biases and do not belong to
    a normalisation layer. Not decayed: biases, LayerNorm/GroupNorm/BatchNorm/RMSNorm
    parameters and every other 0-/1-D parameter. Parameters with
    ``requires_grad=False`` are skipped. The order of parameters inside each group
    follows ``named_parameters()`` so the optimizer's ``state_dict`` is deterministic.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay},
        {"params": [...], "weight_decay": 0.0, "adapt": False}]`` with empty groups
        dropped. The ``adapt`` key is only meaningful for :class:`Lamb` and is
        removed by :func:`build_optimizer` for other optimisers.
    """
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    if isinstance(model_or_params, nn.Module):
        owners = {}
        for mod_name, mod in model_or_params.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
        named = [(n, p, owners.get(n)) for n, p in model_or_params.named_parameters()]
    else:
        named = []
        for i, item in enumerate(model_or_params):
            if isinstance(item, tuple):
                named.append((item[0], item[1], None))
            else:
                named.append((str(i), item, None))
    for name, p, owner in named:
        if not p.requires_grad:
            continue
        (no_decay if _is_no_decay(name, p, owner) else decay).append(p)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "adapt": False})
    if not groups:
        raise ValueError("build_optimizer: no trainable parameters (all have requires_grad=False)")
    return groups


def build_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable[Tensor] | Iterable[tuple[str, Tensor]],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | None = None,
) -> torch.optim.Optimizer:
    """Create a ``"lamb"`` or ``"adamw"`` optimiser with the standard decay split.

    Args:
        name: ``"lamb"`` or ``"adamw"`` (case-insensitive).
        model_or_params: a module (preferred: norm layers are detected by type), or
            an iterable of parameters / ``(name, parameter)`` pairs (then only the
            ``ndim`` and ``.bias`` name rules apply).
        lr: (initial) learning rate; the trainer overwrites it every step.
        weight_decay: decoupled weight decay for the decayed group.
        betas: Adam moment decays.
        eps: denominator epsilon; None picks the customary default per optimiser
            (1e-6 for LAMB as in the paper, 1e-8 for AdamW).

    Raises:
        ValueError: unknown ``name`` (the message names the ``optimizer`` field).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")
    groups = param_groups_for_weight_decay(model_or_params, weight_decay)
    if key == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=1e-6 if eps is None else eps, weight_decay=weight_decay)
    for g in groups:
        g.pop("adapt", None)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8 if eps is None else eps, weight_decay=weight_decay)


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int = 500,
    base_lr: float = 1.0,
    final_lr_ratio: float = 0.0,
) -> float:
    """Learning rate at ``step``: linear warm-up from 0, then cosine decay.

    ::

        step <= warmup_steps:  base_lr * step / warmup_steps
        afterwards:            final + (base_lr - final) * (1 + cos(pi * p)) / 2,
                               p = (step - warmup_steps) / (total_steps - warmup_steps)
                               final = final_lr_ratio * base_lr

    ``step`` is clamped to ``[0, total_steps]``, so the value is 0 at step 0,
    ``base_lr`` at ``warmup_steps``, halfway between ``base_lr`` and the final lr at
    the midpoint of the decay, and ``final_lr_ratio * base_lr`` at ``total_steps``.
    If ``warmup_steps >= total_steps`` the schedule is warm-up only. The trainer
    uses the value at ``k`` for its k-th update (k = 1..total_steps), so no update
    is taken with lr = 0 during warm-up.
    """
    if total_steps <= 0:
        raise ValueError(f"warmup_cosine: total_steps must be > 0, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_cosine: warmup_steps must be >= 0, got {warmup_steps}")
    step = min(max(step, 0), total_steps)
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    final = final_lr_ratio * base_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final + (base_lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
