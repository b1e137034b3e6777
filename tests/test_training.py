"""Tests for globeflow.training: LAMB, schedule, EMA, checkpoints, exact resume, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _training_helpers import FakeMethod, make_data  # noqa: E402

from globeflow.io import (  # noqa: E402
    CheckpointError,
    CheckpointNotFoundError,
    atomic_write,
    load_json,
    load_weights,
    load_weights_metadata,
    save_json,
    save_weights,
)
from globeflow.training import (  # noqa: E402
    EMA,
    DistContext,
    Lamb,
    TrainConfig,
    build_optimizer,
    capture_rng_state,
    load_training_state,
    rank_slice,
    read_log,
    restore_rng_state,
    save_training_state,
    train,
    warmup_cosine,
)
from globeflow import io as ckpt_mod  # noqa: E402

HELPERS = Path(__file__).resolve().parent / "_training_helpers.py"


# --------------------------------------------------------------------------- LAMB


def _one_lamb_step(w0, g, **kw) -> torch.Tensor:
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = Lamb([p], **kw)
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    return p.detach()


def test_lamb_first_step_trust_ratio_hand_computed():
    # Step 1 with bias correction: m_hat = g, v_hat = g^2, so with eps = 0 the Adam
    # direction is sign(g) = [1, -1] (norm sqrt 2); ||w0|| = ||[3, 4]|| = 5.
    w0, g = [3.0, 4.0], [1.0, -2.0]
    w1 = _one_lamb_step(w0, g, lr=0.1, eps=0.0)
    expected = torch.tensor(w0, dtype=torch.float64) - 0.1 * (5 / math.sqrt(2)) * torch.tensor([1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(w1, expected, rtol=0, atol=1e-12)

    # Decoupled weight decay enters the update before the trust ratio.
    u = torch.tensor([1.0 + 0.1 * 3, -1.0 + 0.1 * 4], dtype=torch.float64)
    w1 = _one_lamb_step(w0, g, lr=0.1, eps=0.0, weight_decay=0.1)
    torch.testing.assert_close(w1, torch.tensor(w0, dtype=torch.float64) - 0.1 * (5 / u.norm()) * u, rtol=0, atol=1e-12)

    # ||w|| = 0 -> trust ratio 1 (otherwise a zero-initialised tensor never moves).
    w1 = _one_lamb_step([0.0, 0.0], g, lr=0.1, eps=0.0)
    torch.testing.assert_close(w1, torch.tensor([-0.1, 0.1], dtype=torch.float64), rtol=0, atol=1e-12)

    # Clamp: ratio 5/sqrt(2) ~ 3.54 is clipped to 1.
    w1 = _one_lamb_step(w0, g, lr=0.1, eps=0.0, trust_clip=1.0)
    torch.testing.assert_close(w1, torch.tensor([2.9, 4.1], dtype=torch.float64), rtol=0, atol=1e-12)

    # adapt=False group: plain Adam step of size lr.
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = Lamb([{"params": [p], "adapt": False}], lr=0.1, eps=0.0)
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([2.9, 4.1], dtype=torch.float64), rtol=0, atol=1e-12)


def test_lamb_matches_reference_over_several_steps():
    """Independent numpy implementation of the paper's update, 5 steps, random grads."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3))
    grads = rng.normal(size=(5, 4, 3))
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.99, 1e-6, 0.01
    p = nn.Parameter(torch.tensor(w))
    opt = Lamb([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        p.grad = torch.tensor(g)
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * w
        w = w - lr * (np.linalg.norm(w) / np.linalg.norm(u)) * u
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-10, atol=1e-12)
    assert opt.state[p]["step"] == 5


def test_lamb_converges_on_least_squares():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, generator=g)
    x_star = torch.randn(8, generator=g)
    b = a @ x_star
    x = nn.Parameter(torch.zeros(8))
    opt = Lamb([x], lr=0.1)
    steps = 400

    def loss_fn() -> torch.Tensor:
        return ((a @ x - b) ** 2).mean()

    initial = loss_fn().item()
    for k in range(1, steps + 1):
        opt.param_groups[0]["lr"] = warmup_cosine(k, steps, 10, 0.1)
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().item() < 1e-6 * initial
    assert torch.allclose(x.detach(), x_star, atol=1e-3)


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_weight_decay_excludes_biases_and_norm_params(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with torch.no_grad():  # non-trivial no-decay values, so decay would be visible
        model[1].weight.fill_(1.5)
        model[1].bias.fill_(0.3)
    opt = build_optimizer(name, model, lr=0.1, weight_decay=0.5)
    decay_ids = {id(p) for gr in opt.param_groups if gr["weight_decay"] > 0 for p in gr["params"]}
    assert decay_ids == {id(model[0].weight), id(model[2].weight)}
    assert sum(len(gr["params"]) for gr in opt.param_groups) == len(list(model.parameters()))

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay can move anything
    for n, p in model.named_parameters():
        if n.endswith("weight") and p.ndim == 2:
            assert p.norm() < before[n].norm() * 0.99, n
        else:
            assert torch.equal(p, before[n]), n


def test_build_optimizer_rejects_unknown_name():
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("sgd", nn.Linear(2, 2), lr=0.1)


# --------------------------------------------------------------------------- schedule


def test_warmup_cosine_key_points():
    kw = dict(total_steps=1000, warmup_steps=100, base_lr=2.0, final_lr_ratio=0.1)
    assert warmup_cosine(0, **kw) == 0.0
    assert warmup_cosine(50, **kw) == pytest.approx(1.0)
    assert warmup_cosine(100, **kw) == pytest.approx(2.0)
    assert warmup_cosine(550, **kw) == pytest.approx((2.0 + 0.2) / 2)  # decay midpoint
    assert warmup_cosine(1000, **kw) == pytest.approx(0.2)
    assert warmup_cosine(5000, **kw) == pytest.approx(0.2)  # clamped past the end
    decay = [warmup_cosine(s, **kw) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    # No warm-up: starts at base, ends at 0 by default.
    assert warmup_cosine(0, 10, 0, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 0, 1.0) == pytest.approx(0.0)


# --------------------------------------------------------------------------- EMA


class _Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_closed_form(warmup):
    model = _Scalar()
    d = 0.9
    ema = EMA(model, decay=d, warmup=warmup)
    values = [0.0] + [float(v) for v in np.random.default_rng(1).normal(size=30)]  # values[0] = init
    decays = []
    for n, v in enumerate(values[1:]):
        with torch.no_grad():
            model.w.fill_(v)
            model.count.fill_(n + 1)
        ema.update(model)
        decays.append(min(d, (1 + n) / (10 + n)) if warmup else d)
    # shadow_N = prod(d_i) * v_0 + sum_i (1 - d_i) * prod_{j > i} d_j * v_i
    expected = values[0] * np.prod(decays)
    for i, v in enumerate(values[1:]):
        expected += (1 - decays[i]) * np.prod(decays[i + 1 :]) * v
    if not warmup:  # the textbook closed form for a constant decay
        n = len(values) - 1
        textbook = d**n * values[0] + sum((1 - d) * d ** (n - i) * values[i] for i in range(1, n + 1))
        assert expected == pytest.approx(textbook, rel=1e-12)
    assert ema.shadow["w"].item() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert ema.shadow["count"].item() == len(values) - 1  # buffers copied, not averaged

    target = _Scalar()
    ema.copy_to(target)
    assert target.w.item() == ema.shadow["w"].item()
    assert target.count.item() == len(values) - 1

    # state_dict round trip: a restored EMA continues identically.
    clone = EMA(_Scalar(), decay=0.5, warmup=not warmup)
    clone.load_state_dict(ema.state_dict())
    for e in (ema, clone):
        e.update(model)
    assert clone.shadow["w"].item() == ema.shadow["w"].item()


# --------------------------------------------------------------------------- checkpoint files


def test_weights_round_trip(tmp_path):
    shared = torch.randn(3, 4)
    sd = {
        "a": torch.randn(5, 2),
        "tied.one": shared,
        "tied.two": shared,  # aliasing tensors (tied weights) must be saveable
        "scalar": torch.tensor(2.5),
        "ints": torch.arange(7),
        "half": torch.randn(4).to(torch.bfloat16),
        "view": torch.arange(10.0)[2:5],
    }
    path = save_weights(tmp_path / "w" / "m.safetensors", sd, metadata={"step": 3, "names": ["x", "y"]})
    loaded = load_weights(path)
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    assert load_weights_metadata(path) == {"step": 3, "names": ["x", "y"]}
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]

    save_json(tmp_path / "c.json", {"a": [1, 2.5, None], "b": "é"})
    assert load_json(tmp_path / "c.json") == {"a": [1, 2.5, None], "b": "é"}


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    save_weights(target, {"x": torch.ones(3)})

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 17)  # half-written file...
        raise OSError("disk full")  # ...then the writer dies

    monkeypatch.setattr(ckpt_mod, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_weights(target, {"x": torch.zeros(3)})
    with pytest.raises(OSError, match="disk full"):
        save_weights(tmp_path / "new.safetensors", {"x": torch.zeros(3)})
    # The old file is intact, the new one was never created, no temp files remain.
    assert torch.equal(load_weights(target)["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]

    def half_then_interrupt(tmp: Path) -> None:
        tmp.write_text('{"a": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "c.json", half_then_interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_corrupt_or_missing_files_raise_clear_errors(tmp_path):
    good = save_weights(tmp_path / "good.safetensors", {"x": torch.randn(100)})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    for bad in (garbage, truncated):
        with pytest.raises(CheckpointError, match=str(bad)):
            load_weights(bad)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(CheckpointNotFoundError, match=str(missing)):
        load_weights(missing)
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        load_weights(missing)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(CheckpointError, match=str(bad_json)):
        load_json(bad_json)


# --------------------------------------------------------------------------- training state


def _trained_objects(optimizer: str = "lamb", steps: int = 3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    ema = EMA(model, decay=0.9)
    opt = build_optimizer(optimizer, model, lr=1e-2, weight_decay=0.1)
    x = torch.randn(32, 3)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        ema.update(model)
    return model, ema, opt, x


def _step(model, opt, x):
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("optimizer", ["lamb", "adamw"])
def test_training_state_round_trip(tmp_path, optimizer):
    model, ema, opt, x = _trained_objects(optimizer)
    gen = torch.Generator().manual_seed(5)
    rng = capture_rng_state({"batch": gen})
    expected_next = torch.randn(4)  # global RNG draw right after the snapshot
    save_training_state(tmp_path / "ck", model=model, ema=ema, optimizer=opt, step=3, rng=rng, extra={"note": "hi", "t": torch.arange(3)})

    model2, ema2, opt2, _ = _trained_objects(optimizer, steps=0)
    gen2 = torch.Generator().manual_seed(999)
    step, rng2, extra = load_training_state(tmp_path / "ck", model2, ema2, opt2)
    assert step == 3 and extra["note"] == "hi" and torch.equal(extra["t"], torch.arange(3))
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for k in ema.shadow:
        assert torch.equal(ema.shadow[k], ema2.shadow[k])
    assert ema2.num_updates == ema.num_updates
    restore_rng_state(rng2, {"batch": gen2})
    assert torch.equal(torch.randn(4), expected_next)
    assert torch.equal(torch.randn(3, generator=gen2), torch.randn(3, generator=gen))

    # The optimizer state is complete: one more identical step stays bitwise equal.
    _step(model, opt, x)
    _step(model2, opt2, x)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_training_state_crash_during_save_keeps_previous(tmp_path, monkeypatch):
    model, ema, opt, x = _trained_objects()
    ck = tmp_path / "ck"
    save_training_state(ck, model=model, ema=ema, optimizer=opt, step=3, rng={}, extra={})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, opt, x)

    def crash(*a, **k):
        raise OSError("killed before commit")

    # Dies after the new tensor file was written but before state.json (the commit).
    monkeypatch.setattr(ckpt_mod, "save_json", crash)
    with pytest.raises(OSError):
        save_training_state(ck, model=model, ema=ema, optimizer=opt, step=4, rng={}, extra={})
    monkeypatch.undo()

    model2, ema2, opt2, _ = _trained_objects(steps=0)
    step, _, _ = load_training_state(ck, model2, ema2, opt2)
    assert step == 3
    for k, v in model2.state_dict().items():
        assert torch.equal(v, saved[k])
    # The next successful save sweeps the orphaned tensor file.
    save_training_state(ck, model=model, ema=ema, optimizer=opt, step=5, rng={}, extra={})
    assert len(list(ck.glob("state-*.safetensors"))) == 1


def test_training_state_corruption_is_detected(tmp_path):
    model, ema, opt, _ = _trained_objects()
    ck = tmp_path / "ck"
    with pytest.raises(CheckpointNotFoundError, match=str(ck)):
        load_training_state(ck, model, ema, opt)
    save_training_state(ck, model=model, ema=ema, optimizer=opt, step=3, rng={}, extra={})
    (tensor_file,) = ck.glob("state-*.safetensors")
    raw = bytearray(tensor_file.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the tensor data: header still parses
    tensor_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=str(tensor_file)):
        load_training_state(ck, model, ema, opt)
    (ck / "state.json").write_text('{"format": "globeflow.training_state", "vers')
    with pytest.raises(CheckpointError, match=str(ck / "state.json")):
        load_training_state(ck, model, ema, opt)
    # A checkpoint of a different architecture is rejected, naming the file.
    save_training_state(ck, model=model, ema=ema, optimizer=opt, step=3, rng={}, extra={})
    other = nn.Sequential(nn.Linear(3, 8))
    with pytest.raises(CheckpointError, match="state-"):
        load_training_state(ck, other, None, None)


# --------------------------------------------------------------------------- training loop


def _cfg(**kw) -> TrainConfig:
    base = dict(
        train_steps=24, batch_size=16, lr=5e-3, warmup_steps=4, checkpoint_every=8,
        log_every=4, progress=False, seed=7, ema_decay=0.9,
    )
    base.update(kw)
    return TrainConfig(**base)


def _state(method: FakeMethod) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.net.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["lamb", "adamw"])
def test_resume_is_bitwise_identical(tmp_path, optimizer):
    x0, emb = make_data()
    cfg = _cfg(optimizer=optimizer, checkpoint_every=10)

    ref = FakeMethod(seed=1)
    init = _state(ref)
    res_ref = train(ref, x0, emb, tmp_path / "ref", cfg)
    assert res_ref.resumed_from is None and res_ref.step == 24 and res_ref.rank == 0

    # Crash during step 14: last checkpoint at 10 (mid log interval, so the partial
    # loss accumulator must be restored too), log records at 4, 8, 12 exist and
    # the one at 12 must be dropped on resume.
    crashing = FakeMethod(seed=1, fail_at_call=14)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing, x0, emb, tmp_path / "run", cfg)
    assert [r["step"] for r in read_log(tmp_path / "run" / "train_log.jsonl")] == [4, 8, 12]
    assert not (tmp_path / "run" / "model.safetensors").exists()

    resumed = FakeMethod(seed=1)  # a fresh process: new object, same init
    res = train(resumed, x0, emb, tmp_path / "run", cfg)
    assert res.resumed_from == 10 and res.step == 24

    ref_state, new_state = _state(ref), _state(resumed)
    assert any(not torch.equal(init[k], ref_state[k]) for k in init)  # it did train
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k
    ema_ref = load_weights(res_ref.model_path)
    ema_new = load_weights(res.model_path)
    assert set(ema_ref) == set(ref_state)  # EMA export is a loadable state_dict
    for k in ema_ref:
        assert torch.equal(ema_ref[k], ema_new[k]), k
    assert any(not torch.equal(ema_ref[k], ref_state[k]) for k in ema_ref)  # EMA != raw

    log_ref = read_log(res_ref.log_path)
    log_new = read_log(res.log_path)
    assert [r["step"] for r in log_ref] == [4, 8, 12, 16, 20, 24]
    assert len(log_new) == len(log_ref)
    for a, b in zip(log_ref, log_new):
        assert (a["step"], a["loss"], a["lr"], a["grad_norm"]) == (b["step"], b["loss"], b["lr"], b["grad_norm"])
        assert {"elapsed_s", "steps_per_s"} <= set(b)
    assert log_ref[-1]["lr"] == pytest.approx(0.0)  # cosine decayed to final lr
    assert res.final_loss == log_new[-1]["loss"]

    # Running again with everything done is a no-op that reports the same result.
    again = train(FakeMethod(seed=1), x0, emb, tmp_path / "run", cfg)
    assert again.resumed_from == 24 and again.final_loss == res.final_loss
    assert len(read_log(again.log_path)) == len(log_ref)


def test_train_outputs_and_fresh_restart(tmp_path):
    x0, emb = make_data()
    cfg = _cfg(train_steps=8)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"method": "owned by the caller"}')
    a = FakeMethod(seed=2)
    res = train(a, x0, emb, out, cfg)
    assert (out / "config.json").read_text() == '{"method": "owned by the caller"}'
    assert TrainConfig.from_dict(load_json(out / "train_config.json")) == cfg
    assert load_weights_metadata(res.model_path)["method"] == {"method": "fake", "emb_dim": 8}
    ema = load_weights(res.model_path)
    assert ema["calls"].item() == 8  # buffer copied from the live net

    # resume=False discards the old checkpoint/log and repeats the run exactly.
    b = FakeMethod(seed=2)
    res_b = train(b, x0, emb, out, cfg, resume=False)
    assert res_b.resumed_from is None
    assert len(read_log(res_b.log_path)) == 2
    for k, v in _state(a).items():
        assert torch.equal(v, _state(b)[k])


@pytest.mark.parametrize(
    "field, value",
    [("train_steps", 0), ("batch_size", -4), ("lr", 0.0), ("lr", float("nan")), ("optimizer", "sgd"),
     ("ema_decay", 1.5), ("checkpoint_every", 0), ("warmup_steps", -1)],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_rejects_unknown_keys_and_bad_data(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})
    x0, emb = make_data(n=8)
    with pytest.raises(ValueError, match="x0"):
        train(FakeMethod(), x0[:, :2], emb, tmp_path, _cfg())
    with pytest.raises(ValueError, match="emb"):
        train(FakeMethod(), x0, emb[:5], tmp_path, _cfg())


def test_nonfinite_gradients_raise(tmp_path):
    x0, emb = make_data()
    emb = emb.clone()
    emb[:] = float("nan")
    with pytest.raises(FloatingPointError):
        train(FakeMethod(), x0, emb, tmp_path / "nan", _cfg(train_steps=4))
    assert not (tmp_path / "nan" / "checkpoint" / "state.json").exists()


# --------------------------------------------------------------------------- DDP


def test_rank_slices_partition_the_global_batch():
    idx = torch.randperm(24)
    for world in (1, 2, 3, 4):
        parts = [rank_slice(idx, DistContext(rank=r, world_size=world)) for r in range(world)]
        assert all(len(p) == 24 // world for p in parts)
        assert torch.equal(torch.cat(parts), idx)  # same global batch for any world size
    with pytest.raises(ValueError, match="batch_size"):
        rank_slice(idx[:5], DistContext(rank=0, world_size=2))


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
def test_ddp_two_ranks_stay_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HELPERS), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    init0 = load_weights(tmp_path / "init_rank0.safetensors")
    init1 = load_weights(tmp_path / "init_rank1.safetensors")
    final0 = load_weights(tmp_path / "final_rank0.safetensors")
    final1 = load_weights(tmp_path / "final_rank1.safetensors")
    assert any(not torch.equal(init0[k], init1[k]) for k in init0)  # ranks started different
    for k in final0:
        assert torch.equal(final0[k], final1[k]), k  # DDP broadcast + all-reduce kept them equal
    assert any(not torch.equal(final0[k], init0[k]) for k in final0 if k != "calls")
    for r in (0, 1):
        assert json.loads((tmp_path / f"result_rank{r}.json").read_text())["world_size"] == 2
    run = tmp_path / "run"
    assert [rec["step"] for rec in read_log(run / "train_log.jsonl")] == [2, 4, 6]  # rank 0 only: no duplicates
    assert (run / "model.safetensors").is_file() and (run / "checkpoint" / "state.json").is_file()


def test_training_state_record_errors_name_the_file_and_the_problem(tmp_path):
    """Each way a state.json can be wrong gives its own message naming the file."""
    model, ema, opt, _ = _trained_objects()
    ck = tmp_path / "ck"
    save_training_state(ck, model=model, ema=ema, optimizer=opt, step=3, rng={}, extra={})
    path = ck / "state.json"
    good = json.loads(path.read_text())

    def fails(edit, error=CheckpointError, match=str(path), **objects) -> None:
        rec = json.loads(json.dumps(good))
        edit(rec)
        path.write_text(json.dumps(rec))
        args = {"ema": ema, "optimizer": opt, **objects}
        with pytest.raises(error, match=match):
            load_training_state(ck, model, args["ema"], args["optimizer"])

    fails(lambda r: r.update(format="other"), match="not a globeflow training-state file")
    fails(lambda r: r.update(version=99), match="unsupported training-state version 99")
    fails(lambda r: r.pop("sha256"), match="malformed training-state record")
    fails(lambda r: r.update(weights_file=3), match="weights_file is int")
    fails(lambda r: r.update(step="x"), match="malformed")
    fails(lambda r: r.update(weights_file="../state.safetensors"), match="points outside")
    fails(lambda r: r.update(weights_file="state-gone.safetensors"), CheckpointNotFoundError, "missing tensor file")
    fails(lambda r: r.update(ema=None), match="no EMA state")
    fails(lambda r: r.update(optimizer=None), match="no optimizer state")
    fails(lambda r: r["optimizer"].update({"class": "SGD"}), match="checkpoint optimizer is SGD")
    other_opt = build_optimizer("lamb", nn.Linear(3, 2), lr=1e-2)  # same class, other parameters
    fails(lambda r: None, match="optimizer state does not match the optimizer", optimizer=other_opt)
    # without EMA / optimizer objects their sections are not read
    path.write_text(json.dumps({**good, "ema": None, "optimizer": None}))
    step, rng, extra = load_training_state(ck, model, None, None)
    assert (step, rng, extra) == (3, {}, {})
