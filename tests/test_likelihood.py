"""The likelihood ODE (Prop. 2) against closed forms: laws first, then the network's own pieces.

Fake fields with known flows stand in for the network, so every formula of the three methods'
divergence fields is checked against an exact push-forward density in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from globeflow.geometry import sphere
from globeflow.methods import create_method
from globeflow.methods.diffusion import Diffusion
from globeflow.nets.adaln_mlp import AdaLNMLP, AdaLNMLPConfig
from globeflow.solvers.likelihood import integrate_with_divergence

LOG_4PI = math.log(4.0 * math.pi)


def _points(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return sphere.uniform((n,), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _method(name: str, *, dim: int = 32, depth: int = 2, seed: int = 0, std: float | None = None):
    torch.manual_seed(seed)
    m = create_method(name, 4, width=dim, depth=depth)
    if std is not None:  # blocks start as the identity: give them weights so the test sees them
        for p in m.net.parameters():
            torch.nn.init.normal_(p, std=std)
    return m.double()


def test_forward_with_jvp_matches_autograd():
    torch.manual_seed(0)
    net = AdaLNMLP(AdaLNMLPConfig(cond_dim=5, dim=32, depth=3)).double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    tangents = torch.randn(2, 7, 3, 3, dtype=torch.float64)
    mods, head = net.modulations(net.embed_condition(torch.randn(2, 5, dtype=torch.float64)), torch.rand(2))
    out, jvp = net.forward_with_jvp(x, tangents, mods, head)

    def f(y):
        return net.forward_with(y, mods, head)

    ref = torch.stack([torch.func.jvp(f, (x,), (tangents[:, :, k],))[1] for k in range(3)], dim=2)
    torch.testing.assert_close(out, f(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jvp, ref, rtol=1e-10, atol=1e-10)


def test_bfloat16_jvp_follows_weight_updates():
    # The bfloat16 weight casts are cached between calls: an in-place update (a training step)
    # must invalidate them, so the bfloat16 pass keeps tracking the float32 one.
    torch.manual_seed(0)
    net = AdaLNMLP(AdaLNMLPConfig(cond_dim=5, dim=32, depth=2))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, tangents = torch.randn(2, 7, 3), torch.randn(2, 7, 2, 3)
    mods, head = net.modulations(net.embed_condition(torch.randn(2, 5)), torch.rand(2))

    def both():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net.forward_with_jvp(x, tangents, mods, head)
        return low, net.forward_with_jvp(x, tangents, mods, head)

    (lo, lj), (fo, fj) = both()
    torch.testing.assert_close(lo, fo, rtol=0.05, atol=0.05)
    with torch.no_grad():
        for block in net.blocks:
            block.mlp[0].weight.mul_(-1.0)  # in place: same storage, new version
    (lo2, lj2), (fo2, fj2) = both()
    assert (fo2 - fo).abs().max() > 0.1  # the update matters...
    torch.testing.assert_close(lo2, fo2, rtol=0.05, atol=0.05)  # ...and bfloat16 saw it
    torch.testing.assert_close(lj2, fj2, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_zero_field_gives_uniform_density(solver):
    m = _method("rfm")
    torch.nn.init.zeros_(m.net.final_linear.weight)
    torch.nn.init.zeros_(m.net.final_linear.bias)
    emb = torch.randn(3, 4, dtype=torch.float64)
    x = _points(30).reshape(3, 10, 3)
    logp = m.log_prob_xyz(emb, x, solver=solver, steps=4)
    torch.testing.assert_close(logp, torch.full_like(logp, -LOG_4PI), rtol=0, atol=1e-12)


def _rfm_field(psi_fn, jac_fn):
    """The RFM divergence field of an analytic ambient field ψ(x) with Jacobian J(x)."""

    def field_jvp(x, probes, kappa):
        jac = jac_fn(x)  # (..., 3, 3)
        return psi_fn(x), torch.einsum("...ij,...kj->...ki", jac, probes)

    return create_method("rfm", 4, width=8, depth=1)._divergence_field(field_jvp)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_rigid_rotation_preserves_density_and_ignores_the_normal_part(solver):
    # ψ = A x + 3 x: a rotation about ω plus a radial part whose ambient trace (9) the sphere
    # never sees. The flow is the rotation exp(A) and the Riemannian divergence is 0.
    omega = torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64)
    a = torch.tensor([[0, -omega[2], omega[1]], [omega[2], 0, -omega[0]], [-omega[1], omega[0], 0]])
    jac = a + 3.0 * torch.eye(3, dtype=torch.float64)
    field = _rfm_field(lambda x: x @ jac.T, lambda x: jac.expand(*x.shape[:-1], 3, 3))
    x0 = _points(64)
    res = integrate_with_divergence(
        field, x0, 0.0, 1.0, on_sphere=True, solver=solver, steps=32, atol=1e-10, rtol=1e-10
    )
    torch.testing.assert_close(res.delta, torch.zeros_like(res.delta), rtol=0, atol=1e-9)
    torch.testing.assert_close(res.x, x0 @ torch.linalg.matrix_exp(a).T, rtol=0, atol=1e-7)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_polar_flow_matches_its_closed_form_push_forward(solver):
    # ψ = a e_z: the tangent field a P_x e_z moves latitudes as z' = a (1 − z²), so the map from
    # data to noise is z ↦ tanh(a + artanh z) and the data density is (1/4π) dz₁/dz₀.
    a = 1.3
    e_z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    field = _rfm_field(lambda x: (a * e_z).expand_as(x), lambda x: torch.zeros(*x.shape[:-1], 3, 3, dtype=x.dtype))
    x0 = _points(200, seed=1)
    res = integrate_with_divergence(
        field, x0, 0.0, 1.0, on_sphere=True, solver=solver, steps=64, atol=1e-10, rtol=1e-10
    )
    z0 = x0[:, 2]
    z1 = torch.tanh(a + torch.atanh(z0))
    torch.testing.assert_close(res.x[:, 2], z1, rtol=0, atol=1e-7)
    expected = -LOG_4PI + torch.log((1 - z1**2) / (1 - z0**2))
    torch.testing.assert_close(-LOG_4PI + res.delta, expected, rtol=0, atol=1e-6)


def test_linear_flow_in_r3_matches_gaussian_push_forward():
    # ψ = A x in R³: x(κ=1) = exp(A) x₀, log p(x₀) = log N(exp(A) x₀; 0, I) + tr A.
    torch.manual_seed(3)
    a = 0.5 * torch.randn(3, 3, dtype=torch.float64)
    m = create_method("flow", 4, width=8, depth=1).double()

    def field_jvp(x, probes, kappa):
        return x @ a.T, probes @ a.T

    res = integrate_with_divergence(
        m._divergence_field(field_jvp),
        torch.randn(50, 3, dtype=torch.float64),
        0.0,
        1.0,
        on_sphere=False,
        solver="dopri5",
        atol=1e-11,
        rtol=1e-11,
    )
    x0 = res.x @ torch.linalg.inv(torch.linalg.matrix_exp(a)).T
    torch.testing.assert_close(m._base_log_prob(res.x) + res.delta, m._base_log_prob(res.x) + torch.trace(a).expand(50))
    assert torch.allclose(res.x, x0 @ torch.linalg.matrix_exp(a).T)


def test_diffusion_probability_flow_keeps_gaussian_marginals():
    # For Gaussian data x₀ ~ N(0, s² I) the exact noise predictor is ε̂ = √κ x / ((1−κ) s² + κ), and
    # the marginal at κ is N(0, ((1−κ) s² + κ) I): the ODE must give exactly that density.
    s2 = 0.3
    m = Diffusion.__new__(Diffusion)
    m.likelihood_kappa_min = 1e-4

    def field_jvp(x, probes, kappa):
        c = kappa.sqrt() / ((1 - kappa) * s2 + kappa)
        return c * x, c * probes

    kmin = m.likelihood_kappa_min
    x0 = math.sqrt((1 - kmin) * s2 + kmin) * torch.randn(100, 3, dtype=torch.float64)
    res = integrate_with_divergence(
        m._divergence_field(field_jvp), x0, 0.0, 1.0, on_sphere=False, solver="rk4", steps=64
    )
    var = (1 - kmin) * s2 + kmin
    expected = -0.5 * x0.pow(2).sum(-1) / var - 1.5 * math.log(2 * math.pi * var)
    # At κ_max the marginal is N(0, I) up to the 1e-4 signal the base density ignores.
    torch.testing.assert_close(Diffusion._base_log_prob(m, res.x) + res.delta, expected, rtol=0, atol=2e-3)


@pytest.mark.parametrize("name", ["rfm", "flow", "diffusion"])
def test_hutchinson_is_unbiased(name):
    m = _method(name, std=0.15)
    emb = torch.randn(1, 4, dtype=torch.float64)
    x = _points(8, seed=2).reshape(1, 8, 3)
    exact = m.log_prob_xyz(emb, x, steps=8)
    est = torch.stack([m.log_prob_xyz(emb, x, steps=8, divergence="hutchinson", seed=s) for s in range(200)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
    assert bool((est.std(0) > 1e-3).all()), "the estimator is not random"
    z = ((mean - exact) / se).abs()
    assert float(z.max()) < 4.5, z


@pytest.mark.parametrize("name", ["rfm", "flow", "diffusion"])
def test_sample_with_log_prob_agrees_with_log_prob(name):
    m = _method(name, std=0.1)
    emb = torch.randn(2, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    noise = m.path.sample_noise((2, 16), generator=g, dtype=torch.float64)
    opts = {"guidance": 1.5, "solver": "rk4", "divergence": "exact", "steps": 32, "atol": 1e-5, "rtol": 1e-5}
    # From noise to data (the sampler's direction), then back from the raw end points.
    x_data, logp_fwd = m._solve_chunks(emb, noise, to_data=True, seed=0, stats=None, max_points=64, **opts)
    logp_back = m.log_prob_xyz(emb, x_data, guidance=1.5, steps=32)
    # Forward and backward RK4 solves are inverse up to their discretisation error.
    torch.testing.assert_close(logp_fwd, logp_back, rtol=0, atol=2e-3)
    if name == "rfm":
        res = m.sample_with_log_prob(emb.float().numpy(), 16, guidance=1.5, sample_steps=32)
        back = m.log_prob_xyz(emb, torch.from_numpy(res.xyz), guidance=1.5, steps=32)
        torch.testing.assert_close(torch.from_numpy(res.log_prob), back, rtol=0, atol=2e-3)


def test_adaptive_and_fixed_step_agree():
    m = _method("rfm", std=0.1)
    emb = torch.randn(2, 4, dtype=torch.float64)
    x = _points(20, seed=5).reshape(2, 10, 3)
    st = {}
    ref = m.log_prob_xyz(emb, x, solver="dopri5", atol=1e-9, rtol=1e-9, stats=st)
    assert st["nfe"] > 20
    errors = [float((m.log_prob_xyz(emb, x, solver="rk4", steps=n) - ref).abs().max()) for n in (8, 64)]
    # The default fixed-step solver meets the 0.01 nats target, and converges to dopri5's answer.
    assert errors[1] < 1e-2 and errors[1] < errors[0] / 4, errors


def test_likelihood_options_are_validated():
    m = create_method("rfm", 4, width=8, depth=1)
    emb = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="solver"):
        m.log_prob(emb, [[0.0, 0.0]], solver="euler")
    with pytest.raises(ValueError, match="divergence"):
        m.log_prob(emb, [[0.0, 0.0]], divergence="trace")
    with pytest.raises(ValueError, match="latitude"):
        m.log_prob(emb, [[95.0, 0.0]])
    with pytest.raises(ValueError, match="latlon"):
        m.log_prob(emb, [[0.0, 0.0], [1.0, 1.0]])
