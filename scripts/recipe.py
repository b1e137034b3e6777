"""Training-recipe study on a known-truth synthetic world (issue 12; docs/recipe.md).

    python scripts/recipe.py --work recipe-work                      # everything, in order
    python scripts/recipe.py --work recipe-work --only screen_base   # one run (train + eval)
    python scripts/recipe.py --work recipe-work --stages report      # the tables only

Stages (``--stages``, comma separated, default ``world,runs,report``):

* ``world``   write the study world with ``globeflow synthetic`` (24 types in 6 families,
  128-d embeddings, up to 4 vMF components per type centred on GeoNames cities,
  κ ∈ [20, 2000], 200,000 training rows, 2,000 test rows, seed 1);
* ``runs``    train every run of :data:`RUNS` (or ``--only``) with ``globeflow train`` (a
  subprocess, one thread, ``nice``; an interrupted run resumes from its checkpoint) and
  evaluate it (results/<name>.json; an existing file is reused, so the study is resumable);
* ``hpd``     HPD coverage of already evaluated runs (``--only`` or all) that lack it;
* ``report``  the Markdown table of every evaluated run (WORK/table.md), pasted into
  docs/recipe.md.

Metrics of a run, on fixed test rows, by direct library calls:

* GeoScore of ``predict`` at guidance 2, 16 Euler steps (``globeflow evaluate --guidance 2``)
  over ``--geo-rows`` rows, divided by the Bayes estimate's
  (:meth:`SyntheticWorld.best_geoscore`) on the same rows;
* the NLL gap to the true conditional in Eq. 18 units (bits per dimension,
  −(1/3) log₂ p per steradian): model NLL (RK4, 32 steps, exact divergence, ω = 0) minus the
  true one, over ``--nll-rows`` rows;
* HPD 50/90/95 coverage (``globeflow.metrics.density_metrics``) over ``--hpd-rows`` rows
  with ``--hpd-samples`` samples each;
* for screening runs also the raw (non-EMA) weights' GeoScore and NLL: the EMA lever from the
  same training;
* seconds per training step (from the training log: the median over log intervals, so
  another process's burst does not dominate).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

WORLD_ARGS = [
    "--types", "24", "--families", "6", "--dim", "128", "--components", "4", "--places", "cities",
    "--kappa-min", "20", "--kappa-max", "2000", "--train", "200000", "--test", "2000", "--seed", "1",
]  # fmt: skip

#: Shared by every run (the issue's settings).
BASE = ["--method", "rfm", "--width", "256", "--depth", "6", "--batch-size", "512", "--seed", "0"]

#: Screening, at reduced scale because the study's CPU was 2 cores shared by ~10 processes:
#: 1000 steps of batch 128 (1/16 of the full setting's samples; warm-up scaled with the run,
#: 125 = 500 · 1000/4000), bfloat16 for speed (screen_fp32 is the pair that measures what
#: bfloat16 changes), one seed; every run uses the same seed, so batches and noise are paired.
#: The old (study-time) default noise levels are pinned: rfm's default is now logit-normal(−1, 1).
OLD_NOISE = ["--train-noise", "schedule", "--train-noise-mean", "0"]
SCREEN = ["--train-steps", "1000", "--warmup-steps", "125", "--train-precision", "bfloat16", "--batch-size", "128",
          *OLD_NOISE]  # fmt: skip

MID = ["--train-steps", "2000", "--warmup-steps", "250", "--train-precision", "bfloat16", "--batch-size", "256",
       *OLD_NOISE]  # fmt: skip

#: name -> extra ``globeflow train`` flags.
RUNS: dict[str, list[str]] = {
    "screen_base": SCREEN,
    "screen_fp32": [x for x in SCREEN if x not in ("--train-precision", "bfloat16")],
    "screen_lognorm": SCREEN + ["--train-noise", "logit_normal", "--train-noise-mean", "0"],
    "screen_lognorm_m-1": SCREEN + ["--train-noise", "logit_normal", "--train-noise-mean", "-1"],
    "screen_uniform": SCREEN + ["--train-noise", "uniform"],
    "screen_sched_official": SCREEN + ["--schedule-alpha", "-7", "--schedule-beta", "3"],
    "screen_lr2e-3": SCREEN + ["--lr", "2e-3"],
    "screen_cond3": SCREEN + ["--cond-depth", "3"],
    "screen_drop0.2": SCREEN + ["--cond-drop", "0.2"],
    "screen_noclip": SCREEN + ["--grad-clip", "0"],
    # A second training seed of the lever that changed a default (argparse: the later --seed wins).
    "screen_base_seed1": SCREEN + ["--seed", "1"],
    "screen_lognorm_m-1_seed1": SCREEN + ["--train-noise", "logit_normal", "--train-noise-mean", "-1", "--seed", "1"],
    # Full setting: 4000 steps. The "before" is the old defaults; with bfloat16 because the CPU
    # was shared by ~10 processes during the study (screen_base vs screen_fp32 is the pair that
    # measures what bfloat16 alone changes).
    "full_baseline_bf16": ["--train-steps", "4000", "--train-precision", "bfloat16", *OLD_NOISE],
    "full_baseline": ["--train-steps", "4000", *OLD_NOISE],
    # The recipe confirmed once at the full setting (chosen after the first screens).
    "full_recipe": ["--train-steps", "4000", "--train-precision", "bfloat16", "--train-noise", "logit_normal",
                    "--train-noise-mean", "-1"],
    # A paired before/after at 1/4 of the full setting's samples (2000 steps of batch 256):
    # what fitted the study's CPU time (the full 4000 x 512 run ran at ~0.6 steps/s).
    "mid_baseline": MID,
    "mid_recipe": MID + ["--train-noise", "logit_normal", "--train-noise-mean", "-1"],
}


def sh(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    with open(log, "a") as f:
        subprocess.run(["nice", "-n", "10", *cmd], check=True, env=env, stdout=f, stderr=subprocess.STDOUT)


def make_world(work: Path) -> None:
    if (work / "world" / "world.json").is_file():
        return
    sh([sys.executable, "-m", "globeflow", "synthetic", "--out", str(work / "world"), *WORLD_ARGS], work / "world.log")


def train(work: Path, name: str, extra: list[str]) -> Path:
    run = work / "runs" / name
    if (run / "model.safetensors").is_file():
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "globeflow", "train", "--data", str(work / "world" / "train.parquet")]
    sh(cmd + ["--out", str(run), *BASE, *extra, "--no-progress"], work / "runs" / f"{name}.log")  # later flags win
    return run


def step_seconds(run: Path) -> float:
    """Median seconds per step over log intervals (robust to other processes' bursts)."""
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["steps_per_s"] for r in recs[1:]] or [recs[0]["steps_per_s"]]
    return float(1.0 / np.median(rates))


