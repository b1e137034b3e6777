"""Published PLONK checkpoints: diff-plonk's own code builds and saves a network (random
weights, the published hub layout); globeflow loads it and must reproduce the official
velocity field and the official samplers' samples for fixed noise."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import globeflow
from globeflow import hub
from globeflow.methods import plonk
from globeflow.solvers.fixed_step import integrate, time_grid
from globeflow.solvers.manifolds import Sphere
from globeflow.io import CheckpointError

D, WIDTH = 16, 64


@pytest.fixture(scope="module")
def official():
    """diff-plonk's network, hub class and samplers, imported without ``plonk/__init__``
    (which pulls torchvision and the image pipeline)."""
    spec = importlib.util.find_spec("plonk")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("diff-plonk is not installed (pip install --no-deps diff-plonk)")
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("einops")
    root = next(iter(spec.submodule_search_locations))
    saved = {k: v for k, v in sys.modules.items() if k == "plonk" or k.startswith("plonk.")}
    for name, sub in [
        ("plonk", ""),
        ("plonk.models", "/models"),
        ("plonk.models.networks", "/models/networks"),
        ("plonk.models.samplers", "/models/samplers"),
        ("plonk.utils", "/utils"),
    ]:
        mod = types.ModuleType(name)
        mod.__path__ = [root + sub]
        sys.modules[name] = mod
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ns = types.SimpleNamespace(
                Plonk=importlib.import_module("plonk.models.pretrained_models").Plonk,
                rfm=importlib.import_module("plonk.models.samplers.riemannian_flow_sampler").riemannian_flow_sampler,
                flow=importlib.import_module("plonk.models.samplers.flow_sampler").flow_sampler,
                diffusion=importlib.import_module("plonk.models.samplers.ddim").ddim_sampler,
                Sigmoid=importlib.import_module("plonk.models.schedulers").SigmoidScheduler,
            )
    except ImportError as err:  # e.g. geoopt missing for the RFM sampler
        pytest.skip(f"diff-plonk modules not importable: {err}")
    yield ns
    for k in [k for k in sys.modules if k == "plonk" or k.startswith("plonk.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _publish(official, folder: Path, seed: int = 0, cond_dim: int = D):
    """An official network with random weights, saved by diff-plonk's own ``save_pretrained``."""
    torch.manual_seed(seed)
    net = official.Plonk(input_dim=3, dim=WIDTH, depth=2, expansion=4, cond_dim=cond_dim)
    for block in net.blocks:  # the last layer of every block starts at zero: make it count
        block.mlp[-1].reset_parameters()
    net.eval().requires_grad_(False)
    net.save_pretrained(folder)
    return net


