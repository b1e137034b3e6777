"""Full-scale recipe runs of issue 12 (docs/recipe.md, "Full scale"), in parallel, on any device.

The issue's setting: RFM, width 256, depth 6, batch 512, 4000 steps (and 16 000), README
defaults plus one lever per run, paired training seeds. Each run is what a user would do:

    globeflow train     --data W/train.parquet --out RUN --method rfm --width 256 --depth 6 \\
                        --batch-size 512 --train-steps 4000 --seed 0 [lever flags]
    globeflow calibrate --model RUN --data W/cal.parquet          # test rows 1000-1999
    globeflow evaluate  --model RUN --data W/eval.parquet --density --density-rows 500  # rows 0-999

plus, by direct library calls on the same rows: the NLL gap to the true conditional (Eq. 18
units, bits/dim) with the likelihood ODE at 32 and 128 RK4 steps (the second is the model's
NLL to within the solver's error), the GeoScore / Bayes of MBR with 64 samples and of one
sample at ω = 2 (the paper's estimate).

    python scripts/recipe_full.py --worlds WORLDS --work W --device cuda --jobs 8 --deadline 420
    python scripts/recipe_full.py --worlds WORLDS --work docs/recipe_results/full --report   # the table

``WORLDS/<w>/world.json`` (``globeflow synthetic``'s, with ``bayes_1000.json`` = the Bayes
estimate's GeoScore on the first 1000 test rows); the 200 000 training and 2 000 test rows are
redrawn from the world file (``write_world_dataset``, deterministic), so only the JSON travels.
Results: ``W/results/<run>.json`` and ``W/results.json`` (all runs), written as runs finish;
no new run starts after ``--deadline`` seconds and running ones are stopped at ``--stop``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from globeflow.io import save_json  # noqa: E402  (atomic writes; light: no torch import)

BASE = ["--method", "rfm", "--width", "256", "--depth", "6", "--batch-size", "512", "--seed", "0"]
FULL = ["--train-steps", "4000"]
LONG = ["--train-steps", "16000"]
#: The defaults before this wave's change of the noise-level density (the issue's "today").
OLD = ["--train-noise", "schedule", "--train-noise-mean", "0"]


def lognorm(mean: float, std: float = 1.0) -> list[str]:
    return ["--train-noise", "logit_normal", "--train-noise-mean", str(mean), "--train-noise-std", str(std)]


#: The study worlds (``globeflow synthetic --types 24 --families 6 --dim 128 --components 4
#: --places cities --kappa-min 20 --train 200000 --test 2000``): w1 ``--kappa-max 2000 --seed 1``
#: (the study world of docs/recipe.md), w2 ``--kappa-max 20000 --seed 2`` (components to ~45 km).
WORLD_SEEDS = {"w1": 1, "w2": 2}

#: name -> (world, flags after BASE); in priority order (the first ones start first).
RUNS: dict[str, tuple[str, list[str]]] = {
    "f_default": ("w1", FULL),
    "f_old": ("w1", FULL + OLD),
    "l_default": ("w1", LONG),
    "f_default_s1": ("w1", FULL + ["--seed", "1"]),
    "f_old_s1": ("w1", FULL + OLD + ["--seed", "1"]),
    "f_bf16": ("w1", FULL + ["--train-precision", "bfloat16"]),
    "w2_default": ("w2", FULL),
    "w2_old": ("w2", FULL + OLD),
    "f_cond2": ("w1", FULL + ["--cond-depth", "2"]),
    "f_cond3": ("w1", FULL + ["--cond-depth", "3"]),
    "f_m-1.5": ("w1", FULL + lognorm(-1.5)),
    "f_m-0.5": ("w1", FULL + lognorm(-0.5)),
    "f_s1.5": ("w1", FULL + lognorm(-1.0, 1.5)),
    "f_uniform": ("w1", FULL + ["--train-noise", "uniform"]),
    "f_lr1.6e-3": ("w1", FULL + ["--lr", "1.6e-3"]),
    "f_lr4e-4": ("w1", FULL + ["--lr", "4e-4"]),
    "f_warm100": ("w1", FULL + ["--warmup-steps", "100"]),
    "f_drop0.2": ("w1", FULL + ["--cond-drop", "0.2"]),
    "f_drop0.05": ("w1", FULL + ["--cond-drop", "0.05"]),
    "f_noclip": ("w1", FULL + ["--grad-clip", "0"]),
    "f_ema0.9995": ("w1", FULL + ["--ema-decay", "0.9995"]),
    "f_ema0.995": ("w1", FULL + ["--ema-decay", "0.995"]),
    "f_cond2_m-1.5": ("w1", FULL + ["--cond-depth", "2"] + lognorm(-1.5)),
    "l_old": ("w1", LONG + OLD),
    "l_cond2": ("w1", LONG + ["--cond-depth", "2"]),
}


def prepare_world(worlds: Path, work: Path, w: str, train_rows: int) -> Path:
    """Redraw the world's rows (deterministic) and cut eval (0-999) / cal (1000-1999) files."""
    import pyarrow.parquet as pq

    from globeflow.data import SyntheticWorld, write_world_dataset

    out = work / "worlds" / w
    if (out / "cal.parquet").is_file():
        return out
    world = SyntheticWorld.load(worlds / w / "world.json")
    write_world_dataset(out, world, train_rows, 2000, seed=WORLD_SEEDS[w])
    table = pq.read_table(out / "test.parquet")
    pq.write_table(table.slice(0, 1000), out / "eval.parquet")
    pq.write_table(table.slice(1000, 1000), out / "cal.parquet")
    return out


