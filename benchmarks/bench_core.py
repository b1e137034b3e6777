"""Core-engine benchmark (issue 2): globeflow vs the official implementation (diff-plonk).

Measures, on the current machine (CPU by default):

* the machine's matrix-product peak (GFLOP/s, fp32 and bf16), square and with the shapes of
  the network's MLP layers, best of several runs;
* training steps/s of the paper's network (d = 512, N = 12, 1024-d embeddings): globeflow
  (``method.loss`` + backward + AdamW step) vs official (``RiemannianFlowMatchingLoss`` with
  its functorch vmap/jvp + backward + AdamW step);
* sampling points/s (16 Euler steps, guidance ω = 2): globeflow fp32, globeflow bf16 and
  official fp32 (its ``riemannian_flow_sampler`` as is), with the fraction of the measured
  matmul peak each reaches (FLOPs counted analytically, per implementation);
* the distilled flow-map sampler (``methods/flowmap.py``, ``--distill-steps`` jumps, default 2):
  a student of the paper's network shape with guidance folded in, so one unguided evaluation
  per jump and point, timed in the same interleaved rounds as the rows above (its speed-up over
  globeflow's 16-step bf16 sampler is a ratio within one run);
* accuracy: both networks get the *same* weights (official state_dict mapped onto globeflow's),
  then (a) the raw velocity fields on identical inputs, (b) end points of globeflow fp32 vs
  bf16 for the same noise, (c) globeflow's sampler (exp map, official convention) vs the
  official sampler (x + dt·v then projection) for the same weights and noise, with a check
  that globeflow's network under the official update rule reproduces the official end points,
  (d) the error of each 16-step sampler against a fine-step (256) exp-map reference;
  great-circle distances in km (R = 6371).

Implementations are timed interleaved (one run of each per round, best of ``--repeats``
rounds after a warm-up) so that they share the background load of a shared machine. Two extra
globeflow rows (``--no-variants`` skips them) isolate the fp32 oneDNN block-MLP path
(``adaln_mlp.USE_ONEDNN_MLP``) and the effect of sampling under ``no_grad`` rather than
``inference_mode`` (autocast caches bf16 weight casts only outside inference mode).

The networks have random weights (the zero-initialised last layer of every block is
re-initialised so that the blocks are not the identity); timings do not depend on the values.

The official package is loaded without executing ``plonk/__init__.py`` (which imports
torchvision): install it with ``pip install --no-deps diff-plonk geoopt``.

Usage::

    python benchmarks/bench_core.py                      # defaults: 64 images x 16 samples
    python benchmarks/bench_core.py --json out.json --repeats 5
    python benchmarks/bench_core.py --threads 1          # stable timings on a busy machine
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

EARTH_RADIUS_KM = 6371.0


# ---------------------------------------------------------------------------------------------
# Loading the official implementation without its package __init__
# ---------------------------------------------------------------------------------------------
def load_official():
    """Import the pieces of diff-plonk we need; returns a namespace or raises ImportError."""
    spec = importlib.util.find_spec("plonk")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("diff-plonk is not installed (pip install --no-deps diff-plonk geoopt)")
    root = next(iter(spec.submodule_search_locations))
    # Stub parent packages: their __init__ would import torchvision / lightning.
    for name, sub in [
        ("plonk", ""),
        ("plonk.models", "/models"),
        ("plonk.models.networks", "/models/networks"),
        ("plonk.models.samplers", "/models/samplers"),
        ("plonk.utils", "/utils"),
    ]:
        if name not in sys.modules or not getattr(sys.modules[name], "__benchstub__", False):
            mod = types.ModuleType(name)
            mod.__path__ = [root + sub]
            mod.__benchstub__ = True
            sys.modules[name] = mod
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = importlib.import_module("plonk.models.networks.mlp")
        sampler = importlib.import_module("plonk.models.samplers.riemannian_flow_sampler")
        losses = importlib.import_module("plonk.models.losses")
        schedulers = importlib.import_module("plonk.models.schedulers")
        precond = importlib.import_module("plonk.models.preconditioning")
    return types.SimpleNamespace(
        GeoAdaLNMLP=mlp.GeoAdaLNMLP,
        riemannian_flow_sampler=sampler.riemannian_flow_sampler,
        RiemannianFlowMatchingLoss=losses.RiemannianFlowMatchingLoss,
        SigmoidScheduler=schedulers.SigmoidScheduler,
        DDPMPrecond=precond.DDPMPrecond,
        version=_dist_version("diff-plonk"),
    )


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - informational only
        return "?"


def official_to_globeflow_state(sd: dict) -> dict:
    """Map the official GeoAdaLNMLP state_dict onto globeflow's AdaLNMLP names (the library's
    mapping, used by ``globeflow.load`` for published PLONK checkpoints)."""
    from globeflow.methods.plonk import official_to_globeflow_state as convert

    return convert(sd)


def randomise_zero_layers(net: torch.nn.Module) -> None:
    """Re-initialise the zero-initialised last layer of every block (default nn.Linear init)."""
    for block in net.blocks:
        block.mlp[-1].reset_parameters()


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------
def timeit(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """One warm-up call each, then ``repeats`` rounds calling every function once per round.

    Interleaving exposes every implementation to the same background load (this benchmark is
    often run on shared machines); per-round ratios are reported next to the best times.
    """
    for name, fn in fns.items():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int, inner: int = 3,
                  kernel: str = "aten") -> float:
    """Best GFLOP/s of x @ W^T + b with x (m, k), W (n, k).

    ``kernel="aten"``: F.linear, nn.Linear's kernel (MKL for fp32, oneDNN for bf16 on CPU);
    ``kernel="onednn"``: torch.ops.mkldnn._linear_pointwise (oneDNN), which globeflow's fp32
    inference path uses.
    """
    x = torch.randn(m, k).to(dtype)
    w = (torch.randn(n, k) / math.sqrt(k)).to(dtype)
    b = torch.zeros(n).to(dtype)
    if kernel == "onednn":
        op = torch.ops.mkldnn._linear_pointwise

        def one():
            op(x, w, b, "none", [], "")
    else:
        def one():
            F.linear(x, w, b)

    with torch.inference_mode():
        def run():
            for _ in range(inner):
                one()

        times = timeit(run, repeats, warmup=2)
    return 2.0 * m * k * n * inner / min(times) / 1e9


def _onednn_linear_available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


# ---------------------------------------------------------------------------------------------
# FLOP counts (2 · in · out per linear per row)
# ---------------------------------------------------------------------------------------------
@dataclass
class NetShape:
    cond_dim: int = 1024
    dim: int = 512
    depth: int = 12
    expansion: int = 4

    def coord_row(self) -> int:
        d, e = self.dim, self.expansion
        return 2 * (3 * d + self.depth * 2 * d * e * d + d * 3)

    def time_row(self) -> int:
        d = self.dim
        return 2 * ((d // 4) * d + d * d)

    def ada_row(self) -> int:
        d = self.dim
        return 2 * (self.depth * d * 3 * d + d * 2 * d)

    def cond_map_row(self) -> int:
        return 2 * self.cond_dim * self.dim

    def full_row(self) -> int:
        """A row with its own condition path (official; globeflow training)."""
        return self.coord_row() + self.time_row() + self.ada_row() + self.cond_map_row()


def sampling_flops(s: NetShape, images: int, samples: int, steps: int, guided: bool, impl: str) -> int:
    g = 2 if guided else 1
    rows = g * images * samples
    if impl == "official":  # every row carries its own embedding, noise level and modulations
        return steps * rows * s.full_row()
    # globeflow: embedding map once per embedding (+1 null row), noise-level MLP once per step
    # (the level is shared by the batch), modulations once per (embedding, half) per step.
    once = (images + (1 if guided else 0)) * s.cond_map_row()
    per_step = s.time_row() + g * images * s.ada_row() + rows * s.coord_row()
    return once + steps * per_step


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------
def great_circle_km(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    cross = torch.linalg.cross(a, b, dim=-1).norm(dim=-1)
    dot = (a * b).sum(-1)
    return EARTH_RADIUS_KM * torch.atan2(cross, dot)


def km_stats(d: torch.Tensor) -> dict:
    d = d.flatten()
    return {
        "median_km": float(d.median()),
        "p90_km": float(d.quantile(0.9)),
        "max_km": float(d.max()),
        "frac_over_100km": float((d > 100).double().mean()),
    }


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
@dataclass
class Results:
    machine: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    matmul: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)


def _loadavg() -> list[float] | None:
    try:
        import os

        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import os

    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "mkldnn_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()),
    }


def bench_matmul(args, shape: NetShape, res: Results) -> None:
    rows = 2 * args.images * args.samples  # rows of one guided forward pass
    d, h = shape.dim, shape.dim * shape.expansion
    kernels = [(torch.float32, "fp32", "aten"), (torch.bfloat16, "bf16", "aten")]
    if _onednn_linear_available():
        kernels.insert(1, (torch.float32, "fp32", "onednn"))
    for dtype, name, kernel in kernels:
        sq = matmul_gflops(2048, 2048, 2048, dtype, args.mm_repeats, kernel=kernel)
        up = matmul_gflops(rows, d, h, dtype, args.mm_repeats, kernel=kernel)
        down = matmul_gflops(rows, h, d, dtype, args.mm_repeats, kernel=kernel)
        tag = "" if kernel == "aten" else f" {kernel}"
        entry = res.matmul.setdefault(name, {"peak": 0.0})
        entry[f"square_2048{tag}"] = sq
        entry[f"up_{rows}x{d}x{h}{tag}"] = up
        entry[f"down_{rows}x{h}x{d}{tag}"] = down
        entry["peak"] = max(entry["peak"], sq, up, down)
        print(f"  matmul {name}{tag}: 2048^3 {sq:.0f}, up {up:.0f}, down {down:.0f} GFLOP/s", flush=True)


def build_pair(official, shape: NetShape, seed: int):
    """Official network with random weights and a globeflow RFM method holding the same weights."""
    from globeflow.methods import create_method

    torch.manual_seed(seed)
    off = official.GeoAdaLNMLP(
        input_dim=3, dim=shape.dim, depth=shape.depth, expansion=shape.expansion, cond_dim=shape.cond_dim
    )
    randomise_zero_layers(off)
    method = create_method("rfm", embedding_dim=shape.cond_dim, width=shape.dim, depth=shape.depth,
                           expansion=shape.expansion)
    missing, unexpected = method.net.load_state_dict(official_to_globeflow_state(off.state_dict()), strict=True)
    assert not missing and not unexpected
    return off, method


def bench_train(args, official, shape: NetShape, res: Results) -> None:
    from globeflow.methods import create_method

    b = args.train_batch
    gen = torch.Generator().manual_seed(1)
    x0 = F.normalize(torch.randn(b, 3, generator=gen), dim=-1)
    emb = torch.randn(b, shape.cond_dim, generator=gen)
    flops = 3 * b * shape.full_row()  # forward + backward (2x) per row, every row its own condition
    fns = {}

    torch.manual_seed(0)
    method = create_method("rfm", embedding_dim=shape.cond_dim, width=shape.dim, depth=shape.depth,
                           expansion=shape.expansion)
    method.train()
    gf_opt = torch.optim.AdamW(method.parameters(), lr=1e-4)
    gf_gen = torch.Generator().manual_seed(2)

    def gf_steps():
        for _ in range(args.train_steps):
            gf_opt.zero_grad(set_to_none=True)
            loss = method.loss(x0, emb, gf_gen)
            loss.backward()
            gf_opt.step()

    fns["globeflow"] = gf_steps

    if official is not None:
        torch.manual_seed(0)
        net = official.GeoAdaLNMLP(input_dim=3, dim=shape.dim, depth=shape.depth, expansion=shape.expansion,
                                   cond_dim=shape.cond_dim)
        net.train()
        off_opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        loss_fn = official.RiemannianFlowMatchingLoss(
            official.SigmoidScheduler(args.alpha, args.beta), cond_drop_rate=0.1, conditioning_key="emb"
        )
        precond = official.DDPMPrecond()
        off_gen = torch.Generator().manual_seed(2)

        def off_steps():
            for _ in range(args.train_steps):
                off_opt.zero_grad(set_to_none=True)
                batch = {"x_0": x0, "emb": emb.clone()}  # the loss drops conditions in place
                loss = loss_fn(precond, net, batch, generator=off_gen).mean()
                loss.backward()
                off_opt.step()

        fns["official"] = off_steps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved(fns, args.repeats)
    for name, t in times.items():
        res.train[name] = _rate(t, args.train_steps, flops, res.matmul["fp32"]["peak"])
        print(f"  train {name}: {res.train[name]['per_s']:.2f} steps/s", flush=True)
    if "official" in times:
        res.train["globeflow"]["speedup_vs_official"] = res.train["globeflow"]["per_s"] / res.train["official"]["per_s"]
        res.train["globeflow"]["round_ratios"] = [o / g for g, o in zip(times["globeflow"], times["official"])]


def _rate(times: list[float], units: int, flops_per_unit: float, peak: float) -> dict:
    best = min(times)
    per_s = units / best
    gflops = flops_per_unit * units / best / 1e9
    return {
        "times_s": times,
        "per_s": per_s,
        "median_per_s": units / statistics.median(times),
        "gflops": gflops,
        "frac_peak": gflops / peak,
    }


def official_sample(official, off_net, emb, noise, args, guidance):
    """Official sampler as is: one row per sample, each with its own copy of the embedding."""
    b, s, _ = noise.shape
    batch = {"y": noise.reshape(b * s, 3).clone(), "emb": emb.repeat_interleave(s, dim=0)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = official.riemannian_flow_sampler(
            off_net, batch, conditioning_keys="emb", scheduler=official.SigmoidScheduler(args.alpha, args.beta),
            num_steps=args.steps, cfg_rate=guidance,
        )
    return out.reshape(b, s, 3)


def globeflow_official_convention(method, emb, noise, args, guidance, precision, *, steps=None, update="expmap"):
    """globeflow's network and guidance driving the official convention: conditioned on
    γ = 1 − κ, predicting dx/dγ = −dx/dκ, on globeflow's κ grid (= the official γ grid).

    ``update="expmap"``: globeflow's sampler (Euler with the sphere's exp map of the tangent
    projection); ``update="official"``: the official rule x ← proj(x + Δγ·v).
    """
    from globeflow.solvers.fixed_step import integrate, time_grid
    from globeflow.solvers.manifolds import Sphere

    steps = args.steps if steps is None else steps
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        f = method.guided_field(emb, guidance)

        def field(x, kappa):
            return -f(x, 1.0 - kappa)

        if update == "expmap":
            out = integrate(field, noise, method.schedule, Sphere(), num_steps=steps, method="euler")
        else:
            gammas = 1.0 - method.schedule.kappa(time_grid(steps))
            x = noise
            for g0, g1 in itertools.pairwise(gammas):
                v = f(x, g0.float())
                x = F.normalize(x + (g1 - g0).float() * v.float(), dim=-1)
            out = x
    return out.float()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _no_grad_sampling:
    """Run ``sample_xyz`` under ``torch.no_grad`` in place of ``torch.inference_mode``.

    Under inference_mode autocast does not cache the bf16 copies of the weights, so every
    field evaluation re-casts all 36 M parameters; under no_grad the copies are made once per
    sampling call. This measures the proposed one-line change in ``methods/base.py``.
    """

    def __enter__(self):
        self._saved = torch.inference_mode
        torch.inference_mode = lambda *a, **k: torch.no_grad()
        return self

    def __exit__(self, *exc):
        torch.inference_mode = self._saved
        return False


class _aten_mlp:
    """Run globeflow's block MLPs on the portable ATen path (nn.Linear; MKL GEMM for fp32)."""

    def __enter__(self):
        from globeflow.nets import adaln_mlp

        self._mod = adaln_mlp
        self._saved = getattr(adaln_mlp, "USE_ONEDNN_MLP", None)
        adaln_mlp.USE_ONEDNN_MLP = False
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            self._mod.USE_ONEDNN_MLP = self._saved
        return False


