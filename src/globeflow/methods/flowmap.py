"""A distilled few-step sampler for RFM on S²: the teacher's guided flow map, learned.

The flow map of the probability-flow ODE dx/dκ = P_x ψ̂_ω(x, κ) (ψ̂_ω the teacher's field with
classifier-free guidance ω, Eq. 13) sends a state at noise level κ_s to the state of the same
trajectory at κ_t: X_{s,t}. With it, sampling is N jumps along the teacher's time grid instead of
N ODE steps, and one jump from κ = 1 to κ = 0 is exact in principle. This module learns it on S²
with the parameterisation

    X_{s,t}(x) = exp_x((κ_t − κ_s) · P_x u_θ(x, κ_s, κ_t, ω | c)),

the manifold form of the flow map of Boffi, Albergo & Vanden-Eijnden ("Flow map matching",
2024, X_{s,t}(x) = x + (t − s) v_{s,t}(x)) and of MeanFlow's average velocity (Geng et al. 2025,
u(z, r, t)); the exponential map (as in the Riemannian flow-map / consistency models of 2025)
keeps every sample on the sphere exactly, and X_{s,s} = id by construction. u_θ has ψ's
architecture plus two more AdaLN conditions, the target level κ_t and the guidance ω; it starts
as a copy of the teacher with those extra inputs zeroed, i.e. as the teacher's one-step Euler
map, so distillation only has to learn the correction.

Guidance is folded in: u_θ is conditioned on ω and trained on the *guided* teacher's
trajectories, so one network evaluation per jump replaces the teacher's two (conditional and
null) per step. Training is in :mod:`globeflow.training.distill`.

Exact densities (``log_prob``, ``sample_with_log_prob``, answers, HPD regions) still come from
the instantaneous field: the teacher's network is stored alongside the student (``self.net``)
and every likelihood solve is the teacher's (Prop. 2), exactly as for the RFM run it came from.
The student's s → s limit u_θ(x, κ, κ) is *not* used as a velocity field.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from globeflow.geometry import sphere
from globeflow.methods.generative import MAX_POINTS_PER_CHUNK
from globeflow.methods.rfm import RiemannianFlowMatching
from globeflow.nets.adaln_mlp import AdaLNMLP, AdaLNMLPConfig, noise_level_features
from globeflow.paths.schedules import Schedule, make_schedule
from globeflow.solvers.fixed_step import time_grid

__all__ = ["FlowMapMLP", "FlowMapRFM", "OMEGA_FEATURE_SCALE"]

#: ω enters the student through the sinusoids of :func:`noise_level_features` at ``ω · 100``
#: (the noise levels use ``κ · 1000``): guidance scales of a few units span many periods.
OMEGA_FEATURE_SCALE = 100.0


class FlowMapMLP(AdaLNMLP):
    """u_θ(x, κ_s, κ_t, ω | c): the AdaLN MLP with the target level and the guidance as conditions.

    The condition of every AdaLN modulation is c' = W c + T(κ_s) + T_t(κ_t) + T_ω(ω), with
    T_t and T_ω shaped like the noise-level MLP T and zero-initialised in their last layer, so
    that a student loaded with the teacher's weights starts as the teacher's conditional field.
    """

    def __init__(self, config: AdaLNMLPConfig) -> None:
        super().__init__(config)
        d = config.dim
        self.target_mlp = nn.Sequential(nn.Linear(d // 4, d), nn.SiLU(), nn.Linear(d, d))
        self.guidance_mlp = nn.Sequential(nn.Linear(d // 4, d), nn.SiLU(), nn.Linear(d, d))
        for mlp in (self.target_mlp, self.guidance_mlp):
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def flow_modulations(
        self, cond_emb: Tensor, level_s: Tensor, level_t: Tensor, omega: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        """AdaLN parameters for a jump κ_s → κ_t at guidance ω.

        ``cond_emb`` (B, d); ``level_s``, ``level_t``, ``omega``: (B,) or scalars (broadcast).
        Returns ([N × (B, 1, 3d)], (B, 1, 2d)) as :meth:`AdaLNMLP.modulations`.
        """
        dtype = self.time_mlp[0].weight.dtype
        c = self.time_channels

        def feats(v: Tensor, scale: float) -> Tensor:
            return noise_level_features(v.reshape(-1), c, scale=scale, dtype=dtype)

        time = (
            self.time_mlp(feats(level_s, 1000.0))
            + self.target_mlp(feats(level_t, 1000.0))
            + self.guidance_mlp(feats(omega, OMEGA_FEATURE_SCALE))
        )
        act = nn.functional.silu((cond_emb + time).unsqueeze(1))
        return [block.ada[1](act) for block in self.blocks], self.final_ada[1](act)

    def flow_map(self, x: Tensor, cond_emb: Tensor, kappa_s: Tensor, kappa_t: Tensor, omega: Tensor) -> Tensor:
        """X_{s,t}(x) = exp_x((κ_t − κ_s) P_x u_θ): ``x`` (B, S, 3) unit -> (B, S, 3) unit.

        ``kappa_s``, ``kappa_t``, ``omega``: (B,) per embedding or scalars.
        """
        mods, head = self.flow_modulations(cond_emb, kappa_s, kappa_t, omega)
        u = self.forward_with(x, mods, head).to(x.dtype)
        gap = (kappa_t - kappa_s).to(x.dtype)
        gap = gap.reshape(-1, 1, 1) if gap.dim() else gap
        return sphere.exp_map(x, gap * sphere.project_tangent(x, u))


class FlowMapRFM(RiemannianFlowMatching):
    """An RFM run distilled into a few-step flow-map sampler (see the module docstring).

    ``self.net`` is the teacher's ψ (for the likelihood), ``self.student`` the flow map u_θ.
    ``sample_steps`` is the number of jumps (network evaluations per point); ``None`` means the
    ``default_steps`` it was distilled for. Guidance ω must lie in [0, ``omega_max``], the range
    it was distilled on.
    """

    name = "rfm_flowmap"
    solvers: ClassVar[dict[str, int]] = {"flowmap": 1}
    default_solver = "flowmap"

    def __init__(
        self,
        net_config: AdaLNMLPConfig,
        schedule: Schedule | None = None,
        *,
        cond_drop: float = 0.1,
        student_config: AdaLNMLPConfig | None = None,
        default_steps: int = 2,
        omega_max: float = 4.0,
        distill_info: dict | None = None,
    ) -> None:
        super().__init__(net_config, schedule, cond_drop=cond_drop)
        if not isinstance(default_steps, int) or default_steps < 1:
            raise ValueError(f"default_steps must be a positive integer, got {default_steps!r}")
        if not (np.isfinite(omega_max) and omega_max >= 0.0):
            raise ValueError(f"omega_max must be finite and non-negative, got {omega_max!r}")
        self.student = FlowMapMLP(student_config or net_config)
        self.default_steps = default_steps
        self.omega_max = float(omega_max)
        self.distill_info = dict(distill_info or {})

    @classmethod
    def from_teacher(cls, teacher: RiemannianFlowMatching, *, default_steps: int, omega_max: float) -> FlowMapRFM:
        """A flow-map method whose teacher is a copy of ``teacher`` and whose student starts as it."""
        out = cls(
            teacher.net.config,
            teacher.schedule,
            cond_drop=teacher.cond_drop,
            default_steps=default_steps,
            omega_max=omega_max,
        )
        state = teacher.net.state_dict()
        out.net.load_state_dict(state)
        missing, unexpected = out.student.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith(("target_mlp.", "guidance_mlp.")) for k in missing)
        return out.to(teacher.device)

    @property
    def default_sample_steps(self) -> int:  # type: ignore[override]
        """:meth:`sample` and :meth:`predict` take the distilled jumps unless told otherwise."""
        return self.default_steps

    # -- persistence: one safetensors file with both networks --------------------------------
    def config(self) -> dict:
        return {
            **super().config(),
            "method": self.name,
            "student": self.student.config_dict(),
            "default_steps": self.default_steps,
            "omega_max": self.omega_max,
            "distill": self.distill_info,
        }

    @classmethod
    def from_config(cls, config: dict) -> FlowMapRFM:
        try:
            schedule = dict(config.get("schedule", {"name": "skewed_sigmoid"}))
            return cls(
                AdaLNMLPConfig(**config["net"]),
                make_schedule(schedule.pop("name"), **schedule),
                cond_drop=float(config.get("cond_drop", 0.1)),
                student_config=AdaLNMLPConfig(**config["student"]),
                default_steps=int(config["default_steps"]),
                omega_max=float(config["omega_max"]),
                distill_info=config.get("distill"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"model config: missing or malformed field {err}") from None

    def weights_state(self) -> dict[str, Tensor]:
        """Both networks' weights: ``teacher.*`` (ψ, for the likelihood) and ``student.*``."""
        state = {f"teacher.{k}": v for k, v in self.net.state_dict().items()}
        state.update({f"student.{k}": v for k, v in self.student.state_dict().items()})
        return state

    def load_weights_state(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`weights_state` (strict: raises ``RuntimeError`` on a mismatch)."""
        parts: dict[str, dict[str, Tensor]] = {"teacher": {}, "student": {}}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head not in parts:
                raise RuntimeError(f"unexpected weight {key!r} (expected teacher.* or student.*)")
            parts[head][rest] = value
        self.net.load_state_dict(parts["teacher"])
        self.student.load_state_dict(parts["student"])

    # -- sampling ------------------------------------------------------------------------------
    def check_guidance(self, guidance: float) -> float:
        guidance = float(guidance)
        if not (np.isfinite(guidance) and 0.0 <= guidance <= self.omega_max + 1e-9):
            raise ValueError(
                f"guidance: {guidance} is outside [0, {self.omega_max:g}], the range this model was "
                "distilled for (sample its teacher for other values)"
            )
        return guidance

    def jump_levels(self, num_steps: int, *, device=None) -> Tensor:
        """κ at the ends of the jumps: the teacher sampler's grid, κ(1 − i/N), float64 (N + 1,)."""
        return self.schedule.kappa(time_grid(num_steps, device=device))

    def sample_xyz(
        self,
        emb: Tensor,
        num_samples: int,
        *,
        generator: torch.Generator,
        guidance: float = 0.0,
        sample_steps: int | None = None,
        solver: str | None = None,
        precision: str = "float32",
        max_points: int = MAX_POINTS_PER_CHUNK,
        trajectory: list[Tensor] | None = None,
        progress: bool = False,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``sample_steps`` jumps of the flow map from ε ~ U(S²): (B, D) -> (B, S, 3) unit vectors.

        One student evaluation per jump and point (guidance is folded in, no null pass).
        ``noise`` (B, S, 3): the starting points (default: drawn from ``generator``; :meth:`sample`
        passes :func:`~globeflow.methods.base.row_noise`, so a row's samples do not depend on its batch).
        """
        del progress
        steps = self.default_steps if sample_steps is None else sample_steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sample_steps must be a positive integer, got {sample_steps!r}")
        if solver not in (None, "flowmap"):
            raise ValueError(f"solver: {solver!r} is not available for {self.name}; choose 'flowmap'")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        omega = torch.tensor(self.check_guidance(guidance), device=emb.device)
        kappas = self.jump_levels(steps, device=emb.device).float()
        b = emb.shape[0]
        if noise is None:
            noise = self.path.sample_noise((b, num_samples), generator=generator)
        noise = noise.to(emb.device)
        per_chunk = max(1, max_points // num_samples)
        out = []
        with (
            torch.inference_mode(),
            torch.autocast(device_type=emb.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"),
        ):
            for start in range(0, b, per_chunk):
                sl = slice(start, start + per_chunk)
                cond = self.student.embed_condition(emb[sl])
                x = noise[sl]
                traj = [x] if trajectory is not None else None
                for i in range(steps):
                    x = self.student.flow_map(x, cond, kappas[i], kappas[i + 1], omega)
                    if traj is not None:
                        traj.append(x)
                out.append(x)
                if trajectory is not None:
                    trajectory.append(torch.stack(traj, dim=0))
        return torch.cat(out, dim=0).float()