def extras(run: Path, wdir: Path, worlds: Path, w: str, device: str, rows: int = 1000) -> dict:
    """NLL gap at 32 and 128 RK4 steps (500 rows), MBR-64 and one sample at ω = 2 (1000 rows)."""
    import numpy as np

    from globeflow.api import load
    from globeflow.data import SyntheticWorld, read_dataset
    from globeflow.data.synthetic import nats_to_paper_nll
    from globeflow.methods.base import geoscore_mbr
    from globeflow.metrics import distance_metrics
    from globeflow.metrics.density import nll_eq18

    world = SyntheticWorld.load(worlds / w / "world.json")
    bayes = json.loads((worlds / w / "bayes_1000.json").read_text())["geoscore"]
    d = read_dataset(wdir / "eval.parquet")
    emb, truth = d.embeddings[:rows], np.stack([d.latitude, d.longitude], 1)[:rows]
    model = load(run, device=device)
    out: dict = {"bayes_geoscore": bayes, "rows": rows}
    m = min(500, rows)
    nll_true = float(nats_to_paper_nll(-world.log_prob(emb[:m], d.latitude[:m], d.longitude[:m]).mean()))
    out["nll_true"] = nll_true
    for steps in (32, 128):
        nll = nll_eq18(model.log_prob(emb[:m], truth[:m], steps=steps))
        out[f"nll_rk4_{steps}"] = nll
        out[f"nll_gap_rk4_{steps}"] = nll - nll_true
    samples = model.sample(emb, 64, guidance=0.0, seed=0)
    out["mbr64_g0"] = distance_metrics(geoscore_mbr(samples), truth)["geoscore"] / bayes
    out["mbr32_g0"] = distance_metrics(geoscore_mbr(samples[:, :32]), truth)["geoscore"] / bayes
    out["sample_g0"] = distance_metrics(samples[:, 0], truth)["geoscore"] / bayes
    pred = model.predict(emb, strategy="sample", guidance=2.0, seed=0)
    out["sample_g2"] = distance_metrics(pred, truth)["geoscore"] / bayes
    return out


