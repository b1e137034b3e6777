"""Answers people can act on: from embeddings to places, country odds and how sure the model is.

:func:`answer` turns a trained method and a batch of embeddings into one :class:`Answer` per
embedding, from ONE batched draw of ``num_samples`` samples per embedding with their exact
log-densities (``method.sample_with_log_prob``: the likelihood ODE of Prop. 2, solved with
``density_steps`` RK4 steps, carries log p along the sampling solve):

* **modes** — mean shift of the samples on the sphere with von Mises–Fisher kernels whose
  width follows the model's density at each sample (:func:`find_modes`; a fixed
  ``bandwidth_km`` kernel for methods without a density): every sample climbs the kernel
  density estimate, all samples and embeddings at once; end points closer than 50 km are one
  mode. A mode's **mass** is the fraction of samples that climbed to it (its basin's probability).
* **point estimate** = the location of the mode of largest mass (not the densest sample: a
  sharp secondary peak can be the densest point while holding little probability).
* **countries** — every sample is reverse-geocoded to the nearest GeoNames cities1000 place
  (great circle, :mod:`globeflow.metrics.admin`); P(country) is the fraction of samples per
  ISO code, names from ``pycountry``. Samples at sea count for the country of the nearest
  (coastal) place, so P(country) reads "near or in that country".
* **localizability** (Eq. 19) in bits and the **areas of the 50/90% HPD regions** in km²
  (importance sampling, :mod:`globeflow.density.regions`) from the samples' log-densities —
  only for methods with a density per steradian (``density_space == "S2"``), else None.
  **Calibrated by default**: when the model carries a conformal calibration fitted at the
  answer's guidance (``globeflow calibrate``, :mod:`globeflow.density.calibration`; loaded from
  the run directory by :func:`globeflow.api.load`), the nominal 50/90% regions are the model's
  HPD regions of the calibrated levels q̂(0.5), q̂(0.9); ``Answer.calibration`` says which
  calibration (None: the model's own levels). ``calibration=None`` opts out.

The answer describes the model's own distribution, so the default guidance is ω = 0 (guidance
sharpens point estimates, Sec. 4, but the guided flow is not the model's p(y | c)).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from globeflow.density.calibration import calibrated_regions, resolve_calibration
from globeflow.density.localizability import localizability_from_log_prob
from globeflow.geometry.coords import EARTH_RADIUS_KM, latlon_to_xyz, xyz_to_latlon

__all__ = [
    "ANSWER_SAMPLES",
    "Answer",
    "AnswerWarning",
    "CountryProbability",
    "Mode",
    "answer",
    "answer_map_inputs",
    "country_name",
    "country_probabilities",
    "denoising_trajectories",
    "find_modes",
    "native_bfloat16",
    "resolve_precision",
]

#: Credible levels whose HPD regions every answer reports.
LEVELS = (0.5, 0.9)


@dataclass(frozen=True)
class Mode:
    """A place the model believes in: its location (degrees) and the probability of its basin."""

    latitude: float
    longitude: float
    mass: float

    def to_dict(self) -> dict[str, float]:
        return {"latitude": self.latitude, "longitude": self.longitude, "mass": self.mass}


@dataclass(frozen=True)
class CountryProbability:
    """P(country): ISO 3166-1 alpha-2 ``code``, English ``name`` and ``probability``."""

    code: str
    name: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "probability": self.probability}


@dataclass(frozen=True)
class AnswerWarning:
    """Something a reader must see before trusting an answer: a stable ``code`` (for programs:
    ``low_confidence_modes``, ``low_confidence_area``, ``at_sea``, ``unfamiliar_text``,
    ``unlike_training``; see :data:`globeflow.describe.WARNING_CODES`) and a ``message`` in words."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, eq=False)
