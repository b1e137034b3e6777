"""Build ``src/globeflow/data/place_novelty.npz``: the statistics behind the unfamiliar-text warning.

    OMP_NUM_THREADS=1 python scripts/build_novelty.py            # ~8k minilm embeddings, a few minutes

See :mod:`globeflow.novelty`: character trigram counts of the cities1000 vocabulary, 4096
minilm vectors of sampled place names, and the two thresholds, each the 1 % quantile of the
scores of held-out place names (never used for the counts or the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="default: src/globeflow/data/place_novelty.npz")
    parser.add_argument("--false-alarm", type=float, default=0.01, help="per-test quantile of held-out names")
    args = parser.parse_args()
    import torch

    from globeflow.encoders import get_encoder
    from globeflow.novelty import _default_path, build_novelty
    from globeflow.io import atomic_write

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    enc = get_encoder("minilm")

    def embed(texts):
        return np.concatenate([enc.encode_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)])

    arrays = build_novelty(embed, false_alarm=args.false_alarm)
    out = Path(args.out) if args.out else _default_path()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(out, write)
    keys = ("char_threshold", "semantic_threshold", "heldout_names", "false_alarm_char", "false_alarm_semantic",
            "false_alarm_either")  # fmt: skip
    print(json.dumps({k: float(arrays[k]) for k in keys}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
