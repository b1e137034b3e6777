"""Cost and accuracy of ``evaluate --density`` settings (issue 12, item 4).

For a trained run and rows of a file with true locations, each setting (RK4 steps, samples per
row, network precision of the likelihood ODE) is timed on the same rows through
:func:`globeflow.metrics.density_metrics` (truth solve data → noise + sample solve noise → data,
both timed) and its log-densities are compared with a float64 reference:

* truths: ``log_prob`` in float64 with ``--ref-steps`` RK4 steps (its own error checked against
  twice as many steps);
* samples: the samples of each setting carry log p from the forward solve; the reference is the
  float64 backward solve at the same end points.

Usage::

    python benchmarks/bench_density_eval.py --model RUN --data test.parquet --rows 40 \\
        --json benchmarks/results/density_eval_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from globeflow.api import load
from globeflow.data import read_dataset
from globeflow.metrics import density_metrics

SETTINGS = [
    # (label, RK4 steps, samples per row, precision, grid power: 1 uniform κ steps, 2 graded)
    ("before: 32 uniform steps, 128 samples, fp32", 32, 128, "float32", 1.0),
    ("32 graded steps, 32 samples, fp32", 32, 32, "float32", 2.0),
    ("16 graded steps, 32 samples, fp32", 16, 32, "float32", 2.0),
    ("16 graded steps, 32 samples, bf16", 16, 32, "bfloat16", 2.0),
    ("32 graded steps, 32 samples, bf16", 32, 32, "bfloat16", 2.0),
    ("8 graded steps, 32 samples, fp32", 8, 32, "float32", 2.0),
]


def _reference(model64, emb, xyz, steps):
    """float64 log p at unit vectors ``xyz`` (B, P, 3), graded grid (power 2)."""
    e = torch.as_tensor(emb, dtype=torch.float64)
    x = torch.as_tensor(xyz, dtype=torch.float64)
    with torch.inference_mode():
        return model64.log_prob_xyz(e, x, steps=steps, grid_power=2.0).double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--ref-steps", type=int, default=512)
    ap.add_argument("--ref-samples", type=int, default=4, help="samples per row checked against the reference")
    ap.add_argument("--only", default=None, help="comma-separated indices of SETTINGS to run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load(args.model)
    model64 = copy.deepcopy(model).double()
    data = read_dataset(args.data, require_coords=True, expected_dim=model.embedding_dim)
    emb = data.embeddings[: args.rows]
    truth = np.stack([data.latitude, data.longitude], axis=1)[: args.rows]
    from globeflow.geometry.coords import latlon_to_xyz

    txyz = latlon_to_xyz(truth[:, 0], truth[:, 1])[:, None]
    ref_truth = _reference(model64, emb, txyz, args.ref_steps)[:, 0]
    ref2 = _reference(model64, emb, txyz, args.ref_steps // 2)[:, 0]
    out = {
        "model": str(args.model),
        "net": model.config()["net"],
        "rows": args.rows,
        "ref_steps": args.ref_steps,
        "ref_change_from_half_steps_max": float(np.abs(ref_truth - ref2).max()),
        "settings": [],
    }
    print(
        f"reference: float64 RK4 {args.ref_steps} graded steps; max change from {args.ref_steps // 2}: "
        f"{out['ref_change_from_half_steps_max']:.2e}"
    )
    chosen = SETTINGS if args.only is None else [SETTINGS[int(i)] for i in args.only.split(",")]
    for label, steps, samples, precision, power in chosen:
        opts = {"steps": steps, "precision": precision, "grid_power": power}
        t0 = time.perf_counter()
        lp_truth = model.log_prob(emb, truth, **opts)
        t_truth = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = density_metrics(model, emb, truth, num_samples=samples, seed=0, calibration=None, **opts)
        t_all = time.perf_counter() - t0
        so = {k: v for k, v in opts.items() if k != "steps"}
        res = model.sample_with_log_prob(emb, samples, seed=0, sample_steps=steps, **so)
        k = min(args.ref_samples, samples)
        ref_s = _reference(model64, emb, res.xyz[:, :k], args.ref_steps)
        err_s = np.abs(res.log_prob[:, :k] - ref_s)
        err_t = np.abs(lp_truth - ref_truth)
        rec = {
            "label": label,
            "steps": steps,
            "samples": samples,
            "precision": precision,
            "grid_power": power,
            "seconds_density_metrics": t_all,
            "seconds_truth_solve": t_truth,
            "seconds_per_row": t_all / args.rows,
            "truth_abs_err_median": float(np.median(err_t)),
            "truth_abs_err_p90": float(np.quantile(err_t, 0.9)),
            "truth_abs_err_max": float(err_t.max()),
            "sample_abs_err_median": float(np.median(err_s)),
            "sample_abs_err_p90": float(np.quantile(err_s, 0.9)),
            "sample_abs_err_max": float(err_s.max()),
            "metrics": {kk: v for kk, v in m.items() if isinstance(v, (int, float))},
        }
        out["settings"].append(rec)
        print(
            f"{label:40s} {t_all:7.1f} s (truth solve {t_truth:5.1f} s) | |Δlog p| truth med {rec['truth_abs_err_median']:.4f} "
            f"max {rec['truth_abs_err_max']:.4f}; samples med {rec['sample_abs_err_median']:.4f} max {rec['sample_abs_err_max']:.4f} | "
            f"nll {m['nll']:.4f} cov {m['hpd50_coverage']:.3f}/{m['hpd90_coverage']:.3f}/{m['hpd95_coverage']:.3f} "
            f"loc {m['localizability_mean']:.3f}",
            flush=True,
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