class Answer:
    """The model's answer for one embedding.

    ``latitude``/``longitude``: the point estimate (the top mode). ``modes`` sorted by mass,
    ``countries`` by probability. ``localizability_bits`` (± ``localizability_stderr``),
    ``hpd50_area_km2``/``hpd90_area_km2`` and the regions' log-density thresholds
    ``hpd_thresholds`` {level: τ} (natural log per steradian) are None without a density on S².
    ``samples`` (S, 2) degrees and ``sample_log_prob`` (S,) (or None) are the draws behind it.
    ``calibration``: description of the conformal calibration the regions use (None: the
    model's own, uncalibrated levels); ``region_levels`` {nominal: model level} of the regions.
    ``warnings``: what a reader must see (low confidence, an estimate at sea, input unlike the
    training data) as :class:`AnswerWarning`, from :func:`globeflow.describe.add_warnings`;
    empty by default.
    """

    latitude: float
    longitude: float
    modes: tuple[Mode, ...]
    countries: tuple[CountryProbability, ...]
    localizability_bits: float | None
    localizability_stderr: float | None
    hpd50_area_km2: float | None
    hpd90_area_km2: float | None
    hpd_thresholds: dict[float, float] | None
    samples: np.ndarray = field(repr=False)
    sample_log_prob: np.ndarray | None = field(repr=False)
    calibration: str | None = None
    region_levels: dict[float, float] | None = None
    warnings: tuple[AnswerWarning, ...] = ()

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields shared by ``predict --text``, ``predict IMAGE`` and the demo."""
        return {
            "latitude": self.latitude,
            "longitude": self.longitude,
            "modes": [m.to_dict() for m in self.modes],
            "countries": [c.to_dict() for c in self.countries],
            "localizability_bits": self.localizability_bits,
            "localizability_stderr": self.localizability_stderr,
            "hpd50_area_km2": self.hpd50_area_km2,
            "hpd90_area_km2": self.hpd90_area_km2,
            "regions_calibrated": self.calibration is not None,
            "calibration": self.calibration,
            "num_samples": self.num_samples,
            "warnings": [w.to_dict() for w in self.warnings],
        }


# ----------------------------------------------------------------------------- modes
def _kappa_of(bandwidth_km: float) -> float:
    if not (isinstance(bandwidth_km, (int, float)) and math.isfinite(bandwidth_km) and bandwidth_km > 0):
        raise ValueError(f"bandwidth_km must be a positive number, got {bandwidth_km!r}")
    return (EARTH_RADIUS_KM / float(bandwidth_km)) ** 2


def _mean_shift(y: Tensor, kappa: Tensor, log_c: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Mean shift of samples ``y`` (b, S, 3) with kernels ``kappa``/``log_c`` (b, 1, S) ->
    end points (b, S, 3) and the log kernel density there (b, S)."""
    z = y.clone()
    yt = y.transpose(1, 2)
    log_ck = log_c + torch.log(kappa)
    for _ in range(iterations):
        # log of Cⱼ κⱼ e^{κⱼ(⟨z, yⱼ⟩ − 1)}, shifted by its row maximum: no overflow for any κ.
        t = torch.bmm(z, yt).sub_(1.0).mul_(kappa).add_(log_ck)
        w = t.sub_(t.amax(dim=-1, keepdim=True)).exp_()
        new = torch.bmm(w, y)
        new = new / new.norm(dim=-1, keepdim=True)
        moved = float((new - z).norm(dim=-1).max())
        z = new
        if moved < 1e-5:  # radians: 64 m on the Earth, far below the 50 km merge radius
            break
    # Kernel density at each end point: the denser end point of a group names the mode.
    return z, torch.logsumexp(log_c + kappa * (torch.bmm(z, y.transpose(1, 2)) - 1.0), dim=-1)


