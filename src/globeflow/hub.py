"""Published PLONK checkpoints (diff-plonk): find them (a local directory in the hub layout, or
``hf:ORG/NAME`` downloaded with ``huggingface_hub``) and load them as the methods of
:mod:`globeflow.methods.plonk`, through :func:`globeflow.api.load_weights_into` like every run.

Layout of a published checkpoint (``huggingface_hub.PyTorchModelHubMixin`` as used by
diff-plonk's ``Plonk`` class): ``config.json`` with the network's constructor arguments
``{"input_dim": 3, "dim": d, "depth": N, "expansion": 4, "cond_dim": D}`` and
``model.safetensors`` with the ``GeoAdaLNMLP`` state dict (EMA weights).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from globeflow.api import load_weights_into
from globeflow.io import CheckpointError
from globeflow.methods.plonk import official_to_globeflow_state, plonk_class, plonk_schedule
from globeflow.nets.adaln_mlp import AdaLNMLPConfig
from globeflow.runs import CONFIG_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    import torch

    from globeflow.methods.plonk import PlonkRFM

__all__ = ["PLONK_MODELS", "is_plonk_checkpoint", "load_plonk", "resolve_hub"]

#: Published repositories: method and the encoder whose embeddings they were trained on.
PLONK_MODELS: dict[str, dict[str, str]] = {
    f"nicolas-dufour/PLONK_{data}{suffix}": {
        "method": method,
        "encoder": "streetclip" if data == "OSV_5M" else "dinov2-vitl14-reg",
    }
    for data in ("YFCC", "OSV_5M", "iNaturalist")
    for suffix, method in (("", "rfm"), ("_flow", "flow"), ("_diffusion", "diffusion"))
}
_PLONK_CONFIG_KEYS = ("dim", "depth", "expansion", "cond_dim")


# ------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class _Guess:
    repo: str | None
    method: str | None
    encoder: str | None


def _guess(name: str) -> _Guess:
    """Method and encoder from a repository or directory name (``PLONK_YFCC_flow`` …)."""
    base = name.split("/")[-1]
    if base.startswith("models--"):  # huggingface_hub cache folder: models--ORG--NAME
        base = base.split("--")[-1]
    repo = next((r for r in PLONK_MODELS if r.split("/")[-1].lower() == base.lower()), None)
    if repo is not None:
        return _Guess(repo, PLONK_MODELS[repo]["method"], PLONK_MODELS[repo]["encoder"])
    low = base.lower()
    method = "flow" if low.endswith("_flow") else "diffusion" if low.endswith("_diffusion") else None
    encoder = "streetclip" if "osv" in low else "dinov2-vitl14-reg" if ("yfcc" in low or "inat" in low) else None
    return _Guess(None, method, encoder)


def is_plonk_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a published PLONK checkpoint's config.json."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model" not in data and all(k in data for k in _PLONK_CONFIG_KEYS)


def load_plonk(
    path: str | os.PathLike,
    *,
    method: str | None = None,
    repo: str | None = None,
    device: str | torch.device = "cpu",
) -> PlonkRFM:
    """Load a PLONK checkpoint directory (``config.json`` + ``model.safetensors``).

    ``method`` (``rfm``, ``flow``, ``diffusion``): which sampler family the weights belong
    to; by default guessed from ``repo`` or the directory name (``…_flow``, ``…_diffusion``;
    otherwise ``rfm``, the published default).
    """
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"model: {cfg_path} not found (not a PLONK checkpoint directory)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"model: {cfg_path} is not valid JSON: {err}") from None
    missing = [k for k in _PLONK_CONFIG_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"model: {cfg_path} lacks {missing}; not a PLONK GeoAdaLNMLP config")
    if int(cfg.get("input_dim", 3)) != 3:
        raise CheckpointError(f"model: {cfg_path}: input_dim must be 3 (xyz), got {cfg['input_dim']}")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        extra = (
            " (only pickled weights were found; globeflow loads safetensors only)"
            if (path / "pytorch_model.bin").is_file()
            else ""
        )
        raise CheckpointError(f"model: {weights} not found{extra}")
    guess = _guess(repo if repo else _name_of(path))
    cls = plonk_class(method or guess.method or "rfm")
    try:
        net_cfg = AdaLNMLPConfig(
            cond_dim=int(cfg["cond_dim"]), dim=int(cfg["dim"]), depth=int(cfg["depth"]), expansion=int(cfg["expansion"])
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"model: {cfg_path}: {err}") from None
    provenance = {"repo": repo or guess.repo, "encoder": guess.encoder, "source": str(path)}
    model = cls(net_cfg, plonk_schedule(), plonk=provenance)
    return load_weights_into(model, weights, fits=str(cfg_path), convert=official_to_globeflow_state, device=device)


def _name_of(path: Path) -> str:
    # In a huggingface_hub cache the weights live in models--ORG--NAME/snapshots/<hash>/.
    for part in reversed(path.resolve().parts):
        if part.startswith("models--") or "plonk" in part.lower():
            return part
    return path.name


def _snapshot_download(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id=repo_id, revision=revision, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, "README.md"]
    )


def resolve_hub(spec: str) -> tuple[Path, str]:
    """``"hf:ORG/NAME[@REVISION]"`` -> (local snapshot directory, ``ORG/NAME``).

    Downloads with ``huggingface_hub.snapshot_download`` (or reads its cache, e.g. with
    ``HF_HUB_OFFLINE=1``); failures become a :class:`CheckpointError` that says what to do.
    """
    if not spec.startswith("hf:"):
        raise ValueError(f"model: hub references look like 'hf:ORG/NAME', got {spec!r}")
    ref = spec[3:]
    repo_id, _, revision = ref.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"model: hub reference {spec!r} is not of the form 'hf:ORG/NAME[@REVISION]'")
    try:
        local = _snapshot_download(repo_id, revision or None)
    except ImportError:
        raise CheckpointError(
            f"model: loading {spec} needs the `huggingface_hub` package (pip install huggingface_hub)"
        ) from None
    except Exception as err:  # noqa: BLE001 - network, auth and cache errors all end here
        raise CheckpointError(
            f"model: could not download {repo_id} from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"Offline? Download it on a connected machine (huggingface-cli download {repo_id} "
            f"--local-dir DIR) and load DIR, or set HF_HUB_OFFLINE=1 to use the local cache."
        ) from None
    return Path(local), repo_id