def bench_sample(args, official, shape: NetShape, res: Results) -> None:
    from globeflow.methods import create_method  # noqa: F401  (import cost outside timings)

    off_net, method = build_pair(official, shape, seed=0) if official is not None else (None, None)
    if method is None:
        from globeflow.methods import create_method as cm

        torch.manual_seed(0)
        method = cm("rfm", embedding_dim=shape.cond_dim, width=shape.dim, depth=shape.depth,
                    expansion=shape.expansion)
        randomise_zero_layers(method.net)
    # Same schedule as the official SigmoidScheduler(alpha, beta): γ(s) = 1 − κ(s).
    from globeflow.paths.schedules import make_schedule

    method.schedule = make_schedule("skewed_sigmoid", alpha=args.alpha, beta=args.beta)
    # eval() only, as the library leaves it (globeflow samples under inference_mode).
    method.eval()
    if off_net is not None:
        off_net.eval().requires_grad_(False)

    B, S, w = args.images, args.samples, args.guidance
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(B, shape.cond_dim, generator=gen)
    points = B * S
    ends = {}

    noise = method.path.sample_noise((B, S), generator=torch.Generator().manual_seed(5))
    fns, flops, peaks = {}, {}, {}

    def gf_run(key, precision, no_grad=False, aten=False):
        def run():
            with _no_grad_sampling() if no_grad else _nullcontext(), _aten_mlp() if aten else _nullcontext():
                ends[key] = method.sample_xyz(emb, S, generator=torch.Generator().manual_seed(4), guidance=w,
                                              sample_steps=args.steps, precision=precision)

        fns[key] = run
        flops[key] = sampling_flops(shape, B, S, args.steps, w != 0, "globeflow")
        peaks[key] = res.matmul["fp32" if precision == "float32" else "bf16"]["peak"]

    gf_run("globeflow_fp32", "float32")
    if args.variants:
        gf_run("globeflow_fp32_aten", "float32", aten=True)
    gf_run("globeflow_bf16", "bfloat16")
    if args.variants:
        gf_run("globeflow_bf16_no_grad", "bfloat16", no_grad=True)
    if args.distill_steps > 0:
        # The distilled flow-map sampler (methods/flowmap.py) on the same network size: a student
        # of the paper's shape (its weights do not change the cost), guidance folded in, so one
        # unguided evaluation per jump and point.
        from globeflow.methods.flowmap import FlowMapRFM

        fast = FlowMapRFM.from_teacher(method, default_steps=args.distill_steps, omega_max=max(4.0, w)).eval()
        for key, precision in (("flowmap_fp32", "float32"), ("flowmap_bf16", "bfloat16")):
            def run_fast(key=key, precision=precision):
                ends[key] = fast.sample_xyz(emb, S, generator=torch.Generator().manual_seed(4), guidance=w,
                                            precision=precision)

            fns[key] = run_fast
            flops[key] = sampling_flops(shape, B, S, args.distill_steps, False, "globeflow")
            peaks[key] = res.matmul["fp32" if precision == "float32" else "bf16"]["peak"]
    if off_net is not None:
        def run_off():
            ends["official"] = official_sample(official, off_net, emb, noise, args, w)

        fns["official"] = run_off
        flops["official"] = sampling_flops(shape, B, S, args.steps, w != 0, "official")
        peaks["official"] = res.matmul["fp32"]["peak"]

    times = interleaved(fns, args.repeats)
    for key, t in times.items():
        res.sample[key] = _rate(t, points, flops[key] / points, peaks[key])
        res.sample[key]["gflop_per_run"] = flops[key] / 1e9
        print(f"  sample {key}: {res.sample[key]['per_s']:.1f} points/s", flush=True)
    for key in ("flowmap_fp32", "flowmap_bf16"):
        if key in times and "globeflow_bf16" in times:
            res.sample[key]["speedup_vs_globeflow_bf16"] = res.sample[key]["per_s"] / res.sample["globeflow_bf16"]["per_s"]
            res.sample[key]["round_ratios_vs_globeflow_bf16"] = [
                g / f for f, g in zip(times[key], times["globeflow_bf16"])
            ]
    if "official" in times:
        base = res.sample["official"]["per_s"]
        for key in times:
            if key != "official":
                res.sample[key]["speedup_vs_official"] = res.sample[key]["per_s"] / base
                res.sample[key]["round_ratios"] = [o / g for g, o in zip(times[key], times["official"])]

    # ---- accuracy ------------------------------------------------------------------------
    res.accuracy["bf16_vs_fp32_globeflow"] = km_stats(great_circle_km(ends["globeflow_fp32"],
                                                                      ends["globeflow_bf16"]))
    if off_net is None:
        return
    # (a) raw fields on identical inputs (same weights; level = γ for both)
    g2 = torch.Generator().manual_seed(6)
    n = 512
    x = F.normalize(torch.randn(n, 3, generator=g2), dim=-1)
    e = torch.randn(n, shape.cond_dim, generator=g2)
    gam = torch.rand(n, generator=g2)
    with torch.no_grad():
        v_off = off_net({"y": x, "gamma": gam, "emb": e})
        v_gf = method.net(x, e, gam)  # per-row levels
    err = (v_gf - v_off).abs().max().item()
    res.accuracy["field_max_abs_diff"] = err
    res.accuracy["field_rms"] = v_off.pow(2).mean().sqrt().item()
    # (c) same weights and noise through both samplers (official convention)
    gf32 = globeflow_official_convention(method, emb, noise, args, w, "float32")
    gf16 = globeflow_official_convention(method, emb, noise, args, w, "bfloat16")
    r = min(args.ref_images, B)
    gf_offrule = globeflow_official_convention(method, emb[:r], noise[:r], args, w, "float32", update="official")
    acc = res.accuracy
    acc["official_rule_vs_official"] = km_stats(great_circle_km(gf_offrule, ends["official"][:r]))
    acc["globeflow_fp32_vs_official"] = km_stats(great_circle_km(gf32, ends["official"]))
    acc["globeflow_bf16_vs_official"] = km_stats(great_circle_km(gf16, ends["official"]))
    acc["bf16_vs_fp32_official_convention"] = km_stats(great_circle_km(gf32, gf16))
    # (d) error against a fine-step reference (same ODE: both rules are consistent with
    # dx/dγ = P_x v), on the first ref_images embeddings
    if args.ref_steps > 0:
        ref = globeflow_official_convention(method, emb[:r], noise[:r], args, w, "float32", steps=args.ref_steps)
        acc["ref_steps"] = args.ref_steps
        acc["ref_points"] = r * S
        for key, val in [("official", ends["official"]), ("globeflow_fp32", gf32), ("globeflow_bf16", gf16)]:
            acc[f"error_vs_ref_{key}"] = km_stats(great_circle_km(val[:r], ref))


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def markdown(res: Results) -> str:
    m, st = res.machine, res.settings
    lines = [
        (f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, "
        f"{m['threads']} threads ({'--threads' if st.get('threads') else 'torch default'}). Settings: {st['images']} images x {st['samples']} samples "
        f"= {st['images'] * st['samples']} points, {st['steps']} Euler steps, guidance {st['guidance']}, "
        f"train batch {st['train_batch']} x {st['train_steps']} steps per run; best of {st['repeats']} "
        f"interleaved runs after a warm-up. Load average at start/end: {m.get('loadavg_start')} / "
        f"{m.get('loadavg_end')}."),
        "",
        "| Measurement | Value | Unit | % of matmul peak | vs official |",
        "|---|---:|---|---:|---:|",
    ]
    for name in ("fp32", "bf16"):
        if name in res.matmul:
            mm = res.matmul[name]
            for k, v in mm.items():
                if k != "peak":
                    lines.append(f"| matmul {name} {k} | {v:.0f} | GFLOP/s | | |")
            lines.append(f"| matmul {name} peak (best of the above) | {mm['peak']:.0f} | GFLOP/s | | |")
    for key, r in res.train.items():
        rel = f"{r['speedup_vs_official']:.2f}x" if "speedup_vs_official" in r else ""
        lines.append(
            f"| train {key} (fp32, batch {st['train_batch']}) | {r['per_s']:.2f} | steps/s "
            f"| {100 * r['frac_peak']:.0f}% | {rel} |"
        )
    labels = {
        "globeflow_fp32": "sample globeflow fp32",
        "globeflow_bf16": "sample globeflow bf16",
        "globeflow_fp32_aten": "sample globeflow fp32, ATen nn.Linear path (before this change)",
        "globeflow_bf16_no_grad": "sample globeflow bf16, no_grad in place of inference_mode (proposed)",
        "official": "sample official fp32",
        "flowmap_fp32": f"sample globeflow distilled flow map fp32, {st.get('distill_steps')} jumps",
        "flowmap_bf16": f"sample globeflow distilled flow map bf16, {st.get('distill_steps')} jumps",
    }
    for key, r in res.sample.items():
        rel = f"{r['speedup_vs_official']:.2f}x" if "speedup_vs_official" in r else ""
        if "speedup_vs_globeflow_bf16" in r:
            rel += f" ({r['speedup_vs_globeflow_bf16']:.1f}x globeflow bf16)"
        lines.append(
            f"| {labels.get(key, key)} | {r['per_s']:.0f} | points/s | {100 * r['frac_peak']:.0f}% | {rel} |"
        )
    for key in ("globeflow_fp32", "official"):
        if key in res.sample:
            lines.append(
                f"| FLOPs per sampling run, {key.split('_')[0]} | {res.sample[key]['gflop_per_run']:.0f} | GFLOP | | |"
            )
    a = res.accuracy
    if "field_max_abs_diff" in a:
        lines.append(
            f"| velocity field, globeflow vs official (same weights, inputs) | {a['field_max_abs_diff']:.1e} "
            f"| max abs diff (field RMS {a['field_rms']:.2f}) | | |"
        )
    rows = [
        ("bf16_vs_fp32_globeflow", "end points, globeflow bf16 vs fp32 (same noise)"),
        ("bf16_vs_fp32_official_convention", "end points, globeflow bf16 vs fp32 (official convention)"),
        ("globeflow_fp32_vs_official", "end points, globeflow fp32 vs official (same weights, noise)"),
        ("globeflow_bf16_vs_official", "end points, globeflow bf16 vs official (same weights, noise)"),
        ("official_rule_vs_official", "check: globeflow net + official update rule vs official"),
    ]
    if "ref_steps" in a:
        ref = f"{a['ref_steps']}-step fp32 exp-map reference ({a['ref_points']} points)"
        rows += [
            ("error_vs_ref_official", f"error vs {ref}, official fp32"),
            ("error_vs_ref_globeflow_fp32", f"error vs {ref}, globeflow fp32"),
            ("error_vs_ref_globeflow_bf16", f"error vs {ref}, globeflow bf16"),
        ]
    for key, label in rows:
        if key in a:
            d = a[key]
            lines.append(
                f"| {label} | {d['median_km']:.3g} / {d['p90_km']:.3g} / {d['max_km']:.3g} "
                f"| km median / p90 / max | | |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64, help="embeddings per sampling run")
    p.add_argument("--samples", type=int, default=16, help="samples per embedding")
    p.add_argument("--steps", type=int, default=16, help="Euler steps")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance ω")
    p.add_argument("--alpha", type=float, default=-3.0, help="schedule start (globeflow α = official start)")
    p.add_argument("--beta", type=float, default=7.0, help="schedule end (globeflow β = official end)")
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=5, help="optimizer steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (best reported), after one warm-up")
    p.add_argument("--mm-repeats", type=int, default=8, help="matmul timing runs (best reported)")
    p.add_argument("--ref-steps", type=int, default=256, help="steps of the accuracy reference (0: skip)")
    p.add_argument("--ref-images", type=int, default=8, help="embeddings in the accuracy reference")
    p.add_argument("--no-variants", dest="variants", action="store_false",
                   help="skip the extra globeflow runs: fp32 on the ATen nn.Linear path, and bf16 under "
                        "no_grad in place of inference_mode (the proposed base.py change)")
    p.add_argument("--distill-steps", type=int, default=2,
                   help="jumps of the distilled flow-map sampler rows (0: skip them)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--json", default=None, help="write all measurements to this JSON file")
    args = p.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = Results()
    res.machine = machine_info()
    res.settings = {k: v for k, v in vars(args).items() if k != "json"}
    shape = NetShape()
    official = None
    if not args.skip_official:
        try:
            official = load_official()
            res.machine["diff_plonk"] = official.version
        except ImportError as err:
            print(f"official implementation unavailable ({err}); measuring globeflow only", file=sys.stderr)

    res.machine["loadavg_start"] = _loadavg()
    print(f"# {res.machine}", flush=True)
    bench_matmul(args, shape, res)
    if not args.skip_train:
        bench_train(args, official, shape, res)
    bench_sample(args, official, shape, res)
    res.machine["loadavg_end"] = _loadavg()
    table = markdown(res)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(vars(res), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
