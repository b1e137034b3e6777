"""Models that ship inside the package, so that globeflow works offline on a fresh install.

``geonames-text``: Riemannian flow matching on S² conditioned on ``minilm`` embeddings of
place-name queries built from GeoNames cities1000 (see :mod:`globeflow.data.geonames_text`
and ``docs/geonames.md`` for the dataset, the training command and the held-out metrics).
The directory is an ordinary globeflow run directory (``config.json`` + ``model.safetensors``),
loadable with :func:`globeflow.api.load`, plus ``heldout.parquet``: held-out queries with
their embeddings and true locations, and ``calibration.json``: the conformal calibration of its
credible regions, fitted on half of those rows (``docs/calibration.md``; the rows used and the
rows left for testing are listed in the file).
"""

from __future__ import annotations

from pathlib import Path

from globeflow.runs import HELDOUT_FILE, WEIGHTS_FILE

__all__ = ["DEFAULT_MODEL", "HELDOUT_FILE", "default_model_dir", "heldout_path", "model_or_default"]

DEFAULT_MODEL = "geonames-text"
_ROOT = Path(__file__).resolve().parent


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The run directory of the shipped model ``name``; a clear error when it is not installed."""
    path = _ROOT / name
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"model: the shipped model {name!r} is not installed at {path} "
            "(rebuild it with the command in docs/geonames.md)"
        )
    return path


def heldout_path(name: str = DEFAULT_MODEL) -> Path:
    """Parquet file of the shipped model's held-out queries (embeddings + true locations)."""
    return default_model_dir(name) / HELDOUT_FILE


def model_or_default(model: str | None) -> str:
    """``model`` (a run directory, PLONK checkpoint or ``hf:`` id), or the shipped model's directory."""
    return str(default_model_dir()) if model is None else model
