"""Per-level point-estimate metrics of several runs on a geonames-text test file.

    OMP_NUM_THREADS=1 python scripts/eval_geonames_levels.py --data data/geonames-text/test.parquet \
        --out levels.md src/globeflow/pretrained/geonames-text runs/vmf runs/mvmf

For each run and each ``level`` of the file: rows, GeoScore, median km, acc@25/200/750 km and
country / admin1 accuracy (nearest cities1000 place), with ``predict``'s defaults (guidance 2,
16 steps, seed 0). Writes a Markdown table (and the numbers as JSON next to it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-rows-per-level", type=int, default=1000)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from globeflow.api import load
    from globeflow.data import read_dataset
    from globeflow.data.geonames_text import LEVELS
    from globeflow.metrics import admin_accuracy, distance_metrics
    from globeflow.metrics.admin import load_gazetteer

    data = read_dataset(args.data)
    gaz = load_gazetteer()
    rows = []
    for ref in args.models:
        model = load(ref)
        for level in LEVELS:
            idx = np.flatnonzero(data.extra["level"] == level)[: args.max_rows_per_level]
            if idx.size == 0:
                continue
            # The documented runs scored one draw at ω = 2 for the generative methods (now MBR by default).
            pred = model.predict(data.embeddings[idx], **({"strategy": "sample"} if model.default_strategy == "mbr" else {}))
            truth = np.stack([data.latitude[idx], data.longitude[idx]], axis=1)
            m = {**distance_metrics(pred, truth), **admin_accuracy(pred, truth, gazetteer=gaz)}
            rows.append({"model": Path(ref).name, "method": model.name, "level": level, **m})
    cols = ["geoscore", "median_distance_km", "acc_25km", "acc_200km", "acc_750km", "acc_country", "acc_region"]
    lines = ["| model | level | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for r in rows:
        vals = [f"{r[c]:.0f}" if c in ("geoscore", "median_distance_km") else f"{r[c]:.3f}" for c in cols]
        lines.append(f"| {r['model']} ({r['method']}) | {r['level']} | {r['n']} | " + " | ".join(vals) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
