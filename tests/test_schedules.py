"""Noise schedules κ(t): endpoints, monotonicity, derivatives and Eq. 15 by hand."""

from __future__ import annotations

import math

import pytest
import torch

from globeflow.paths import SCHEDULES, Cosine, Linear, SkewedSigmoid, make_schedule

F64 = torch.float64


# (name, params) covering every schedule and a spread of sigmoid parameters
CASES = [
    ("skewed_sigmoid", {}),
    ("skewed_sigmoid", {"alpha": -3.0, "beta": 7.0}),
    ("skewed_sigmoid", {"alpha": -10.0, "beta": 20.0}),
    ("skewed_sigmoid", {"alpha": 0.5, "beta": 0.6}),
    ("skewed_sigmoid", {"alpha": 2.0, "beta": 9.0}),
    ("skewed_sigmoid", {"alpha": -8.0, "beta": -1.0}),
    ("sigmoid", {}),
    ("linear", {}),
    ("cosine", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for n, p in CASES]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_endpoints_exact(name, params, dtype):
    s = make_schedule(name, **params)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    k = s.kappa(t)
    assert k.dtype == dtype
    assert k[0].item() == 0.0 and k[1].item() == 1.0
    # scalar tensors and python floats too
    assert float(s.kappa(torch.tensor(0.0, dtype=dtype))) == 0.0
    assert float(s.kappa(torch.tensor(1.0, dtype=dtype))) == 1.0
    assert float(s.kappa(0.0)) == 0.0 and float(s.kappa(1.0)) == 1.0


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_monotone_increasing_float64(name, params):
    s = make_schedule(name, **params)
    t = torch.linspace(0.0, 1.0, 20_001, dtype=F64)
    k = s.kappa(t)
    assert torch.all(k.diff() > 0), "κ must be strictly increasing in float64"
    assert k.min() >= 0.0 and k.max() <= 1.0


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_range_is_unit_interval_including_near_endpoints(name, params, dtype):
    """κ ∈ [0, 1] everywhere: √(1−κ) and √κ of diffusion must never see a negative argument."""
    s = make_schedule(name, **params)
    one, zero = torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)
    near1 = [one]
    near0 = [zero]
    for _ in range(64):
        near1.append(torch.nextafter(near1[-1], zero))
        near0.append(torch.nextafter(near0[-1], one))
    t = torch.cat([
        torch.stack(near0),
        torch.stack(near1),
        torch.linspace(0, 1, 20_001, dtype=dtype),
        torch.rand(20_000, generator=torch.Generator().manual_seed(0), dtype=dtype),
    ])
    k = s.kappa(t)
    assert torch.isfinite(k).all()
    assert k.min() >= 0.0, k.min()
    assert k.max() <= 1.0, k.max()
    # non-decreasing on a sorted grid (float32 may plateau, never go backwards)
    ts, _ = torch.sort(t)
    assert torch.all(s.kappa(ts).diff() >= 0)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_kappa_dot_matches_central_difference(name, params):
    s = make_schedule(name, **params)
    h = 1e-6
    t = torch.linspace(2 * h, 1 - 2 * h, 997, dtype=F64)
    fd = (s.kappa(t + h) - s.kappa(t - h)) / (2 * h)
    kd = s.kappa_dot(t)
    assert kd.dtype == F64 and kd.shape == t.shape
    scale = kd.abs().max()
    assert ((kd - fd).abs() / scale).max() < 1e-7
    assert torch.all(kd > 0)
    # the derivative integrates back to κ(1) − κ(0) = 1 (composite Simpson on 2000 panels)
    tt = torch.linspace(0, 1, 2001, dtype=F64)
    w = torch.ones_like(tt)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    assert float((w * s.kappa_dot(tt)).sum() / (3 * 2000)) == pytest.approx(1.0, abs=1e-9)


