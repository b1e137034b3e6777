"""A distilled flow-map run scored against its teacher on a known-truth world (issue 14, item 1).

For the test rows of a synthetic world (``globeflow synthetic``):

* point estimates at ω = 2 (the library's default): GeoScore and median error of the teacher's
  16-step Euler sampler and of the student at 1 and 2 jumps (same seeds);
* PRDC of those point estimates against the true test locations (evaluate's protocol);
* HPD coverage of the *teacher's* calibrated regions (ω = 0, the model's own density): for each
  of ``--hpd-rows`` rows, the teacher draws ``--hpd-samples`` samples with their exact log p
  (``sample_with_log_prob``, RK4), whose quantiles give the thresholds τ_α of its α-HPD regions;
  then fresh samples of each sampler (teacher 16 Euler steps; student 2 jumps) are scored by the
  teacher's exact log p, and the fraction with log p ≥ τ_α is their coverage of the α region
  (α for a sampler that draws from the teacher's distribution, up to the thresholds' own noise);
* wall time of each sampler (points/s) on this network, and NFE per point.

Usage::

    python benchmarks/bench_distill.py --teacher RUN --fast FAST --data world/test.parquet --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from globeflow.api import load
from globeflow.data import read_dataset
from globeflow.metrics import distance_metrics, prdc_latlon

LEVELS = (0.5, 0.9, 0.95)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def hpd_coverage(teacher, emb: np.ndarray, thresholds: np.ndarray, latlon: np.ndarray, steps: int) -> dict:
    """Fraction of ``latlon`` (B, S, 2) inside the teacher's α-HPD regions (thresholds (B, L))."""
    lp = teacher.log_prob(emb, latlon, steps=steps)  # (B, S), ω = 0
    return {f"hpd{int(100 * a)}": float((lp >= thresholds[:, i : i + 1]).mean()) for i, a in enumerate(LEVELS)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--fast", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--teacher-steps", type=int, default=16)
    p.add_argument("--hpd-rows", type=int, default=64)
    p.add_argument("--hpd-samples", type=int, default=64)
    p.add_argument("--hpd-ref-samples", type=int, default=256, help="teacher samples per row for τ_α")
    p.add_argument("--density-steps", type=int, default=32, help="RK4 steps of the teacher's log p")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the samplers run (cpu, cuda)")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--teacher-cache",
        default=None,
        help="npz of the teacher's results and HPD thresholds: read if present, else written",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    teacher, fast = load(args.teacher, device=args.device), load(args.fast, device=args.device)
    d = read_dataset(args.data, require_coords=True)
    emb = d.embeddings[: args.rows]
    truth = np.stack([d.latitude, d.longitude], axis=1)[: args.rows]
    out: dict = {"rows": len(emb), "distill": fast.distill_info, "settings": vars(args)}

    samplers = {
        f"teacher_euler{args.teacher_steps}": (teacher, {"sample_steps": args.teacher_steps}, 2 * args.teacher_steps),
        "flowmap_1": (fast, {"sample_steps": 1}, 1),
        "flowmap_2": (fast, {"sample_steps": 2}, 2),
    }
    teacher_key = f"teacher_euler{args.teacher_steps}"
    cache = None
    if args.teacher_cache and Path(args.teacher_cache).is_file():
        cache = np.load(args.teacher_cache, allow_pickle=False)
        out[teacher_key] = json.loads(str(cache["metrics"]))
    for name, (model, opts, nfe) in samplers.items():
        if cache is not None and name == teacher_key:
            continue
        pred, dt = _timed(lambda: model.predict(emb, guidance=2.0, seed=0, **opts))
        m = distance_metrics(pred, truth)
        pr = prdc_latlon(truth, pred)
        out[name] = {
            "nfe_per_point": nfe,
            "geoscore": m["geoscore"],
            "median_distance_km": m["median_distance_km"],
            **{k: pr[k] for k in ("precision", "recall", "density", "coverage")},
            "points_per_s": len(emb) / dt,
        }
        print(name, json.dumps(out[name]), flush=True)

    # HPD coverage of the teacher's regions at ω = 0.
    e = emb[: args.hpd_rows]
    if cache is not None:
        thresholds = cache["thresholds"]
    else:
        ref = teacher.sample_with_log_prob(
            e, args.hpd_ref_samples, guidance=0.0, seed=11, sample_steps=args.density_steps
        )
        thresholds = np.quantile(ref.log_prob, [1.0 - a for a in LEVELS], axis=1).T  # (B, L)
    for name, (model, opts, _) in samplers.items():
        if name == "flowmap_1" or (cache is not None and name == teacher_key):
            continue
        lat = model.sample(e, args.hpd_samples, guidance=0.0, seed=12, **opts)
        out[name]["teacher_hpd_coverage"] = hpd_coverage(teacher, e, thresholds, lat, args.density_steps)
        print(name, "teacher HPD coverage", out[name]["teacher_hpd_coverage"], flush=True)
    if args.teacher_cache and cache is None:
        np.savez(args.teacher_cache, thresholds=thresholds, metrics=json.dumps(out[teacher_key]))
    t = out[teacher_key]
    s = out["flowmap_2"]
    out["flowmap_2_vs_teacher"] = {
        "geoscore_ratio": s["geoscore"] / t["geoscore"],
        **{k: s[k] - t[k] for k in ("precision", "recall", "density", "coverage")},
        **{f"hpd_{k}": s["teacher_hpd_coverage"][k] - t["teacher_hpd_coverage"][k] for k in t["teacher_hpd_coverage"]},
    }
    print("flowmap_2 vs teacher", json.dumps(out["flowmap_2_vs_teacher"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
