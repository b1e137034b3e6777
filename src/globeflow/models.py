"""Which models can answer, and what each one takes: the shipped, local and cached hub models.

:func:`list_models` finds

* **shipped** models inside the package (:mod:`globeflow.pretrained`: work offline on a fresh install);
* **local** run directories (``config.json`` with a ``model`` section + ``model.safetensors``,
  as ``globeflow train`` writes them) and PLONK checkpoint directories, up to two levels below
  the given folders (default: the current directory);
* **hub** PLONK checkpoints already in the Hugging Face cache (``hf:ORG/NAME``, usable offline
  with ``HF_HUB_OFFLINE=1``), and the published ones not downloaded yet;

and for each the input it takes (``text`` or ``image``), the encoder that makes its embeddings,
whether that encoder is available offline, and the embedding dimension D. Reading a model's
config is enough: no weights are loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelInfo", "format_models", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """One model: ``ref`` (what ``--model`` takes), ``source`` ("shipped", "local", "hub cache",
    "hub"), ``method``, ``input`` ("text", "image" or "unknown"), ``encoder`` (registry name
    or None), ``encoder_available`` (its weights are here: shipped in a package or cached),
    ``embedding_dim``, ``path`` (None for hub models not downloaded) and a ``note``."""

    ref: str
    source: str
    method: str | None
    input: str
    encoder: str | None
    encoder_available: bool
    embedding_dim: int | None
    path: str | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_cached(repo_id: str) -> Path | None:
    """The newest cached snapshot folder of hub repository ``repo_id`` (None if not cached)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    root = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if not root.is_dir():
        return None
    snaps = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return snaps[-1] if snaps else None


def encoder_available(name: str | None) -> bool:
    """Whether encoder ``name``'s weights are here: shipped in a package, or in the hub cache."""
    from globeflow.encoders import ENCODERS

    if name not in ENCODERS:
        return False
    spec = ENCODERS[name]
    if spec.offline:
        return True
    snap = _hub_cached(spec.default_source)
    return snap is not None and any(snap.glob("*.safetensors"))


def _encoder_kind(name: str | None) -> str:
    from globeflow.encoders import ENCODERS

    return ENCODERS[name].kind if name in ENCODERS else "unknown"


def model_info(path: str | os.PathLike, *, source: str = "local", ref: str | None = None) -> ModelInfo | None:
    """What the model directory ``path`` takes (None if it is not a model directory)."""
    from globeflow import hub

    path = Path(path)
    cfg = _read_json(path / "config.json")
    if cfg is None or not (path / "model.safetensors").is_file():
        return None
    ref = ref or str(path)
    if "model" in cfg and isinstance(cfg["model"], dict):
        model = cfg["model"]
        enc = cfg.get("encoder") if isinstance(cfg.get("encoder"), dict) else {}
        net = model.get("net") if isinstance(model.get("net"), dict) else {}
        # A wrapping method (grounded) states its own input size; a network its condition's.
        dim = model.get("embedding_dim", net.get("cond_dim", (cfg.get("data") or {}).get("embedding_dim")))
        name = enc.get("name") or (model.get("plonk") or {}).get("encoder")
        kind = enc.get("kind") or _encoder_kind(name)
        note = "" if name else "no encoder recorded: give embeddings (predict --data, or the API's embedding)"
        return ModelInfo(
            ref, source, model.get("method"), kind, name, encoder_available(name), _int(dim), str(path), note
        )
    if hub.is_plonk_checkpoint(path):
        guess = hub._guess(ref[3:] if ref.startswith("hf:") else hub._name_of(path))
        name = guess.encoder
        return ModelInfo(
            ref,
            source,
            guess.method or "rfm",
            _encoder_kind(name),
            name,
            encoder_available(name),
            _int(cfg.get("cond_dim")),
            str(path),
            "PLONK checkpoint",
        )
    return None


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _local_dirs(roots: Iterable[str | os.PathLike], depth: int = 2) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        level = [root]
        for _ in range(depth + 1):
            nxt = []
            for d in level:
                if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
                    found.append(d)
                    continue  # a run directory's checkpoint/ subfolder is not another model
                try:
                    nxt.extend(p for p in sorted(d.iterdir()) if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue
            level = nxt
    return found


def list_models(
    search: Sequence[str | os.PathLike] | None = None, *, hub_cache: bool = True, hub_known: bool = True
) -> list[ModelInfo]:
    """The shipped models, the model directories under ``search`` (default: the current
    directory; two levels deep), the PLONK checkpoints in the hub cache and (``hub_known``) the
    published ones not downloaded yet."""
    from globeflow import hub, pretrained

    out: list[ModelInfo] = []
    seen: set[Path] = set()
    root = Path(pretrained.__file__).resolve().parent
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        info = model_info(d, source="shipped", ref=d.name if d.name == pretrained.DEFAULT_MODEL else str(d))
        if info is not None:
            out.append(info)
            seen.add(d.resolve())
    for d in _local_dirs(search if search is not None else ["."]):
        if d.resolve() in seen:
            continue
        info = model_info(d, source="local")
        if info is not None:
            out.append(info)
            seen.add(d.resolve())
    for repo, meta in hub.PLONK_MODELS.items():
        snap = _hub_cached(repo) if hub_cache else None
        info = model_info(snap, source="hub cache", ref=f"hf:{repo}") if snap is not None else None
        if info is not None:
            out.append(info)
        elif hub_known:
            enc = meta["encoder"]
            out.append(
                ModelInfo(
                    f"hf:{repo}",
                    "hub",
                    meta["method"],
                    _encoder_kind(enc),
                    enc,
                    encoder_available(enc),
                    None,
                    None,
                    f"not downloaded: huggingface-cli download {repo} (and the {enc} encoder) on a connected machine",
                )
            )
    return out


def format_models(infos: Sequence[ModelInfo]) -> str:
    """A plain-text table: reference, source, input, encoder (+ whether available), D, method."""
    head = ("model (--model)", "source", "input", "encoder", "D", "method")
    rows = []
    for m in infos:
        enc = "-" if m.encoder is None else m.encoder + ("" if m.encoder_available else " (not here)")
        rows.append(
            (m.ref, m.source, m.input, enc, "-" if m.embedding_dim is None else str(m.embedding_dim), m.method or "-")
        )
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    notes = [f"{m.ref}: {m.note}" for m in infos if m.note and m.source != "hub"]
    hub_missing = [m for m in infos if m.source == "hub"]
    if notes:
        lines += ["", *notes]
    if hub_missing:
        lines += [
            "",
            f"{len(hub_missing)} published PLONK models are not downloaded. On a connected machine: "
            "huggingface-cli download nicolas-dufour/PLONK_YFCC (and its image encoder, e.g. "
            "facebook/dinov2-with-registers-large), then --model hf:nicolas-dufour/PLONK_YFCC with HF_HUB_OFFLINE=1.",
        ]
    return "\n".join(lines)
