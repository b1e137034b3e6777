"""The split likelihood solver (``rk4-split``, globeflow.solvers.split): its filter against closed
forms, its plumbing against plain RK4, and its accuracy against a tight dopri5 reference."""

from __future__ import annotations

import math

import pytest
import torch

from globeflow.nets.adaln_mlp import AdaLNMLPConfig
from globeflow.solvers import split
from globeflow.solvers.likelihood import graded_grid, integrate_with_divergence
from test_likelihood import _method, _points


def test_lowpass_keeps_slow_and_removes_fast_sinusoids_at_any_node():
    # a(κ) = cos(40κ + 0.3) + 0.5 sin(900κ): with ω_c = 200 only the first survives, evaluated
    # exactly at nodes off the fine grid, each node with its own cutoff.
    nodes = torch.tensor([0.0, 0.0137, 0.5, 0.77777, 1.0], dtype=torch.float64)

    def signal(lv):
        return torch.stack([torch.cos(40 * lv + 0.3) + 0.5 * torch.sin(900 * lv), torch.cos(5 * lv)], dim=-1)

    def lowpass(cut):
        f = split.NodeLowPass(nodes, torch.tensor(cut, dtype=torch.float64))
        return f(signal(f.grid), signal(nodes))

    slow = lowpass([200.0] * 5)
    torch.testing.assert_close(slow[:, 0], torch.cos(40 * nodes + 0.3), atol=1e-4, rtol=0)
    torch.testing.assert_close(slow[:, 1], torch.cos(5 * nodes), atol=1e-4, rtol=0)
    # a cutoff above every frequency returns the signal itself (the trigonometric interpolant)
    full = lowpass([3000.0] * 5)
    torch.testing.assert_close(full, signal(nodes), atol=1e-4, rtol=0)
    # node-dependent cutoffs: the fast sinusoid passes only where the cutoff is above it
    mixed = lowpass([3000.0, 200.0, 3000.0, 200.0, 3000.0])
    torch.testing.assert_close(mixed[0::2], signal(nodes)[0::2], atol=1e-4, rtol=0)
    torch.testing.assert_close(mixed[1::2, 0], torch.cos(40 * nodes[1::2] + 0.3), atol=1e-4, rtol=0)
    # the grid's shape is checked, naming the argument
    f = split.NodeLowPass(nodes, torch.full((5,), 200.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="on_grid"):
        f(signal(f.grid)[:-1], signal(nodes))


def test_split_nodes_and_local_cutoffs():
    grid = graded_grid(0.0, 1.0, 4, 2.0)
    torch.testing.assert_close(grid, torch.tensor([0.0, 1 / 16, 1 / 4, 9 / 16, 1.0], dtype=torch.float64))
    nodes, cut = split.split_nodes(grid, 4.5)
    assert nodes.shape == (9,) and torch.all(nodes[1::2] == 0.5 * (grid[1:] + grid[:-1]))
    h = grid[1:] - grid[:-1]
    torch.testing.assert_close(cut[1::2], 4.5 / h)
    torch.testing.assert_close(cut[2], 4.5 / (0.5 * (h[0] + h[1])))
    # noise-to-data direction: the same nodes reversed
    back, _ = split.split_nodes(graded_grid(1.0, 0.0, 4, 2.0), 4.5)
    torch.testing.assert_close(back, nodes.flip(0))


def test_split_without_fast_part_is_plain_rk4(monkeypatch):
    # With a cutoff far above the network's frequencies δ ≈ 0 and every pair sees the same field:
    # the solve must be the classical RK4 on the same graded grid (checks nodes, pairs, weights).
    monkeypatch.setattr(split, "SPLIT_CUTOFF", 1e6)
    m = _method("rfm", dim=32, depth=2, seed=3, std=0.1)
    emb = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = _points(6, 1).reshape(3, 2, 3)
    with torch.inference_mode():
        a = m.log_prob_xyz(emb, x, solver="rk4-split", steps=12)
        b = m.log_prob_xyz(emb, x, solver="rk4", steps=12)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_split_beats_rk4_on_a_network_with_fast_time_features(seed):
    # A random AdaLN network uses all its 1000κ sinusoids, so plain RK4 aliases them at these step
    # counts; the split solver must be several times closer to a tight dopri5 solve.
    m = _method("rfm", dim=32, depth=2, seed=seed, std=0.1)
    emb = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = _points(8, seed).reshape(4, 2, 3)
    with torch.inference_mode():
        ref = m.log_prob_xyz(emb, x, solver="dopri5", atol=1e-10, rtol=1e-10)
        for steps in (32, 64):
            stats = {}
            err_split = (m.log_prob_xyz(emb, x, solver="rk4-split", steps=steps, stats=stats) - ref).abs().max()
            err_rk4 = (m.log_prob_xyz(emb, x, solver="rk4", steps=steps) - ref).abs().max()
            assert stats["nfe"] == 4 * steps  # one chunk: four field evaluations per step
            assert err_split < err_rk4 / 4, (steps, float(err_split), float(err_rk4))
        assert err_split < 1e-3


def test_split_with_guidance_and_the_plonk_network_match_dopri5():
    # Guidance doubles the condition rows; the PLONK network sees 1 − κ: both go through the split.
    from globeflow.methods.plonk import PlonkRFM

    torch.manual_seed(0)
    plonk = PlonkRFM(AdaLNMLPConfig(cond_dim=4, dim=32, depth=2))
    for p in plonk.net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    plonk = plonk.double()
    emb = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = _points(4, 2).reshape(2, 2, 3)
    with torch.inference_mode():
        ref = plonk.log_prob_xyz(emb, x, guidance=1.5, solver="dopri5", atol=1e-10, rtol=1e-10)
        out = plonk.log_prob_xyz(emb, x, guidance=1.5, solver="rk4-split", steps=64)
    assert float((out - ref).abs().max()) < 2e-3


def test_split_refuses_what_it_cannot_do():
    m = _method("rfm", dim=16, depth=1)
    emb, x = torch.zeros(1, 4, dtype=torch.float64), _points(2).reshape(1, 2, 3)
    with pytest.raises(ValueError, match="divergence"):
        m.log_prob_xyz(emb, x, solver="rk4-split", divergence="hutchinson")
    with pytest.raises(ValueError, match="rk4-split"):
        _method("diffusion", dim=16, depth=1).log_prob_xyz(emb, x, solver="rk4-split")
    with pytest.raises(ValueError, match="rk4-split"):
        integrate_with_divergence(lambda *a: a, x, 0.0, 1.0, on_sphere=True, solver="rk4-split")
    assert math.isclose(split.SPLIT_CUTOFF, 4.5)


def test_split_in_the_sampling_direction():
    # sample_with_log_prob integrates from noise to data: the grid, the nodes and the pairs reversed.
    m = _method("rfm", dim=32, depth=2, seed=0, std=0.1)
    emb = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        runs = {
            solver: m.sample_with_log_prob_xyz(
                emb,
                3,
                generator=torch.Generator().manual_seed(3),
                solver=solver,
                sample_steps=64,
                atol=1e-10,
                rtol=1e-10,
            )
            for solver in ("dopri5", "rk4", "rk4-split")
        }
    (x_ref, lp_ref), (_, lp_rk4), (x_split, lp_split) = runs["dopri5"], runs["rk4"], runs["rk4-split"]
    assert float((x_split - x_ref).abs().max()) < 1e-3
    err_split, err_rk4 = float((lp_split - lp_ref).abs().max()), float((lp_rk4 - lp_ref).abs().max())
    assert err_split < 1e-3 and err_split < err_rk4 / 4, (err_split, err_rk4)
