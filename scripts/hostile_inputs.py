"""Replay bad and hostile inputs through the CLI and count what happens (docs/reliability.md).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/hostile_inputs.py [--json out.json]

Every case runs ``globeflow.cli.main`` in this process on files generated into a temporary
folder (truncated, bit-flipped, ragged, hostile), with a fingerprint of every file taken before
and compared after. Outcomes:

* ``clear error``  exit 2 with a one-line message, nothing destroyed (what a bad input must get)
* ``ok``           a valid input accepted (exit 0) and its output checked
* ``data loss``    a file that existed before the command was changed or removed by it
* ``silent wrong`` exit 0 although the input is bad, or an output that fails its check
* ``traceback``    an exception escaped ``main`` (what a user would see as a traceback)
* ``rejected``     a valid input refused (exit ≠ 0)

Exit status 1 if any case is data loss, silent wrong, traceback or rejected.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import globeflow
from globeflow.cli import main
from globeflow.data import write_parquet
from globeflow.data.webdataset import write_webdataset
from globeflow.io import load_weights, save_weights
from globeflow.methods import create_method

D = 6
BAD = ("data loss", "silent wrong", "traceback", "rejected")


def _fingerprints(root: Path) -> dict[str, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(argv: list[str]) -> tuple[int | None, str, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: a usage error is a clear error
            code = int(e.code or 0)
        except BaseException:  # noqa: BLE001 - this is what the replay counts
            return None, traceback.format_exc(limit=3), ""
    return code, err.getvalue(), out.getvalue()


class Replay:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: list[dict] = []

    def case(
        self,
        name: str,
        argv: list[str],
        *,
        expect: str = "error",
        check: Callable[[], bool] | None = None,
        may_change: tuple[Path, ...] = (),
    ) -> None:
        before = _fingerprints(self.root)
        code, err, _ = _run([str(a) for a in argv])
        after = _fingerprints(self.root)
        allowed = {str(p) for p in may_change}
        lost = [p for p, h in before.items() if p not in allowed and after.get(p) != h]
        if code is None:
            outcome = "traceback"
        elif lost:
            outcome = "data loss"
        elif expect == "error":
            outcome = "clear error" if code != 0 and "Traceback" not in err and err.strip() else "silent wrong"
        else:
            ok = code == 0 and (check is None or check())
            outcome = "ok" if ok else ("rejected" if code != 0 else "silent wrong")
        last = err.strip().splitlines()[-1] if err.strip() else ""
        self.rows.append({"case": name, "outcome": outcome, "message": last[:200], "lost": lost[:3]})
        print(f"{outcome:12s} {name}: {last[:150]}")


def _run_dir(root: Path, name: str, method: str = "rfm") -> Path:
    torch.manual_seed(0)
    m = create_method(method, D, width=16, depth=1)
    for p in m.net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return globeflow.save(m, root / name)


def _copy_run(run: Path, dst: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(run, dst)
    edit(dst)
    return dst


def build_and_replay(root: Path) -> Replay:
    rng = np.random.default_rng(0)
    r = Replay(root)
    n = 40
    emb = rng.normal(size=(n, D)).astype(np.float32)
    lat, lon = rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)
    good = root / "good.parquet"
    write_parquet(good, emb, lat, lon, extra={"name": np.array([f"r{i}" for i in range(n)])})
    run = _run_dir(root, "run")
    vmf = _run_dir(root, "vmf", "vmf")
    common = ["--sample-steps", "1"]

    # ---------------------------------------------------------------- outputs (data loss)
    for cmd in ("predict", "evaluate", "density"):
        r.case(
            f"{cmd} --out = --data",
            [cmd, "--model", run, "--data", good, "--out", good, *(["--overwrite"] if cmd == "predict" else [])],
        )
    link = root / "link.parquet"
    link.symlink_to(good)
    r.case(
        "predict --out = symlink to --data", ["predict", "--model", run, "--data", good, "--out", link, "--overwrite"]
    )
    hard = root / "hard.parquet"
    os.link(good, hard)
    r.case(
        "predict --out = hard link to --data", ["predict", "--model", run, "--data", good, "--out", hard, "--overwrite"]
    )
    r.case(
        "predict --out = the model's weights",
        ["predict", "--model", run, "--data", good, "--out", run / "model.safetensors", "--overwrite"],
    )
    precious = root / "precious.json"
    precious.write_text("{}")
    r.case(
        "evaluate --out existing file",
        ["evaluate", "--model", run, "--data", good, "--no-prdc", *common, "--out", precious],
    )
    (root / "notes.json").write_text("notes")
    r.case(
        "compare --out notes.md beside notes.json",
        ["compare", run, "--data", good, "--no-prdc", *common, "--out", root / "notes.md"],
    )
    r.case("compare --out t.json", ["compare", run, "--data", good, "--no-prdc", *common, "--out", root / "t.json"])
    r.case(
        "density --geojson = --out",
        ["density", "--model", run, "--data", good, "--out", root / "m.png", "--geojson", root / "m.png"],
    )
    foreign_dir = root / "thesis"
    foreign_dir.mkdir()
    (foreign_dir / "thesis.tex").write_text("x")
    r.case("synthetic --out foreign folder", ["synthetic", "--out", foreign_dir, "--train", "10", "--test", "5"])
    r.case("train --out = --data", ["train", "--data", good, "--out", good, "--train-steps", "1"])
    lock_dir = root / "locked"
    lock_dir.mkdir()
    (lock_dir / ".lock").write_text(f"{os.getppid()}\n")  # a live process holds it
    r.case(
        "train into a locked run",
        [
            "train",
            "--data",
            good,
            "--out",
            lock_dir,
            "--train-steps",
            "1",
            "--width",
            "8",
            "--depth",
            "1",
            "--no-progress",
        ],
    )
    r.case(
        "embed --out foreign Parquet",
        ["embed", "--images", root, "--out", good],
    )

    # ---------------------------------------------------------------- bad data files
    def bad_file(name: str, data: bytes) -> Path:
        p = root / name
        p.write_bytes(data)
        return p

    raw = good.read_bytes()
    cases = {
        "truncated.parquet": raw[: len(raw) // 2],
        "empty.parquet": b"",
        "notparquet.parquet": b"PAR1" + b"\0" * 100,
    }
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0x10
    cases["bitflip.parquet"] = bytes(flipped)
    for name, data in cases.items():
        p = bad_file(name, data)
        r.case(f"predict {name}", ["predict", "--model", run, "--data", p, "--out", root / f"o-{name}"])
    ragged = root / "ragged.parquet"
    pq.write_table(
        pa.table({"embedding": [[1.0] * D, [1.0] * (D - 1)], "latitude": [0.0, 0.0], "longitude": [0.0, 0.0]}), ragged
    )
    r.case(
        "predict ragged embeddings", ["predict", "--model", run, "--data", ragged, "--out", root / "o-ragged.parquet"]
    )
    for value, tag in ((np.nan, "nan"), (np.inf, "inf"), (1e15, "1e15"), (1e7, "1e7")):
        e = emb.copy()
        e[3, 2] = value
        p = root / f"emb-{tag}.parquet"
        write_parquet(p, e, lat, lon)
        r.case(f"predict embedding {tag}", ["predict", "--model", run, "--data", p, "--out", root / f"o-{tag}.parquet"])
    for field, value in (("latitude", 91.0), ("longitude", np.nan)):
        la, lo = lat.copy(), lon.copy()
        (la if field == "latitude" else lo)[2] = value
        p = root / f"coord-{field}.parquet"
        write_parquet(p, emb, la, lo)
        r.case(
            f"evaluate {field} {value}", ["evaluate", "--model", run, "--data", p, "--out", root / f"o-{field}.json"]
        )
    wrongdim = root / "wrongdim.parquet"
    write_parquet(wrongdim, emb[:, :4], lat, lon)
    r.case(
        "predict wrong embedding dim", ["predict", "--model", run, "--data", wrongdim, "--out", root / "o-dim.parquet"]
    )

    shard = write_webdataset(root / "s.tar", emb, lat, lon)
    with tarfile.open(shard, "r|*") as tf:
        offsets = [m.offset for m in tf]
    cut = bad_file("cut.tar", shard.read_bytes()[: offsets[40]])
    r.case(
        "train truncated WebDataset shard",
        ["train", "--data", cut, "--out", root / "r-cut", "--train-steps", "1", "--no-progress"],
    )
    r.case(
        "predict truncated WebDataset shard",
        ["predict", "--model", run, "--data", cut, "--out", root / "o-cut.parquet"],
    )
    mid = bad_file("mid.tar", shard.read_bytes()[: offsets[40] + 300])
    r.case(
        "predict WebDataset cut mid-member", ["predict", "--model", run, "--data", mid, "--out", root / "o-mid.parquet"]
    )
    odd = root / "odd,name[1].tar"
    shutil.copy(shard, odd)
    r.case(
        "predict shard path with , and [ ]",
        ["predict", "--model", run, "--data", odd, "--out", root / "o-odd.parquet"],
        expect="ok",
        check=lambda: pq.read_table(root / "o-odd.parquet").num_rows == n,
    )

    # ---------------------------------------------------------------- bad models
    def nan(d: Path) -> None:
        s = load_weights(d / "model.safetensors")
        save_weights(d / "model.safetensors", {k: torch.full_like(v, float("nan")) for k, v in s.items()})

    def int32(d: Path) -> None:
        s = load_weights(d / "model.safetensors")
        save_weights(d / "model.safetensors", {k: v.to(torch.int32) for k, v in s.items()})

    def flip(d: Path) -> None:
        b = bytearray((d / "model.safetensors").read_bytes())
        b[-7] ^= 0x40
        (d / "model.safetensors").write_bytes(bytes(b))

    def truncate(d: Path) -> None:
        b = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(b[: len(b) // 2])

    def config(key: str, value) -> Callable[[Path], None]:
        def edit(d: Path) -> None:
            cfg = json.loads((d / "config.json").read_text())
            if value is None:
                del cfg["model"][key]
            else:
                cfg["model"][key] = value
            (d / "config.json").write_text(json.dumps(cfg))

        return edit

    models = {
        "NaN weights": nan,
        "int32 weights": int32,
        "bit-flipped weights": flip,
        "truncated weights": truncate,
        "config says flow over rfm weights": config("method", "flow"),
        "config without net": config("net", None),
        "config net is a string": config("net", "big"),
        "config unknown method": config("method", "magic"),
    }
    for name, edit in models.items():
        bad = _copy_run(run, root / f"run-{name.replace(' ', '_')}", edit)
        r.case(
            f"predict with {name}",
            ["predict", "--model", bad, "--data", good, "--out", root / f"o-{bad.name}.parquet", *common],
        )
    (root / "run-garbage-config").mkdir()
    (root / "run-garbage-config" / "config.json").write_text("{not json")
    r.case(
        "predict with corrupt config.json",
        ["predict", "--model", root / "run-garbage-config", "--data", good, "--out", root / "o-g.parquet"],
    )

    # ---------------------------------------------------------------- settings, security
    r.case(
        "train --sh-degree 100000",
        ["train", "--data", good, "--out", root / "r-sh", "--method", "locdiffusion", "--sh-degree", "100000"],
    )
    r.case(
        "density --levels 1.5", ["density", "--model", run, "--data", good, "--out", root / "d.png", "--levels", "1.5"]
    )
    r.case(
        "predict --device cuda:7",
        ["predict", "--model", run, "--data", good, "--out", root / "o-cuda.parquet", "--device", "cuda:7"],
    )
    evil = root / "evil.pt"
    import pickle

    evil.write_bytes(pickle.dumps({"a": object()}))
    r.case(
        "predict IMAGE with a pickle at --encoder-path",
        ["predict", "--model", run, "--encoder", "efficientnet-lite0", "--encoder-path", evil, str(root / "x.jpg")],
    )
    resume = root / "resume"
    r.case(
        "train (fresh, for the resume case)",
        [
            "train",
            "--data",
            good,
            "--out",
            resume,
            "--train-steps",
            "4",
            "--checkpoint-every",
            "2",
            "--width",
            "8",
            "--depth",
            "1",
            "--batch-size",
            "4",
            "--no-progress",
        ],
        expect="ok",
        check=lambda: (resume / "model.safetensors").is_file(),
    )
    state = resume / "checkpoint" / "state.json"
    if state.is_file():
        rec = json.loads(state.read_text())
        save_weights(root / "outside.safetensors", {"x": torch.zeros(1)})
        rec["weights_file"] = "../../outside.safetensors"
        state.write_text(json.dumps(rec))
        r.case(
            "resume with state.json pointing outside the run",
            [
                "train",
                "--data",
                good,
                "--out",
                resume,
                "--train-steps",
                "8",
                "--checkpoint-every",
                "2",
                "--width",
                "8",
                "--depth",
                "1",
                "--batch-size",
                "4",
                "--no-progress",
            ],
        )

    # ---------------------------------------------------------------- valid inputs, one path
    r.case(
        "predict valid file",
        ["predict", "--model", run, "--data", good, "--out", root / "p.parquet", *common],
        expect="ok",
        check=lambda: set(pq.read_table(root / "p.parquet").column_names) >= {"name", "latitude", "pred_latitude"},
    )

    def same_estimate() -> bool:
        from globeflow.metrics import distance_metrics

        t = pq.read_table(root / "pv.parquet")
        pred = np.stack([t["pred_latitude"].to_numpy(), t["pred_longitude"].to_numpy()], 1)
        truth = np.stack([t["latitude"].to_numpy(), t["longitude"].to_numpy()], 1)
        m = json.loads((root / "ev.json").read_text())
        return abs(m["geoscore"] - distance_metrics(pred, truth)["geoscore"]) < 1e-9

    r.case("predict vmf", ["predict", "--model", vmf, "--data", good, "--out", root / "pv.parquet"], expect="ok")
    r.case(
        "evaluate vmf scores what predict wrote",
        ["evaluate", "--model", vmf, "--data", good, "--no-prdc", "--out", root / "ev.json"],
        expect="ok",
        check=same_estimate,
    )
    r.case(
        "evaluate --overwrite an existing metrics file",
        ["evaluate", "--model", run, "--data", good, "--no-prdc", *common, "--out", precious, "--overwrite"],
        expect="ok",
        may_change=(precious,),
        check=lambda: "geoscore" in json.loads(precious.read_text()),
    )
    return r


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write every case and its outcome here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="globeflow-hostile-") as tmp:
        replay = build_and_replay(Path(tmp))
    counts = Counter(row["outcome"] for row in replay.rows)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f"  ({len(replay.rows)} cases)")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "cases": replay.rows}, indent=1) + "\n")
    return 1 if any(counts.get(k) for k in BAD) else 0


if __name__ == "__main__":
    sys.exit(main_())
