"""The Conditional SirenNet-based UNet (CS-UNet) of LocDiffusion (paper 003, Sec. 4.5, Fig. 2).

C-Siren module (Fig. 2a), latent x (B, d_i), time embedding (B, d_T), image embedding (B, d_I):

    h_x = Linear(x),  h_I = Linear(e_I)                        (project latent and condition)
    (α_t, ε_t) = Linear(SiLU(time embedding))                   (time scale and shift)
    h = (1 + α_t) ⊙ h_x + ε_t                                   (unconditional denoising step)
    x' = sin(ω₀ · Linear(h + h_I))                              (condition added, sine activation)

CS-UNet (Fig. 2b): a contracting path of C-Siren modules halving the width from ``width`` down
to the bottleneck, an expanding path doubling it back, each expanding module's output added
to the contracting output of the same width (skip connections), and a linear read-out to the
latent dimension. The time step enters through the sinusoidal features of
:func:`~globeflow.nets.adaln_mlp.noise_level_features` and a small MLP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from globeflow.nets.adaln_mlp import noise_level_features

__all__ = ["CSUNet", "CSUNetConfig", "CSiren"]


@dataclass(frozen=True)
class CSUNetConfig:
    """Hyper-parameters of :class:`CSUNet` (paper Table 3: d = latent, d_I = 768, d_T = 200)."""

    latent_dim: int
    cond_dim: int
    width: int = 256
    depth: int = 3
    time_dim: int = 64
    dropout: float = 0.0
    w0: float = 1.0

    def __post_init__(self) -> None:
        for field in ("latent_dim", "cond_dim", "width", "depth", "time_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"network config: {field} must be a positive integer, got {value!r}")
        if self.time_dim % 2:
            raise ValueError(f"network config: time_dim must be even, got {self.time_dim}")
        if self.width >> (self.depth - 1) < 4:
            raise ValueError(
                f"network config: width {self.width} halved {self.depth - 1} times leaves a bottleneck under 4"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"network config: dropout must be in [0, 1), got {self.dropout}")
        if not self.w0 > 0:
            raise ValueError(f"network config: w0 must be positive, got {self.w0}")


class CSiren(nn.Module):
    """One C-Siren module (Fig. 2a): (B, d_i), (B, d_T), (B, d_I) -> (B, d_o)."""

    def __init__(self, d_in: int, d_out: int, d_time: int, d_cond: int, *, dropout: float, w0: float) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d_out)
        self.cond = nn.Linear(d_cond, d_out)
        self.time = nn.Linear(d_time, 2 * d_out)
        self.out = nn.Linear(d_out, d_out)
        self.drop = nn.Dropout(dropout)
        self.w0 = w0
        # Start with no time modulation ((1 + 0) h + 0): the module is first a plain Siren layer.
        nn.init.zeros_(self.time.weight)
        nn.init.zeros_(self.time.bias)

    def forward(self, x: Tensor, time: Tensor, cond: Tensor) -> Tensor:
        alpha, shift = self.time(time).chunk(2, dim=-1)
        h = torch.addcmul(shift, self.inp(x), 1.0 + alpha)
        h = h + self.cond(cond)
        return torch.sin(self.w0 * self.out(self.drop(h)))


class CSUNet(nn.Module):
    """x̂₀-predicting denoiser: latent (B, d), step level (B,) in [0, 1], embedding (B, d_I) -> (B, d)."""

    def __init__(self, config: CSUNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        widths = [c.width >> i for i in range(c.depth)]
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.time_dim), nn.SiLU(), nn.Linear(c.time_dim, c.time_dim))
        kw = {"dropout": c.dropout, "w0": c.w0}
        ins = [c.latent_dim] + widths[:-1]
        self.down = nn.ModuleList(CSiren(i, o, c.time_dim, c.cond_dim, **kw) for i, o in zip(ins, widths))
        self.up = nn.ModuleList(
            CSiren(widths[i + 1], widths[i], c.time_dim, c.cond_dim, **kw) for i in reversed(range(c.depth - 1))
        )
        self.head = nn.Linear(widths[0], c.latent_dim)

    def forward(self, x: Tensor, level: Tensor, emb: Tensor) -> Tensor:
        time = F.silu(self.time_mlp(noise_level_features(level.reshape(-1), self.config.time_dim)))
        skips = []
        h = x
        for module in self.down:
            h = module(h, time, emb)
            skips.append(h)
        skips.pop()  # the bottleneck output is h itself
        for module in self.up:
            h = module(h, time, emb) + skips.pop()
        return self.head(h)

    def config_dict(self) -> dict:
        return asdict(self.config)
