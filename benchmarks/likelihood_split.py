"""Function evaluations for 0.01 nats: the split likelihood solver against RK4 and the official code.

Issue 14, item 2: ≥ 10× fewer function evaluations than the official ``compute_likelihood``
(diff-plonk 0.4, dopri5 atol = rtol = 1e-6) at max |Δ log p| ≤ 0.01 on the same weights. One run
measures everything on one set of (embedding, point) pairs — ``bench_likelihood.make_points``:
half test locations, half samples of the model:

* the reference: the model in float64, dopri5 at ``--ref-tol``;
* globeflow's ``rk4`` and ``rk4-split`` (:mod:`globeflow.solvers.split`) at ``--steps``, float32
  as shipped, with the method's graded grid: NFE, max / mean |Δ log p|, time;
* with ``--official``: the official solver's NFE count on the same weights and pairs, and the
  ratio of each setting's NFE to it (the official code integrates another quantity, the ambient
  divergence, so only its NFE is compared: see docs/benchmarks.md, "Likelihood").

Usage::

    python benchmarks/likelihood_split.py --run RUN --data world/test.parquet --points 32 --official \\
        --json benchmarks/results/likelihood_split_RUN.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True, help="Parquet with embeddings and true locations")
    p.add_argument("--points", type=int, default=32, help="pairs: half test locations, half model samples")
    p.add_argument("--offset", type=int, default=0, help="first test row of the pairs (another set of pairs)")
    p.add_argument("--steps", type=int, nargs="*", default=[12, 16, 24, 32, 40, 48, 64, 96, 128])
    p.add_argument("--ref-tol", type=float, default=1e-8)
    p.add_argument("--official", action="store_true", help="also count the official likelihood's evaluations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import bench_likelihood as bl

    from globeflow.api import load
    from globeflow.io import save_json

    m = load(args.run).eval()

    class PointArgs:
        points_trained = args.points
        points_paper = args.points
        test_data = args.data
        offset = args.offset

    import pyarrow.parquet as pq

    if args.points < 2 or args.offset < 0:
        p.error(f"--points must be ≥ 2 and --offset ≥ 0, got {args.points} and {args.offset}")
    rows = pq.ParquetFile(args.data).metadata.num_rows
    if args.offset + args.points > rows:
        p.error(f"--data {args.data} has {rows} rows; --offset {args.offset} --points {args.points} asks for more")
    emb, x, labels = bl.make_points("trained", m, PointArgs, torch.Generator().manual_seed(7))
    res: dict = {
        "run": args.run,
        "points": args.points,
        "offset": args.offset,
        "threads": args.threads,
        "ref_tol": args.ref_tol,
        "rows": [],
    }
    with torch.inference_mode():
        st: dict = {}
        t0 = time.perf_counter()
        ref = (
            copy.deepcopy(m)
            .double()
            .log_prob_xyz(emb.double(), x.double(), solver="dopri5", atol=args.ref_tol, rtol=args.ref_tol, stats=st)[
                :, 0
            ]
        )
        res["reference"] = {"nfe": st["nfe"], "seconds": time.perf_counter() - t0}
        print(f"reference: float64 dopri5 {args.ref_tol:g}, {st['nfe']} NFE", flush=True)
        for steps in args.steps:
            for solver in ("rk4", "rk4-split"):
                st = {}
                t0 = time.perf_counter()
                lp = m.log_prob_xyz(emb, x, solver=solver, steps=steps, stats=st)[:, 0].double()
                err = (lp - ref).abs()
                row = {
                    "solver": solver,
                    "steps": steps,
                    "nfe": st["nfe"],
                    "seconds": time.perf_counter() - t0,
                    "max_abs": float(err.max()),
                    "mean_abs": float(err.mean()),
                }
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
    if args.official:
        from bench_core import load_official

        pipe_mod, manifolds = bl.load_official_pipe()
        off, _ = bl.build_trained(load_official(), args.run)
        off.eval().requires_grad_(False)
        t0 = time.perf_counter()
        _, nfe = bl.official_log_prob(
            bl.make_pipeline(pipe_mod, manifolds, off), emb, bl.xyz_to_latlon_deg(x), atol=1e-6, rtol=1e-6
        )
        res["official"] = {"nfe": nfe, "seconds": time.perf_counter() - t0, "solver": "dopri5 1e-6"}
        for row in res["rows"]:
            row["official_nfe_ratio"] = nfe / row["nfe"]
        ok = [r for r in res["rows"] if r["max_abs"] <= 0.01]
        best = max(ok, key=lambda r: r["official_nfe_ratio"]) if ok else None
        res["best_within_0.01"] = best
        print(f"official: {nfe} NFE; best setting within 0.01 nats: {best}", flush=True)
    res["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        save_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
