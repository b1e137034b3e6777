"""A learned density grounded in a gazetteer: p(y | q) = Σ_k π_k vMF(y; μ_k, κ_k) + π_0 p_θ(y | q).

The embedding of a query is [e(q), G(q)]: ``e`` what a trained method reads (``minilm-parts``,
D = 1155) and ``G`` the gazetteer's reading of the text, K components (μ_k, log w_k, log κ_k)
from :mod:`globeflow.encoders.grounding` (the ``minilm-parts-grounded`` encoder). The mixture
weights are π_k = w_k / (Σ_j w_j + z_0) and π_0 = z_0 / (Σ_j w_j + z_0): the w_k are the
gazetteer's unnormalised evidence (prior × likelihood of the query's parts, in units of an
exact match to a place of 1000 inhabitants), z_0 the evidence for "none of the table's
places or regions", which the learned model p_θ (the inner method, e.g. the geonames RFM)
answers — free text, other scripts, what the table lacks. A query the table does not know
(empty G) is p_θ alone.

Densities are exact: the vMF terms in closed form (float64: κ reaches 10⁶ for a town), p_θ by
the inner method's likelihood ODE. An answer costs what the inner method's did: of S samples,
the n_0 ~ S π_0 drawn from p_θ come with their log p_θ from the sampling solve, the others are
drawn exactly from their vMF (Wood 1994) and get log p_θ from one likelihood solve. The
component counts are a systematic (stratified) allocation of the S draws, then shuffled.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from globeflow.methods.base import Method

__all__ = ["GroundedMethod"]

_FIELDS = 5
_EMPTY = -500.0  # log weights below this are empty slots (the encoder writes -1000)


class GroundedMethod(Method, nn.Module):
    """``inner`` (a method with a density on S², of ``inner.embedding_dim`` = P) grounded by a
    ``slots``-component gazetteer block (D = P + 5 · slots); ``log_z0`` = log z_0."""

    name: ClassVar[str] = "grounded"
    density_space: ClassVar[str | None] = "S2"
    default_strategy: ClassVar[str] = "mbr"

    def __init__(self, inner: Method, *, slots: int, log_z0: float = math.log(0.1)) -> None:
        nn.Module.__init__(self)
        if getattr(inner, "density_space", None) != "S2":
            raise ValueError(f"grounded: the inner method needs a density on S², {inner.name!r} has none")
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"grounded: slots must be a positive integer, got {slots!r}")
        if not math.isfinite(float(log_z0)):
            raise ValueError(f"grounded: log_z0 must be finite, got {log_z0!r}")
        self.inner = inner
        self.slots = slots
        self.log_z0 = float(log_z0)
        self.parts_dim = int(inner.embedding_dim)
        self.embedding_dim = self.parts_dim + _FIELDS * slots
        self.calibration = None

    # -- what the loader and the CLI use --------------------------------------------------
    @property
    def net(self) -> nn.Module:  # the inner network: api.load puts it in eval mode
        return self.inner.net

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def has_unconditional(self) -> bool:
        return self.inner.has_unconditional

    def weights_state(self) -> dict[str, Tensor]:
        return self.inner.weights_state() if hasattr(self.inner, "weights_state") else self.inner.net.state_dict()

    def load_weights_state(self, state: dict[str, Tensor]) -> None:
        if hasattr(self.inner, "load_weights_state"):
            self.inner.load_weights_state(state)
        else:
            self.inner.net.load_state_dict(state, strict=True)

    def config(self) -> dict:
        return {
            "method": self.name,
            "embedding_dim": self.embedding_dim,
            "slots": self.slots,
            "log_z0": self.log_z0,
            "inner": self.inner.config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> GroundedMethod:
        from globeflow.methods import build_method

        try:
            inner = build_method(config["inner"])
            method = cls(inner, slots=int(config["slots"]), log_z0=float(config.get("log_z0", math.log(0.1))))
        except (KeyError, TypeError) as err:
            raise ValueError(f"model config: missing or malformed field {err} of a grounded model") from None
        if "embedding_dim" in config and int(config["embedding_dim"]) != method.embedding_dim:
            raise ValueError(
                f"model config: embedding_dim {config['embedding_dim']} != inner {method.parts_dim} + 5 x {method.slots} slots"
            )
        return method

    def novelty_view(self, emb: Any) -> tuple[Any, Any]:
        """The inner embedding (the gazetteer block is no text feature), and the rows the table
        recognises: its evidence outweighs "none of these" (π_0 < ½)."""
        import numpy as np

        e = np.asarray(emb, np.float32)
        _, _, _, log_pi0 = self.components(torch.as_tensor(e))
        return e[:, : self.parts_dim], (log_pi0 < math.log(0.5)).numpy()

    # -- the mixture ----------------------------------------------------------------------
    def components(self, emb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From ``emb`` (B, D): μ (B, K, 3) float64 unit, κ (B, K) float64, log π (B, K) and
        log π_0 (B,) (normalised together; empty slots have log π = −inf)."""
        block = emb[:, self.parts_dim :].double().reshape(emb.shape[0], self.slots, _FIELDS)
        mu = block[..., :3]
        mu = mu / mu.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        logw = block[..., 3].masked_fill(block[..., 3] < _EMPTY, -math.inf)
        kappa = block[..., 4].exp()
        z0 = torch.full_like(logw[:, :1], self.log_z0)
        log_pi = torch.log_softmax(torch.cat([z0, logw], dim=1), dim=1)
        return mu, kappa, log_pi[:, 1:], log_pi[:, 0]

    @staticmethod
    def _log_vmf(x: Tensor, mu: Tensor, kappa: Tensor) -> Tensor:
        """log vMF density per steradian: x (B, P, 3), μ (B, K, 3), κ (B, K) -> (B, P, K).

        The normaliser is :func:`~globeflow.geometry.vmf.vmf_log_normaliser`; the cosine comes
        from one product over all pairs rather than :func:`~globeflow.geometry.vmf.vmf_log_prob`'s
        (B, P, K, 3) differences (a 1° map is 64,800 points × 128 slots), which float64 allows."""
        from globeflow.geometry.vmf import vmf_log_normaliser

        log_c = vmf_log_normaliser(kappa)
        return log_c[:, None, :] + kappa[:, None, :] * (torch.einsum("bpi,bki->bpk", x, mu) - 1.0)

    def _log_mixture(self, comps: tuple[Tensor, ...], x: Tensor, log_p_inner: Tensor) -> Tensor:
        """log p at ``x`` (B, P, 3) from :meth:`components` and log p_θ there (B, P)."""
        mu, kappa, log_pi, log_pi0 = comps
        xd = x.double()
        xd = xd / xd.norm(dim=-1, keepdim=True)
        table = torch.logsumexp(self._log_vmf(xd, mu, kappa) + log_pi[:, None, :], dim=-1)
        return torch.logaddexp(table, log_pi0[:, None] + log_p_inner.double())

    def log_prob_xyz(self, emb: Tensor, x: Tensor, *, guidance: float = 0.0, **options: Any) -> Tensor:
        """log p(x | q): ``emb`` (B, D), ``x`` (B, P, 3) -> (B, P) float64 (``options`` go to
        the inner method's likelihood)."""
        inner = self.inner.log_prob_xyz(emb[:, : self.parts_dim], x, guidance=guidance, **options)
        return self._log_mixture(self.components(emb), x, inner)

    def _allocate(self, log_pi: Tensor, log_pi0: Tensor, num: int, generator: torch.Generator) -> Tensor:
        """Component of each of ``num`` draws per row (B, num) int64, 0 = the inner model,
        k + 1 = slot k: systematic resampling with one uniform offset per row."""
        probs = torch.cat([log_pi0[:, None], log_pi], dim=1).exp()
        cdf = probs.cumsum(dim=1)
        cdf = cdf / cdf[:, -1:]
        u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64)
        pos = (torch.arange(num, dtype=torch.float64)[None, :] + u) / num
        return torch.searchsorted(cdf.cpu(), pos).clamp_max(probs.shape[1] - 1)

    def _draw(self, comps: tuple[Tensor, ...], num: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Component per draw (B, S), shuffled; vMF draws (B, S, 3) float64 (rows where the
        component is the inner model are filled later); counts of inner draws per row (B,).
        ``comps``: :meth:`components` of the embeddings."""
        mu, kappa, log_pi, log_pi0 = comps
        comp = self._allocate(log_pi.cpu(), log_pi0.cpu(), num, generator)
        # Shuffle each row: sample 0 must be a random draw (strategy "sample"), not a stratum.
        order = torch.argsort(torch.rand(comp.shape, generator=generator), dim=1)
        comp = torch.gather(comp, 1, order)
        k = (comp - 1).clamp_min(0).to(mu.device)
        m = torch.gather(mu, 1, k[..., None].expand(-1, -1, 3))
        kap = torch.gather(kappa, 1, k)
        u = torch.rand(comp.shape, generator=generator, dtype=torch.float64).to(mu.device)
        # Wood (1994) on S²: cos θ = 1 + log(u + (1 − u) e^{−2κ}) / κ, exact in float64.
        w = 1.0 + torch.log(u + (1.0 - u) * torch.exp(-2.0 * kap)) / kap
        w = w.clamp(-1.0, 1.0)
        v = torch.randn(*comp.shape, 3, generator=generator, dtype=torch.float64).to(mu.device)
        v = v - (v * m).sum(-1, keepdim=True) * m
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        x = w[..., None] * m + torch.sqrt((1.0 - w * w).clamp_min(0.0))[..., None] * v
        return comp.to(mu.device), x, (comp == 0).sum(dim=1)

    def sample_xyz(
        self, emb: Tensor, num_samples: int, *, generator: torch.Generator, guidance: float = 0.0, **options: Any
    ) -> Tensor:
        """Samples (B, S, 3) float32: each draw from its component (vMF exactly, the inner
        model by its own sampler with ``options``)."""
        return self._sample(emb, self.components(emb), num_samples, generator, guidance, options)[1].float()

    def _sample(
        self, emb: Tensor, comps: tuple[Tensor, ...], num: int, generator: torch.Generator, guidance: float, options: dict
    ) -> tuple[Tensor, Tensor]:
        """(component (B, S), samples (B, S, 3) float64); see :meth:`sample_xyz`."""
        options = {k: v for k, v in options.items() if k != "noise"}
        comp, x, n_inner = self._draw(comps, num, generator)
        most = int(n_inner.max())
        if most:
            y = self.inner.sample_xyz(emb[:, : self.parts_dim], most, generator=generator, guidance=guidance, **options)
            x = self._fill(x, comp == 0, y.double())
        return comp, x

    @staticmethod
    def _fill(x: Tensor, mask: Tensor, values: Tensor) -> Tensor:
        """Put the first n_b rows of ``values`` (B, M, ·) where ``mask`` (B, S) is true (n_b of them)."""
        rank = mask.long().cumsum(dim=1) - 1  # the j-th inner draw of a row takes values[:, j]
        src = torch.gather(values, 1, rank.clamp_min(0)[..., None].expand(-1, -1, values.shape[-1]))
        return torch.where(mask[..., None], src.to(x.dtype), x)

    def sample_with_log_prob_xyz(
        self,
        emb: Tensor,
        num_samples: int,
        *,
        generator: torch.Generator,
        guidance: float = 0.0,
        sample_steps: int = 64,
        **options: Any,
    ) -> tuple[Tensor, Tensor]:
        """Samples (B, S, 3) and log p(x | q) (B, S): inner draws carry log p_θ from the sampling
        solve; vMF draws get it from one likelihood solve of ``sample_steps`` steps."""
        options.pop("noise", None)
        parts = emb[:, : self.parts_dim]
        comps = self.components(emb)
        comp, x, n_inner = self._draw(comps, num_samples, generator)
        is_inner = comp == 0
        log_inner = torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)
        most = int(n_inner.max())
        if most:
            y, lp = self.inner.sample_with_log_prob_xyz(
                parts, most, generator=generator, guidance=guidance, sample_steps=sample_steps, **options
            )
            x = self._fill(x, is_inner, y.double())
            log_inner = self._fill(log_inner[..., None], is_inner, lp.double()[..., None])[..., 0]
        outer = ~is_inner
        n_outer = int(outer.sum(dim=1).max())
        if n_outer:
            # The vMF draws of each row, packed to the front, through one likelihood solve.
            order = torch.argsort((~outer).to(torch.int8), dim=1, stable=True)[:, :n_outer]
            pts = torch.gather(x, 1, order[..., None].expand(-1, -1, 3)).float()
            lik = {k: v for k, v in options.items() if k in ("divergence", "precision", "progress", "max_points")}
            lp = self.inner.log_prob_xyz(parts, pts, guidance=guidance, steps=sample_steps, **lik).double()
            back = torch.zeros_like(log_inner).scatter(1, order, lp)
            log_inner = torch.where(outer, back, log_inner)
        return x.float(), self._log_mixture(comps, x, log_inner)

    def predict(
        self,
        emb: Any,
        *,
        guidance: float | None = None,
        sample_steps: int | None = None,
        seed: int = 0,
        strategy: str | None = None,
        ensemble_size: int = 32,
        **options: Any,
    ) -> Any:
        """Point estimate (B, 2) degrees. ``"mbr"`` (the default) chooses among the samples
        *and the table's component centres* the point of highest expected GeoScore under the
        samples: a named town is answered at its coordinates, not at one draw of its kernel.
        Other strategies: :meth:`Method.predict`."""
        import numpy as np

        from globeflow.geometry.coords import xyz_to_latlon
        from globeflow.methods.base import as_embedding, geoscore_utility

        strategy = self.default_strategy if strategy is None else strategy
        if strategy != "mbr":
            return super().predict(
                emb, guidance=guidance, sample_steps=sample_steps, seed=seed, strategy=strategy,
                ensemble_size=ensemble_size, **options,
            )  # fmt: skip
        if not isinstance(ensemble_size, int) or ensemble_size < 2:
            raise ValueError(f"ensemble_size must be an integer >= 2 for strategy 'mbr', got {ensemble_size!r}")
        guidance = self.estimate_guidance(strategy) if guidance is None else guidance
        emb_t = as_embedding(emb, self.embedding_dim, device=self.device)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        if sample_steps is not None:
            options["sample_steps"] = sample_steps
        comps = self.components(emb_t)
        comp, x = self._sample(emb_t, comps, ensemble_size, generator, guidance, options)
        mu, _, log_pi, _ = comps
        # The utility is scored against the draws with each table draw at its component's
        # centre: a town's kernel (≤ 30 km) is nothing at the GeoScore's 1493 km scale, and
        # this way the town's own coordinates win rather than a draw near them.
        k = (comp - 1).clamp_min(0)
        at = torch.where((comp == 0)[..., None], x, torch.gather(mu, 1, k[..., None].expand(-1, -1, 3)))
        top = torch.topk(log_pi, min(ensemble_size, self.slots), dim=1)
        centres = torch.gather(mu, 1, top.indices[..., None].expand(-1, -1, 3))
        valid = torch.isfinite(top.values)
        cand = torch.cat([x, centres], dim=1).cpu().numpy()  # (B, S + C, 3)
        ok = torch.cat([torch.ones(x.shape[:2], dtype=torch.bool), valid.cpu()], dim=1).numpy()
        best = np.where(ok, geoscore_utility(cand, at.cpu().numpy()), -np.inf).argmax(axis=1)
        return xyz_to_latlon(cand[np.arange(cand.shape[0]), best])

    def trajectories(self, emb: Any, num: int = 24, *, sample_steps: int = 16, seed: int = 0) -> None:
        """None: a mixture has no single denoising path to draw."""
        return None
