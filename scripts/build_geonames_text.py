"""Build the geonames-text dataset (train/test/heldout Parquet of minilm embeddings).

    OMP_NUM_THREADS=1 python scripts/build_geonames_text.py --out data/geonames-text

Same as ``python -m globeflow.data.geonames_text``; see docs/geonames.md for the training
command that follows.
"""

from globeflow.data.geonames_text import main

if __name__ == "__main__":
    raise SystemExit(main())
