"""The machinery of the generative methods (paper 000): a network ψ, a schedule κ(t) and a
noising path, trained with condition dropout; sampling by a fixed-step solver with
classifier-free guidance, densities by the likelihood ODE (Prop. 2).

:class:`GenerativeMethod` is the base of :class:`~globeflow.methods.diffusion.Diffusion`,
:class:`~globeflow.methods.flow.FlowMatching` and
:class:`~globeflow.methods.rfm.RiemannianFlowMatching`, which choose the path and the solvers.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from globeflow.geometry import sphere
from globeflow.geometry.coords import xyz_to_latlon
from globeflow.methods.base import DEFAULT_SAMPLE_STEPS, Method, as_embedding, check_options
from globeflow.nets.adaln_mlp import AdaLNMLP, AdaLNMLPConfig
from globeflow.paths.noise_levels import NoiseLevelDensity, make_noise_density
from globeflow.paths.noising import NoisingPath
from globeflow.paths.schedules import Schedule, make_schedule
from globeflow.solvers.likelihood import (
    DIVERGENCES,
    LIKELIHOOD_SOLVERS,
    DivergenceField,
    ODEResult,
    graded_grid,
    integrate_with_divergence,
)

__all__ = ["MAX_POINTS_PER_CHUNK", "MAX_POINTS_PER_LIKELIHOOD_CHUNK", "GenerativeMethod"]

#: Bound on points (samples × embeddings, before guidance doubling) per forward pass in
#: :meth:`GenerativeMethod.sample`: 64 Ki points of a d = 512 network need ~1 GB of activations.
MAX_POINTS_PER_CHUNK = 1 << 16
#: The same bound for the likelihood ODE, whose state carries 2–3 tangents per point.
MAX_POINTS_PER_LIKELIHOOD_CHUNK = 1 << 13


class GenerativeMethod(Method, nn.Module):
    """A network ψ, a schedule κ(t) and a noising path, trained with condition dropout.

    Subclasses choose the path and implement :meth:`_denoise` (noise -> samples in R³ or S²).
    """

    path_cls: ClassVar[type[NoisingPath]]
    #: Minimum Bayes risk over 32 samples: one draw, even from the true p(y | c), scores only
    #: ~0.69 of the Bayes estimate on an ambiguous world (docs/recipe.md).
    default_strategy: ClassVar[str] = "mbr"
    #: :meth:`sample` starts row i from noise seeded by (seed, i): see :func:`~globeflow.methods.base.row_noise`.
    row_seeded_noise: ClassVar[bool] = True
    solvers: ClassVar[dict[str, int]]
    default_solver: ClassVar[str]
    #: Grading of the likelihood ODE's RK4 nodes towards the data end (1: uniform; see
    #: :func:`~globeflow.solvers.likelihood.integrate_with_divergence`).
    likelihood_grid_power: ClassVar[float] = 1.0
    #: The likelihood ODE's variable s is the noise level κ itself (needed by ``rk4-split``).
    likelihood_in_level: ClassVar[bool] = True
    #: :meth:`create`'s options: the AdaLN network's size, the schedule, the condition dropout.
    option_names: ClassVar[tuple[str, ...]] = (
        "width", "depth", "expansion", "schedule", "schedule_params", "cond_drop", "cond_depth", "train_noise",
    )  # fmt: skip

    def __init__(
        self,
        net_config: AdaLNMLPConfig,
        schedule: Schedule | None = None,
        *,
        cond_drop: float = 0.1,
        train_noise: dict | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop}")
        self.net = AdaLNMLP(net_config)
        self.schedule = schedule if schedule is not None else make_schedule()
        self.path = self.path_cls()
        self.cond_drop = float(cond_drop)
        self.embedding_dim = net_config.cond_dim
        # None: t ~ U[0, 1], κ = κ(t) (the paper's recipe); else the density of the training
        # noise level, decoupled from the sampling schedule (see globeflow.paths.noise_levels).
        self.train_noise: NoiseLevelDensity | None = (
            None if train_noise is None else make_noise_density(train_noise, self.schedule)
        )

    @classmethod
    def create(cls, embedding_dim: int, **options: Any) -> GenerativeMethod:
        """A new method on an AdaLN network of ``width`` d, ``depth`` N blocks and ``expansion``
        (defaults 512, 12, 4), ``cond_depth`` layers of the condition MLP (default 1), the
        ``schedule`` (name, ``schedule_params``), ``cond_drop`` and the ``train_noise`` density."""
        check_options(cls.name, options, cls.option_names)
        net = AdaLNMLPConfig(
            cond_dim=embedding_dim,
            dim=options.get("width", 512),
            depth=options.get("depth", 12),
            expansion=options.get("expansion", 4),
            cond_depth=options.get("cond_depth", 1),
        )
        schedule = make_schedule(options.get("schedule", "skewed_sigmoid"), **(options.get("schedule_params") or {}))
        return cls(net, schedule, cond_drop=options.get("cond_drop", 0.1), train_noise=options.get("train_noise"))

    @classmethod
    def from_config(cls, config: dict) -> GenerativeMethod:
        try:
            net = AdaLNMLPConfig(**config["net"])
            schedule = dict(config.get("schedule", {"name": "skewed_sigmoid"}))
            cond_drop = float(config.get("cond_drop", 0.1))
            train_noise = config.get("train_noise")
        except (KeyError, TypeError) as err:
            raise ValueError(f"model config: missing or malformed field {err}") from None
        return cls(net, make_schedule(schedule.pop("name"), **schedule), cond_drop=cond_drop, train_noise=train_noise)

    @property
    def has_unconditional(self) -> bool:
        return self.cond_drop > 0.0

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def config(self) -> dict:
        return {
            "method": self.name,
            "net": self.net.config_dict(),
            "schedule": self.schedule.config(),
            "cond_drop": self.cond_drop,
            # Written only when set, so the configs of default runs are unchanged.
            **({"train_noise": self.train_noise.config()} if self.train_noise is not None else {}),
        }

    # -- training -------------------------------------------------------------------------
    #: Largest noise level training visits (diffusion stops short of pure noise).
    train_kappa_max: ClassVar[float] = 1.0

    def _train_kappa(self, t: Tensor) -> Tensor:
        return self.schedule.kappa(t)

    def _draw_train_kappa(self, b: int, generator: torch.Generator) -> Tensor:
        """Training noise levels (b, 1) on the generator's device."""
        if self.train_noise is None:
            return self._train_kappa(torch.rand(b, 1, generator=generator, device=generator.device))
        kappa = self.train_noise.sample(b, generator=generator, device=generator.device)
        return kappa.clamp(max=self.train_kappa_max)

    def loss(
        self,
        x0: Tensor,
        emb: Tensor,
        generator: torch.Generator,
        net: nn.Module | None = None,
    ) -> Tensor:
        """Mean regression loss on a batch: ``x0`` (B, 3) unit, ``emb`` (B, D) -> scalar.

        Draws the noise level (t ~ U[0, 1], κ = κ(t), or κ from ``train_noise``), the noise and
        the condition dropout (null embedding = zeros, for classifier-free guidance, Sec. 3.3)
        from ``generator``, on the generator's own device (a CUDA generator cannot fill CPU
        tensors, and vice versa). ``net`` lets a trainer pass a DDP wrapper.
        """
        net = self.net if net is None else net
        b, device, g_device = x0.shape[0], x0.device, generator.device
        kappa = self._draw_train_kappa(b, generator).to(device=device, dtype=x0.dtype)
        noise = self.path.sample_noise((b,), generator=generator, dtype=x0.dtype, device=g_device).to(device)
        drop = (torch.rand(b, generator=generator, device=g_device) < self.cond_drop).to(device)
        x_t, target = self.path.interpolate(x0, kappa, noise)
        emb = torch.where(drop[:, None], torch.zeros_like(emb), emb)
        pred = net(x_t, emb, kappa.squeeze(-1))
        return self.path.loss(pred, target, x_t).mean()

    # -- sampling -------------------------------------------------------------------------
    def trajectories(
        self, emb: Any, num: int = 24, *, sample_steps: int = 16, seed: int = 0
    ) -> np.ndarray:
        """``num`` denoising paths at guidance 0 for ONE embedding ``emb`` (D,): (T + 1, num, 2)
        degrees, the noise first and the samples of :meth:`sample` (same seed) last.
        Intermediate states of R³ methods are shown by their direction (the radial part is not
        a location)."""
        e = as_embedding(np.asarray(emb, dtype=np.float32).reshape(1, -1), self.embedding_dim, device=self.device)
        traj: list = []
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.sample_xyz(e, int(num), generator=gen, guidance=0.0, sample_steps=int(sample_steps), trajectory=traj)
        return xyz_to_latlon(traj[0][:, 0].detach().double().cpu().numpy())  # (T + 1, num, 3) -> degrees

    def guided_field(self, emb: Tensor, guidance: float):
        """The network as a function of (x (B, S, 3), κ), with guidance (Eq. 13) if ω ≠ 0.

        The conditional and unconditional halves go through the network as one batch of 2B
        embeddings; the condition path runs on embeddings, not on samples.
        """
        cond = self.net.embed_condition(emb)
        if guidance != 0.0:
            null = self.net.embed_condition(torch.zeros_like(emb[:1])).expand_as(cond)
            cond = torch.cat([cond, null], dim=0)

        def field(x: Tensor, kappa: Tensor) -> Tensor:
            mods, head = self.net.modulations(cond, kappa)
            if guidance == 0.0:
                return self.net.forward_with(x, mods, head)
            out_c, out_u = self.net.forward_with(torch.cat([x, x], dim=0), mods, head).chunk(2, dim=0)
            return out_c + guidance * (out_c - out_u)

        return field

    def guided_field_jvp(self, emb: Tensor, guidance: float):
        """Like :meth:`guided_field`, with directional derivatives (for the divergence).

        Returns ``f(x (B, S, 3), tangents (B, S, K, 3), κ) -> (ψ̂ (B, S, 3), J_ψ̂ · tangents
        (B, S, K, 3))``; guidance (Eq. 13) is linear in ψ, so its Jacobian combines the same way.
        The condition path (once per embedding and step) stays in float32 under autocast.
        """
        cond = self._guided_condition(emb, guidance)

        def field_jvp(x: Tensor, tangents: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
            with torch.autocast(device_type=x.device.type, enabled=False):
                mods, head = self.net.modulations(cond, kappa)
            return self._guided_jvp(x, tangents, mods, head, guidance)

        return field_jvp

    def _guided_condition(self, emb: Tensor, guidance: float) -> Tensor:
        """The embedding part of the condition, with the null condition appended when guided: (B or 2B, d)."""
        with torch.autocast(device_type=emb.device.type, enabled=False):
            cond = self.net.embed_condition(emb)
            if guidance != 0.0:
                null = self.net.embed_condition(torch.zeros_like(emb[:1])).expand_as(cond)
                cond = torch.cat([cond, null], dim=0)
        return cond

    def _guided_jvp(self, x: Tensor, tangents: Tensor, mods, head, guidance: float) -> tuple[Tensor, Tensor]:
        if guidance == 0.0:
            return self.net.forward_with_jvp(x, tangents, mods, head)
        out, jvp = self.net.forward_with_jvp(torch.cat([x, x]), torch.cat([tangents, tangents]), mods, head)
        (out_c, out_u), (jvp_c, jvp_u) = out.chunk(2), jvp.chunk(2)
        return out_c + guidance * (out_c - out_u), jvp_c + guidance * (jvp_c - jvp_u)

    def _split_divergence_fields(self, emb: Tensor, guidance: float, nodes: Tensor, cutoffs: Tensor):
        """The divergence fields of the split likelihood solver (:mod:`globeflow.solvers.split`).

        ``nodes`` (n,) float64 levels s, ``cutoffs`` (n,) rad per unit s. Returns
        ``field_at(j, σ)``: the field at node j with the AdaLN activation ā + σ δ (σ ∈ {−1, 0, 1}),
        ā the activation low-passed below node j's cutoff and δ the rest. The activations are
        computed on a fine level grid once per embedding, never per point.
        """
        net = self.net
        if not hasattr(net, "modulations_from_activation"):
            raise ValueError(
                f"solver: 'rk4-split' needs an AdaLN network (κ entering through one activation); "
                f"method {self.name!r} has {type(net).__name__}"
            )
        from globeflow.solvers.split import NodeLowPass

        cond = self._guided_condition(emb, guidance)
        dtype = cond.dtype
        with torch.autocast(device_type=emb.device.type, enabled=False):
            lowpass = NodeLowPass(nodes, cutoffs)
            time_grid = net.time_embedding(lowpass.grid.to(dtype))[:, None]  # (G, 1, d): shared by all rows
            act = F.silu(cond + net.time_embedding(nodes.to(dtype))[:, None])  # (n, B, d)
            # Rows in chunks: the fine grid holds ~7,000 levels (14,000 mirrored) per row and channel.
            rows = max(1, (1 << 24) // (16384 * cond.shape[-1]))
            slow = torch.cat(
                [
                    lowpass(F.silu(cond[r : r + rows] + time_grid), act[:, r : r + rows])
                    for r in range(0, cond.shape[0], rows)
                ],
                dim=1,
            )
            fast = act - slow

        def field_at(j: int, sign: float):
            with torch.autocast(device_type=emb.device.type, enabled=False):
                mods, head = net.modulations_from_activation(slow[j] if sign == 0.0 else slow[j] + sign * fast[j])

            def field_jvp(x: Tensor, tangents: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
                return self._guided_jvp(x, tangents, mods, head, guidance)

            return self._divergence_field(field_jvp)

        return field_at

    def _integrate_split(
        self, emb: Tensor, x: Tensor, s0: float, s1: float, guidance: float, steps: int, power: float, on_step
    ) -> ODEResult:
        """One chunk of the ``rk4-split`` likelihood solve (see :mod:`globeflow.solvers.split`)."""
        from globeflow.solvers.split import SPLIT_CUTOFF, integrate_split_rk4, split_nodes

        s_grid = graded_grid(s0, s1, steps, power)
        nodes, cutoffs = split_nodes(s_grid, SPLIT_CUTOFF)
        fields = self._split_divergence_fields(emb, guidance, nodes.to(x.device), cutoffs.to(x.device))
        return integrate_split_rk4(fields, x, s_grid, on_sphere=self.path.on_sphere, on_step=on_step)

    @abc.abstractmethod
    def _denoise(
        self,
        field,
        noise: Tensor,
        *,
        num_steps: int,
        solver: str,
        trajectory: list[Tensor] | None,
    ) -> Tensor:
        """Integrate from ``noise`` (B, S, 3) to unit vectors (B, S, 3)."""

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
        """Samples from the model for each embedding: ``emb`` (B, D) -> (B, S, 3) unit vectors.

        ``noise`` (B, S, 3): the starting points (default: drawn from ``generator``);
        :meth:`sample` and :meth:`predict` give :func:`~globeflow.methods.base.row_noise`, a
        function of (seed, row).

        ``precision="bfloat16"`` runs the network's matrix products in bfloat16 (autocast)
        while the state, the solver and the coordinate input layer stay in float32.
        """
        solver = self.default_solver if solver is None else solver
        sample_steps = DEFAULT_SAMPLE_STEPS if sample_steps is None else sample_steps
        if solver not in self.solvers:
            raise ValueError(
                f"solver: {solver!r} is not available for {self.name}; choose one of {sorted(self.solvers)}"
            )
        if not isinstance(sample_steps, int) or sample_steps < 1:
            raise ValueError(f"sample_steps must be a positive integer, got {sample_steps!r}")
        guidance = float(guidance)
        if not np.isfinite(guidance):
            raise ValueError(f"guidance must be finite, got {guidance}")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        b = emb.shape[0]
        # All noise is drawn up front so that results do not depend on the chunking.
        if noise is None:
            noise = self.path.sample_noise((b, num_samples), generator=generator)
        noise = noise.to(emb.device)
        per_chunk = max(1, max_points // num_samples)
        out = []
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=emb.device.type,
                dtype=torch.bfloat16,
                enabled=precision == "bfloat16",
            ),
        ):
            starts = range(0, b, per_chunk)
            bar = tqdm(
                starts,
                desc=f"sampling {self.name}",
                unit="chunk",
                disable=not progress or len(starts) < 2,
            )
            for start in bar:
                sl = slice(start, start + per_chunk)
                field = self.guided_field(emb[sl], guidance)
                traj = [] if trajectory is not None else None
                out.append(
                    self._denoise(
                        field,
                        noise[sl],
                        num_steps=sample_steps,
                        solver=solver,
                        trajectory=traj,
                    )
                )
                if trajectory is not None:
                    trajectory.append(torch.stack(traj, dim=0))
        return torch.cat(out, dim=0).float()

    # -- likelihood (Prop. 2) -------------------------------------------------------------
    @abc.abstractmethod
    def _divergence_field(self, field_jvp) -> DivergenceField:
        """The likelihood ODE in its variable s ∈ [0, 1] (s = 0: data, s = 1: noise).

        From the guided field with derivatives (:meth:`guided_field_jvp`) to
        ``f(x, s, probes) -> (dx/ds (..., 3), div (...))`` for
        :func:`~globeflow.solvers.likelihood.integrate_with_divergence`.
        """

    @abc.abstractmethod
    def _base_log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the noise distribution at s = 1: (..., 3) -> (...)."""

    def _check_likelihood_options(self, solver: str, divergence: str, steps: int, atol: float, rtol: float) -> None:
        if solver not in LIKELIHOOD_SOLVERS:
            raise ValueError(f"solver: {solver!r} is not a likelihood solver; choose one of {LIKELIHOOD_SOLVERS}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence: unknown value {divergence!r}; choose one of {DIVERGENCES}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        for field_name, tol in (("atol", atol), ("rtol", rtol)):
            if not (isinstance(tol, (int, float)) and 0.0 < tol < 1.0):
                raise ValueError(f"{field_name} must be in (0, 1), got {tol!r}")

    def _solve_chunks(
        self,
        emb: Tensor,
        x: Tensor,
        *,
        to_data: bool,
        guidance: float,
        solver: str,
        divergence: str,
        steps: int,
        atol: float,
        rtol: float,
        max_points: int,
        seed: int,
        stats: dict | None,
        precision: str = "float32",
        grid_power: float | None = None,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Integrate the likelihood ODE for ``x`` (B, P, 3) in chunks of embeddings.

        ``to_data``: from noise (s = 1) to data (s = 0), else from data to noise. Returns the end
        states (B, P, 3) and log p (B, P) at the *data* end of each path. ``precision``
        "bfloat16": the network's block MLPs multiply in bfloat16 (state and divergence float32).
        ``progress``: a tqdm bar of the solve's steps (RK4; chunks for dopri5) on stderr.
        """
        self._check_likelihood_options(solver, divergence, steps, atol, rtol)
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        guidance = float(guidance)
        if not np.isfinite(guidance):
            raise ValueError(f"guidance must be finite, got {guidance}")
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        b, p = x.shape[:2]
        per_chunk = max(1, max_points // p)
        ends, logps, nfe = [], [], 0
        s0, s1 = (1.0, 0.0) if to_data else (0.0, 1.0)
        low = torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
        starts = range(0, b, per_chunk)
        per_step = solver in ("rk4", "rk4-split")
        if solver == "rk4-split" and divergence != "exact":
            raise ValueError("divergence: 'rk4-split' computes the exact divergence; use divergence='exact'")
        if solver == "rk4-split" and not self.likelihood_in_level:
            raise ValueError(
                f"solver: 'rk4-split' needs a likelihood ODE in the noise level itself; "
                f"{self.name!r} integrates in another variable"
            )
        bar = tqdm(
            total=len(starts) * (steps if per_step else 1),
            desc=f"log p ({self.name})",
            unit="step" if per_step else "chunk",
            disable=not progress,
            leave=False,
        )
        with torch.inference_mode(), low, bar:
            for start in starts:
                sl = slice(start, start + per_chunk)
                # The state runs in the network's dtype: float64 weights give a float64 reference.
                dtype = self.net.input_mapper.weight.dtype
                xs = x[sl].to(dtype)
                power = self.likelihood_grid_power if grid_power is None else grid_power
                if solver == "rk4-split":
                    res = self._integrate_split(emb[sl].to(dtype), xs, s0, s1, guidance, steps, power, bar.update)
                else:
                    res = integrate_with_divergence(
                        self._divergence_field(self.guided_field_jvp(emb[sl].to(dtype), guidance)),
                        xs,
                        s0,
                        s1,
                        on_sphere=self.path.on_sphere,
                        divergence=divergence,
                        solver=solver,
                        steps=steps,
                        atol=atol,
                        rtol=rtol,
                        generator=generator,
                        grid_power=power,
                        on_step=bar.update if per_step else None,
                    )
                if not per_step:
                    bar.update()
                nfe += res.nfe
                # log p(x(s_end)) = log p(x(s_start)) − ∫ div ds (see solvers/likelihood.py).
                if to_data:
                    logps.append(self._base_log_prob(xs) - res.delta)
                else:
                    logps.append(self._base_log_prob(res.x) + res.delta)
                ends.append(res.x)
        if stats is not None:
            stats.update(nfe=nfe, chunks=len(ends), points=b * p)
        return torch.cat(ends), torch.cat(logps)

    def log_prob_xyz(
        self,
        emb: Tensor,
        x: Tensor,
        *,
        guidance: float = 0.0,
        solver: str = "rk4",
        divergence: str = "exact",
        steps: int = 64,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        max_points: int = MAX_POINTS_PER_LIKELIHOOD_CHUNK,
        seed: int = 0,
        stats: dict | None = None,
        precision: str = "float32",
        grid_power: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """log p(x | c) by the ODE from data to noise (Prop. 2): ``emb`` (B, D), ``x`` (B, P, 3) -> (B, P).

        ``solver``: ``"dopri5"`` (adaptive, ``atol``/``rtol``) or ``"rk4"`` (``steps`` fixed
        steps); ``divergence``: ``"exact"`` trace or ``"hutchinson"`` (unbiased, one probe, drawn
        with ``seed``). ``stats``, if a dict, receives the number of field evaluations (``nfe``).
        ``precision="bfloat16"``: the block MLPs multiply in bfloat16. ``grid_power``: RK4 nodes
        graded towards the data end (default: the method's ``likelihood_grid_power``).
        ``progress``: a progress bar of the solve on stderr.
        """
        _, logp = self._solve_chunks(
            emb,
            x,
            to_data=False,
            guidance=guidance,
            solver=solver,
            divergence=divergence,
            steps=steps,
            atol=atol,
            rtol=rtol,
            max_points=max_points,
            seed=seed,
            stats=stats,
            precision=precision,
            grid_power=grid_power,
            progress=progress,
        )
        return logp

    def sample_with_log_prob_xyz(
        self,
        emb: Tensor,
        num_samples: int,
        *,
        generator: torch.Generator,
        guidance: float = 0.0,
        sample_steps: int = 64,
        solver: str = "rk4",
        divergence: str = "exact",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        max_points: int = MAX_POINTS_PER_LIKELIHOOD_CHUNK,
        stats: dict | None = None,
        precision: str = "float32",
        grid_power: float | None = None,
        noise: Tensor | None = None,
        progress: bool = False,
        **_: Any,
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density in one solve from noise to data: -> (B, S, 3), (B, S).

        The ODE is solved accurately (``solver`` ``"dopri5"``, or ``"rk4"`` with
        ``sample_steps`` steps) rather than with the few-step sampler of :meth:`sample`, so that
        each sample's log p is the density of the model at that sample. Samples of R³ methods
        are returned on the sphere but their log p is the R³ density at the unprojected end point.
        """
        if noise is None:
            noise = self.path.sample_noise((emb.shape[0], num_samples), generator=generator)
        noise = noise.to(emb.device)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        x, logp = self._solve_chunks(
            emb,
            noise,
            to_data=True,
            guidance=guidance,
            solver=solver,
            divergence=divergence,
            steps=sample_steps,
            atol=atol,
            rtol=rtol,
            max_points=max_points,
            seed=seed,
            stats=stats,
            precision=precision,
            grid_power=grid_power,
            progress=progress,
        )
        return sphere.project(x), logp