def find_modes(
    xyz: np.ndarray,
    log_prob: np.ndarray | None = None,
    *,
    bandwidth_km: float = 200.0,
    merge_km: float = 50.0,
    max_modes: int = 5,
    iterations: int = 100,
) -> list[tuple[Mode, ...]]:
    """Modes and their masses from samples ``xyz`` (B, S, 3) unit vectors -> B tuples of modes.

    Mean shift on the sphere, vectorised over embeddings and samples. Without ``log_prob`` the
    kernel is a vMF of κ = (R / ``bandwidth_km``)² for every sample. With the samples' exact
    log-densities ``log_prob`` (B, S) (per steradian) sample j gets its own κⱼ = 2π pⱼ (the
    concentration of a vMF peak of that height, clipped to 2–2000 km scales): a sharp cluster
    gets sharp kernels and stays apart from a neighbour 300 km away, a country-wide density
    gets wide ones and does not break into spurious bumps. The update follows the gradient of
    the kernel estimate Σⱼ Cⱼ exp(κⱼ(⟨x, yⱼ⟩ − 1)): x ← normalise(Σⱼ Cⱼ κⱼ e^{κⱼ(⟨x, yⱼ⟩ − 1)} yⱼ).
    End points within ``merge_km`` of a denser one join its mode; the ``max_modes`` modes of
    largest mass (fraction of samples) are kept.
    """
    x = np.asarray(xyz, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[1] < 1:
        raise ValueError(f"xyz: expected samples of shape (B, S, 3), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("xyz: NaN or infinite values")
    if not isinstance(max_modes, int) or max_modes < 1:
        raise ValueError(f"max_modes must be a positive integer, got {max_modes!r}")
    merge_cos = math.cos(_kappa_of(merge_km) ** -0.5)
    if log_prob is None:
        kappa = torch.full(x.shape[:2], _kappa_of(bandwidth_km), dtype=torch.float64)
    else:
        lp = np.asarray(log_prob, dtype=np.float64)
        if lp.shape != x.shape[:2] or not np.isfinite(lp).all():
            raise ValueError(f"log_prob: expected finite values of shape {x.shape[:2]}, got {lp.shape}")
        lo, hi = _kappa_of(2000.0), _kappa_of(2.0)
        kappa = torch.from_numpy(np.clip(2.0 * math.pi * np.exp(np.minimum(lp, 40.0)), lo, hi))
    kappa = kappa[:, None, :]  # (B, 1, S): one kernel per sample y_j
    log_c = torch.log(kappa) - torch.log(-torch.expm1(-2.0 * kappa)) - math.log(2.0 * math.pi)
    y_all = torch.from_numpy(x / np.linalg.norm(x, axis=-1, keepdims=True))
    # Embeddings in chunks: the (b, S, S) kernel matrices stay under ~32 MB each.
    per_chunk = max(1, (1 << 22) // (x.shape[1] ** 2))
    zs, ds = [], []
    for start in range(0, x.shape[0], per_chunk):
        sl = slice(start, start + per_chunk)
        z, d = _mean_shift(y_all[sl], kappa[sl], log_c[sl], iterations)
        zs.append(z)
        ds.append(d)
    z, dens = torch.cat(zs), torch.cat(ds).numpy()
    z = z.numpy()
    out = []
    for b in range(x.shape[0]):  # grouping: a loop over modes (few), not over samples
        order = np.argsort(-dens[b], kind="stable")
        free = np.ones(x.shape[1], bool)
        modes = []
        for i in order:
            if not free[i]:
                continue
            members = free & (z[b] @ z[b, i] >= merge_cos)
            members[i] = True
            free &= ~members
            modes.append((int(members.sum()), z[b, i]))
        modes.sort(key=lambda m: -m[0])  # stable: equal masses stay in density order
        ll = xyz_to_latlon(np.stack([m[1] for m in modes[:max_modes]]))
        s = x.shape[1]
        out.append(tuple(Mode(float(a), float(o), n / s) for (n, _), (a, o) in zip(modes, ll)))
    return out


# ----------------------------------------------------------------------------- countries
#: Codes that GeoNames uses but ISO 3166-1 (pycountry) does not have.
_EXTRA_NAMES = {"XK": "Kosovo"}


@functools.lru_cache(maxsize=512)
def country_name(code: str) -> str:
    """English short name of ISO 3166-1 alpha-2 ``code`` (the common name where one exists)."""
    try:
        import pycountry
    except ImportError:  # the names are a nicety: the codes stay right without them
        return _EXTRA_NAMES.get(code, code)
    c = pycountry.countries.get(alpha_2=code)
    if c is None:
        return _EXTRA_NAMES.get(code, code)
    return getattr(c, "common_name", None) or c.name


def country_probabilities(
    latlon: np.ndarray, *, gazetteer: Any = None, max_countries: int = 5
) -> list[tuple[CountryProbability, ...]]:
    """P(country) from samples ``latlon`` (B, S, 2) degrees -> B tuples, most likely first.

    Each sample takes the country of its nearest cities1000 place (so samples at sea count for
    the nearest coast's country); the probability is the fraction of samples.
    """
    from globeflow.metrics.admin import load_gazetteer

    a = np.asarray(latlon, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 2 or a.shape[1] < 1:
        raise ValueError(f"latlon: expected samples of shape (B, S, 2), got {a.shape}")
    g = gazetteer if gazetteer is not None else load_gazetteer()
    codes = np.asarray(g.country[g.nearest(a.reshape(-1, 2))], dtype=object).reshape(a.shape[:2])
    out = []
    for row in codes:
        values, counts = np.unique(row.astype(str), return_counts=True)
        order = np.lexsort((values, -counts))[:max_countries]
        out.append(
            tuple(
                CountryProbability(str(values[i]), country_name(str(values[i])), counts[i] / a.shape[1]) for i in order
            )
        )
    return out


# ----------------------------------------------------------------------------- answer
#: Samples per answer: P(country) to ±3 points (one standard error at 50%), the regions'
#: thresholds from 256 exact log-densities. 512 doubled an answer's time for little.
ANSWER_SAMPLES = 256


def native_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively: CUDA, or a CPU with AVX-512 BF16 or
    AMX. Elsewhere bfloat16 is emulated and slower than float32."""
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind != "cpu":
        return False
    cpu = torch.cpu
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``"bfloat16"`` where :func:`native_bfloat16`, else ``"float32"``."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")
    return precision


def answer(
    method: Any,
    emb: Any,
    *,
    num_samples: int = ANSWER_SAMPLES,
    guidance: float = 0.0,
    seed: int = 0,
    density_steps: int = 8,
    divergence: str = "exact",
    sample_steps: int = 16,
    bandwidth_km: float = 200.0,
    max_modes: int = 5,
    mode_samples: int = 1000,
    max_countries: int = 5,
    gazetteer: Any = None,
    calibration: Any = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> list[Answer]:
    """One :class:`Answer` per embedding of ``emb`` (B, D) (see the module docstring).

    Methods with a density on S² draw the samples with their log p in one likelihood solve of
    ``density_steps`` RK4 steps (``divergence`` "exact" or "hutchinson"); the others draw
    ``sample_steps`` sampler steps and get no localizability nor areas. Mean shift costs
    O(S²) per embedding, so the modes use the first ``mode_samples`` samples (i.i.d., so an
    unbiased subset); P(country) and the densities use all of them. ``calibration``: "auto"
    (the model's own conformal calibration when fitted at ``guidance``), None (uncalibrated)
    or a :class:`~globeflow.density.calibration.Calibration`. ``precision``: the likelihood
    solve's block MLPs in ``"bfloat16"`` or ``"float32"``; ``"auto"`` picks bfloat16 where the
    device multiplies it natively (:func:`native_bfloat16`: ~1.8x faster on an AMX CPU). On the
    shipped model log p moves by a median 0.001 nats (mean 0.003), the samples by a median
    0.6 km, region areas by < 1% and P(country) not at all (docs/benchmarks.md).
    ``progress``: a tqdm bar of the sampling (the likelihood solve's steps) on stderr.
    """
    from globeflow.methods.base import as_embedding

    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer ≥ 2, got {num_samples!r}")
    emb_t = as_embedding(emb, method.embedding_dim, device=method.device)
    cal = resolve_calibration(method, calibration, guidance) if getattr(method, "density_space", None) == "S2" else None
    if getattr(method, "density_space", None) == "S2":
        res = method.sample_with_log_prob(
            emb_t,
            num_samples,
            guidance=guidance,
            seed=seed,
            sample_steps=density_steps,
            divergence=divergence,
            precision=resolve_precision(precision, emb_t.device),
            progress=progress,
        )
        latlon, log_prob, xyz = res.latlon, res.log_prob, res.xyz
    else:
        latlon = method.sample(
            emb_t, num_samples, guidance=guidance, sample_steps=sample_steps, seed=seed, progress=progress
        )
        log_prob, xyz = None, latlon_to_xyz(latlon[..., 0], latlon[..., 1])
    lp_modes = None if log_prob is None else log_prob[:, :mode_samples]
    modes = find_modes(xyz[:, :mode_samples], lp_modes, bandwidth_km=bandwidth_km, max_modes=max_modes)
    countries = country_probabilities(latlon, gazetteer=gazetteer, max_countries=max_countries)
    b = latlon.shape[0]
    loc_bits = loc_se = area = tau = model_levels = None
    if log_prob is not None:
        loc = localizability_from_log_prob(log_prob)
        loc_bits, loc_se = loc.bits, loc.stderr
        tau, area, model_levels = calibrated_regions(log_prob, LEVELS, cal)  # (B, L), (B, L), (L,)
    out = []
    for i in range(b):
        top = modes[i][0]
        out.append(
            Answer(
                latitude=top.latitude,
                longitude=top.longitude,
                modes=modes[i],
                countries=countries[i],
                localizability_bits=None if loc_bits is None else float(loc_bits[i]),
                localizability_stderr=None if loc_se is None else float(loc_se[i]),
                hpd50_area_km2=None if area is None else float(area[i, 0]),
                hpd90_area_km2=None if area is None else float(area[i, 1]),
                hpd_thresholds=None if tau is None else {lv: float(t) for lv, t in zip(LEVELS, tau[i])},
                samples=latlon[i],
                sample_log_prob=None if log_prob is None else log_prob[i],
                calibration=None if cal is None else cal.describe(),
                region_levels=None if model_levels is None else {lv: float(q) for lv, q in zip(LEVELS, model_levels)},
            )
        )
    return out


def denoising_trajectories(
    method: Any, emb: Any, num: int = 24, *, sample_steps: int = 16, seed: int = 0
) -> np.ndarray | None:
    """``num`` denoising paths of ``method``'s sampler for ONE embedding ``emb`` (D,):
    (T + 1, num, 2) degrees, or None for a method without a step-by-step sampler
    (:meth:`~globeflow.methods.base.Method.trajectories`)."""
    return method.trajectories(emb, num, sample_steps=sample_steps, seed=seed)


def answer_map_inputs(
    method: Any, emb: Any, *, exact: bool = False, log_prob_steps: int = 8, trajectories: int = 0
) -> dict[str, list | None]:
    """What the answer maps of ``emb`` (B, D) need from the model, as keyword arguments of
    :func:`globeflow.viz.outputs.write_answer_files`: with ``exact``, each embedding's exact
    log-density function (likelihood ODE with ``log_prob_steps`` RK4 steps, guidance 0); with
    ``trajectories`` > 0, that many denoising paths per embedding (paper, Figs. 1 and 3)."""
    from globeflow.density.maps import log_prob_fn_from_method

    rows = np.asarray(emb)
    fns = None
    if exact:
        if getattr(method, "density_space", None) != "S2":
            raise ValueError(f"exact: method {method.name!r} has no density on the sphere")
        fns = [log_prob_fn_from_method(method, e, steps=int(log_prob_steps)) for e in rows]
    paths = [denoising_trajectories(method, e, trajectories) for e in rows] if trajectories > 0 else None
    return {"log_prob_fns": fns, "trajectories": paths}
