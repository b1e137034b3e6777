"""The interface every globeflow method shares, and the machinery of the generative ones.

A method is a trained geolocator: embeddings (B, D) in, locations out as float64 numpy arrays
of (latitude, longitude) in degrees, longitude in [−180, 180).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from globeflow.geometry import sphere
from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz, xyz_to_latlon
from globeflow.nets.adaln_mlp import AdaLNMLP, AdaLNMLPConfig
from globeflow.paths.noise_levels import NoiseLevelDensity, make_noise_density
from globeflow.paths.noising import NoisingPath
from globeflow.paths.schedules import Schedule, make_schedule
from globeflow.solvers.likelihood import DIVERGENCES, LIKELIHOOD_SOLVERS, DivergenceField, integrate_with_divergence

__all__ = [
    "GenerativeMethod",
    "Method",
    "SamplesWithLogProb",
    "as_embedding",
    "as_latlon",
    "geoscore_mbr",
]

#: Bound on points (samples × embeddings, before guidance doubling) per forward pass in
#: :meth:`GenerativeMethod.sample`: 64 Ki points of a d = 512 network need ~1 GB of activations.
MAX_POINTS_PER_CHUNK = 1 << 16
#: The same bound for the likelihood ODE, whose state carries 2–3 tangents per point.
MAX_POINTS_PER_LIKELIHOOD_CHUNK = 1 << 13
#: ODE steps of the generative samplers when ``sample_steps`` is None (the paper's 16).
DEFAULT_SAMPLE_STEPS = 16


def as_embedding(emb: Any, dim: int, *, device: torch.device | str = "cpu", name: str = "emb") -> Tensor:
    """Validate and convert embeddings (numpy or torch, shape (B, D)) to float32 on ``device``.

    Raises ``ValueError`` naming ``name`` for a wrong rank, a wrong D, or non-finite values.
    """
    if not isinstance(emb, (Tensor, np.ndarray)):
        try:
            emb = np.asarray(emb, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: expected an array of shape (B, {dim}), got {type(emb).__name__}") from err
    t = torch.as_tensor(emb)
    if t.dim() == 1 and t.shape[0] == dim:
        raise ValueError(f"{name}: expected shape (B, {dim}), got a single vector {tuple(t.shape)}; use emb[None]")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape (B, {dim}), got {tuple(t.shape)}")
    if t.shape[1] != dim:
        raise ValueError(f"{name}: embedding length {t.shape[1]} does not match the model's embedding dimension {dim}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name}: expected floating-point values, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.float32)
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise ValueError(f"{name}: non-finite (NaN or inf) values in rows {bad}")
    return t


def as_latlon(latlon: Any, batch: int, *, name: str = "latlon") -> np.ndarray:
    """Validate (B, 2) or (B, P, 2) latitude/longitude degrees for ``batch`` embeddings -> float64.

    Raises ``ValueError`` naming ``name`` for a wrong shape, non-finite values or a latitude
    outside [-90, 90] (longitudes are taken modulo 360).
    """
    try:
        a = np.asarray(
            latlon.detach().cpu() if isinstance(latlon, Tensor) else latlon,
            dtype=np.float64,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected numbers of shape (B, 2) or (B, P, 2), got {type(latlon).__name__}") from err
    if a.ndim not in (2, 3) or a.shape[-1] != 2:
        raise ValueError(f"{name}: expected shape (B, 2) or (B, P, 2) in degrees, got {a.shape}")
    if a.shape[0] != batch:
        raise ValueError(f"{name}: {a.shape[0]} rows for {batch} embeddings")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: non-finite (NaN or inf) values")
    if (np.abs(a[..., 0]) > 90.0).any():
        raise ValueError(f"{name}: latitude outside [-90, 90] (is the order (latitude, longitude)?)")
    return a


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 counters: a bijective, well-mixed hash."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_noise(path: Any, rows: int, num_samples: int, generator: torch.Generator) -> Tensor:
    """The initial noise (rows, S, 3) of :meth:`Method.sample`, row by row a function of the
    seed and the row's index only: a row's samples do not depend on the other rows of its
    batch (predicting 5 rows or 10 gives the same first 5).

    Row 0 is ``path.sample_noise((1, S))`` from ``generator`` (so a one-row call, the denoising
    trajectories of a map and the PLONK fixed-noise checks see torch's stream for the seed, as
    before); rows i ≥ 1 are a counter-based hash of (seed, i, sample, coordinate) — standard
    Gaussian by Box–Muller, projected onto S² for the sphere's path (uniform there) —
    vectorised, with no per-row generator.
    """
    first = path.sample_noise((min(rows, 1), num_samples), generator=generator)
    if rows <= 1:
        return first
    key = _splitmix64(np.array([int(generator.initial_seed()) % 2**64], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        start = np.uint64(num_samples * 4)  # counters of rows 1..rows-1
        counter = (np.arange((rows - 1) * num_samples * 4, dtype=np.uint64) + start) * np.uint64(
            0x9E3779B97F4A7C15
        ) + key
    u = (_splitmix64(counter) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    u = u.reshape(rows - 1, num_samples, 2, 2)
    r = np.sqrt(-2.0 * np.log1p(-u[..., 0]))  # 1 - u in (0, 1]
    z = np.concatenate([r * np.cos(2 * np.pi * u[..., 1]), r * np.sin(2 * np.pi * u[..., 1])], axis=-1)[..., :3]
    if getattr(path, "name", None) == "rfm":  # GeodesicPath: uniform on the sphere
        z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-300)
    return torch.cat([first, torch.from_numpy(z.astype(np.float32)).to(first.dtype)])


@dataclass(frozen=True)
class SamplesWithLogProb:
    """Samples with the model's log-density at each of them.

    ``latlon`` (B, S, 2) degrees float64; ``log_prob`` (B, S) natural log of the density, per
    steradian on S² when the method's ``density_space`` is ``"S2"`` (per unit volume of R³
    when it is ``"R3"``; not comparable); ``xyz`` (B, S, 3) the same samples as unit vectors.
    """

    latlon: np.ndarray
    log_prob: np.ndarray
    xyz: np.ndarray


class Method(abc.ABC):
    """A trained geolocator. Subclasses set ``name`` and implement :meth:`sample_xyz`.

    Methods with a likelihood also implement :meth:`log_prob_xyz` and set ``density_space``:
    ``"S2"`` for a density on the sphere per steradian (the uniform law is −log 4π), ``"R3"``
    for a density of the ambient R³ distribution (flow matching and diffusion in R³; not
    comparable with S² densities, Sec. 4.2 of the paper), ``None`` for no likelihood.
    """

    name: ClassVar[str] = ""
    density_space: ClassVar[str | None] = None
    #: Construction options beyond the shared ones that the method takes (``create_method``).
    option_names: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`sample_xyz` takes ``noise`` (B, S, 3), which :meth:`sample` then seeds
    #: per row (a row's samples do not depend on its batch); see :func:`row_noise`.
    row_seeded_noise: ClassVar[bool] = False
    #: Sampler steps of :meth:`sample` and :meth:`predict` when ``sample_steps`` is None.
    default_sample_steps: ClassVar[int] = DEFAULT_SAMPLE_STEPS
    #: The point estimate :meth:`predict` gives when no ``strategy`` is named (what
    #: ``globeflow predict`` writes and ``globeflow evaluate`` scores).
    default_strategy: ClassVar[str] = "sample"
    embedding_dim: int

    @abc.abstractmethod
    def sample_xyz(
        self,
        emb: Tensor,
        num_samples: int,
        *,
        generator: torch.Generator,
        **options: Any,
    ) -> Tensor:
        """Samples as unit vectors: ``emb`` (B, D) validated float32 -> (B, S, 3)."""

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-serialisable description from which :func:`globeflow.methods.build_method` rebuilds it."""

    def log_prob_xyz(self, emb: Tensor, x: Tensor, *, guidance: float = 0.0, **options: Any) -> Tensor:
        """Log-density at unit vectors: ``emb`` (B, D) validated float32, ``x`` (B, P, 3) -> (B, P)."""
        raise NotImplementedError(f"method {self.name!r} has no likelihood")

    def sample_with_log_prob_xyz(
        self,
        emb: Tensor,
        num_samples: int,
        *,
        generator: torch.Generator,
        guidance: float = 0.0,
        **options: Any,
    ) -> tuple[Tensor, Tensor]:
        """Samples (B, S, 3) and their log-density (B, S).

        The default draws samples then evaluates :meth:`log_prob_xyz` at them (right for
        closed-form densities); ODE methods override it to carry log p along the solve.
        """
        x = self.sample_xyz(emb, num_samples, generator=generator, guidance=guidance, **options)
        return x, self.log_prob_xyz(emb, x, guidance=guidance)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _check_likelihood(self) -> None:
        if self.density_space is None:
            raise NotImplementedError(f"method {self.name!r} has no likelihood (density_space is None)")

    def log_prob(self, emb: Any, latlon: Any, *, guidance: float = 0.0, **options: Any) -> np.ndarray:
        """Natural-log density of the model at locations: (B, D), (B, 2) -> (B,) float64.

        ``latlon`` may also be (B, P, 2) (P locations per embedding) -> (B, P). Units follow
        ``density_space`` (per steradian on S²).
        """
        self._check_likelihood()
        emb_t = as_embedding(emb, self.embedding_dim, device=self.device)
        a = as_latlon(latlon, emb_t.shape[0])
        pts = a if a.ndim == 3 else a[:, None]
        x = torch.as_tensor(
            latlon_to_xyz(pts[..., 0], pts[..., 1]),
            dtype=torch.float32,
            device=self.device,
        )
        out = self.log_prob_xyz(emb_t, x, guidance=float(guidance), **options)
        out = out.detach().double().cpu().numpy()
        return out if a.ndim == 3 else out[:, 0]

    def sample_with_log_prob(
        self,
        emb: Any,
        num_samples: int = 1,
        *,
        guidance: float = 0.0,
        sample_steps: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> SamplesWithLogProb:
        """``num_samples`` locations per embedding, each with the model's log-density there.

        ``sample_steps`` (default: the method's own) sets the steps of a fixed-step solver.
        """
        self._check_likelihood()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        emb_t = as_embedding(emb, self.embedding_dim, device=self.device)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        if sample_steps is not None:
            options["sample_steps"] = sample_steps
        if self.row_seeded_noise:
            options.setdefault("noise", row_noise(self.path, emb_t.shape[0], num_samples, generator))
        x, logp = self.sample_with_log_prob_xyz(
            emb_t, num_samples, generator=generator, guidance=float(guidance), **options
        )
        return SamplesWithLogProb(
            latlon=xyz_to_latlon(x),
            log_prob=logp.detach().double().cpu().numpy(),
            xyz=x.detach().double().cpu().numpy(),
        )

    def sample(
        self,
        emb: Any,
        num_samples: int = 1,
        *,
        guidance: float = 0.0,
        sample_steps: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> np.ndarray:
        """Draw ``num_samples`` locations per embedding: (B, D) -> (B, S, 2) degrees, float64.

        ``sample_steps`` None: the method's ``default_sample_steps`` (16; a distilled flow map's
        own jumps).
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if sample_steps is None:
            sample_steps = self.default_sample_steps
        emb_t = as_embedding(emb, self.embedding_dim, device=self.device)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        if self.row_seeded_noise:
            options.setdefault("noise", row_noise(self.path, emb_t.shape[0], num_samples, generator))
        xyz = self.sample_xyz(
            emb_t, num_samples, generator=generator, guidance=guidance, sample_steps=sample_steps, **options
        )
        return xyz_to_latlon(xyz)

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
    ) -> np.ndarray:
        """Point estimate per embedding: (B, D) -> (B, 2) degrees.

        ``strategy`` None: the method's own estimate, :attr:`default_strategy` (``"mbr"`` for
        the generative methods, ``"sample"`` otherwise unless the method overrides it);
        ``guidance`` None: the estimate's own ω, :meth:`estimate_guidance`.
        ``strategy="sample"``: the end point of one denoising trajectory (the paper's estimate,
        sharpened by guidance ω = 2 by default, Sec. 4). ``strategy="ensemble"`` (Appendix A):
        draw ``ensemble_size`` samples and keep the one where the model's density is highest.
        ``strategy="mbr"``: minimum Bayes risk for the GeoScore (Kumar & Byrne 2004): draw
        ``ensemble_size`` samples and keep the one with the highest mean GeoScore against the
        others, the Bayes estimate under the model's own distribution. One sample can only be
        as good as a random draw: even from the TRUE p(y | c) of an ambiguous world it scores
        ~0.69 of the Bayes estimate, MBR over 16/64 true samples 0.93/0.97 (docs/recipe.md).
        """
        strategy = self.default_strategy if strategy is None else strategy
        guidance = self.estimate_guidance(strategy) if guidance is None else guidance
        if strategy == "sample":
            return self.sample(emb, 1, guidance=guidance, sample_steps=sample_steps, seed=seed, **options)[:, 0]
        if strategy == "mbr":
            if not isinstance(ensemble_size, int) or ensemble_size < 2:
                raise ValueError(f"ensemble_size must be an integer >= 2 for strategy 'mbr', got {ensemble_size!r}")
            samples = self.sample(emb, ensemble_size, guidance=guidance, sample_steps=sample_steps, seed=seed, **options)
            return geoscore_mbr(samples)
        if strategy == "ensemble":
            if not isinstance(ensemble_size, int) or ensemble_size < 1:
                raise ValueError(f"ensemble_size must be a positive integer, got {ensemble_size!r}")
            # The densities come from the likelihood solver's own (accurate) defaults, not from
            # the few steps and the solver of the point sampler.
            options = {k: v for k, v in options.items() if k not in ("solver", "precision", "progress")}
            res = self.sample_with_log_prob(emb, ensemble_size, guidance=guidance, seed=seed, **options)
            best = res.log_prob.argmax(axis=1)
            return res.latlon[np.arange(len(best)), best]
        raise ValueError(f"strategy: unknown value {strategy!r}; available: 'sample', 'ensemble', 'mbr'")

    @staticmethod
    def estimate_guidance(strategy: str) -> float:
        """The guidance ω a point estimate uses when none is given: 0 for ``"mbr"`` (the Bayes
        decision under the model's own distribution; ω = 2 lowers it from 0.84 to 0.75 of the
        Bayes estimate in docs/recipe.md's screens), 2 otherwise (one draw sharpened as in the
        paper, Sec. 4)."""
        return 0.0 if strategy == "mbr" else 2.0


def geoscore_mbr(samples: np.ndarray, max_pairs: int = 1 << 22) -> np.ndarray:
    """The minimum-Bayes-risk point of each row's samples under the GeoScore utility.

    ``samples`` (B, S, 2) degrees -> (B, 2): for each row the sample x_i maximising
    Σ_j 5000 exp(−d(x_i, x_j) / 1492.7 km), i.e. the expected GeoScore of x_i if the truth were
    drawn from the samples (the self-term is the same for every i and does not change the
    argmax). Rows are processed in chunks of at most ``max_pairs`` sample pairs.
    """
    from globeflow.metrics.distance import GEOSCORE_SCALE_KM

    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3 or samples.shape[-1] != 2:
        raise ValueError(f"samples: expected shape (B, S, 2), got {samples.shape}")
    b, s = samples.shape[:2]
    xyz = latlon_to_xyz(samples[..., 0], samples[..., 1])
    best = np.empty(b, dtype=np.int64)
    chunk = max(1, max_pairs // (s * s))
    for lo in range(0, b, chunk):
        x = xyz[lo : lo + chunk]
        cos = np.clip(np.einsum("bsi,bti->bst", x, x), -1.0, 1.0)
        # utility ∝ Σ_j exp(−R θ_ij / scale); the factor 5000 does not change the argmax
        util = np.exp(-(EARTH_RADIUS_KM / GEOSCORE_SCALE_KM) * np.arccos(cos)).sum(axis=-1)
        best[lo : lo + chunk] = util.argmax(axis=1)
    return samples[np.arange(b), best]


class GenerativeMethod(Method, nn.Module):
    """A network ψ, a schedule κ(t) and a noising path, trained with condition dropout.

    Subclasses choose the path and implement :meth:`_denoise` (noise -> samples in R³ or S²).
    """

    path_cls: ClassVar[type[NoisingPath]]
    #: Minimum Bayes risk over 32 samples: one draw, even from the true p(y | c), scores only
    #: ~0.69 of the Bayes estimate on an ambiguous world (docs/recipe.md).
    default_strategy: ClassVar[str] = "mbr"
    #: :meth:`sample` starts row i from noise seeded by (seed, i): see :func:`row_noise`.
    row_seeded_noise: ClassVar[bool] = True
    solvers: ClassVar[dict[str, int]]
    default_solver: ClassVar[str]
    #: Grading of the likelihood ODE's RK4 nodes towards the data end (1: uniform; see
    #: :func:`~globeflow.solvers.likelihood.integrate_with_divergence`).
    likelihood_grid_power: ClassVar[float] = 1.0

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
        fp32 = torch.autocast(device_type=emb.device.type, enabled=False)
        with fp32:
            cond = self.net.embed_condition(emb)
            if guidance != 0.0:
                null = self.net.embed_condition(torch.zeros_like(emb[:1])).expand_as(cond)
                cond = torch.cat([cond, null], dim=0)

        def field_jvp(x: Tensor, tangents: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
            with torch.autocast(device_type=x.device.type, enabled=False):
                mods, head = self.net.modulations(cond, kappa)
            if guidance == 0.0:
                return self.net.forward_with_jvp(x, tangents, mods, head)
            out, jvp = self.net.forward_with_jvp(torch.cat([x, x]), torch.cat([tangents, tangents]), mods, head)
            (out_c, out_u), (jvp_c, jvp_u) = out.chunk(2), jvp.chunk(2)
            return out_c + guidance * (out_c - out_u), jvp_c + guidance * (jvp_c - jvp_u)

        return field_jvp

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
        :meth:`sample` and :meth:`predict` give :func:`row_noise`, a function of (seed, row).

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
    ) -> tuple[Tensor, Tensor]:
        """Integrate the likelihood ODE for ``x`` (B, P, 3) in chunks of embeddings.

        ``to_data``: from noise (s = 1) to data (s = 0), else from data to noise. Returns the end
        states (B, P, 3) and log p (B, P) at the *data* end of each path. ``precision``
        "bfloat16": the network's block MLPs multiply in bfloat16 (state and divergence float32).
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
        with torch.inference_mode(), low:
            for start in range(0, b, per_chunk):
                sl = slice(start, start + per_chunk)
                # The state runs in the network's dtype: float64 weights give a float64 reference.
                dtype = self.net.input_mapper.weight.dtype
                xs = x[sl].to(dtype)
                field = self._divergence_field(self.guided_field_jvp(emb[sl].to(dtype), guidance))
                res = integrate_with_divergence(
                    field,
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
                    grid_power=self.likelihood_grid_power if grid_power is None else grid_power,
                )
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
    ) -> Tensor:
        """log p(x | c) by the ODE from data to noise (Prop. 2): ``emb`` (B, D), ``x`` (B, P, 3) -> (B, P).

        ``solver``: ``"dopri5"`` (adaptive, ``atol``/``rtol``) or ``"rk4"`` (``steps`` fixed
        steps); ``divergence``: ``"exact"`` trace or ``"hutchinson"`` (unbiased, one probe, drawn
        with ``seed``). ``stats``, if a dict, receives the number of field evaluations (``nfe``).
        ``precision="bfloat16"``: the block MLPs multiply in bfloat16. ``grid_power``: RK4 nodes
        graded towards the data end (default: the method's ``likelihood_grid_power``).
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
        )
        return sphere.project(x), logp
