"""A closed-form test method for the answers: p(y | c) = vMF(μ = c / |c|, κ)."""

from __future__ import annotations

import torch

from globeflow.geometry.vmf import vmf_log_prob, vmf_sample
from globeflow.methods.base import Method


class FixedVMF(Method):
    """Test double with an exact density: embeddings (B, 3) are the mean directions (D = 3)."""

    name = "fixed_vmf"
    density_space = "S2"

    def __init__(self, kappa: float) -> None:
        self.kappa = kappa
        self.embedding_dim = 3

    def _mu(self, emb):
        return (emb / emb.norm(dim=-1, keepdim=True)).double()

    def sample_xyz(self, emb, num_samples, *, generator, **options):
        kappa = torch.full((emb.shape[0],), self.kappa, dtype=torch.float64)
        return vmf_sample(self._mu(emb), kappa, num_samples, generator=generator)

    def log_prob_xyz(self, emb, x, *, guidance=0.0, **options):
        return vmf_log_prob(x.double(), self._mu(emb)[:, None], torch.tensor(self.kappa, dtype=torch.float64))

    def config(self) -> dict:
        return {"method": self.name, "kappa": self.kappa}
