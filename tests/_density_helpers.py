"""Closed-form test densities shared by the density, region and map tests."""

import numpy as np
import torch

from globeflow.geometry import latlon_to_xyz, vmf_log_prob, vmf_sample


def vmf_mixture(centres, kappas, weights):
    """Closed-form log-density (P, 3) -> (P,) and an exact sampler of a vMF mixture."""
    lat, lon = np.array(centres, dtype=np.float64).T
    mu = torch.as_tensor(latlon_to_xyz(lat, lon))
    k = torch.as_tensor(kappas, dtype=torch.float64)
    logw = torch.as_tensor(weights, dtype=torch.float64).log()

    def log_prob(xyz):
        x = torch.as_tensor(np.asarray(xyz, dtype=np.float64))[:, None, :]
        return torch.logsumexp(vmf_log_prob(x, mu[None], k[None]) + logw, dim=1).numpy()

    def sample(n, seed=0):
        g = torch.Generator().manual_seed(seed)
        comp = torch.multinomial(logw.exp(), n, replacement=True, generator=g)
        s = vmf_sample(mu, k, n, generator=g)
        return s[comp, torch.arange(n)].numpy()

    return log_prob, sample
