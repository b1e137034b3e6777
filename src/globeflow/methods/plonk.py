"""The published PLONK models (diff-plonk) as globeflow methods: their network convention and
their sampler, reproduced exactly (:mod:`globeflow.hub` finds and loads the checkpoints).

Conventions of the official code:

* The official level is the *signal* level γ = 1 − κ (γ = 0 noise, γ = 1 data), with
  ``SigmoidScheduler(start=-7, end=3)``: γ(t) = 1 − κ(t) for globeflow's Eq. 15 with
  α = −7, β = 3 (docs/core.md). The network sees sinusoidal features of 1000·γ.
* Flow matching and RFM networks predict dx/dγ = −dx/dκ; the diffusion network predicts ε
  for x = √γ x₀ + √(1−γ) ε, which is globeflow's Eq. 1 with κ = 1 − γ.

:class:`PlonkAdaLNMLP` is globeflow's network with exactly these two changes (level 1 − κ,
output sign), so everything built on a network in κ (samplers, guidance, densities, even
fine-tuning with globeflow's losses) works unchanged. The methods add one sampler,
``solver="plonk"``, that is the official sampler step for step (on the official float32
γ grid): RFM x ← proj(x + Δγ·v), flow x ← x + Δγ·v, diffusion DDIM with x̂₀ clamped to
[−1, 1]. The default solvers are globeflow's (exp-map Euler on S² for RFM).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from globeflow.geometry.sphere import project
from globeflow.io import CheckpointError
from globeflow.methods.diffusion import Diffusion
from globeflow.methods.flow import FlowMatching
from globeflow.methods.rfm import RiemannianFlowMatching
from globeflow.nets.adaln_mlp import AdaLNMLP, AdaLNMLPConfig
from globeflow.paths.schedules import make_schedule

__all__ = [
    "OFFICIAL_SCHEDULE",
    "PLONK_METHODS",
    "PlonkAdaLNMLP",
    "PlonkDiffusion",
    "PlonkFlowMatching",
    "PlonkRFM",
    "official_gamma_grid",
    "official_to_globeflow_state",
    "plonk_class",
    "plonk_schedule",
]

#: The official SigmoidScheduler of PlonkPipeline (start, end, tau, clip_min).
OFFICIAL_SCHEDULE = {"start": -7.0, "end": 3.0, "tau": 1.0, "clip_min": 1e-9}


# ------------------------------------------------------------------------------ network
class PlonkAdaLNMLP(AdaLNMLP):
    """The official ``GeoAdaLNMLP`` exposed in globeflow's convention.

    ``forward(x, emb, κ) = sign · f(x, emb, γ = 1 − κ)`` where f is the official network
    (identical layers, see :func:`official_to_globeflow_state`) and ``sign`` is −1 for
    velocity networks (dx/dκ = −dx/dγ), +1 for ε-prediction.
    """

    def __init__(self, config: AdaLNMLPConfig, output_sign: float) -> None:
        super().__init__(config)
        if output_sign not in (-1.0, 1.0):
            raise ValueError(f"output_sign must be ±1, got {output_sign}")
        self.output_sign = float(output_sign)

    # native = the official convention: level γ, official output
    def modulations_native(self, cond_emb: Tensor, gamma: Tensor) -> tuple[list[Tensor], Tensor]:
        return self.modulations_from_activation(F.silu(cond_emb + AdaLNMLP.time_embedding(self, gamma)))

    def forward_native(self, x: Tensor, mods: list[Tensor], head: Tensor) -> Tensor:
        return AdaLNMLP.forward_with(self, x, mods, head)

    # globeflow's convention (AdaLNMLP.modulations goes through this embedding)
    def time_embedding(self, level: Tensor) -> Tensor:
        return AdaLNMLP.time_embedding(self, 1.0 - torch.as_tensor(level))

    def forward_with(self, x: Tensor, mods: list[Tensor], head: Tensor) -> Tensor:
        out = self.forward_native(x, mods, head)
        return out if self.output_sign > 0 else -out

    def forward_with_jvp(self, x: Tensor, tangents: Tensor, mods: list[Tensor], head: Tensor) -> tuple[Tensor, Tensor]:
        # The likelihood's Jacobian-vector products carry the same sign as the output.
        out, jvp = AdaLNMLP.forward_with_jvp(self, x, tangents, mods, head)
        return (out, jvp) if self.output_sign > 0 else (-out, -jvp)


def official_to_globeflow_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a ``GeoAdaLNMLP`` state dict onto :class:`AdaLNMLP` names.

    The fixed frequency buffer of the official time embedding is checked, not copied:
    globeflow computes the same frequencies (10000^(−2i/C)).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "time_embedder.encode_time.freqs":
            c = 2 * value.numel()
            expected = (1.0 / 10000.0) ** (2.0 * torch.arange(c // 2, dtype=torch.float32) / c)
            if not torch.allclose(value.float(), expected, rtol=1e-6, atol=0.0):
                raise CheckpointError(
                    f"checkpoint: {key} holds frequencies other than 10000^(-2i/C); not a PLONK GeoAdaLNMLP"
                )
            continue
        name = key.replace("time_embedder.map_time.", "time_mlp.")
        name = name.replace("initial_mapper.", "input_mapper.")
        name = name.replace(".ada_map.", ".ada.")
        name = name.replace("final_adaln.", "final_ada.")
        # The official block MLP is Linear, GELU, Dropout(0), Linear: index 3 is globeflow's 2.
        name = name.replace(".mlp.3.", ".mlp.2.")
        out[name] = value
    return out


# ------------------------------------------------------------------------------ sampling
def official_gamma_grid(num_steps: int, *, device: torch.device | str = "cpu") -> Tensor:
    """The official sampler's γ grid (float32, as ``SigmoidScheduler(-7, 3)`` computes it).

    γ_i = γ(s_i), s_i = 1 − i/N: from ≈ 0 (noise, clamped to 1e-9) to 1 (data).
    """
    start, end, tau, clip = (OFFICIAL_SCHEDULE[k] for k in ("start", "end", "tau", "clip_min"))
    v_start = torch.sigmoid(torch.tensor(start / tau))
    v_end = torch.sigmoid(torch.tensor(end / tau))
    steps = 1 - torch.arange(num_steps + 1, dtype=torch.float32) / num_steps
    gamma = (-torch.sigmoid((steps * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    return gamma.clamp(min=clip, max=1.0).to(device)


class _PlonkField:
    """Guided field in both conventions: ``(x, κ)`` -> dx/dκ (or ε) and ``native(x, γ)``."""

    def __init__(self, net: PlonkAdaLNMLP, emb: Tensor, guidance: float) -> None:
        self.net = net
        self.guidance = guidance
        cond = net.embed_condition(emb)
        if guidance != 0.0:
            null = net.embed_condition(torch.zeros_like(emb[:1])).expand_as(cond)
            cond = torch.cat([cond, null], dim=0)
        self.cond = cond

    def native(self, x: Tensor, gamma: Tensor) -> Tensor:
        """The official network output with the official guidance formula (Eq. 13)."""
        mods, head = self.net.modulations_native(self.cond, gamma)
        if self.guidance == 0.0:
            return self.net.forward_native(x, mods, head)
        out_c, out_u = self.net.forward_native(torch.cat([x, x], dim=0), mods, head).chunk(2, dim=0)
        return out_c * (1.0 + self.guidance) - out_u * self.guidance

    def __call__(self, x: Tensor, kappa: Tensor) -> Tensor:
        out = self.native(x, 1.0 - torch.as_tensor(kappa))
        return out if self.net.output_sign > 0 else -out


class _PlonkMixin:
    """Shared by the three PLONK methods: the network, the schedule and the ``plonk`` solver."""

    convention = "plonk"
    output_sign: float = -1.0

    def __init__(
        self, net_config: AdaLNMLPConfig, schedule=None, *, cond_drop: float = 0.1, plonk: dict | None = None
    ) -> None:
        super().__init__(net_config, schedule or plonk_schedule(), cond_drop=cond_drop)
        # Same layers and parameter names as AdaLNMLP; only the level and the sign differ.
        self.net = PlonkAdaLNMLP(net_config, self.output_sign)
        #: Provenance: hub repository, the encoder the model expects, the source directory.
        self.plonk = dict(plonk or {})

    def config(self) -> dict:
        return {**super().config(), "convention": "plonk", "plonk": self.plonk}

    @classmethod
    def from_config(cls, config: dict) -> _PlonkMixin:
        """Rebuild from ``config()`` (``"convention": "plonk"``): the official schedule unless
        the config names one, and the provenance."""
        try:
            net = AdaLNMLPConfig(**config["net"])
            schedule = dict(config.get("schedule", {}))
        except (KeyError, TypeError) as err:
            raise ValueError(f"model config: missing or malformed field {err}") from None
        sched = make_schedule(schedule.pop("name"), **schedule) if schedule else plonk_schedule()
        return cls(net, sched, cond_drop=float(config.get("cond_drop", 0.1)), plonk=config.get("plonk"))

    def guided_field(self, emb: Tensor, guidance: float) -> _PlonkField:
        return _PlonkField(self.net, emb, guidance)

    def _denoise(self, field, noise: Tensor, *, num_steps: int, solver: str, trajectory) -> Tensor:
        if solver != "plonk":
            return super()._denoise(field, noise, num_steps=num_steps, solver=solver, trajectory=trajectory)
        gammas = official_gamma_grid(num_steps, device=noise.device)
        x = noise.float()
        if trajectory is not None:
            trajectory.append(x)
        for i in range(num_steps):
            x = self._official_step(field, x, gammas[i], gammas[i + 1])
            if trajectory is not None:
                trajectory.append(x)
        return project(x)

    def _official_step(self, field: _PlonkField, x: Tensor, g0: Tensor, g1: Tensor) -> Tensor:
        raise NotImplementedError


def plonk_schedule():
    """globeflow's Eq. 15 with α = −7, β = 3: κ(t) = 1 − γ_official(t)."""
    return make_schedule("skewed_sigmoid", alpha=OFFICIAL_SCHEDULE["start"], beta=OFFICIAL_SCHEDULE["end"])


