"""Accuracy and cost of :func:`globeflow.density.density_map` against the exact per-pixel map.

Closed-form vMF mixtures (κ from 10, continent scale, to 10⁴, ~60 km) and, with ``--run``, a
trained model's exact ODE likelihood (compare at a coarser ``--model-resolution`` when the
exact map is slow). Prints one JSON line per case:

    python scripts/bench_density_map.py [--resolution 1] [--run RUN_DIR --data FILE --rows 0 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from globeflow.density import compare_to_exact, density_map, exact_log_prob_raster, log_prob_fn_from_method
from globeflow.geometry import latlon_to_xyz

# The closed-form vMF mixtures of the density tests are the oracles here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _density_helpers import vmf_mixture

CASES = {
    "vmf_k10": ([(30.0, 10.0)], [10.0], [1.0]),
    "vmf_k100": ([(45.0, -100.0)], [100.0], [1.0]),
    "vmf_k1e3": ([(-20.0, 140.0)], [1e3], [1.0]),
    "vmf_k1e4": ([(48.85, 2.35)], [1e4], [1.0]),
    "mixture6": (
        [(48.85, 2.35), (35.0, 139.0), (-33.0, 151.0), (40.0, -74.0), (0.0, 179.5), (80.0, 0.0)],
        [1e4, 3e3, 300.0, 30.0, 1e3, 100.0],
        [0.3, 0.2, 0.15, 0.15, 0.1, 0.1],
    ),
}




class Timed:
    """Wraps a log_prob_fn to time its calls apart from the map's own work."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, xyz):
        t = time.perf_counter()
        out = self.fn(xyz)
        self.seconds += time.perf_counter() - t
        return out


def report(name, dmap, exact, seconds, fn_seconds, exact_seconds=None):
    err = compare_to_exact(dmap, exact)
    row = {"case": name, "resolution_deg": dmap.resolution_deg, **err}
    row["map_seconds_excluding_log_prob"] = round(seconds - fn_seconds, 3)
    row["log_prob_seconds"] = round(fn_seconds, 3)
    if exact_seconds is not None:
        row["exact_map_seconds"] = round(exact_seconds, 3)
    row["sample_abs_error_mean_max"] = dmap.sample_abs_error
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--run", help="a trained run directory (api.load)")
    ap.add_argument("--data", help="embeddings file for --run (globeflow data reader)")
    ap.add_argument("--rows", type=int, nargs="*", default=[0])
    ap.add_argument("--model-resolution", type=float, default=4.0)
    ap.add_argument("--model-samples", type=int, default=300)
    ap.add_argument(
        "--steps", type=int, default=None, help="fixed steps of the likelihood ODE (method default if unset)"
    )
    ap.add_argument("--tol", type=float, nargs="*", default=[0.05], help="density_map tol values to compare")
    ap.add_argument(
        "--mass-pixels-only",
        action="store_true",
        help="exact map only on the pixels of the map's 99.9%% region (grown by 2 pixels): 1° on a CPU",
    )
    ap.add_argument("--skip-closed-form", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, case in {} if args.skip_closed_form else CASES.items():
        log_prob, sample = vmf_mixture(*case)
        s = sample(args.samples)
        fn = Timed(log_prob)
        t = time.perf_counter()
        dmap = density_map(fn, args.resolution, samples_xyz=s, sample_log_prob=log_prob(s))
        seconds = time.perf_counter() - t
        _, _, exact = exact_log_prob_raster(log_prob, args.resolution)
        report(name, dmap, exact, seconds, fn.seconds)
    if args.run:
        from globeflow import api
        from globeflow.data.readers import read_dataset

        method = api.load(args.run)
        data = read_dataset(args.data)
        for row in args.rows:
            emb = np.asarray(data.embeddings[row], dtype=np.float32)
            options = {} if args.steps is None else {"steps": args.steps}
            res = method.sample_with_log_prob(emb[None], args.model_samples, seed=row)
            maps = {}
            for tol in args.tol:
                fn = Timed(log_prob_fn_from_method(method, emb, **options))
                t = time.perf_counter()
                maps[tol] = density_map(
                    fn,
                    args.model_resolution,
                    samples_xyz=res.xyz[0],
                    sample_log_prob=res.log_prob[0],
                    tol=tol,
                )
                maps[tol] = (maps[tol], time.perf_counter() - t, fn.seconds)
            t = time.perf_counter()
            if args.mass_pixels_only:
                exact, pixels = exact_where_mass(fn.fn, maps[args.tol[0]][0])
            else:
                _, _, exact = exact_log_prob_raster(fn.fn, args.model_resolution, chunk_size=8192)
                pixels = exact.size
            exact_seconds = time.perf_counter() - t
            for tol, (dmap, seconds, fn_seconds) in maps.items():
                report(f"model_row{row}_tol{tol}", dmap, exact, seconds, fn_seconds, exact_seconds)
            print(json.dumps({"row": row, "exact_pixels_evaluated": int(pixels)}), flush=True)


def exact_where_mass(log_prob_fn, dmap, mass_fraction=0.999, grow=2):
    """Exact log p on the pixels of the map's top-``mass_fraction`` region grown by ``grow``
    pixels; elsewhere the map's own values (so errors there count as zero)."""
    w = np.exp(dmap.log_prob) * dmap.pixel_area
    order = np.argsort(-w, axis=None)
    cum = np.cumsum(w.ravel()[order]) / w.sum()
    sel = np.zeros(w.size, bool)
    sel[order[: int(np.searchsorted(cum, mass_fraction)) + 1]] = True
    sel = sel.reshape(w.shape)
    for _ in range(grow):
        sel = (
            sel
            | np.roll(sel, 1, 1)
            | np.roll(sel, -1, 1)
            | np.vstack([sel[1:], sel[-1:]])
            | np.vstack([sel[:1], sel[:-1]])
        )
    ll = np.meshgrid(dmap.lat, dmap.lon, indexing="ij")
    exact = dmap.log_prob.copy()
    exact[sel] = log_prob_fn(latlon_to_xyz(ll[0][sel], ll[1][sel]))
    return exact, int(sel.sum())


if __name__ == "__main__":
    main()