@pytest.fixture(scope="module")
def published(official, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    nets = {}
    for i, name in enumerate(("PLONK_YFCC", "PLONK_YFCC_flow", "PLONK_OSV_5M_diffusion")):
        nets[name] = _publish(official, root / name, seed=i)
    return root, nets


def test_published_layout_is_recognised(published) -> None:
    root, _ = published
    files = sorted(p.name for p in (root / "PLONK_YFCC").iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert json.loads((root / "PLONK_YFCC" / "config.json").read_text()) == {
        "cond_dim": D,
        "depth": 2,
        "dim": WIDTH,
        "expansion": 4,
        "input_dim": 3,
    }
    assert hub.is_plonk_checkpoint(root / "PLONK_YFCC")
    kinds = {
        n: type(globeflow.load(root / n)).__name__ for n in ("PLONK_YFCC", "PLONK_YFCC_flow", "PLONK_OSV_5M_diffusion")
    }
    assert kinds == {
        "PLONK_YFCC": "PlonkRFM",
        "PLONK_YFCC_flow": "PlonkFlowMatching",
        "PLONK_OSV_5M_diffusion": "PlonkDiffusion",
    }
    m = globeflow.load(root / "PLONK_OSV_5M_diffusion")
    assert m.plonk["encoder"] == "streetclip" and m.embedding_dim == D
    assert m.schedule.config() == {"name": "skewed_sigmoid", "alpha": -7.0, "beta": 3.0}


@pytest.mark.parametrize(
    ("name", "sign"), [("PLONK_YFCC", -1.0), ("PLONK_YFCC_flow", -1.0), ("PLONK_OSV_5M_diffusion", 1.0)]
)
def test_velocity_field_identical(published, name: str, sign: float) -> None:
    root, nets = published
    model = globeflow.load(root / name)
    g = torch.Generator().manual_seed(1)
    x, emb, gamma = torch.randn(64, 3, generator=g), torch.randn(64, D, generator=g), torch.rand(64, generator=g)
    with torch.no_grad():
        ref = nets[name]({"y": x, "emb": emb, "gamma": gamma})
        ours = model.net(x, emb, 1.0 - gamma)  # globeflow's level κ = 1 − γ
    assert ref.abs().mean() > 0.1  # a field that is not trivially zero
    torch.testing.assert_close(ours, sign * ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
@pytest.mark.parametrize(
    ("name", "sampler"), [("PLONK_YFCC", "rfm"), ("PLONK_YFCC_flow", "flow"), ("PLONK_OSV_5M_diffusion", "diffusion")]
)
def test_official_sampler_reproduced_for_fixed_noise(official, published, name, sampler, guidance) -> None:
    root, nets = published
    model = globeflow.load(root / name)
    b, s, steps = 4, 8, 12
    emb = torch.randn(b, D, generator=torch.Generator().manual_seed(2))
    # The noise globeflow draws from this seed, given to the official sampler as x_N.
    noise = model.path.sample_noise((b, s), generator=torch.Generator().manual_seed(3))
    batch = {"y": noise.reshape(b * s, 3).clone(), "emb": emb.repeat_interleave(s, dim=0)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(official, sampler)(
            nets[name],
            batch,
            conditioning_keys="emb",
            scheduler=official.Sigmoid(-7, 3),
            num_steps=steps,
            cfg_rate=guidance,
        ).reshape(b, s, 3)
    ref = F.normalize(ref, dim=-1)  # R³ samplers end off the sphere; globeflow projects
    ours = model.sample_xyz(
        emb, s, generator=torch.Generator().manual_seed(3), guidance=guidance, sample_steps=steps, solver="plonk"
    )
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    lat = model.sample(emb.numpy(), s, guidance=guidance, sample_steps=steps, seed=3, solver="plonk")
    assert lat.shape == (b, s, 2) and np.isfinite(lat).all()


def test_default_sampler_is_globeflow_integrator_on_the_official_field(published) -> None:
    root, nets = published
    model = globeflow.load(root / "PLONK_YFCC")
    emb = torch.randn(3, D, generator=torch.Generator().manual_seed(4))
    noise = model.path.sample_noise((3, 5), generator=torch.Generator().manual_seed(5))
    net = nets["PLONK_YFCC"]

    def field(x, kappa):  # official dx/dγ at γ = 1 − κ, as dx/dκ
        flat = x.reshape(-1, 3)
        e = emb.repeat_interleave(x.shape[1], dim=0)
        return -net({"y": flat, "emb": e, "gamma": (1.0 - kappa).expand(flat.shape[0])}).reshape(x.shape)

    with torch.no_grad():
        ref = integrate(field, noise, plonk.plonk_schedule(), Sphere(), num_steps=10, method="heun")
    ours = model.sample_xyz(emb, 5, generator=torch.Generator().manual_seed(5), sample_steps=10, solver="heun")
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_official_grid_is_one_minus_kappa() -> None:
    gamma = plonk.official_gamma_grid(16).double()
    kappa = plonk.plonk_schedule().kappa(time_grid(16))
    torch.testing.assert_close(gamma, 1.0 - kappa, atol=2e-6, rtol=0)


def test_hub_reference_uses_snapshot_download(published, monkeypatch) -> None:
    root, _ = published
    calls = []

    def fake(repo_id, revision):
        calls.append((repo_id, revision))
        return str(root / "PLONK_YFCC_flow")

    monkeypatch.setattr(hub, "_snapshot_download", fake)
    model = globeflow.load("hf:nicolas-dufour/PLONK_OSV_5M_flow@main")
    assert calls == [("nicolas-dufour/PLONK_OSV_5M_flow", "main")]
    assert isinstance(model, plonk.PlonkFlowMatching)
    assert model.plonk["repo"] == "nicolas-dufour/PLONK_OSV_5M_flow" and model.plonk["encoder"] == "streetclip"


def test_hub_offline_and_bad_references(monkeypatch) -> None:
    def offline(repo_id, revision):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "_snapshot_download", offline)
    with pytest.raises(CheckpointError, match=r"could not download nicolas-dufour/PLONK_YFCC.*Offline\?.*local-dir"):
        globeflow.load("hf:nicolas-dufour/PLONK_YFCC")
    for bad in ("hf:PLONK_YFCC", "hf:a/b/c", "hf:/x"):
        with pytest.raises(ValueError, match="hf:ORG/NAME"):
            globeflow.load(bad)


def test_save_and_reload_keeps_the_published_model(published, tmp_path: Path) -> None:
    root, _ = published
    model = globeflow.load(root / "PLONK_YFCC")
    emb = np.random.default_rng(0).normal(size=(2, D)).astype(np.float32)
    before = model.sample(emb, 4, sample_steps=6, seed=1)
    globeflow.api.save(model, tmp_path / "run")
    again = globeflow.load(tmp_path / "run")
    assert isinstance(again, plonk.PlonkRFM) and again.plonk == model.plonk
    np.testing.assert_array_equal(again.sample(emb, 4, sample_steps=6, seed=1), before)


def test_broken_checkpoints_are_named(published, tmp_path: Path) -> None:
    root, _ = published
    bad = tmp_path / "PLONK_bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"dim": 64, "depth": 3, "expansion": 4, "cond_dim": D}))
    (bad / "model.safetensors").write_bytes((root / "PLONK_YFCC" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not fit"):
        globeflow.load(bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="safetensors only"):
        globeflow.load(bad)
    with pytest.raises(ValueError, match="unknown PLONK method"):
        hub.load_plonk(root / "PLONK_YFCC", method="vmf")


@pytest.mark.parametrize("name", ["PLONK_YFCC", "PLONK_YFCC_flow", "PLONK_OSV_5M_diffusion"])
def test_likelihood_jacobian_matches_the_official_field(published, name: str) -> None:
    """The hand-written JVPs of the likelihood equal autograd's through the official-convention field."""
    root, _ = published
    model = globeflow.load(root / name).double()
    g = torch.Generator().manual_seed(2)
    x, emb = torch.randn(2, 5, 3, generator=g, dtype=torch.float64), torch.randn(2, D, generator=g, dtype=torch.float64)
    tangents = torch.randn(2, 5, 2, 3, generator=g, dtype=torch.float64)
    kappa = torch.tensor([0.3], dtype=torch.float64)
    out, jvp = model.guided_field_jvp(emb, 2.0)(x, tangents, kappa)
    field = model.guided_field(emb, 2.0)
    ref = torch.stack([torch.func.jvp(lambda y: field(y, kappa), (x,), (tangents[:, :, k],))[1] for k in range(2)], 2)
    torch.testing.assert_close(out, field(x, kappa), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jvp, ref, rtol=1e-8, atol=1e-8)
    if model.density_space == "S2":
        log_p = model.log_prob(emb.float().numpy(), np.array([[48.85, 2.35], [-33.9, 151.2]]), steps=8)
        assert np.isfinite(log_p).all()
