"""LocDiffusion's pieces against known answers: the SH basis, SHDD encode/decode, the SHDD loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from globeflow.geometry import great_circle_km, xyz_to_latlon
from globeflow.geometry.harmonics import real_sph_harm, sh_index, sphere_quadrature
from globeflow.methods.locdiffusion import (
    LocDiffusion,
    ModeDecoder,
    cosine_alpha_bar,
    fibonacci_sphere,
    shdd_encode,
    shdd_kl,
)


def _random_units(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def test_sh_basis_is_orthonormal_up_to_degree_47():
    big_l = 47
    # Gauss–Legendre × trapezoid, exact for the degree-94 products Y_lm Y_l'm'.
    pts, w = sphere_quadrature(big_l + 1, 2 * big_l + 2)
    y = real_sph_harm(pts, big_l)
    gram = (y * w[:, None]).T @ y
    assert y.shape == (len(pts), 48 * 48)
    assert float((gram - torch.eye(48 * 48, dtype=torch.float64)).abs().max()) < 1e-6


def test_sh_known_values_and_addition_theorem():
    x = _random_units(7, seed=0)
    y = real_sph_harm(x, 20)
    c1 = math.sqrt(3 / (4 * math.pi))
    # Degree 1 is (y, z, x) · √(3/4π) in the order m = −1, 0, 1 (Eq. 19 with the phases cancelled).
    torch.testing.assert_close(y[:, 1:4], c1 * x[:, [1, 2, 0]])
    torch.testing.assert_close(y[:, sh_index(2, -2)], 0.5 * math.sqrt(15 / math.pi) * x[:, 0] * x[:, 1])
    # Unsöld / addition theorem: Σ_m Y_lm(x)² = (2l+1)/(4π) at every point, for every l.
    for el in (0, 5, 20):
        block = y[:, el * el : (el + 1) ** 2]
        torch.testing.assert_close(
            (block**2).sum(dim=1), torch.full((7,), (2 * el + 1) / (4 * math.pi), dtype=torch.float64)
        )
    # Poles: only m = 0 survives, Y_l0(north) = √((2l+1)/4π); float32 in, float32 out.
    pole = real_sph_harm(torch.tensor([[0.0, 0.0, 1.0]]), 47)
    assert pole.dtype == torch.float32
    m0 = [sh_index(el, 0) for el in range(48)]
    np.testing.assert_allclose(pole[0, m0].numpy(), np.sqrt((2 * np.arange(48) + 1) / (4 * np.pi)), rtol=1e-6)
    assert float(pole[0].abs().sum() - pole[0, m0].abs().sum()) < 1e-5


def test_shdd_encode_decode_is_within_the_stated_resolution():
    big_l = 47
    decoder = ModeDecoder(fibonacci_sphere(5000), big_l, radius=300.0 / 6371.0)
    x = _random_units(100, seed=1)
    y = decoder.decode(shdd_encode(x, big_l).float())
    a, b = xyz_to_latlon(x), xyz_to_latlon(y)
    err = great_circle_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    # Paper App. A.3: resolution ≈ 20000/L km (425 km at L = 47); the anchor spacing here is
    # ≈ 320 km, so the decoded anchor is the nearest or next to it.
    assert err.max() < 20000 / big_l
    assert np.median(err) < 200


def test_shdd_loss_is_minimal_at_the_true_code():
    big_l = 15
    x = _random_units(8, seed=2)
    code = shdd_encode(x, big_l)
    anchors = shdd_encode(_random_units(2048, seed=3), big_l)
    at_truth = shdd_kl(code, code, anchors)
    assert float(at_truth.abs().max()) < 1e-9
    # A constant added to e_00 leaves q_e unchanged (softmax): the minimum is the true code's class.
    shifted = code.clone()
    shifted[:, 0] += 3.0
    assert float(shdd_kl(shifted, code, anchors).abs().max()) < 1e-9
    g = torch.Generator().manual_seed(4)
    for scale in (0.05, 0.2):
        noisy = code + scale * torch.randn(code.shape, generator=g, dtype=code.dtype)
        assert (shdd_kl(noisy, code, anchors) > at_truth + 1e-6).all()
    # Codes of points moved further away cost more (loss increasing with distance).
    axis = torch.linalg.cross(x, _random_units(8, seed=5), dim=-1)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    losses = []
    for deg in (2.0, 10.0, 40.0):
        t = math.radians(deg)
        moved = x * math.cos(t) + torch.linalg.cross(axis, x, dim=-1) * math.sin(t)
        losses.append(shdd_kl(shdd_encode(moved, big_l), code, anchors))
    assert (losses[0] < losses[1]).all() and (losses[1] < losses[2]).all()


def test_cosine_schedule():
    ab = cosine_alpha_bar(100)
    assert ab.shape == (100,) and (ab[1:] < ab[:-1]).all()
    assert 0.99 < float(ab[0]) < 1.0 and float(ab[-1]) < 1e-3


@pytest.mark.parametrize("solver", ["ddpm", "ddim"])
def test_locdiffusion_learns_a_two_class_world(solver):
    """Two classes (one-hot embeddings) at two sites 90° apart: predictions land at their class's site."""
    torch.manual_seed(0)
    sites = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    cls = torch.randint(0, 2, (2048,), generator=g)
    x0 = sites[cls] + 0.05 * torch.randn(2048, 3, generator=g)
    x0 = x0 / x0.norm(dim=-1, keepdim=True)
    emb = torch.nn.functional.one_hot(cls, 2).float()
    m = LocDiffusion(2, degree=7, width=64, depth=2, timesteps=20, train_anchors=512, decode_anchors=2000,
                     radius_km=800.0, predict_samples=4)  # fmt: skip
    opt = torch.optim.Adam(m.net.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, 2048, (128,), generator=g)
        loss = m.loss(x0[idx], emb[idx], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = m.predict(np.eye(2, dtype=np.float32), solver=solver, strategy="center")
    mode = m.predict(np.eye(2, dtype=np.float32), solver=solver, strategy="mode")
    truth = xyz_to_latlon(sites)
    for p in (pred, mode):
        err = great_circle_km(p[:, 0], p[:, 1], truth[:, 0], truth[:, 1])
        assert (err < 1500).all(), err  # L = 7: resolution ≈ 2900 km
    with pytest.raises(ValueError, match="solver"):
        m.sample(np.eye(2), 1, solver="euler")
    with pytest.raises(NotImplementedError, match="likelihood"):
        m.log_prob(np.eye(2), np.zeros((2, 2)))


@pytest.mark.parametrize("solver", ["ddpm", "ddim"])
def test_projected_chain_ends_on_an_shdd_code(solver):
    """With ``project=True`` every x̂₀ is decoded and re-encoded, so the chain ends on an exact
    SHDD code (a fixed point of encode ∘ decode); without it, an untrained denoiser's x̂₀ is not one."""
    torch.manual_seed(0)
    m = LocDiffusion(2, degree=7, width=32, depth=1, timesteps=10, train_anchors=256, decode_anchors=1000,
                     radius_km=800.0, predict_samples=2)  # fmt: skip
    emb = torch.eye(2)
    for project, exact in ((True, True), (False, False)):
        codes = m.sample_codes(emb, 3, generator=torch.Generator().manual_seed(1), solver=solver, project=project)
        flat = codes.reshape(-1, codes.shape[-1])
        reencoded = shdd_encode(m.decode(flat), m.degree)
        assert torch.allclose(reencoded, flat, atol=1e-5) is exact
