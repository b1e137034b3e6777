"""Distil a trained RFM run into a few-step flow-map sampler (:class:`~globeflow.methods.FlowMapRFM`).

Recipe (flow-map distillation from teacher trajectories; Boffi, Albergo & Vanden-Eijnden,
"Flow map matching", 2024, and "How to build a consistency model: learning flow maps via
self-distillation", 2025, where the flow map X_{s,t} is learned from a pretrained velocity):

1. Trajectories of the *guided* teacher: for embeddings c of the run's training data, guidance
   scales ω ∈ [0, ω_max] (with extra mass at ω = 0, the model's own density, and ω = 2, the
   point estimate) and noise ε ~ U(S²), solve dx/dκ = P_x ψ̂_ω(x, κ | c) from κ = 1 to 0 with
   ``teacher_steps`` exp-map Heun steps on the teacher sampler's grid κ(1 − i/K), keeping every
   state: K + 1 points of each trajectory.
2. Regression of the student's jumps onto them: for a trajectory and grid indices i < j, the
   student's X_{s_i, s_j}(x_i) should land on x_j; the loss is the squared chord |X − x_j|²
   (≈ the squared geodesic distance at the scale of the errors). A fraction ``sampler_pairs``
   (½) of the pairs are the jumps the distilled sampler takes (1 → 0, 1 → κ(½) → 0 and the
   ``steps`` jumps of its grid), the rest are uniform over i < j, so that the map is learned for every (s, t) and its jumps compose (the flow-map
   semigroup law X_{u,t} ∘ X_{s,u} = X_{s,t} holds for the teacher's trajectories, hence for
   a student that fits them).

A direct regression on precomputed trajectories is the cheapest of the flow-map distillation
losses on a CPU (no Jacobian-vector products of the student, one backward per batch); its bias
is the teacher solver's error, which at 32 Heun steps is far below the student's fitting error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from globeflow.geometry import sphere
from globeflow.methods.flowmap import FlowMapRFM
from globeflow.methods.rfm import RiemannianFlowMatching
from globeflow.solvers.fixed_step import integrate, time_grid
from globeflow.solvers.manifolds import Sphere

__all__ = ["GPU_DISTILL", "DistillConfig", "distill", "distill_run", "teacher_trajectories"]

EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill` (stored in the distilled run's config.json)."""

    steps: int = 2  # jumps of the distilled sampler by default (network evaluations per point)
    teacher_steps: int = 32  # Heun steps of the teacher's trajectories
    embeddings: int = 4096  # training embeddings drawn (with replacement) from the data
    samples_per_embedding: int = 4  # trajectories per embedding
    omega_max: float = 4.0  # guidance range [0, ω_max] the student learns
    train_steps: int = 2500
    batch_size: int = 256
    lr: float = 5e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # EMA of the student's weights (0: none); warmed up as min(d, (1+n)/(10+n))
    sampler_pairs: float = 0.5  # fraction of pairs that are the distilled sampler's own jumps
    holdout: float = 0.05  # fraction of embeddings kept out of training, for the report
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "teacher_steps", "embeddings", "samples_per_embedding", "train_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"distill: {name} must be a positive integer, got {value!r}")
        if self.teacher_steps % self.steps or self.teacher_steps % 2:
            raise ValueError(
                f"distill: teacher_steps ({self.teacher_steps}) must be even and a multiple of steps "
                f"({self.steps}), so that the sampler's levels lie on the teacher's grid"
            )
        if not (math.isfinite(self.omega_max) and self.omega_max >= 0.0):
            raise ValueError(f"distill: omega_max must be finite and ≥ 0, got {self.omega_max!r}")
        if not 0.0 < self.lr < 1.0:
            raise ValueError(f"distill: lr must be in (0, 1), got {self.lr!r}")
        if not 0.0 <= self.sampler_pairs <= 1.0:
            raise ValueError(f"distill: sampler_pairs must be in [0, 1], got {self.sampler_pairs!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"distill: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.holdout < 0.5:
            raise ValueError(f"distill: holdout must be in [0, 0.5), got {self.holdout!r}")

    @classmethod
    def for_device(cls, device: str | torch.device, **settings: object) -> DistillConfig:
        """The defaults sized for ``device``, with ``settings`` (fields) on top.

        On CUDA: 131,072 embeddings × 8 trajectories, 12,000 steps of 4096, EMA 0.9995 (~3 min
        alone on one H200; on a held-out known-truth world: 2-jump GeoScore 0.997 × the teacher's
        16-step one, docs/benchmarks.md). Elsewhere the CPU defaults of the fields (4096 × 4,
        2500 steps of 256: 5-8 min on two cores, GeoScore 0.89 ×): the student's quality grows
        with the number of trajectories, which a CPU cannot afford.
        """
        base = dict(GPU_DISTILL) if torch.device(device).type == "cuda" else {}
        return cls(**{**base, **settings})


#: :meth:`DistillConfig.for_device` on CUDA (measured: docs/benchmarks.md, "Distilled flow-map sampler").
GPU_DISTILL = {
    "embeddings": 131_072,
    "samples_per_embedding": 8,
    "train_steps": 12_000,
    "batch_size": 4096,
    "ema_decay": 0.9995,
    "warmup_steps": 200,
}


def teacher_trajectories(
    teacher: RiemannianFlowMatching,
    emb: Tensor,
    omega: Tensor,
    noise: Tensor,
    *,
    steps: int,
    chunk: int = 2048,
) -> Tensor:
    """States of the guided teacher ODE on its grid: ``emb`` (M, D), ``omega`` (M,), ``noise``
    (M, S, 3) -> (K + 1, M, S, 3), from κ = 1 (the noise) to κ = 0, exp-map Heun steps.

    Guidance is per embedding: ψ̂ = ψ_c + ω (ψ_c − ψ_∅) with the conditional and null halves in
    one batch, as :meth:`GenerativeMethod.guided_field`.
    """
    net, out = teacher.net, []
    with torch.inference_mode():
        null = net.embed_condition(torch.zeros_like(emb[:1]))
        for start in range(0, emb.shape[0], chunk):
            sl = slice(start, start + chunk)
            cond = net.embed_condition(emb[sl])
            both = torch.cat([cond, null.expand_as(cond)], dim=0)
            w = omega[sl].reshape(-1, 1, 1).to(noise.dtype)

            def field(x: Tensor, kappa: Tensor, both=both, w=w) -> Tensor:
                mods, head = net.modulations(both, kappa)
                out_c, out_u = net.forward_with(torch.cat([x, x], dim=0), mods, head).chunk(2, dim=0)
                return out_c + w * (out_c - out_u)

            traj: list[Tensor] = []
            integrate(field, noise[sl], teacher.schedule, Sphere(), num_steps=steps, method="heun", trajectory=traj)
            out.append(torch.stack(traj, dim=0))
    return torch.cat(out, dim=1)


def _draw_omega(n: int, omega_max: float, generator: torch.Generator) -> Tensor:
    """ω per embedding: 0 and min(2, ω_max) with probability 0.3 each, else uniform on [0, ω_max]."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    uniform = torch.rand(n, generator=generator, dtype=torch.float64) * omega_max
    return torch.where(u < 0.3, 0.0, torch.where(u < 0.6, min(2.0, omega_max), uniform)).float()


def _sampler_pairs(k: int, steps: int) -> Tensor:
    """Grid index pairs (i, j) of the jumps the distilled sampler takes: 1 → 0 and its N jumps."""
    pairs = {(0, k)} | {(i * k // steps, (i + 1) * k // steps) for i in range(steps)}
    if steps != 2:
        pairs |= {(0, k // 2), (k // 2, k)}
    return torch.tensor(sorted(pairs))


def _geodesic_km(a: Tensor, b: Tensor) -> Tensor:
    return sphere.angle(a.double(), b.double()) * EARTH_RADIUS_KM


def _jump_errors(method: FlowMapRFM, traj: Tensor, emb: Tensor, omega: Tensor, k: int, steps_list) -> dict:
    """Median/mean distance (km) of the student's N-jump end point to the teacher's, per N."""
    out = {}
    s = traj.shape[2]
    with torch.inference_mode():
        cond = method.student.embed_condition(emb)
        for n in steps_list:
            levels = method.jump_levels(n, device=traj.device).float()
            x = traj[0]
            for i in range(n):
                x = method.student.flow_map(x, cond, levels[i].expand(len(emb)), levels[i + 1].expand(len(emb)), omega)
            d = _geodesic_km(x, traj[k]).reshape(-1, s)
            out[f"{n}_jump_km_median"] = float(d.median())
            out[f"{n}_jump_km_mean"] = float(d.mean())
    return out


def distill(
    teacher: RiemannianFlowMatching,
    emb_pool: Tensor,
    cfg: DistillConfig,
    *,
    init: FlowMapRFM | None = None,
    log: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
) -> FlowMapRFM:
    """Learn the flow map of ``teacher``'s guided ODE from its trajectories (module docstring).

    ``emb_pool`` (R, D): the embeddings to condition on (the teacher's training data). ``init``:
    a distilled model of the same teacher whose student to continue from (default: the teacher's
    own weights). ``device``: where the trajectories and the student's training run; the random
    draws come from one CPU generator, so a seed gives the same pairs on any device. Returns the
    distilled method (teacher copied in, student trained), on the CPU, in eval mode.
    """
    if type(teacher) is not RiemannianFlowMatching:
        raise ValueError(f"model: distillation needs a globeflow RFM run, got method {teacher.name!r}")
    dev = torch.device(device)
    teacher = teacher.to(dev).float().eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    method = FlowMapRFM.from_teacher(teacher, default_steps=cfg.steps, omega_max=cfg.omega_max)
    if init is not None:
        if init.net.config != teacher.net.config or init.student.config != method.student.config:
            raise ValueError("init: the distilled model to continue from has another network shape")
        method.student.load_state_dict(init.student.state_dict())
    k, s = cfg.teacher_steps, cfg.samples_per_embedding

    start = time.perf_counter()
    rows = torch.randint(0, emb_pool.shape[0], (cfg.embeddings,), generator=gen)
    emb = emb_pool[rows].float().to(dev)
    omega = _draw_omega(cfg.embeddings, cfg.omega_max, gen).to(dev)
    noise = teacher.path.sample_noise((cfg.embeddings, s), generator=gen).to(dev)
    traj = teacher_trajectories(teacher, emb, omega, noise, steps=k)  # (K+1, M, S, 3)
    kappas = teacher.schedule.kappa(time_grid(k)).float().to(dev)  # the grid of `integrate` and of the sampler
    traj_seconds = time.perf_counter() - start
    n_hold = int(round(cfg.holdout * cfg.embeddings))
    n_train = cfg.embeddings - n_hold
    if log:
        log({"event": "trajectories", "count": cfg.embeddings * s, "seconds": traj_seconds})

    student = method.student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.train_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    # The EMA smooths the last steps' noise out of the student (as in the teacher's training).
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    special = _sampler_pairs(k, cfg.steps)
    b = cfg.batch_size

    def draw(fn: Callable[..., Tensor], *args: object) -> Tensor:
        """``fn(*args)`` on the CPU generator (the same draws on any device), moved to ``dev``."""
        return fn(*args, generator=gen).to(dev)

    start, running = time.perf_counter(), 0.0
    for step in range(cfg.train_steps):
        e_idx = draw(torch.randint, 0, n_train, (b,))
        s_idx = draw(torch.randint, 0, s, (b,))
        # Uniform pairs i < j over the grid, or one of the sampler's own jumps.
        i = draw(torch.randint, 0, k, (b,))
        j = i + 1 + (draw(torch.rand, b) * (k - i)).long().clamp(max=k - i - 1)
        pick = special.to(dev)[draw(torch.randint, 0, len(special), (b,))]
        use = draw(torch.rand, b) < cfg.sampler_pairs
        i = torch.where(use, pick[:, 0], i)
        j = torch.where(use, pick[:, 1], j)
        x_s = traj[i, e_idx, s_idx].unsqueeze(1)
        x_t = traj[j, e_idx, s_idx].unsqueeze(1)
        cond = student.embed_condition(emb[e_idx])
        pred = student.flow_map(x_s, cond, kappas[i], kappas[j], omega[e_idx])
        loss = (pred - x_t).pow(2).sum(dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p, 1.0 - decay)
        running += float(loss.detach())
        if log and ((step + 1) % 100 == 0 or step + 1 == cfg.train_steps):
            log({"step": step + 1, "loss": running / 100.0, "elapsed_s": time.perf_counter() - start})
            running = 0.0
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    method.eval()
    info: dict = {
        "config": asdict(cfg),
        "trajectory_seconds": traj_seconds,
        "train_seconds": time.perf_counter() - start,
    }
    if n_hold:
        hold = slice(n_train, None)
        info["holdout"] = _jump_errors(method, traj[:, hold], emb[hold], omega[hold], k, sorted({1, 2, cfg.steps}))
        info["holdout"]["trajectories"] = n_hold * s
    method = method.to("cpu")
    method.distill_info = info
    if log:
        log({"event": "done", **info.get("holdout", {})})
    return method


def distill_run(
    model_dir: str | Path,
    out: str | Path,
    cfg: DistillConfig,
    *,
    data: str | Path | None = None,
    init: str | Path | None = None,
    log: Callable[[dict], None] | None = None,
    device: str = "cpu",
) -> Path:
    """``globeflow distill``: distil run ``model_dir`` into a new run directory ``out``
    (``device``: where distillation runs; the saved run is device-independent).

    The embeddings come from ``data`` or else the teacher's own training data (its config's
    ``data.path``). ``out`` must not hold a model already (nothing is overwritten).
    """
    from globeflow.api import load, save
    from globeflow.runs import CONFIG_FILE, WEIGHTS_FILE
    from globeflow.data import read_dataset
    from globeflow.io import load_json

    model_dir, out = Path(model_dir), Path(out)
    if (out / WEIGHTS_FILE).exists() or (out / CONFIG_FILE).exists():
        raise FileExistsError(f"out: {out} already holds a model; choose a new directory")
    teacher = load(model_dir)
    if not isinstance(teacher, RiemannianFlowMatching):
        raise ValueError(
            f"model: {model_dir} is a {teacher.name!r} model; distill takes an rfm run "
            "(a grounded model's flow is the run it was made from: scripts/make_grounded_model.py --inner)"
        )
    config = load_json(model_dir / CONFIG_FILE)
    if data is None:
        data = (config.get("data") or {}).get("path")
        if data is None or not Path(data).exists():
            raise FileNotFoundError(
                f"data: the training data of {model_dir} ({data}) is not available; pass --data with its embeddings"
            )
    dataset = read_dataset(data, expected_dim=teacher.embedding_dim)
    emb = torch.from_numpy(np.ascontiguousarray(dataset.embeddings, dtype=np.float32))
    start = None
    if init is not None:
        start = load(init)
        if not isinstance(start, FlowMapRFM):
            raise ValueError(f"init: {init} is not a distilled (rfm_flowmap) run")
    method = distill(teacher, emb, cfg, init=start, log=log, device=device)
    if start is not None:
        method.distill_info["continued_from"] = {"run": str(Path(init).resolve()), "distill": start.distill_info}
    extra = {"teacher": {"run": str(model_dir.resolve())}, "data": {"path": str(Path(data).resolve())}}
    if "encoder" in config:
        extra["encoder"] = config["encoder"]
    return save(method, out, extra=extra)