def raw_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (state,) = sorted((run / "checkpoint").glob("state-*.safetensors"))[-1:]
    return {k[len("model/") :]: v for k, v in load_file(state).items() if k.startswith("model/")}


def evaluate(
    run: Path, world, test, args: argparse.Namespace, *, raw: bool = False, density: bool = True, nll_steps: int = 32
) -> dict:
    from globeflow.api import load
    from globeflow.data.synthetic import nats_to_paper_nll
    from globeflow.metrics import density_metrics, distance_metrics
    from globeflow.metrics.density import nll_eq18

    model = load(run)
    if raw:
        model.net.load_state_dict(raw_weights(run))
    emb, lat, lon = test
    out: dict = {}
    n = args.geo_rows
    t0 = time.perf_counter()
    pred = model.predict(emb[:n], strategy="sample", guidance=2.0, sample_steps=16, seed=0)
    dm = distance_metrics(pred, np.stack([lat[:n], lon[:n]], 1))
    out.update(geoscore=dm["geoscore"], median_km=dm["median_distance_km"], acc_750km=dm.get("acc_750km"))
    out["geoscore_ratio"] = dm["geoscore"] / args.bayes_geoscore
    m = args.nll_rows
    log_p = model.log_prob(emb[:m], np.stack([lat[:m], lon[:m]], 1), steps=nll_steps)
    out["nll"] = nll_eq18(log_p)
    out["nll_true"] = float(nats_to_paper_nll(-world.log_prob(emb[:m], lat[:m], lon[:m]).mean()))
    out["nll_gap"] = out["nll"] - out["nll_true"]
    if density and args.hpd_rows:
        h = args.hpd_rows
        dens = density_metrics(
            model, emb[:h], np.stack([lat[:h], lon[:h]], 1), num_samples=args.hpd_samples, steps=args.hpd_steps
        )
        out.update({k: v for k, v in dens.items() if k.startswith("hpd")})
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def evaluate_mbr(run: Path, world, test, args: argparse.Namespace, rows: int) -> dict:
    """GeoScore / Bayes of the MBR point estimate (``evaluate --strategy mbr``, 32 samples) at
    guidance 2 and 0, and of one sample (the paper's estimate) on the same rows."""
    from globeflow.api import load
    from globeflow.methods.base import geoscore_mbr
    from globeflow.metrics import distance_metrics

    model = load(run)
    emb, lat, lon = (a[:rows] for a in test)
    truth = np.stack([lat, lon], 1)
    bayes = bayes_geoscore(args.work, world, test, rows)
    out: dict = {"rows": rows, "bayes_geoscore": bayes}
    for g in (2.0, 0.0):
        samples = model.sample(emb, 32, guidance=g, sample_steps=16, seed=0)
        out[f"mbr_g{g:g}"] = distance_metrics(geoscore_mbr(samples), truth)["geoscore"] / bayes
        out[f"sample_g{g:g}"] = distance_metrics(samples[:, 0], truth)["geoscore"] / bayes
    return out


