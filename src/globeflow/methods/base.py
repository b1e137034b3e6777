"""The interface every globeflow method shares (:class:`Method`) and the base of the methods
whose state is one network (:class:`ModuleMethod`); the generative machinery (Diffusion, flow
matching, RFM) is :mod:`globeflow.methods.generative`.

A method is a trained geolocator: embeddings (B, D) in, locations out as float64 numpy arrays
of (latitude, longitude) in degrees, longitude in [−180, 180). Everything a caller may use is
declared here, so nothing probes a method with ``getattr``: construction (:meth:`Method.create`,
:meth:`Method.from_config`, :attr:`Method.option_names`), training (:meth:`Method.prepare`,
:meth:`Method.loss`), sampling, densities, denoising paths (:meth:`Method.trajectories`) and
whether the method has an unconditional distribution (:attr:`Method.has_unconditional`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz, xyz_to_latlon

__all__ = [
    "geoscore_mbr",
    "geoscore_utility",
    "Method",
    "ModuleMethod",
    "SamplesWithLogProb",
    "as_embedding",
    "as_latlon",
    "check_options",
    "row_noise",
]

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
    # Checked in blocks of rows: a (B, D) boolean mask of a large input would be a transient
    # as big as the input itself.
    bad: list[int] = []
    for lo in range(0, t.shape[0], _FINITE_BLOCK):
        finite = torch.isfinite(t[lo : lo + _FINITE_BLOCK]).all(dim=1)
        if not bool(finite.all()):
            bad += (torch.nonzero(~finite).flatten() + lo)[: 5 - len(bad)].tolist()
            if len(bad) >= 5:
                break
    if bad:
        raise ValueError(f"{name}: non-finite (NaN or inf) values in rows {bad}")
    return t


#: Rows per block of :func:`as_embedding`'s finiteness check (16 MiB of mask at D = 1024).
_FINITE_BLOCK = 16_384


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

    @classmethod
    def create(cls, embedding_dim: int, **options: Any) -> Method:
        """A new, untrained method for ``embedding_dim``-d embeddings (``options``: see
        :attr:`option_names`; an unknown one raises ``ValueError``)."""
        raise NotImplementedError(f"method {cls.name!r} cannot be created from options")

    @classmethod
    def from_config(cls, config: dict) -> Method:
        """The same (untrained) architecture from :meth:`config` output; weights load separately."""
        raise NotImplementedError(f"method {cls.name!r} cannot be rebuilt from a config")

    @property
    def has_unconditional(self) -> bool:
        """Whether the null condition (the zero embedding) samples an unconditional
        distribution: the method saw it in training (condition dropout > 0)."""
        return False

    # -- training -------------------------------------------------------------------------
    def prepare(self, x0: Tensor, emb: Tensor) -> None:
        """Data-dependent set-up before training on ``x0`` (N, 3) unit vectors and ``emb``
        (N, D) (e.g. MvMF places its components on the data); nothing by default."""

    def loss(self, x0: Tensor, emb: Tensor, generator: torch.Generator, net: nn.Module | None = None) -> Tensor:
        """Mean training loss on a batch: ``x0`` (B, 3) unit, ``emb`` (B, D) -> scalar; the
        randomness from ``generator``; ``net`` lets a trainer pass a DDP wrapper of ``self.net``."""
        raise NotImplementedError(f"method {self.name!r} has no training loss")

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

    def trajectories(
        self, emb: Any, num: int = 24, *, sample_steps: int = 16, seed: int = 0
    ) -> np.ndarray | None:
        """``num`` paths of the sampler for ONE embedding ``emb`` (D,), from the noise to the
        samples (paper, Figs. 1 and 3): (T + 1, num, 2) degrees; None (the default) for a
        method without a step-by-step sampler."""
        return None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def novelty_view(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """What an answer's input-novelty check compares for ``emb`` (B, D): the features
        (B, D') (the embedding itself by default) and which rows the method recognises as
        known inputs (B,) bool, or None when it has no opinion."""
        return np.asarray(emb), None

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
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3 or samples.shape[-1] != 2:
        raise ValueError(f"samples: expected shape (B, S, 2), got {samples.shape}")
    b, s = samples.shape[:2]
    xyz = latlon_to_xyz(samples[..., 0], samples[..., 1])
    best = np.empty(b, dtype=np.int64)
    chunk = max(1, max_pairs // (s * s))
    for lo in range(0, b, chunk):
        x = xyz[lo : lo + chunk]
        best[lo : lo + chunk] = geoscore_utility(x, x).argmax(axis=1)
    return samples[np.arange(b), best]


def geoscore_utility(cand: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Σ_j exp(−R θ(c, x_j) / 1492.7 km) for each candidate: ``cand`` (B, C, 3), ``points``
    (B, S, 3) unit vectors -> (B, C). The expected GeoScore of a candidate if the truth were
    drawn from the points, without the factor 5000/S (it does not change an argmax)."""
    from globeflow.metrics.distance import GEOSCORE_SCALE_KM

    cos = np.clip(np.einsum("bci,bsi->bcs", cand, points), -1.0, 1.0)
    return np.exp(-(EARTH_RADIUS_KM / GEOSCORE_SCALE_KM) * np.arccos(cos)).sum(axis=-1)


def check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Reject construction options a method does not know (a typo must not be ignored)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r}: unknown option(s) {unknown}; known: {sorted(allowed)}")


class ModuleMethod(Method, nn.Module):
    """A method whose persistent state is ``self.net`` (saved as safetensors by :func:`globeflow.api.save`).

    Subclasses implement :meth:`create` (new, untrained, from construction options) and
    :meth:`from_config` (rebuild the same architecture from :meth:`config`); the weights are
    then loaded into ``net``.
    """

    net: nn.Module
    #: Construction options :meth:`create` accepts besides ``embedding_dim``.
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, embedding_dim: int) -> None:
        nn.Module.__init__(self)
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        self.embedding_dim = embedding_dim
        # A device marker that is not saved: methods without parameters still know their device.
        self.register_buffer("_device_marker", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_marker.device

    @classmethod
    def create(cls, embedding_dim: int, **options: Any) -> ModuleMethod:
        """A new, untrained method (``options`` as in :attr:`option_names`)."""
        check_options(cls.name, options, cls.option_names)
        return cls(embedding_dim, **options)

    @classmethod
    def from_config(cls, config: dict) -> ModuleMethod:
        """Rebuild from :meth:`config` output (weights are loaded separately into ``net``)."""
        try:
            options = {k: v for k, v in config.items() if k not in ("method", "embedding_dim")}
            return cls.create(int(config["embedding_dim"]), **options)
        except (KeyError, TypeError) as err:
            raise ValueError(f"model config: missing or malformed field {err}") from None

    def config(self) -> dict:
        return {"method": self.name, "embedding_dim": self.embedding_dim, **self._options()}

    def _options(self) -> dict:
        """Construction options (JSON) reproducing this architecture."""
        return {}