def one(name: str, args: argparse.Namespace) -> dict:
    w, flags = RUNS[name]
    wdir = args.work / "worlds" / w
    run = args.work / "runs" / name
    res_path = args.work / "results" / f"{name}.json"
    if res_path.is_file():
        return json.loads(res_path.read_text())
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    gf = [sys.executable, "-m", "globeflow"]
    res: dict = {"name": name, "world": w, "flags": flags, "device": args.device}

    def call(cmd: list[str]) -> None:
        with open(args.work / "logs" / f"{name}.log", "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            timeout = args.stop_at - time.time()
            subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)

    t0 = time.time()
    if not (run / "model.safetensors").is_file():
        steps = list(flags)
        if args.steps_scale != 1.0:  # dry runs only
            i = steps.index("--train-steps")
            steps[i + 1] = str(max(2, int(int(steps[i + 1]) * args.steps_scale)))
        call(gf + ["train", "--data", str(wdir / "train.parquet"), "--out", str(run), *BASE, *steps,
                   "--device", args.device, "--no-progress"])  # fmt: skip
    res["train_seconds"] = time.time() - t0
    recs = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    res["final_loss"] = recs[-1].get("loss")
    res["steps_per_s"] = sorted(r.get("steps_per_s", 0.0) for r in recs)[len(recs) // 2]
    t1 = time.time()
    if not (run / "calibration.json").is_file():
        call(gf + ["calibrate", "--model", str(run), "--data", str(wdir / "cal.parquet"), "--device", args.device])
    ev = args.work / "results" / f"{name}.evaluate.json"
    if not ev.is_file():
        call(gf + ["evaluate", "--model", str(run), "--data", str(wdir / "eval.parquet"), "--density",
                   "--density-rows", str(args.density_rows), "--device", args.device, "--out", str(ev)])  # fmt: skip
    res["evaluate"] = json.loads(ev.read_text())
    ex = args.work / "results" / f"{name}.extras.json"
    if not ex.is_file():  # a process of its own: no GIL shared with the other runs' threads
        call([sys.executable, __file__, "--extras", name, "--worlds", str(args.worlds), "--work", str(args.work),
              "--device", args.device, "--eval-rows", str(args.eval_rows)])  # fmt: skip
    res["extras"] = json.loads(ex.read_text())
    b = res["extras"]["bayes_geoscore"]  # on the first 1000 rows: evaluate's rows
    res["geoscore_ratio_default"] = res["evaluate"].get("geoscore", float("nan")) / b
    res["eval_seconds"] = time.time() - t1
    save_json(res_path, res)
    return res


def report(results: Path) -> str:
    """The Markdown table of every run in ``results`` (``W/results`` or docs/recipe_results/full)."""
    head = (
        "| run | world | GeoScore/Bayes: default estimate (MBR-32, ω=0) | MBR-64 | 1 sample ω=0 | 1 sample ω=2 | "
        "NLL gap RK4-32 | RK4-128 | HPD 50/90/95 % calibrated | uncalibrated | 90 % area, median (10⁶ km²) cal. / uncal. |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for name in RUNS:
        p = results / f"{name}.json"
        if not p.is_file():
            continue
        r = json.loads(p.read_text())
        e, x = r["evaluate"], r["extras"]

        def cov(suffix: str) -> str:
            return "/".join(f"{100 * e[f'hpd{q}_coverage{suffix}']:.1f}" for q in (50, 90, 95))

        rows.append(
            f"| {name} | {r['world']} | {r['geoscore_ratio_default']:.3f} | {x['mbr64_g0']:.3f} | {x['sample_g0']:.3f} | "
            f"{x['sample_g2']:.3f} | {x['nll_gap_rk4_32']:.3f} | {x['nll_gap_rk4_128']:.3f} | {cov('')} | "
            f"{cov('_uncalibrated')} | {e['hpd90_area_km2_median'] / 1e6:.1f} / "
            f"{e['hpd90_area_km2_median_uncalibrated'] / 1e6:.1f} |"
        )
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--only", action="append", default=None)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds after which no run starts")
    ap.add_argument("--stop", type=float, default=1e9, help="seconds after which running steps are stopped")
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--density-rows", type=int, default=500)
    ap.add_argument("--steps-scale", type=float, default=1.0, help="dry runs: scale every run's steps")
    ap.add_argument("--summary", type=Path, default=None, help="also write the summary here (e.g. $OUT)")
    ap.add_argument("--eval-rows", type=int, default=1000, help="rows of the extra metrics (dry runs: fewer)")
    ap.add_argument("--extras", default=None, help=argparse.SUPPRESS)  # internal: one run's extra metrics
    ap.add_argument("--report", action="store_true", help="print the table of WORK/results (or --work itself) and stop")
    args = ap.parse_args()
    if args.report:
        res = args.work / "results" if (args.work / "results").is_dir() else args.work
        print(report(res))
        return
    if args.extras:
        name = args.extras
        w = RUNS[name][0]
        res = extras(args.work / "runs" / name, args.work / "worlds" / w, args.worlds, w, args.device, args.eval_rows)
        save_json(args.work / "results" / f"{name}.extras.json", res)
        return
    start = time.time()
    args.stop_at = start + args.stop
    for sub in ("results", "logs", "runs"):
        (args.work / sub).mkdir(parents=True, exist_ok=True)
    names = args.only or list(RUNS)
    for w in sorted({RUNS[n][0] for n in names}):
        prepare_world(args.worlds, args.work, w, args.train_rows)
    print(f"worlds ready in {time.time() - start:.0f} s", flush=True)
    summary: dict = {}
    lock = threading.Lock()

    def job(name: str) -> None:
        if time.time() - start > args.deadline:
            summary[name] = {"skipped": "deadline"}
            return
        try:
            summary[name] = one(name, args)
            r = summary[name]
            print(f"{name}: default {r['geoscore_ratio_default']:.3f} mbr64 {r['extras']['mbr64_g0']:.3f} "
                  f"gap128 {r['extras']['nll_gap_rk4_128']:.3f} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip
        except Exception as exc:  # one failed run must not stop the others
            summary[name] = {"error": repr(exc)[:2000]}
            print(f"{name}: FAILED {exc!r}"[:500], flush=True)
        with lock:  # one writer at a time: the summary is a dict the threads share
            for path in filter(None, [args.work / "results.json", args.summary]):
                save_json(path, summary)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(job, names))


if __name__ == "__main__":
    main()
