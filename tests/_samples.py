"""Where the OSV-5M sample photos are: shared/ inside or beside this checkout; tests skip without."""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = (_ROOT / "shared", _ROOT.parent / "shared", Path("/work/shared"))

#: Folder with ``labels.csv`` and ``images/`` (may not exist).
OSV5M_SAMPLE = next(
    (p / "data" / "osv5m-sample" for p in _CANDIDATES if (p / "data" / "osv5m-sample").is_dir()),
    _ROOT / "shared" / "data" / "osv5m-sample",
)
