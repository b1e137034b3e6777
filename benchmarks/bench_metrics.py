"""Speed of the evaluation metrics on this CPU: administrative accuracy (cities1000 reverse
geocoding) and exact PRDC, both at 100k points (issue 5's "100k lookups in seconds" and
"100k × 100k on this CPU").

    python benchmarks/bench_metrics.py [--n 100000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from globeflow.geometry.coords import xyz_to_latlon
from globeflow.metrics import admin_accuracy
from globeflow.metrics.admin import load_gazetteer
from globeflow.metrics.prdc import prdc


def _uniform(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


#: Centres of the clustered test sets (fixed: two draws with different seeds share a distribution).
CENTRES = _uniform(50, 12345)


def _clustered(n: int, seed: int, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = CENTRES[rng.integers(0, len(CENTRES), n)] + spread * rng.normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n
    results: dict = {"n": n, "threads": args.threads}
    _, results["gazetteer_load_s"] = _timed(load_gazetteer)
    pred, truth = xyz_to_latlon(_clustered(n, 0)), xyz_to_latlon(_clustered(n, 10))
    acc, results["admin_accuracy_pairs_s"] = _timed(lambda: admin_accuracy(pred, truth))
    results["admin_accuracy"] = acc
    real = _clustered(n, 20)
    for name, fake in [("self", real), ("same_distribution", _clustered(n, 21)), ("uniform_fakes", _uniform(n, 3))]:
        metrics, seconds = _timed(lambda fake=fake: prdc(real, fake))
        results[f"prdc_{name}"] = {**metrics, "seconds": seconds}
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
