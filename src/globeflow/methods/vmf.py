"""von Mises–Fisher regression (paper 000, Eq. 16) and the network the vMF heads share.

The AdaLN backbone ψ of the generative methods (Appendix C, Fig. B) is reused as is; as the
appendix prescribes, its inputs that have no meaning here (the noisy coordinate x_t and the
noise level κ(t)) are replaced by learnable parameters, and the output layer predicts, per
component k = 1..K, a mean direction μ_k = m_k/|m_k| (L2 normalisation), a concentration κ_k
(softplus) and, for K > 1, a mixture logit (softmax weights; see ``vmf_mixture``).

Loss: the negative log-likelihood of the true location, −log vMF(x₀ | μ, κ) (Eq. 16, in nats
rather than bits: the same minimiser). Density and sampling are exact (closed form, Wood's
algorithm); the point estimate is μ (for a mixture: μ of the heaviest component).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from globeflow.geometry.coords import xyz_to_latlon
from globeflow.geometry.vmf import vmf_log_prob, vmf_sample
from globeflow.methods.base import ModuleMethod, as_embedding
from globeflow.nets.adaln_mlp import AdaLNMLP, AdaLNMLPConfig

__all__ = ["VMFHeadNet", "VMFMixtureParams", "VMFRegression"]

#: Concentrations are kept in [KAPPA_MIN, KAPPA_MAX]: below 1e-6 the vMF is uniform to float
#: precision; 1e8 is a ~0.6 km spread, finer than any geolocation label.
KAPPA_MIN, KAPPA_MAX = 1e-6, 1e8
KAPPA_LINKS = ("softplus", "exp")


class VMFHeadNet(nn.Module):
    """Embedding (B, D) -> raw head outputs (B, K, 5): (m_k ∈ R³, κ pre-activation, logit).

    The backbone is :class:`AdaLNMLP`; its coordinate input and noise level are learnable
    constants (Appendix C, "missing inputs ... replaced by learnable parameters").
    """

    def __init__(self, config: AdaLNMLPConfig, components: int) -> None:
        super().__init__()
        self.components = components
        self.backbone = AdaLNMLP(config)
        self.x_in = nn.Parameter(torch.randn(3) / math.sqrt(3.0))
        self.level = nn.Parameter(torch.full((), 0.5))

    def forward(self, emb: Tensor) -> Tensor:
        b = emb.shape[0]
        x = self.x_in.expand(b, 1, 3)
        out = self.backbone(x, emb, self.level.expand(b))  # (B, 1, 5K)
        return out.reshape(b, self.components, 5)


class VMFMixtureParams:
    """Per-embedding mixture parameters: ``mu`` (B, K, 3) unit, ``kappa`` (B, K), ``log_w`` (B, K)."""

    def __init__(self, mu: Tensor, kappa: Tensor, log_w: Tensor) -> None:
        self.mu, self.kappa, self.log_w = mu, kappa, log_w

    def log_prob(self, x: Tensor) -> Tensor:
        """log Σ_k w_k vMF(x | μ_k, κ_k) (Eq. 17's argument): ``x`` (B, P, 3) -> (B, P)."""
        comp = vmf_log_prob(x[:, :, None, :], self.mu[:, None], self.kappa[:, None])  # (B, P, K)
        return torch.logsumexp(comp + self.log_w[:, None], dim=-1)

    def mode_xyz(self) -> Tensor:
        """Mean of the heaviest component: (B, 3)."""
        k = self.log_w.argmax(dim=-1)
        return self.mu[torch.arange(self.mu.shape[0], device=self.mu.device), k]

    def sample(self, num_samples: int, generator: torch.Generator) -> Tensor:
        """Exact samples (B, S, 3): a component by its weight, then Wood's vMF sampler.

        Drawn in float64 on the generator's device, so results do not depend on where the
        network ran.
        """
        dev = generator.device
        b = self.log_w.shape[0]
        w = self.log_w.detach().to(dev, torch.float64).softmax(dim=-1)
        comp = torch.multinomial(w, num_samples, replacement=True, generator=generator)  # (B, S)
        rows = torch.arange(b, device=dev)[:, None]
        mu = self.mu.detach().to(dev, torch.float64)[rows, comp].reshape(-1, 3)
        kappa = self.kappa.detach().to(dev, torch.float64)[rows, comp].reshape(-1)
        x = vmf_sample(mu, kappa, 1, generator=generator).reshape(b, num_samples, 3)
        return x.to(self.mu.device, torch.float32)


class VMFRegression(ModuleMethod):
    """vMF regression (K = 1, ``vmf``); :class:`~globeflow.methods.vmf_mixture.VMFMixture` sets K > 1."""

    name: ClassVar[str] = "vmf"
    default_strategy: ClassVar[str] = "mode"  # predict's own estimate
    density_space: ClassVar[str | None] = "S2"
    option_names: ClassVar[tuple[str, ...]] = ("width", "depth", "expansion", "kappa_link")
    default_components: ClassVar[int] = 1

    def __init__(
        self,
        embedding_dim: int,
        *,
        width: int = 512,
        depth: int = 12,
        expansion: int = 4,
        kappa_link: str = "softplus",
        components: int | None = None,
    ) -> None:
        super().__init__(embedding_dim)
        components = self.default_components if components is None else components
        if not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be a positive integer, got {components!r}")
        if kappa_link not in KAPPA_LINKS:
            raise ValueError(f"kappa_link must be one of {KAPPA_LINKS}, got {kappa_link!r}")
        self.components = components
        self.kappa_link = kappa_link
        cfg = AdaLNMLPConfig(
            cond_dim=embedding_dim, dim=width, depth=depth, expansion=expansion, output_dim=5 * components
        )
        self.net = VMFHeadNet(cfg, components)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _options(self) -> dict:
        c = self.net.backbone.config
        out = {"width": c.dim, "depth": c.depth, "expansion": c.expansion, "kappa_link": self.kappa_link}
        if "components" in self.option_names:
            out["components"] = self.components
        return out

    # -- the distribution --------------------------------------------------------------------
    def params(self, emb: Tensor, net: nn.Module | None = None) -> VMFMixtureParams:
        """Mixture parameters for embeddings (B, D)."""
        raw = (self.net if net is None else net)(emb).float()
        m, kraw, logit = raw[..., :3], raw[..., 3], raw[..., 4]
        mu = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.kappa_link == "softplus":
            kappa = F.softplus(kraw)
        else:  # exp: the log-concentration is linear in the features (for κ spanning decades)
            kappa = torch.exp(kraw.clamp(math.log(KAPPA_MIN), math.log(KAPPA_MAX)))
        kappa = kappa.clamp(KAPPA_MIN, KAPPA_MAX)
        log_w = logit.log_softmax(dim=-1) if self.components > 1 else torch.zeros_like(logit)
        return VMFMixtureParams(mu, kappa, log_w)

    def loss(self, x0: Tensor, emb: Tensor, generator: torch.Generator, net: nn.Module | None = None) -> Tensor:
        """Mean NLL in nats, −log Σ_k w_k vMF(x₀ | μ_k, κ_k) (Eqs. 16, 17): x0 (B, 3), emb (B, D)."""
        return -self.params(emb, net).log_prob(x0[:, None, :]).mean()

    def log_prob_xyz(self, emb: Tensor, x: Tensor, *, guidance: float = 0.0, **options: Any) -> Tensor:
        """Exact log-density per steradian: emb (B, D), x (B, P, 3) -> (B, P). ``guidance`` is ignored."""
        with torch.inference_mode():
            return self.params(emb).log_prob(x)

    def sample_xyz(self, emb: Tensor, num_samples: int, *, generator: torch.Generator, **options: Any) -> Tensor:
        """Exact samples (B, S, 3); sampling options of the generative methods are ignored."""
        with torch.inference_mode():
            return self.params(emb).sample(num_samples, generator)

    def predict(self, emb: Any, *, strategy: str | None = None, **options: Any) -> np.ndarray:
        """Point estimate (B, D) -> (B, 2) degrees: μ (of the heaviest component) by default.

        ``strategy="sample"`` / ``"ensemble"`` behave as for every method.
        """
        strategy = self.default_strategy if strategy is None else strategy
        if strategy != "mode":
            return super().predict(emb, strategy=strategy, **options)
        emb_t = as_embedding(emb, self.embedding_dim, device=self.device)
        with torch.inference_mode():
            return xyz_to_latlon(self.params(emb_t).mode_xyz())
