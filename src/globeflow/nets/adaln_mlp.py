"""The AdaLN residual MLP ψ of Appendix C (Fig. B).

    x_t (…, 3) ──Linear 3→d──▶ h ──[N × AdaLN block]──▶ AdaLN ──Linear d→3──▶ output (…, 3)
    c (B, D) ──Linear D→d──┐
    κ (B,)  ──sinusoid·1000 → MLP──┴─(+)─▶ condition (B, d) ─▶ per-block (scale γ, shift μ, gate g)

Each block: h ← h + g ⊙ MLP((1 + γ) ⊙ LN(h) + μ), MLP = Linear d→4d, GELU, Linear 4d→d,
with the gated skip of Appendix C. The layer layout mirrors the official implementation so
that d = 512, N = 12 with 1024-d embeddings has 36.0 M parameters and d = 256 has 9.2 M.

Samples of the same embedding share their condition, so the condition path (embedding map,
noise-level features and every AdaLN modulation) runs once per *embedding* and broadcasts over
the samples: ``x`` may carry a sample axis, (B, S, 3), next to a (B, D) embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaLNMLP", "AdaLNMLPConfig", "noise_level_features"]


@dataclass(frozen=True)
class AdaLNMLPConfig:
    """Hyper-parameters of :class:`AdaLNMLP` (stored in every run's ``config.json``)."""

    cond_dim: int
    dim: int = 512
    depth: int = 12
    expansion: int = 4
    input_dim: int = 3
    output_dim: int = 3
    #: Linear layers of the embedding map c -> d: 1 is the paper's single Linear; k > 1 is an
    #: MLP with k − 1 hidden layers of width d and SiLU (a deeper embedding path).
    cond_depth: int = 1

    def __post_init__(self) -> None:
        for field in ("cond_dim", "dim", "depth", "expansion", "input_dim", "output_dim", "cond_depth"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"network config: {field} must be a positive integer, got {value!r}")
        if self.dim % 8:
            raise ValueError(f"network config: dim must be a multiple of 8, got {self.dim}")


def noise_level_features(
    level: Tensor, num_channels: int, scale: float = 1000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Sinusoidal features of the noise level: (B,) -> (B, num_channels).

    Frequencies 10000^{-2i/C} of ``scale · level`` (cosines then sines), then standardised per
    row, the official recipe; the scale spreads κ ∈ [0, 1] over many periods so that nearby
    noise levels remain distinguishable.
    """
    half = num_channels // 2
    freqs = (1.0 / 10000.0) ** (2.0 * torch.arange(half, dtype=dtype, device=level.device) / num_channels)
    arg = torch.outer(level.to(dtype) * scale, freqs)
    feats = torch.cat([arg.cos(), arg.sin()], dim=-1)
    return (feats - feats.mean(dim=-1, keepdim=True)) / feats.std(dim=-1, keepdim=True)


#: Inference fast path of the block MLP on the CPU in float32: two oneDNN matrix products with
#: the bias and the exact (erf) GELU fused into the first (``torch.ops.mkldnn._linear_pointwise``,
#: the kernel behind torch.compile's CPU linear fusions). oneDNN's float32 GEMM is ~15-25 %
#: faster than the MKL GEMM behind ``nn.Linear`` at these shapes on AVX-512 CPUs; results
#: differ from the ATen path by float rounding only (summation order). Taken only without
#: autograd and without autocast (bfloat16 stays on autocast's ``nn.Linear``); set to ``False``
#: to always use the ATen path.
USE_ONEDNN_MLP = True
_onednn_status: bool | None = None


def _onednn_mlp_available() -> bool:
    """Whether ``torch.ops.mkldnn._linear_pointwise`` exists and agrees with ATen (probed once)."""
    global _onednn_status
    if _onednn_status is None:
        _onednn_status = False
        try:
            if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
                # Deterministic probe (no RNG: the global generator must not move).
                x = torch.linspace(-3.0, 3.0, 4 * 16).reshape(4, 16)
                w = torch.linspace(-0.5, 0.5, 8 * 16).reshape(8, 16).flip(0)
                b = torch.linspace(-0.2, 0.2, 8)
                with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):
                    out = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
                    ref = nn.functional.gelu(nn.functional.linear(x, w, b))
                _onednn_status = bool(out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-5))
        except Exception:  # noqa: BLE001 - any failure (op missing, no oneDNN): the portable path
            _onednn_status = False
    return _onednn_status


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active on ``device_type`` (None when autocast is off)."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        on = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not on:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class _Block(nn.Module):
    def __init__(self, dim: int, expansion: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), nn.Linear(dim * expansion, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        # The block starts as the identity (zero last layer), as in DiT: deep stacks train stably.
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: Tensor, mod: Tensor) -> Tensor:
        """``h`` (B, S, d); ``mod`` (B, 1, 3d) = (γ, μ, g) of this block."""
        gamma, mu, gate = mod.chunk(3, dim=-1)
        # (1 + γ) ⊙ LN(h) + μ and h + g ⊙ MLP(·) as one fused multiply-add each: one pass over
        # the (B, S, d) activations instead of two (same values up to float rounding).
        x = torch.addcmul(mu, self.norm(h), 1.0 + gamma)
        # Under bfloat16 autocast the MLP runs in bfloat16 but the residual stream h stays
        # float32 (addcmul promotes to h's dtype): the skip path then carries the coordinates
        # at full precision.
        return torch.addcmul(h, self._mlp(x), gate).to(h.dtype)

    def _mlp(self, x: Tensor) -> Tensor:
        up, act, down = self.mlp
        if (
            USE_ONEDNN_MLP
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and up.weight.dtype == torch.float32
            and down.weight.dtype == torch.float32
            and isinstance(act, nn.GELU)
            and act.approximate == "none"
            and not torch.is_grad_enabled()
            and not _cpu_autocast_enabled()
            and _onednn_mlp_available()
        ):
            lp = torch.ops.mkldnn._linear_pointwise
            y = lp(x.reshape(-1, x.shape[-1]), up.weight, up.bias, "gelu", [], "none")
            y = lp(y, down.weight, down.bias, "none", [], "")
            return y.view(*x.shape[:-1], y.shape[-1])
        return self.mlp(x)


def _low_weight(layer: nn.Linear, low: torch.dtype) -> Tensor:
    """``layer.weight`` in ``low``, cast once and kept until the weight changes (its version
    counter moves): a likelihood solve multiplies by the same weights ~30 times, and the casts
    took ~10% of an answer on a CPU."""
    w = layer.weight
    key = (low, w.device, w.data_ptr(), w._version)
    cached = getattr(layer, "_globeflow_low_weight", None)
    if cached is None or cached[0] != key:
        cached = (key, w.detach().to(low))
        layer._globeflow_low_weight = cached  # not a parameter nor a buffer: never saved
    return cached[1]


def _linear_primal_bias(z: Tensor, layer: nn.Linear, low: torch.dtype | None = None) -> Tensor:
    """``layer`` on a (…, 1 + K, n) primal+tangents stack: the bias goes to the primal row only.

    ``low`` (e.g. bfloat16): the product runs in that dtype, the result comes back in z's."""
    if low is None:
        out = F.linear(z, layer.weight)
    else:
        out = F.linear(z.to(low), _low_weight(layer, low)).to(z.dtype)
    out[..., 0, :] += layer.bias
    return out


def _layer_norm_jvp(z: Tensor, eps: float) -> Tensor:
    """Affine-free LayerNorm of the primal row and its derivative along each tangent row.

    n = (h − mean h)/σ with σ = √(var h + eps); dn = (dh_c − n · mean(n ⊙ dh_c))/σ where dh_c
    is the centred tangent.
    """
    out = z - z.mean(dim=-1, keepdim=True)  # centred primal and tangents
    rstd = torch.rsqrt(out[..., :1, :].pow(2).mean(dim=-1, keepdim=True) + eps)
    out.mul_(rstd)  # primal row: n; tangent rows: dh_c / σ
    n = out[..., :1, :]
    proj = (out[..., 1:, :] * n).mean(dim=-1, keepdim=True)
    out[..., 1:, :].sub_(n * proj)
    return out


class AdaLNMLP(nn.Module):
    """ψ(x_t | c, κ): coordinates in R³ conditioned on an embedding and a noise level.

    ``forward(x, emb, level)``: ``x`` (B, 3) or (B, S, 3); ``emb`` (B, D); ``level`` (B,) or a
    scalar tensor shared by the batch -> output with the shape of ``x`` (…, output_dim).
    """

    def __init__(self, config: AdaLNMLPConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.time_channels = d // 4
        self.time_mlp = nn.Sequential(nn.Linear(d // 4, d), nn.SiLU(), nn.Linear(d, d))
        if config.cond_depth == 1:
            self.cond_mapper: nn.Module = nn.Linear(config.cond_dim, d)
        else:
            layers: list[nn.Module] = [nn.Linear(config.cond_dim, d)]
            for _ in range(config.cond_depth - 1):
                layers += [nn.SiLU(), nn.Linear(d, d)]
            self.cond_mapper = nn.Sequential(*layers)
        self.input_mapper = nn.Linear(config.input_dim, d)
        self.blocks = nn.ModuleList(_Block(d, config.expansion) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final_linear = nn.Linear(d, config.output_dim)

    # -- condition path: once per embedding (and noise level) -------------------------------
    def embed_condition(self, emb: Tensor) -> Tensor:
        """Embedding part of the condition: (B, D) -> (B, d). Independent of the noise level."""
        return self.cond_mapper(emb)

    def time_embedding(self, level: Tensor) -> Tensor:
        """The noise level's embedding T(κ): level (L,) or scalar -> (L, d)."""
        dtype = self.time_mlp[0].weight.dtype
        return self.time_mlp(noise_level_features(level.reshape(-1), self.time_channels, dtype=dtype))

    def condition_activation(self, cond_emb: Tensor, level: Tensor) -> Tensor:
        """SiLU(c + T(κ)), the input of every AdaLN map: ``cond_emb`` (B, d), level (B,) or scalar -> (B, d).

        The noise level enters the network only through T(κ), and the modulations are affine in
        this activation (:meth:`modulations_from_activation`): that is what lets the split
        likelihood solver (:mod:`globeflow.solvers.split`) low-pass the κ-dependence exactly.
        """
        return F.silu(cond_emb + self.time_embedding(level))

    def modulations_from_activation(self, act: Tensor) -> tuple[list[Tensor], Tensor]:
        """AdaLN parameters from :meth:`condition_activation`: (B, d) -> ([N × (B, 1, 3d)], (B, 1, 2d))."""
        act = act.unsqueeze(1)  # (B, 1, d): broadcasts over the sample axis
        # Every AdaLN map is SiLU then Linear: the SiLU of the shared condition is computed once.
        return [block.ada[1](act) for block in self.blocks], self.final_ada[1](act)

    def modulations(self, cond_emb: Tensor, level: Tensor) -> tuple[list[Tensor], Tensor]:
        """AdaLN parameters for every block and the head.

        ``cond_emb`` (B, d) from :meth:`embed_condition`; ``level`` (B,) or scalar.
        Returns ([N × (B, 1, 3d)], (B, 1, 2d)).
        """
        return self.modulations_from_activation(self.condition_activation(cond_emb, level))

    # -- coordinate path: once per sample -------------------------------------------------
    def forward_with(self, x: Tensor, mods: list[Tensor], head: Tensor) -> Tensor:
        """Coordinate path given precomputed :meth:`modulations`: ``x`` (B, S, 3) -> (B, S, 3)."""
        # The 3 → d and d → 3 maps are tiny; keeping them out of autocast avoids rounding the
        # input coordinates (and the output velocity) to bfloat16's 8 bits of mantissa.
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = self.input_mapper(x.to(self.input_mapper.weight.dtype))
        for block, mod in zip(self.blocks, mods):
            h = block(h, mod)
        scale, shift = head.to(self.final_linear.weight.dtype).chunk(2, dim=-1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = (1.0 + scale) * self.final_norm(h) + shift
            return self.final_linear(h)

    def forward_with_jvp(self, x: Tensor, tangents: Tensor, mods: list[Tensor], head: Tensor) -> tuple[Tensor, Tensor]:
        """The output and its directional derivatives along K input directions, in one pass.

        ``x`` (B, S, 3), ``tangents`` (B, S, K, 3) -> (output (B, S, 3), J·tangents (B, S, K, 3)).

        Forward-mode differentiation written out by hand: the primal activations and their K
        tangents travel as one (B, S, 1 + K, ·) tensor, so every matrix product of the network
        is one GEMM over (1 + K)× the rows, and no autograd graph is built (this runs under
        ``torch.inference_mode``). For the divergence on S² two tangents suffice (the tangent
        plane), three in R³; a Hutchinson probe needs one. It runs in the weights' dtype; under
        a bfloat16 autocast only the block MLPs' matrix products (almost all the FLOPs) run in
        bfloat16, while LayerNorms, the residual stream, the 3 → d / d → 3 maps and the
        divergence stay in float32 (its error on log p: ``docs/benchmarks.md``).
        """
        low = _autocast_dtype(x.device.type)  # read before autocast is switched off below
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._forward_with_jvp(x, tangents, mods, head, low)

    def _forward_with_jvp(self, x, tangents, mods, head, low: torch.dtype | None) -> tuple[Tensor, Tensor]:
        dtype = self.input_mapper.weight.dtype
        z = torch.cat([x.unsqueeze(-2), tangents], dim=-2).to(dtype)  # (B, S, 1+K, 3)
        h = _linear_primal_bias(z, self.input_mapper)
        for block, mod in zip(self.blocks, mods):
            gamma, mu, gate = mod.to(dtype).unsqueeze(-2).chunk(3, dim=-1)  # (B, 1, 1, d) each
            u = _layer_norm_jvp(h, block.norm.eps)
            u = u * (1.0 + gamma)
            u[..., 0, :] += mu[..., 0, :]
            up, _, down = block.mlp
            a = _linear_primal_bias(u, up, low)
            a0 = a[..., :1, :]
            # d/da GELU(a) = Φ(a) + a φ(a) (the exact, erf-based GELU of nn.GELU()).
            cdf = torch.erf(a0 * 0.7071067811865476).add_(1.0).mul_(0.5)
            primal = a0 * cdf
            # Tangent rows are scaled by the derivative in place; then the primal row is set.
            a.mul_(torch.exp(-0.5 * a0 * a0).mul_(0.3989422804014327).mul_(a0).add_(cdf))
            a[..., :1, :] = primal
            h = torch.addcmul(h, _linear_primal_bias(a, down, low), gate)
        scale, shift = head.to(dtype).unsqueeze(-2).chunk(2, dim=-1)
        u = _layer_norm_jvp(h, self.final_norm.eps) * (1.0 + scale)
        u[..., 0, :] += shift[..., 0, :]
        out = _linear_primal_bias(u, self.final_linear)
        return out[..., 0, :], out[..., 1:, :]

    def forward(self, x: Tensor, emb: Tensor, level: Tensor) -> Tensor:
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(1)
        mods, head = self.modulations(self.embed_condition(emb), level)
        out = self.forward_with(x, mods, head)
        return out.squeeze(1) if squeeze else out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        out = asdict(self.config)
        if out["cond_depth"] == 1:  # the default is left out: configs of earlier runs stay identical
            del out["cond_depth"]
        return out