def test_skewed_sigmoid_default_is_eq15_with_alpha_minus3_beta_7():
    s = make_schedule()  # default name
    assert isinstance(s, SkewedSigmoid)
    assert (s.alpha, s.beta) == (-3.0, 7.0)
    a, b = -3.0, 7.0
    for t in (0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0):
        ref = (_sig(a) - _sig(a + t * (b - a))) / (_sig(a) - _sig(b))
        got = float(s.kappa(torch.tensor(t, dtype=F64)))
        assert got == pytest.approx(ref, abs=1e-15), t
        # derivative by hand: (b − a) σ'(a + t(b − a)) / (σ(b) − σ(a))
        z = a + t * (b - a)
        ref_dot = (b - a) * _sig(z) * (1 - _sig(z)) / (_sig(b) - _sig(a))
        assert float(s.kappa_dot(torch.tensor(t, dtype=F64))) == pytest.approx(ref_dot, rel=1e-13)
    # hand-computed numbers (independent of the formula above): κ(0.3) with z = 0
    k03 = (_sig(-3) - 0.5) / (_sig(-3) - _sig(7))
    assert k03 == pytest.approx(0.4755613, abs=1e-7)  # (0.0474259 − 0.5) / (0.0474259 − 0.9990889)
    assert float(s.kappa(torch.tensor(0.3, dtype=F64))) == pytest.approx(k03, abs=1e-15)
    # the skew: with β = 7 more than half of [0, 1] is spent below κ = 0.5
    assert float(s.kappa(torch.tensor(0.5, dtype=F64))) > 0.5
    t_half = float(torch.linspace(0, 1, 100_001, dtype=F64)[(s.kappa(torch.linspace(0, 1, 100_001, dtype=F64)) < 0.5).sum()])
    assert 0.30 < t_half < 0.32


def test_sigmoid_is_alpha_minus3_beta_3_and_symmetric():
    s = make_schedule("sigmoid")
    assert (s.alpha, s.beta) == (-3.0, 3.0)
    ref = SkewedSigmoid(alpha=-3.0, beta=3.0)
    t = torch.linspace(0, 1, 1001, dtype=F64)
    torch.testing.assert_close(s.kappa(t), ref.kappa(t), rtol=0, atol=0)
    torch.testing.assert_close(s.kappa_dot(t), ref.kappa_dot(t), rtol=0, atol=0)
    # α = −β makes κ point-symmetric: κ(t) + κ(1 − t) = 1
    torch.testing.assert_close(s.kappa(t) + s.kappa(1 - t), torch.ones_like(t), rtol=0, atol=1e-15)
    assert float(s.kappa(torch.tensor(0.5, dtype=F64))) == pytest.approx(0.5, abs=1e-15)


def test_linear_and_cosine_closed_forms():
    t = torch.linspace(0, 1, 1001, dtype=F64)
    lin = make_schedule("linear")
    assert isinstance(lin, Linear)
    torch.testing.assert_close(lin.kappa(t), t, rtol=0, atol=0)
    torch.testing.assert_close(lin.kappa_dot(t), torch.ones_like(t), rtol=0, atol=0)
    cos = make_schedule("cosine")
    assert isinstance(cos, Cosine)
    torch.testing.assert_close(cos.kappa(t), 1 - torch.cos(math.pi * t / 2) ** 2, rtol=0, atol=1e-15)
    assert float(cos.kappa(torch.tensor(0.5, dtype=F64))) == pytest.approx(0.5, abs=1e-15)
    # the linear schedule does not alias its input
    t2 = t.clone()
    k = lin.kappa(t2)
    k[3] = 99.0
    assert t2[3] != 99.0


def test_kappa_preserves_shape():
    s = make_schedule()
    t = torch.rand(4, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert s.kappa(t).shape == (4, 1)
    assert s.kappa_dot(t).shape == (4, 1)


@pytest.mark.parametrize(
    "params",
    [{"alpha": 3.0, "beta": -3.0}, {"alpha": 1.0, "beta": 1.0}, {"beta": -5.0}, {"alpha": float("nan")}],
)
def test_bad_sigmoid_params_raise(params):
    with pytest.raises(ValueError, match="beta > alpha"):
        make_schedule("skewed_sigmoid", **params)
    with pytest.raises(ValueError, match="beta > alpha"):
        make_schedule("sigmoid", **params)


def test_unknown_name_and_unknown_params_raise():
    with pytest.raises(ValueError, match=r"unknown name 'bogus'"):
        make_schedule("bogus")
    with pytest.raises(ValueError, match="linear"):
        make_schedule("bogus")  # lists the valid choices
    with pytest.raises(ValueError, match=r"bad parameters.*alpha"):
        make_schedule("linear", alpha=1.0)
    with pytest.raises(ValueError, match=r"bad parameters.*gamma"):
        make_schedule("skewed_sigmoid", gamma=2.0)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_config_round_trip(name, params):
    s = make_schedule(name, **params)
    cfg = s.config()
    assert cfg["name"] == name
    assert set(cfg) <= {"name", "alpha", "beta"}
    back = make_schedule(**cfg)
    assert type(back) is type(s) and back == s
    t = torch.linspace(0, 1, 101, dtype=F64)
    assert torch.equal(back.kappa(t), s.kappa(t))
    # JSON-serialisable
    import json

    assert json.loads(json.dumps(cfg)) == cfg


def test_registry_names():
    assert set(SCHEDULES) == {"skewed_sigmoid", "sigmoid", "linear", "cosine"}
    for name in SCHEDULES:
        assert make_schedule(name).name == name
