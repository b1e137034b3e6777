"""Why the likelihood ODE of a trained RFM needs ~200+ field evaluations for 0.01 nats (issue 14, item 2).

log p(y) = −log 4π + ∫₀¹ div v(x(κ), κ) dκ along the path from the data point to the noise
(Prop. 2, ``solvers/likelihood.py``). Whatever the ODE solver, its estimate of the integral is a
weighted sum of the integrand at the κ where it evaluates the field, so its error cannot beat
what a quadrature with that many nodes achieves on the *exact* path. This script records the
integrand g(κ) = div v(x(κ), κ) on a fine uniform grid along fine RK4 paths (``--fine`` steps),
then reports

* the error of the trapezoid rule on n uniform nodes (n = 51…1001), and on warped grids
  κ = u^p (nodes crowded at the data end), against the fine-grid integral;
* the library's RK4 (``log_prob_xyz``) at a few step counts against the same fine integral;
* how much high-frequency content g has per κ band (|g − moving average over 0.01|): the
  network sees κ through sinusoids of 1000κ (periods down to 2π/1000 ≈ 0.0063), and a trained
  network uses them.

Usage::

    python benchmarks/likelihood_quadrature.py --run RUN --data world/test.parquet --points 32 --official
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from globeflow.api import load
from globeflow.data import read_dataset
from globeflow.geometry import sphere
from globeflow.geometry.coords import latlon_to_xyz
from globeflow.solvers.likelihood import _tangent_frame


def integrand_on_fine_grid(method, emb: torch.Tensor, x0: torch.Tensor, fine: int) -> np.ndarray:
    """g at κ = i/fine, i = 0…fine, along RK4 paths from the points ``x0`` (P, 1, 3): (fine+1, P)."""
    field = method._divergence_field(method.guided_field_jvp(emb, 0.0))

    def rhs(s: float, y: torch.Tensor):
        y = sphere.project(y)
        return field(y, torch.tensor(s, dtype=torch.float64), _tangent_frame(y))

    x, out, h = x0.clone(), [], 1.0 / fine
    with torch.inference_mode():
        for i in range(fine + 1):
            s0 = i * h
            v1, d1 = rhs(s0, x)
            out.append(d1[:, 0].double().numpy())
            if i == fine:
                break
            v2, _ = rhs(s0 + h / 2, x + h / 2 * v1)
            v3, _ = rhs(s0 + h / 2, x + h / 2 * v2)
            v4, _ = rhs(s0 + h, x + h * v3)
            x = sphere.project(x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4))
    return np.stack(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--points", type=int, default=32, help="half test locations, half model samples")
    p.add_argument("--fine", type=int, default=2000)
    p.add_argument("--rk4-steps", type=int, nargs="*", default=[32, 48, 64, 128])
    p.add_argument("--official", action="store_true", help="also count the official likelihood's evaluations")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    m = load(args.run)
    d = read_dataset(args.data)
    n, half = args.points, args.points // 2
    emb = torch.tensor(d.embeddings[:n], dtype=torch.float32)
    first = torch.tensor(latlon_to_xyz(d.latitude[:half], d.longitude[:half]), dtype=torch.float32)
    samples = m.sample_xyz(emb[half:], 1, generator=torch.Generator().manual_seed(7), sample_steps=64)[:, 0]
    g = integrand_on_fine_grid(m, emb, torch.cat([first, samples]).unsqueeze(1), args.fine)
    # (The fine path is RK4 with 1/fine steps: its own error is ≪ 0.001 nats, see the JSON's
    # rk4 rows converging towards it.)
    kk = np.linspace(0.0, 1.0, args.fine + 1)
    exact = np.trapezoid(g, kk, axis=0)
    res: dict = {"points": n, "fine": args.fine, "trapezoid_uniform": {}, "trapezoid_warped": {}, "bands": []}
    for nodes in (51, 81, 101, 126, 151, 201, 251, 401, 501, 1001):
        s = np.linspace(0.0, 1.0, nodes)
        vals = np.stack([np.interp(s, kk, g[:, j]) for j in range(g.shape[1])], 1)
        res["trapezoid_uniform"][nodes] = float(np.abs(np.trapezoid(vals, s, axis=0) - exact).max())
    for power in (1.5, 2.0, 3.0):
        for nodes in (101, 151, 201):
            s = np.linspace(0.0, 1.0, nodes) ** power
            vals = np.stack([np.interp(s, kk, g[:, j]) for j in range(g.shape[1])], 1)
            res["trapezoid_warped"][f"u^{power} {nodes}"] = float(np.abs(np.trapezoid(vals, s, axis=0) - exact).max())
    w = max(3, args.fine // 100) | 1
    smooth = np.stack([np.convolve(g[:, j], np.ones(w) / w, mode="same") for j in range(g.shape[1])], 1)
    hp = np.abs(g - smooth)
    edge = (kk > w / args.fine) & (kk < 1 - w / args.fine)
    for a, b in ((0, 0.03), (0.03, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)):
        sel = (kk >= a) & (kk < b)
        res["bands"].append(
            {
                "kappa": [a, b],
                "mean_abs_g": float(np.abs(g[sel]).mean()),
                "highpass_rms": float(np.sqrt((hp[sel & edge] ** 2).mean())),
            }
        )
    # The library's solver at a few settings, against the fine-grid integral (log p = −log 4π + ∫ g).
    x = torch.cat([first, samples]).unsqueeze(1)
    ref = -np.log(4 * np.pi) + exact
    res["rk4_vs_fine"] = {}
    for steps in args.rk4_steps:
        st: dict = {}
        lp = m.log_prob_xyz(emb, x, solver="rk4", steps=steps, stats=st)[:, 0].double().numpy()
        res["rk4_vs_fine"][steps] = {"nfe": st["nfe"], "max_abs": float(np.abs(lp - ref).max())}
    if args.official:
        # The official likelihood (diff-plonk, dopri5 1e-6, as in bench_likelihood.py) on the same
        # weights and pairs: its number of function evaluations, the baseline of the 10x target.
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_likelihood as bl
        from bench_core import load_official

        pipe_mod, manifolds = bl.load_official_pipe()
        off, _ = bl.build_trained(load_official(), args.run)
        off.eval().requires_grad_(False)
        latlon = bl.xyz_to_latlon_deg(x)
        _, nfe = bl.official_log_prob(bl.make_pipeline(pipe_mod, manifolds, off), emb, latlon, atol=1e-6, rtol=1e-6)
        res["official_dopri5_1e-6_nfe"] = nfe
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
