"""Ground a trained geonames-text model in the GeoNames table: the shipped default model.

    OMP_NUM_THREADS=1 python scripts/make_grounded_model.py --inner runs/geonames-v2 \
        --heldout data/geonames-text-v2/heldout.parquet --out src/globeflow/pretrained/geonames-text
    globeflow calibrate --model src/globeflow/pretrained/geonames-text \
        --data src/globeflow/pretrained/geonames-text/heldout.parquet --calibration-fraction 0.5

Writes OUT/config.json and OUT/model.safetensors (a ``grounded`` method wrapping the inner run,
:mod:`globeflow.methods.grounded`, whose encoder is ``minilm-parts-grounded``) and
OUT/heldout.parquet: the held-out rows re-embedded (their ``minilm-parts`` vectors + the
grounding block of their ``query``). ``--exclude-heldout`` grounds the held-out rows in a table
without the held-out places (to measure on places the grounding has never seen); OUT must not
exist unless ``--overwrite``, which also removes OUT's ``calibration.json`` (fitted to the
model and held-out rows being replaced; run ``globeflow calibrate`` again).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inner", required=True, type=Path, help="trained run directory on minilm-parts (rfm)")
    ap.add_argument("--heldout", required=True, type=Path, help="held-out Parquet with minilm-parts embeddings and `query`")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--z0", type=float, default=0.1, help="evidence for 'not in the table' (default 0.1)")
    ap.add_argument("--exclude-heldout", action="store_true")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT's files")
    args = ap.parse_args(argv)

    import numpy as np

    from globeflow.api import load, save
    from globeflow.data import read_dataset
    from globeflow.data.parquet import write_parquet
    from globeflow.encoders.grounding import GroundedParts, Grounder, GroundingConfig
    from globeflow.io import load_json
    from globeflow.methods.grounded import GroundedMethod

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise SystemExit(f"--out: {args.out} exists and is not empty (pass --overwrite to replace its files)")
    t0 = time.perf_counter()
    inner = load(args.inner)
    cfg = load_json(args.inner / "config.json")
    config = GroundingConfig(exclude_heldout=args.exclude_heldout)
    grounder = Grounder(config=config)
    method = GroundedMethod(inner, slots=config.slots, log_z0=math.log(args.z0))
    held = read_dataset(args.heldout)
    if held.embeddings.shape[1] != inner.embedding_dim:
        raise SystemExit(f"--heldout: {held.embeddings.shape[1]}-d embeddings, the inner model takes {inner.embedding_dim}")
    if "query" not in held.extra:
        raise SystemExit(f"--heldout: {args.heldout} has no `query` column (the texts to ground)")
    queries = [str(q) for q in held.extra["query"]]
    emb = np.concatenate([held.embeddings, grounder.block(queries)], axis=1).astype(np.float32)
    settings = GroundedParts.settings_for(cfg.get("encoder"), config)
    extra = {k: v for k, v in cfg.items() if k not in ("model", "encoder")}
    extra["grounded"] = {"inner": str(args.inner), "z0": args.z0}
    stale = args.out / "calibration.json"
    if stale.is_file():  # fitted to what is being replaced: attached by load, it would mislead
        stale.unlink()
        print(f"removed {stale} (it calibrated the replaced model; run globeflow calibrate again)")
    save(method, args.out, extra={**extra, "encoder": settings})
    write_parquet(
        args.out / "heldout.parquet", emb, held.latitude, held.longitude, held.extra,
        metadata={"globeflow.encoder": json.dumps(settings, sort_keys=True)},
    )  # fmt: skip
    print(f"{args.out}: grounded {args.inner} ({len(queries)} held-out rows) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