class PlonkRFM(_PlonkMixin, RiemannianFlowMatching):
    """A published PLONK Riemannian flow-matching model."""

    solvers: ClassVar[dict[str, int]] = {**RiemannianFlowMatching.solvers, "plonk": 1}
    output_sign = -1.0

    def _official_step(self, field, x, g0, g1):
        # riemannian_flow_sampler: x_next = projx(x + dγ · v) with the raw (unprojected) v.
        return F.normalize(x + (g1 - g0) * field.native(x, g0), dim=-1)


class PlonkFlowMatching(_PlonkMixin, FlowMatching):
    """A published PLONK flow-matching (R³) model."""

    solvers: ClassVar[dict[str, int]] = {**FlowMatching.solvers, "plonk": 1}
    output_sign = -1.0

    def _official_step(self, field, x, g0, g1):
        return x + (g1 - g0) * field.native(x, g0)


class PlonkDiffusion(_PlonkMixin, Diffusion):
    """A published PLONK diffusion (R³, ε-prediction) model."""

    solvers: ClassVar[dict[str, int]] = {**Diffusion.solvers, "plonk": 1}
    output_sign = 1.0

    def _official_step(self, field, x, g0, g1):
        # ddim_sampler: x̂₀ from ε̂, clamped to [-1, 1]; ε re-derived from the clamped x̂₀.
        eps = field.native(x, g0)
        x0 = ((x - torch.sqrt(1 - g0) * eps) / torch.sqrt(g0)).clamp(-1, 1)
        eps = (x - torch.sqrt(g0) * x0) / torch.sqrt(1 - g0)
        return torch.sqrt(g1) * x0 + torch.sqrt(1 - g1) * eps


PLONK_METHODS = {"rfm": PlonkRFM, "flow": PlonkFlowMatching, "diffusion": PlonkDiffusion}


def plonk_class(name: str) -> type[_PlonkMixin]:
    """The PLONK class of method ``name`` (``rfm``, ``flow``, ``diffusion``)."""
    if name not in PLONK_METHODS:
        raise ValueError(f"method: unknown PLONK method {name!r}; choose one of {sorted(PLONK_METHODS)}")
    return PLONK_METHODS[name]
