"""Scale benchmark (issue 17): peak memory and throughput of train / predict / evaluate as the
number of rows grows, streaming reader vs reading the file into memory.

For each ``--rows`` N it writes a synthetic Parquet file of N rows of ``--dim``-d float32
embeddings (random, 32768-row row groups as ``globeflow`` writes them) with coordinates,
then runs each command in its own process under ``/usr/bin/time -v`` (peak RSS of that process)
and deletes the file:

* ``train``: ``--train-steps`` steps of the paper-size network (d = 512, N = 12, batch 512),
  ``--loader stream`` at every N, and ``--loader memory`` at the Ns in ``--memory-rows``
  (the in-memory reference; reading the whole file dominates its memory): steps/s from the
  run's train_log.jsonl (the loop's own clock: the stream's window reads are inside it, the
  in-memory file read is not), rows/s = steps/s x batch;
* ``predict`` / ``evaluate`` (``--no-prdc`` is not used: PRDC is exact over all N) with a
  small model (d = 64, N = 2, 1 sampling step) so that the pass over N rows is affordable on
  a CPU: memory is what is measured; rows/s of the paper-size network are from
  ``bench_core.py``.

Usage (CPU is scarce: one thread, nice)::

    OMP_NUM_THREADS=1 nice python benchmarks/bench_scale.py --rows 200000 1000000 \\
        --workdir /work/tmp/scale --json benchmarks/results/scale_cpu_1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 32_768


def write_synthetic(path: Path, rows: int, dim: int, seed: int = 0, row_group: int = ROW_GROUP) -> float:
    """N rows of random unit-norm-ish embeddings and uniform locations, written in row groups
    (bounded memory). Returns the file's size in GB."""
    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("embedding", pa.list_(pa.float32(), dim)), ("latitude", pa.float64()), ("longitude", pa.float64())]
    )
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for lo in range(0, rows, row_group):
            m = min(row_group, rows - lo)
            emb = rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
            lat = np.degrees(np.arcsin(rng.uniform(-1, 1, m)))
            lon = rng.uniform(-180, 180, m)
            values = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
            writer.write_table(pa.table({"embedding": values, "latitude": lat, "longitude": lon}, schema=schema))
    return path.stat().st_size / 1e9


def timed(cmd: list[str], env: dict) -> dict:
    """Run ``cmd`` under /usr/bin/time -v: peak RSS (GB) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"peak_rss_gb": kb * 1024 / 1e9, "wall_s": wall}


def steps_per_s(run: Path) -> float:
    """Steps/s of the training loop from the run's log: from the first step to the last, so it
    excludes reading the file (memory) and includes reading every window (stream)."""
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return recs[-1]["step"] / recs[-1]["elapsed_s"]


def reader_rows_per_s(data: Path, batch: int, steps: int) -> dict:
    """Rows/s of the data path alone (no model): TrainStream.next_batch vs the in-memory
    trainer's gather (``emb[randint]`` on the whole array read first), ``steps`` batches each."""
    import torch

    from globeflow.data.stream import TrainStream

    stream = TrainStream(data)
    stream.start(seed=0, batch_rows=batch)
    t0 = time.perf_counter()
    for _ in range(steps):
        stream.next_batch()
    t_stream = time.perf_counter() - t0
    from globeflow.data import read_dataset

    ds = read_dataset(data)
    emb, g = torch.from_numpy(ds.embeddings), torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        emb[torch.randint(len(emb), (batch,), generator=g)]
    t_mem = time.perf_counter() - t0
    return {"stream_rows_per_s": steps * batch / t_stream, "memory_gather_rows_per_s": steps * batch / t_mem}