def bayes_geoscore(work: Path, world, test, n: int) -> float:
    path = work / f"bayes_{n}.json"
    if not path.is_file():
        bayes = world.best_geoscore(test[0][:n], test[1][:n], test[2][:n])
        path.write_text(json.dumps({"rows": n, "geoscore": bayes}))
    return json.loads(path.read_text())["geoscore"]


def run_one(work: Path, name: str, args: argparse.Namespace, world, test) -> None:
    res_path = work / "results" / f"{name}.json"
    if res_path.is_file():
        res = json.loads(res_path.read_text())
        if "mbr" not in res and args.mbr_rows:
            res["mbr"] = evaluate_mbr(work / "runs" / name, world, test, args, args.geo_rows if name.startswith("full") else args.mbr_rows)
            write_json(res_path, res)
            print(name, "mbr", json.dumps(res["mbr"]), flush=True)
        return
    run = train(work, name, RUNS[name])
    res = {"flags": RUNS[name], "step_seconds": step_seconds(run)}
    if name.startswith("screen"):
        # Screens: the point estimates and NLL only (RK4 16 steps for the NLL: the HPD sampling
        # solve is the expensive part), for the EMA and the raw weights.
        res["ema"] = evaluate(run, world, test, args, density=False, nll_steps=16)
        res["raw"] = evaluate(run, world, test, args, raw=True, density=False, nll_steps=16)
    else:
        res["ema"] = evaluate(run, world, test, args)
    if args.mbr_rows:
        res["mbr"] = evaluate_mbr(run, world, test, args, args.geo_rows if name.startswith("full") else args.mbr_rows)
    write_json(res_path, res)
    print(name, json.dumps(res), flush=True)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def add_hpd(work: Path, name: str, world, test, args: argparse.Namespace) -> None:
    """HPD 50/90/95 coverage of an evaluated run (screens skip it in ``runs``: it is the
    expensive part); stored under ``hpd`` in its results file."""
    from globeflow.api import load
    from globeflow.metrics import density_metrics

    res_path = work / "results" / f"{name}.json"
    res = json.loads(res_path.read_text())
    if "hpd" in res or "hpd50_coverage" in res["ema"]:
        return
    emb, lat, lon = (a[: args.hpd_rows] for a in test)
    dens = density_metrics(
        load(work / "runs" / name), emb, np.stack([lat, lon], 1), num_samples=args.hpd_samples, steps=args.hpd_steps
    )
    res["hpd"] = {k: v for k, v in dens.items() if k.startswith("hpd")} | {"rows": args.hpd_rows}
    write_json(res_path, res)
    print(name, "hpd", json.dumps(res["hpd"]), flush=True)


