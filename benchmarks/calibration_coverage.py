"""Coverage and area of a run's credible regions before/after its conformal calibration.

Reads a calibration file written by ``globeflow calibrate --calibration-fraction F`` (which
records the rows it calibrated on and the rows it left out), computes the HPD-rank scores of the
*left-out* rows (fresh samples: a seed different from the fit's) and reports, at 50/90/95%:
coverage at the model's own levels and at the calibrated levels (with the binomial standard
error), and the median / mean area of the regions before and after.

    python benchmarks/calibration_coverage.py --model RUN --data HELDOUT.parquet \\
        --calibration RUN/calibration.json --json benchmarks/results/calibration_X.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from globeflow.api import load
from globeflow.data import read_dataset
from globeflow.density.calibration import calibrated_regions, file_sha256, hpd_scores, load_calibration

LEVELS = (0.5, 0.9, 0.95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--samples", type=int, default=None, help="default: the calibration's")
    ap.add_argument("--steps", type=int, default=None, help="default: the calibration's")
    ap.add_argument("--seed", type=int, default=1, help="sampling seed of the test (default 1; the fit used 0)")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--scores",
        default=None,
        help="NPZ cache of the test rows' scores: read if it exists, else written (to score the "
        "test rows while the calibration is still being fitted: --split)",
    )
    ap.add_argument("--split", default=None, metavar="FRACTION,SEED", help="with --scores and no calibration yet")
    args = ap.parse_args()
    cal = None
    if Path(args.calibration).is_file():
        cal = load_calibration(args.calibration)
        if cal.source.get("data_sha256") not in (None, file_sha256(args.data)):
            raise SystemExit(f"--data: {args.data} is not the file the calibration was fitted on")
        rows = np.asarray(cal.source["test_rows"], dtype=np.int64)
        samples, steps, guidance = args.samples or cal.num_samples, args.steps or cal.steps, cal.guidance
    elif args.split and args.scores:
        from globeflow.density.calibration import conformal_split

        fraction, split_seed = args.split.split(",")
        n = len(read_dataset(args.data, require_coords=True))
        rows = conformal_split(n, float(fraction), int(split_seed))[1]
        samples, steps, guidance = args.samples or 32, args.steps or 8, 0.0
    else:
        raise SystemExit(f"--calibration: {args.calibration} not found (give --split and --scores to score first)")
    if rows.size == 0:
        raise SystemExit("the calibration used every row; fit it with --calibration-fraction < 1")
    if args.scores and Path(args.scores).is_file():
        z = np.load(args.scores)
        if not np.array_equal(z["rows"], rows) or int(z["samples"]) != samples or int(z["steps"]) != steps:
            raise SystemExit(f"--scores: {args.scores} holds other rows or settings")
        s = SimpleNamespace(
            scores=z["scores"], truth_log_prob=z["truth_log_prob"], sample_log_prob=z["sample_log_prob"]
        )
        seconds = float(z["seconds"])
    else:
        model = load(args.model)
        data = read_dataset(args.data, require_coords=True, expected_dim=model.embedding_dim)
        truth = np.stack([data.latitude, data.longitude], axis=1)[rows]
        start = time.perf_counter()
        s = hpd_scores(
            model, data.embeddings[rows], truth, num_samples=samples, steps=steps, guidance=guidance, seed=args.seed
        )
        seconds = time.perf_counter() - start
        if args.scores:
            np.savez(
                args.scores,
                rows=rows,
                samples=samples,
                steps=steps,
                seconds=seconds,
                scores=s.scores,
                truth_log_prob=s.truth_log_prob,
                sample_log_prob=s.sample_log_prob,
            )
    if cal is None:
        print(f"scores of {rows.size} test rows written to {args.scores} in {seconds:.0f} s")
        return
    _, area_raw, _ = calibrated_regions(s.sample_log_prob, LEVELS, None)
    _, area_cal, q = calibrated_regions(s.sample_log_prob, LEVELS, cal)
    n = len(rows)
    out = {
        "model": str(args.model),
        "data": str(args.data),
        "calibration": str(args.calibration),
        "n_calibration": cal.n,
        "n_test": n,
        "samples": samples,
        "steps": steps,
        "seed": args.seed,
        "seconds": seconds,
        "levels": {},
    }
    print(f"{n} test rows, calibration on {cal.n} rows; {samples} samples, {steps} RK4 steps, {seconds:.0f} s")
    print("nominal | model level | coverage before | after (± s.e.) | median area before → after km² | mean area")
    for j, a in enumerate(LEVELS):
        before = float((s.scores <= a).mean())
        after = float((s.scores <= q[j]).mean())
        se = float(np.sqrt(a * (1 - a) / n))
        rec = {
            "model_level": float(q[j]),
            "coverage_before": before,
            "coverage_after": after,
            "coverage_se": se,
            "median_area_km2_before": float(np.median(area_raw[:, j])),
            "median_area_km2_after": float(np.median(area_cal[:, j])),
            "mean_area_km2_before": float(area_raw[:, j].mean()),
            "mean_area_km2_after": float(area_cal[:, j].mean()),
        }
        out["levels"][f"{a:g}"] = rec
        print(
            f"{100 * a:4.0f}% | {q[j]:.4f} | {100 * before:.1f}% | {100 * after:.1f}% ± {100 * se:.1f} | "
            f"{rec['median_area_km2_before']:.4g} → {rec['median_area_km2_after']:.4g} | "
            f"{rec['mean_area_km2_before']:.4g} → {rec['mean_area_km2_after']:.4g}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