def interleaved_steps(data: Path, *, batch: int, width: int, depth: int, rounds: int, steps: int) -> dict:
    """Training steps/s from the stream vs in memory, measured in one process, alternating
    blocks of ``steps`` steps for ``rounds`` rounds so that both share the machine's background
    load (separate processes on a busy machine differ by more than the 10% being measured).
    A step: batch, loss, backward, AdamW step; the stream's window reads (first one
    synchronous, then prefetched in its thread) are inside its blocks."""
    import torch

    from globeflow.data import read_dataset
    from globeflow.data.stream import TrainStream
    from globeflow.geometry import latlon_to_xyz
    from globeflow.methods import create_method

    torch.manual_seed(0)
    ds = read_dataset(data)
    x0 = torch.from_numpy(latlon_to_xyz(ds.latitude, ds.longitude)).float()
    emb = torch.from_numpy(ds.embeddings)
    method = create_method("rfm", ds.dim, width=width, depth=depth)
    opt = torch.optim.AdamW(method.net.parameters(), lr=1e-4)
    gen, pick = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    stream = TrainStream(data)
    stream.start(seed=0, batch_rows=batch)

    def step(xb, eb) -> None:
        loss = method.loss(xb, eb, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_mem = t_stream = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(len(emb), (batch,), generator=pick)
            step(x0[idx], emb[idx])
        t_mem += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*stream.next_batch())
        t_stream += time.perf_counter() - t0
    n = rounds * steps
    return {
        "steps": n,
        "memory_steps_per_s": n / t_mem,
        "stream_steps_per_s": n / t_stream,
        "stream_over_memory": t_mem / t_stream,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--memory-rows", type=int, nargs="*", default=[200_000], help="Ns also trained in memory")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "predict", "evaluate", "reader"])
    ap.add_argument("--reader-steps", type=int, default=400, help="batches timed by the reader-only measurement")
    ap.add_argument("--interleaved", type=int, default=None, metavar="ROWS",
                    help="only the in-process stream-vs-memory step rate on ROWS rows (--rounds x --block steps each)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("bench_scale_tmp"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    py = [sys.executable, "-m", "globeflow"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.interleaved:
        data = args.workdir / f"interleaved_{args.interleaved}.parquet"
        write_synthetic(data, args.interleaved, args.dim)
        try:
            res = interleaved_steps(
                data, batch=args.batch_size, width=args.width, depth=args.depth, rounds=args.rounds, steps=args.block
            )
        finally:
            data.unlink(missing_ok=True)
        res.update(rows=args.interleaved, dim=args.dim, batch_size=args.batch_size, width=args.width, depth=args.depth)
        print(json.dumps(res, indent=2))
        if args.json is not None:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    results: dict = {"dim": args.dim, "batch_size": args.batch_size, "train_steps": args.train_steps, "sizes": {}}
    small = args.workdir / "small_model"
    tiny = args.workdir / "tiny.parquet"
    if not (small / "model.safetensors").is_file():
        write_synthetic(tiny, 2048, args.dim)
        subprocess.run(
            [*py, "train", "--data", str(tiny), "--out", str(small), "--train-steps", "2", "--batch-size", "64",
             "--width", "64", "--depth", "2", "--no-progress", "--warmup-steps", "1"],
            env=env, check=True, capture_output=True,
        )
    for rows in args.rows:
        data = args.workdir / f"synthetic_{rows}.parquet"
        t0 = time.perf_counter()
        gb = write_synthetic(data, rows, args.dim)
        res: dict = {"file_gb": gb, "embedding_gb": rows * args.dim * 4 / 1e9, "write_s": time.perf_counter() - t0}
        print(f"{rows} rows: {gb:.2f} GB written", flush=True)
        try:
            if "reader" not in args.skip and rows in args.memory_rows:
                res["reader"] = reader_rows_per_s(data, args.batch_size, args.reader_steps)
                print(f"  reader: {res['reader']}", flush=True)
            if "train" not in args.skip:
                for loader in ["stream"] + (["memory"] if rows in args.memory_rows else []):
                    run = args.workdir / f"run_{loader}_{rows}"
                    shutil.rmtree(run, ignore_errors=True)
                    m = timed(
                        [*py, "train", "--data", str(data), "--out", str(run), "--loader", loader,
                         "--train-steps", str(args.train_steps), "--batch-size", str(args.batch_size),
                         "--width", str(args.width), "--depth", str(args.depth),
                         "--no-progress", "--warmup-steps", "5"],
                        env,
                    )
                    m["steps_per_s"] = steps_per_s(run)
                    m["rows_per_s"] = m["steps_per_s"] * args.batch_size
                    res[f"train_{loader}"] = m
                    print(f"  train {loader}: {m}", flush=True)
                    shutil.rmtree(run, ignore_errors=True)
            if "predict" not in args.skip:
                out = args.workdir / f"pred_{rows}.parquet"
                m = timed([*py, "predict", "--model", str(small), "--data", str(data), "--out", str(out),
                           "--sample-steps", "1"], env)
                m["rows_per_s"] = rows / m["wall_s"]
                assert pq.ParquetFile(out).metadata.num_rows == rows
                out.unlink()
                res["predict_small_model"] = m
                print(f"  predict: {m}", flush=True)
            if "evaluate" not in args.skip:
                out = args.workdir / f"metrics_{rows}.json"
                m = timed([*py, "evaluate", "--model", str(small), "--data", str(data), "--out", str(out),
                           "--sample-steps", "1"], env)
                m["rows_per_s"] = rows / m["wall_s"]
                metrics = json.loads(out.read_text())
                m["n"] = metrics.get("n")
                m["geoscore"] = metrics.get("geoscore")
                m["coverage"] = metrics.get("coverage")
                out.unlink()
                res["evaluate_small_model"] = m
                print(f"  evaluate: {m}", flush=True)
        finally:
            data.unlink(missing_ok=True)
        results["sizes"][str(rows)] = res
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    tiny.unlink(missing_ok=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
