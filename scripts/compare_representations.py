"""Whole-string minilm vs minilm-parts on the same rows (issue 13, query representation).

    # 1. one v2 build that stores both representations side by side (parts | whole)
    OMP_NUM_THREADS=1 python scripts/build_geonames_text.py --version 2 --encoder minilm-parts-whole \
        --max-places 5000 --test-fraction 0.1 --augment typo --out data/gt-v2-pair
    # 2. split it into two datasets with identical rows, and measure separability
    OMP_NUM_THREADS=1 python scripts/compare_representations.py data/gt-v2-pair --out data/gt-v2-pair
    # 3. train the same model on each, evaluate each on its own test.parquet (docs/geonames.md)

Separability: (a) the issue's pairs — cosine to the same name in another admin1 vs to another
name in the same admin1 — for whole-string minilm and, for the parts representation, of
the admin1 part alone (what a linear first layer can read apart); (b) nearest-centroid
admin1 accuracy of test "Name, Admin1" rows (unseen places), centroids from the train
rows of each admin1: how much of "which admin1" a single linear read-out finds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

PAIRS = (
    ("Springfield, Illinois", "Springfield, Ohio", "Chicago, Illinois"),
    ("Springfield, Missouri", "Springfield, Illinois", "Kansas City, Missouri"),
    ("Portland, Oregon", "Portland, Maine", "Salem, Oregon"),
    ("Victoria, British Columbia", "Victoria, Texas", "Vancouver, British Columbia"),
    ("London, Ontario", "London, England", "Toronto, Ontario"),
)
PART_DIM = 384


def _split(src: Path, out: Path) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from globeflow.data.dataset import METADATA_KEY

    meta = json.loads(pq.read_schema(src / "train.parquet").metadata[METADATA_KEY.encode()])
    if meta.get("name") != "minilm-parts-whole":
        raise SystemExit(f"{src}: expected a minilm-parts-whole build, got {meta.get('name')!r}")
    parts_meta = {**meta, "name": "minilm-parts", "whole": False, "dim": 3 * PART_DIM + 3}
    parts_meta["layout"] = "concat(name, admin1, country, presence flags)"
    whole_meta = meta["base"]
    dims = {}
    for name in ("train.parquet", "test.parquet", "heldout.parquet"):
        table = pq.read_table(src / name)
        emb = np.asarray(table["embedding"].combine_chunks().flatten()).reshape(table.num_rows, -1)
        for sub, sl, m in (
            ("parts", slice(0, 3 * PART_DIM + 3), parts_meta),
            ("whole", slice(3 * PART_DIM + 3, None), whole_meta),
        ):
            (out / sub).mkdir(parents=True, exist_ok=True)
            e = np.ascontiguousarray(emb[:, sl], np.float32)
            col = pa.FixedSizeListArray.from_arrays(pa.array(e.reshape(-1)), e.shape[1])
            t = table.set_column(table.schema.get_field_index("embedding"), "embedding", col)
            t = t.replace_schema_metadata({METADATA_KEY: json.dumps(m, sort_keys=True)})
            pq.write_table(t, out / sub / name)
            if name == "test.parquet":  # the same unseen places, as typed and with a typo
                import pyarrow.compute as pc

                for v in ("exact", "typo"):
                    pq.write_table(t.filter(pc.equal(t["variant"], v)), out / sub / f"test_{v}.parquet")
            dims[sub] = e.shape[1]
    return dims


def _centroid_accuracy(src: Path) -> dict[str, float]:
    from globeflow.data import read_dataset

    tr, te = read_dataset(src / "train.parquet"), read_dataset(src / "test.parquet")
    out = {}
    for label, sl in (("whole", slice(3 * PART_DIM + 3, None)), ("parts", slice(0, 3 * PART_DIM + 3))):

        def pick(d):
            lv = np.asarray(d.extra["level"], object)
            var = np.asarray(d.extra["variant"], object)
            keep = (lv == "name_admin1") & (var == "exact")
            admin = np.array([p.split("|")[1] + "|" + p.split("|")[2] for p in d.extra["place"]], object)
            e = d.embeddings[keep][:, sl]
            return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9), admin[keep]

        e_tr, a_tr = pick(tr)
        e_te, a_te = pick(te)
        classes = sorted(set(a_tr))
        cen = np.stack([e_tr[a_tr == c].mean(0) for c in classes])
        cen /= np.linalg.norm(cen, axis=1, keepdims=True)
        pred = np.asarray(classes, object)[np.argmax(e_te @ cen.T, axis=1)]
        out[label] = float(np.mean(pred == a_te))
        out["n_test"], out["n_classes"] = int(len(a_te)), len(classes)
    return out


def _pair_cosines() -> list[dict]:
    from globeflow.encoders import get_encoder
    from globeflow.encoders.parts import MiniLMParts, split_query

    base = get_encoder("minilm")
    parts = MiniLMParts(base=base)
    rows = []
    for q, same_name, same_admin in PAIRS:
        w = base.encode_texts([q, same_name, same_admin])
        a = parts.encode_parts([split_query(t)[1] or split_query(t)[2] for t in (q, same_name, same_admin)])
        rows.append(
            {
                "query": q,
                "vs": f"{same_name} / {same_admin}",
                "whole_same_name": float(w[0] @ w[1]),
                "whole_same_admin1": float(w[0] @ w[2]),
                "parts_admin1_same_name": float(a[0] @ a[1]),
                "parts_admin1_same_admin1": float(a[0] @ a[2]),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a minilm-parts-whole v2 build")
    parser.add_argument(
        "--out", required=True, help="writes OUT/parts/*.parquet, OUT/whole/*.parquet, OUT/separability.json"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    src, out = Path(args.data), Path(args.out)
    result = {"dims": _split(src, out), "centroid_admin1_accuracy": _centroid_accuracy(src), "pairs": _pair_cosines()}
    (out / "separability.json").write_text(json.dumps(result, indent=1))
    json.dump(result, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
