"""Laws of the distilled flow-map sampler (methods/flowmap.py, training/distill.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from globeflow.api import load, save
from globeflow.methods import FlowMapRFM, create_method
from globeflow.training.distill import DistillConfig, distill, teacher_trajectories

DIM = 4


def _teacher(seed: int = 0):
    torch.manual_seed(seed)
    teacher = create_method("rfm", DIM, width=32, depth=2)
    # Blocks start as the identity (zero last layer): give them weights so the field is curved.
    with torch.no_grad():
        for block in teacher.net.blocks:
            block.mlp[-1].weight.normal_(0.0, 0.05)
    return teacher.eval()


@pytest.fixture(scope="module")
def distilled():
    teacher = _teacher()
    pool = torch.randn(64, DIM)
    cfg = DistillConfig(
        steps=2, teacher_steps=8, embeddings=256, samples_per_embedding=4, train_steps=400, batch_size=256, lr=2e-3
    )
    return teacher, pool, distill(teacher, pool, cfg)


def _jump(method, x, emb, k0, k1, omega):
    cond = method.student.embed_condition(emb)
    with torch.inference_mode():
        return method.student.flow_map(x, cond, torch.tensor(k0), torch.tensor(k1), torch.tensor(omega))


def test_two_half_jumps_compose_to_one_full_jump(distilled):
    """Semigroup law X_{m,0} ∘ X_{1,m} = X_{1,0}: it holds for the teacher's flow, so a student
    that learned it must satisfy it too, far better than the Euler map it started from."""
    teacher, pool, method = distilled
    start = FlowMapRFM.from_teacher(teacher, default_steps=2, omega_max=4.0)  # = one Euler step
    emb = pool[:16]
    x = torch.nn.functional.normalize(torch.randn(16, 8, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    km = float(method.jump_levels(2)[1])
    gaps = []
    for m in (start, method):
        full = _jump(m, x, emb, 1.0, 0.0, 2.0)
        half = _jump(m, _jump(m, x, emb, 1.0, km, 2.0), emb, km, 0.0, 2.0)
        gaps.append(float(torch.linalg.norm(full - half, dim=-1).mean()))
    # Chords on the unit sphere (0.04 ≈ 250 km); measured 0.055 before and 0.029 after training.
    assert gaps[1] < 0.04, gaps
    assert gaps[1] < 0.7 * gaps[0], gaps


def test_student_matches_teacher_flow(distilled):
    teacher, pool, method = distilled
    emb = pool[:16]
    noise = torch.nn.functional.normalize(torch.randn(16, 8, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    omega = torch.full((16,), 2.0)
    end = teacher_trajectories(teacher, emb, omega, noise, steps=64)[-1]
    two = _jump(
        method,
        _jump(method, noise, emb, 1.0, float(method.jump_levels(2)[1]), 2.0),
        emb,
        float(method.jump_levels(2)[1]),
        0.0,
        2.0,
    )
    err = torch.linalg.norm(two - end, dim=-1).mean()
    spread = torch.linalg.norm(end - end.mean(dim=(0, 1)), dim=-1).mean()
    assert err < 0.1 * spread, (float(err), float(spread))


def test_samples_stay_on_the_sphere(distilled):
    _, pool, method = distilled
    gen = torch.Generator().manual_seed(0)
    for precision in ("float32", "bfloat16"):
        x = method.sample_xyz(pool[:8], 32, generator=gen, guidance=1.5, precision=precision, sample_steps=3)
        norm = x.double().norm(dim=-1)
        assert x.shape == (8, 32, 3)
        assert float((norm - 1).abs().max()) < 1e-6


def test_round_trip_through_load(distilled, tmp_path):
    _, pool, method = distilled
    save(method, tmp_path / "fast")
    loaded = load(tmp_path / "fast")
    assert isinstance(loaded, FlowMapRFM) and loaded.config() == method.config()
    emb = pool[:4].numpy()
    a = method.sample(emb, 16, guidance=2.0, seed=3)
    b = loaded.sample(emb, 16, guidance=2.0, seed=3)
    np.testing.assert_array_equal(a, b)
    # Densities are the teacher's: identical to the RFM run the student came from.
    latlon = a[:, :2]
    np.testing.assert_allclose(loaded.log_prob(emb, latlon, steps=8), method.log_prob(emb, latlon, steps=8))


def test_density_is_the_teachers(distilled):
    teacher, pool, method = distilled
    emb = pool[:3].numpy()
    latlon = np.array([[10.0, 20.0], [-30.0, 100.0], [60.0, -120.0]])
    np.testing.assert_allclose(method.log_prob(emb, latlon, steps=8), teacher.log_prob(emb, latlon, steps=8))


def test_guidance_outside_the_distilled_range_is_rejected(distilled):
    _, pool, method = distilled
    with pytest.raises(ValueError, match="guidance"):
        method.sample(pool[:2].numpy(), 2, guidance=method.omega_max + 1.0)
    with pytest.raises(ValueError, match="guidance"):
        method.sample(pool[:2].numpy(), 2, guidance=-0.5)


def test_distill_defaults_are_sized_for_the_device():
    from globeflow.training.distill import GPU_DISTILL

    cpu = DistillConfig.for_device("cpu")
    assert cpu == DistillConfig()
    gpu = DistillConfig.for_device("cuda", train_steps=7)
    assert gpu.train_steps == 7 and gpu.embeddings == GPU_DISTILL["embeddings"] > cpu.embeddings
    assert gpu.ema_decay == GPU_DISTILL["ema_decay"] and gpu.batch_size == GPU_DISTILL["batch_size"]
    with pytest.raises(ValueError, match="ema_decay"):
        DistillConfig(ema_decay=1.0)


def test_ema_student_is_the_average_of_its_steps():
    # With EMA the saved student is not the last iterate (decay warm-up: (1+n)/(10+n)).
    teacher, pool = _teacher(), torch.randn(16, DIM)
    base = {"steps": 2, "teacher_steps": 4, "embeddings": 32, "samples_per_embedding": 2, "train_steps": 30,
            "batch_size": 16, "lr": 2e-3, "progress": False}
    plain = distill(teacher, pool, DistillConfig(**base))
    ema = distill(teacher, pool, DistillConfig(**base, ema_decay=0.9))
    a, b = plain.student.state_dict(), ema.student.state_dict()
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert moved, "the EMA student equals the last iterate"
    assert all(torch.isfinite(v).all() for v in b.values())


def test_distill_config_rejects_an_off_grid_step_count():
    with pytest.raises(ValueError, match="teacher_steps"):
        DistillConfig(steps=3, teacher_steps=32)


def test_distill_cli_writes_a_run_that_loads_and_refuses_to_overwrite(tmp_path):
    from globeflow.cli import main
    from globeflow.data import SyntheticWorld, write_world_dataset

    world = SyntheticWorld.make(num_types=2, dim=8, seed=0)
    paths = write_world_dataset(tmp_path / "w", world, 64, 8, seed=0)
    torch.manual_seed(0)
    teacher = create_method("rfm", 8, width=16, depth=1)
    save(teacher, tmp_path / "t", extra={"data": {"path": str(paths["train"])}})
    args = [
        "distill",
        "--model",
        str(tmp_path / "t"),
        "--out",
        str(tmp_path / "f"),
        "--embeddings",
        "16",
        "--samples-per-embedding",
        "2",
        "--teacher-steps",
        "4",
        "--train-steps",
        "3",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert main(args) == 0
    fast = load(tmp_path / "f")
    assert isinstance(fast, FlowMapRFM) and fast.default_steps == 2
    # The options given win over the device's defaults; the rest are the CPU's.
    cfg = fast.distill_info["config"]
    assert (cfg["embeddings"], cfg["train_steps"], cfg["batch_size"]) == (16, 3, 8)
    assert (cfg["warmup_steps"], cfg["ema_decay"]) == (DistillConfig.warmup_steps, DistillConfig.ema_decay)
    pred = fast.predict(np.zeros((3, 8), dtype=np.float32))
    assert pred.shape == (3, 2) and np.isfinite(pred).all()
    assert main(args) == 2  # the output holds a model: nothing is overwritten