def report(work: Path) -> str:
    rows = []
    head = (
        "| run | s/step | GeoScore/Bayes, 1 sample ω=2 (EMA) | (raw) | MBR-32 ω=2 | MBR-32 ω=0 | "
        "NLL gap bits/dim (EMA) | (raw) | HPD 50/90/95 % |\n|---|---|---|---|---|---|---|---|---|"
    )
    nan = float("nan")
    for name in RUNS:
        p = work / "results" / f"{name}.json"
        if not p.is_file():
            continue
        r = json.loads(p.read_text())
        e, w, m = r["ema"], r.get("raw", {}), r.get("mbr", {})
        h = r.get("hpd", e)
        hpd = "/".join(f"{100 * h[f'hpd{q}_coverage']:.0f}" for q in (50, 90, 95)) if "hpd50_coverage" in h else "–"
        def f(v: float) -> str:
            return "–" if v != v else f"{v:.3f}"  # not measured: a dash

        rows.append(
            f"| {name} | {r['step_seconds']:.3f} | {f(e['geoscore_ratio'])} | {f(w.get('geoscore_ratio', nan))} | "
            f"{f(m.get('mbr_g2', nan))} | {f(m.get('mbr_g0', nan))} | "
            f"{f(e['nll_gap'])} | {f(w.get('nll_gap', nan))} | {hpd} |"
        )
    table = "\n".join([head, *rows])
    (work / "table.md").write_text(table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--stages", default="world,runs,report")
    ap.add_argument("--only", action="append", default=None, help="run names (repeatable; default all)")
    ap.add_argument("--geo-rows", type=int, default=1000)
    ap.add_argument("--nll-rows", type=int, default=200)
    ap.add_argument("--hpd-rows", type=int, default=100)
    ap.add_argument("--hpd-samples", type=int, default=32)
    ap.add_argument("--hpd-steps", type=int, default=16)
    ap.add_argument("--mbr-rows", type=int, default=300, help="rows of the MBR screens (full runs: --geo-rows)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "src"))
    stages = args.stages.split(",")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if "world" in stages:
        make_world(work)
    if "runs" in stages:
        from globeflow.data import SyntheticWorld, read_dataset

        world = SyntheticWorld.load(work / "world" / "world.json")
        data = read_dataset(work / "world" / "test.parquet")
        test = (data.embeddings, data.latitude, data.longitude)
        args.work = work
        args.bayes_geoscore = bayes_geoscore(work, world, test, args.geo_rows)
        for name in args.only or list(RUNS):
            if name not in RUNS:
                raise SystemExit(f"unknown run {name!r}; known: {list(RUNS)}")
            run_one(work, name, args, world, test)
    if "hpd" in stages:
        from globeflow.data import SyntheticWorld, read_dataset

        world = SyntheticWorld.load(work / "world" / "world.json")
        data = read_dataset(work / "world" / "test.parquet")
        for name in args.only or [p.stem for p in sorted((work / "results").glob("*.json"))]:
            add_hpd(work, name, world, (data.embeddings, data.latitude, data.longitude), args)
    if "report" in stages:
        print(report(work))


if __name__ == "__main__":
    main()
