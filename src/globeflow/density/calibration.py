"""Conformal calibration of HPD credible regions (split conformal on the truth's HPD rank).

A model's level-α HPD region R_α = {y : p(y | c) ≥ τ_α} holds mass α *of the model*; it holds
the truth a fraction α of the time only if the model is calibrated. Split conformal prediction
(Vovk et al. 2005; Angelopoulos & Bates, "A gentle introduction to conformal prediction and
distribution-free uncertainty quantification", 2021, Sec. 1–3) recalibrates the level with
held-out rows, using as conformity score the HPD level at which the truth enters the model's
own regions — the "HPD-split" score of Izbicki, Shimizu & Stern, "CD-split and HPD-split:
efficient conformal regions in high dimensions" (JMLR 2022), here estimated from the model's
samples:

    u(c, y) = (K + V) / (S + 1),   K = #{s : log p(Y_s) > log p(y)},   V ~ U(0, 1),   if K < S,
    u(c, y) = (S + Δ/(1 + Δ)) / (S + 1),   Δ = min_s log p(Y_s) − log p(y) ≥ 0,      if K = S,

with Y_1 … Y_S ~ p(· | c) the model's samples and their exact log-densities. K/S estimates the
model mass of {p > p(y)}, the level of the smallest HPD region containing y. If the model were
calibrated, y and the S samples would be S + 1 exchangeable draws, the rank K uniform on
{0, …, S}, and u exactly U(0, 1) for any S; the randomisation V makes u continuous (no ties
between rows). Samples whose density equals the truth's count as below it: regions are closed
sets {p ≥ τ}, so a flat density (the uniform model) covers every truth, as its regions (the
whole sphere) do. The second line is the tail: a truth less dense than every sample would
otherwise get a uniform score in [S/(S+1), 1), and the regions of an over-confident model,
whose calibrated levels land there, would be a coin flip rather than a place. Instead the score
grows with how far (in nats) below the least dense sample the truth lies, so the region of any
level q ∈ [S/(S+1), 1) is {log p ≥ τ_ref − Δ_q}: τ_ref the threshold of level S/(S+1) (≈ the
least dense of S samples), Δ_q = g/(1 − g), g = q (S + 1) − S. Its area beyond the samples is
extrapolated linearly in log p from the level-S/(S+1) region, A(τ) = A(τ_ref) (max log p − τ) /
(max log p − τ_ref): exact for a Gaussian-like peak in 2-D (a vMF cap's area is 2π(C − τ)/κ).

Fit (n calibration rows, scores u_1 ≤ … ≤ u_n): the calibrated *model level* for nominal α is
q̂(α) = u_(k) with k = ⌈(n + 1) α⌉ (the ⌈(n+1)α⌉/n empirical quantile; q̂ = 1, the whole
sphere, if k > n). A new row's region at nominal α is {y : u(c, y) ≤ q̂(α)}, i.e. the model's
HPD region of level q̂(α). Guarantee (Angelopoulos & Bates, Thm. 1 and Appendix D): when the
calibration rows and the new row are exchangeable,

    α ≤ P(u_{n+1} ≤ q̂(α)) ≤ α + 1/(n + 1),

marginally over the calibration set and the new row; the upper bound needs continuous scores,
which the randomisation provides. It holds for the randomised membership test with S samples
as used in the fit; a region drawn from S' ≠ S samples (an answer's 512) uses the same level
q̂ on its own sample quantile, equal up to the Monte Carlo error O(1/√S') of a quantile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from globeflow.density.regions import hpd_area_km2, hpd_threshold
from globeflow.geometry.coords import EARTH_RADIUS_KM

__all__ = [
    "CALIBRATION_VERSION",
    "Calibration",
    "CalibrationRun",
    "calibrate_run",
    "format_calibration_run",
    "HPDScores",
    "calibrated_regions",
    "conformal_level",
    "conformal_split",
    "drawable_levels",
    "file_sha256",
    "fit_calibration",
    "hpd_rank_scores",
    "hpd_scores",
    "load_calibration",
    "resolve_calibration",
    "save_calibration",
]

#: Format version of the JSON file.
CALIBRATION_VERSION = 1
#: Area of the whole sphere in km²: the region of model level 1.
_SPHERE_KM2 = 4.0 * math.pi * EARTH_RADIUS_KM**2


def hpd_rank_scores(truth_log_prob: np.ndarray, sample_log_prob: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """HPD-rank conformity scores u ∈ [0, 1): (N,) log p at the truths, (N, S) at the model's
    samples -> (N,), randomised ranks (see the module docstring). Larger = truth less typical."""
    t = np.asarray(truth_log_prob, dtype=np.float64)
    lp = np.asarray(sample_log_prob, dtype=np.float64)
    if lp.ndim != 2 or t.shape != lp.shape[:1] or lp.shape[1] < 1:
        raise ValueError(f"truth_log_prob (N,) and sample_log_prob (N, S): got {t.shape} and {lp.shape}")
    if not (np.isfinite(t).all() and np.isfinite(lp).all()):
        raise ValueError("truth_log_prob / sample_log_prob: NaN or infinite log-densities")
    above = (lp > t[:, None]).sum(axis=1)
    v = np.random.default_rng(seed).random(t.shape[0])
    s = lp.shape[1]
    gap = np.maximum(lp.min(axis=1) - t, 0.0)
    tail = (s + gap / (1.0 + gap)) / (s + 1)
    return np.where(above < s, (above + v) / (s + 1), tail)


def conformal_level(scores: np.ndarray, nominal: float | np.ndarray) -> np.ndarray:
    """Calibrated model level q̂(α) = u_(⌈(n+1)α⌉) of ``scores`` (n,) for nominal ``α`` (scalar
    or (L,) in (0, 1)); 1.0 (the whole sphere) where ⌈(n+1)α⌉ > n."""
    u = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    a = np.asarray(nominal, dtype=np.float64)
    if u.size < 1:
        raise ValueError("scores: need at least one calibration score")
    if not np.all((a > 0.0) & (a < 1.0)):
        raise ValueError(f"nominal: credible levels must be in (0, 1), got {nominal!r}")
    n = u.size
    # The tiny slack keeps (n+1)α that is an integer in exact arithmetic from rounding up.
    k = np.ceil((n + 1) * a - 1e-9).astype(np.int64)
    return np.where(k <= n, u[np.clip(k, 1, n) - 1], 1.0)


def conformal_split(n: int, calibration_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of ``n`` rows: (calibration rows, test rows), sorted indices.

    A seeded permutation (numpy PCG64); the first ⌊fraction · n⌋ rows of it calibrate.
    """
    if not 0.0 < calibration_fraction <= 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1], got {calibration_fraction!r}")
    perm = np.random.default_rng(seed).permutation(n)
    m = int(math.floor(calibration_fraction * n))
    if m < 1:
        raise ValueError(f"calibration_fraction {calibration_fraction} of {n} rows leaves no calibration row")
    return np.sort(perm[:m]), np.sort(perm[m:])


@dataclass(frozen=True)
class HPDScores:
    """What one likelihood pass gives on rows with known truths: ``scores`` (N,) HPD ranks,
    ``truth_log_prob`` (N,), ``sample_log_prob`` (N, S) (nats per steradian)."""

    scores: np.ndarray
    truth_log_prob: np.ndarray
    sample_log_prob: np.ndarray


def hpd_scores(
    model: Any,
    emb: Any,
    latlon: np.ndarray,
    *,
    num_samples: int = 32,
    guidance: float = 0.0,
    seed: int = 0,
    steps: int = 8,
    **likelihood_options: Any,
) -> HPDScores:
    """log p at the truths (one solve data → noise), ``num_samples`` samples per row with their
    log p (one solve noise → data, ``steps`` RK4 steps each), and the HPD-rank scores.
    ``model`` must have a density on S² (``density_space == "S2"``)."""
    if getattr(model, "density_space", None) != "S2":
        raise ValueError(f"model: method {getattr(model, 'name', model)!r} has no density on the sphere")
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer ≥ 2, got {num_samples!r}")
    truth = np.asarray(latlon, dtype=np.float64)
    opts = dict(likelihood_options)
    log_p = model.log_prob(emb, truth, guidance=guidance, steps=steps, **opts)
    res = model.sample_with_log_prob(emb, num_samples, guidance=guidance, seed=seed, sample_steps=steps, **opts)
    return HPDScores(hpd_rank_scores(log_p, res.log_prob, seed=seed), log_p, res.log_prob)


@dataclass(frozen=True)
class Calibration:
    """A fitted conformal recalibration of credible levels.

    ``scores`` (n,) sorted HPD-rank scores of the calibration rows; the density they were
    measured on: ``guidance`` ω, ``num_samples`` S, ``steps`` (RK4 steps of the likelihood ODE),
    ``seed``; ``source``: where the rows came from (file, SHA-256, row indices); ``path``: the
    file it was read from (None until saved/loaded).
    """

    scores: np.ndarray = field(repr=False)
    guidance: float
    num_samples: int
    steps: int
    seed: int
    source: dict[str, Any] = field(default_factory=dict, repr=False)
    path: str | None = None

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    def level(self, nominal: float | np.ndarray) -> np.ndarray:
        """Model level q̂(α) of the region to report at nominal level(s) ``nominal``."""
        return conformal_level(self.scores, nominal)

    def applies_to(self, guidance: float) -> bool:
        """Whether regions of the density at ``guidance`` may use it (fitted at that ω)."""
        return math.isclose(float(guidance), self.guidance, abs_tol=1e-9)

    def describe(self) -> str:
        where = Path(self.path).name if self.path else "in memory"
        return f"conformal (HPD-rank split conformal, {where}, n = {self.n} rows, ω = {self.guidance:g})"

    def table(self, levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)) -> dict[str, float]:
        return {f"{a:g}": float(q) for a, q in zip(levels, self.level(np.asarray(levels)))}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "globeflow-calibration",
            "version": CALIBRATION_VERSION,
            "method": "hpd_rank_split_conformal",
            "score": "u = (#{s: log p(Y_s) > log p(y)} + V) / (S + 1), V ~ U(0,1), Y_s ~ model",
            "rule": "model level for nominal a = ceil((n+1) a)-th smallest score (1 if > n)",
            "guarantee": "a <= P(truth in region) <= a + 1/(n+1) for exchangeable rows",
            "n": self.n,
            "guidance": self.guidance,
            "num_samples": self.num_samples,
            "steps": self.steps,
            "seed": self.seed,
            "levels": self.table(),
            "source": self.source,
            "scores": [float(s) for s in self.scores],
        }

    @classmethod
    def from_json(cls, obj: Any, path: str | None = None) -> Calibration:
        where = path or "calibration"
        if not isinstance(obj, dict) or obj.get("format") != "globeflow-calibration":
            raise ValueError(f"{where}: not a globeflow calibration file (format field missing)")
        if obj.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"{where}: unsupported calibration version {obj.get('version')!r}")
        try:
            scores = np.sort(np.asarray(obj["scores"], dtype=np.float64))
            cal = cls(
                scores=scores,
                guidance=float(obj["guidance"]),
                num_samples=int(obj["num_samples"]),
                steps=int(obj["steps"]),
                seed=int(obj["seed"]),
                source=dict(obj.get("source") or {}),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: malformed calibration field: {err}") from None
        if scores.ndim != 1 or scores.size < 1 or not np.all((scores >= 0.0) & (scores <= 1.0)):
            raise ValueError(f"{where}: scores must be a non-empty list of numbers in [0, 1]")
        return cal


def fit_calibration(
    model: Any,
    emb: Any,
    latlon: np.ndarray,
    *,
    num_samples: int = 32,
    guidance: float = 0.0,
    seed: int = 0,
    steps: int = 8,
    source: dict[str, Any] | None = None,
    **likelihood_options: Any,
) -> Calibration:
    """Fit the conformal calibration of ``model``'s regions on rows ``emb`` (n, D) with true
    ``latlon`` (n, 2) (held out from training; exchangeable with the rows it will serve)."""
    s = hpd_scores(
        model, emb, latlon, num_samples=num_samples, guidance=guidance, seed=seed, steps=steps, **likelihood_options
    )
    return Calibration(
        scores=np.sort(s.scores),
        guidance=float(guidance),
        num_samples=int(num_samples),
        steps=int(steps),
        seed=int(seed),
        source=dict(source or {}),
    )


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_calibration(path: str | os.PathLike, cal: Calibration, *, overwrite: bool = False) -> Path:
    """Write ``cal`` as JSON atomically; an existing file is replaced only with ``overwrite``."""
    from globeflow.io import save_json

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite (--overwrite) to replace it")
    return save_json(path, cal.to_json())


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration file; errors name the file and the field. (A run directory's is
    ``run_dir / globeflow.runs.CALIBRATION_FILE``, which :func:`globeflow.api.load` attaches.)"""
    from globeflow.io import load_json

    return Calibration.from_json(load_json(path), path=str(path))


def resolve_calibration(model: Any, calibration: Any, guidance: float) -> Calibration | None:
    """The calibration to use for regions of ``model`` at ``guidance``: ``"auto"`` takes the
    model's own (``model.calibration``, attached by :func:`globeflow.api.load` from the run
    directory) when it was fitted at that ω; None: uncalibrated; a :class:`Calibration`: that
    one (it must match ω)."""
    if calibration is None:
        return None
    if isinstance(calibration, str):
        if calibration != "auto":
            raise ValueError(f"calibration: expected 'auto', None or a Calibration, got {calibration!r}")
        cal = getattr(model, "calibration", None)
        return cal if cal is not None and cal.applies_to(guidance) else None
    if not isinstance(calibration, Calibration):
        raise ValueError(f"calibration: expected 'auto', None or a Calibration, got {type(calibration).__name__}")
    if not calibration.applies_to(guidance):
        raise ValueError(
            f"calibration: fitted at guidance {calibration.guidance:g}, regions asked at {float(guidance):g}"
        )
    return calibration


def calibrated_regions(
    sample_log_prob: np.ndarray, levels: np.ndarray | tuple[float, ...], calibration: Calibration | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds, areas and model levels of the regions at nominal ``levels`` (L,).

    ``sample_log_prob`` (B, S') from the model's samples -> (τ (B, L), area km² (B, L), model
    levels (L,)). Without a calibration the model levels are the nominal ones. A model level
    beyond the calibration's resolved range [0, S/(S+1)) is a threshold below the level-S/(S+1)
    one, with its area extrapolated (module docstring); a level of 1 is the whole sphere
    (τ = −∞, area 4πR²).
    """
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    q = lv if calibration is None else calibration.level(lv)
    lp = np.asarray(sample_log_prob, dtype=np.float64)
    tau = np.full(lp.shape[:-1] + lv.shape, -np.inf)
    area = np.full(lp.shape[:-1] + lv.shape, _SPHERE_KM2)
    s_cal = calibration.num_samples if calibration is not None else None
    top = 1.0 if s_cal is None else s_cal / (s_cal + 1.0)
    inner = q < top
    if inner.any():
        t = hpd_threshold(lp, q[inner])
        tau[..., inner] = t
        area[..., inner] = hpd_area_km2(lp, q[inner], threshold=t)[0]
    tail = (q >= top) & (q < 1.0)
    if tail.any():
        ref = hpd_threshold(lp, top)[..., None]  # (..., 1)
        ref_area = hpd_area_km2(lp, top, threshold=ref[..., 0])[0][..., None]
        g = q[tail] * (s_cal + 1.0) - s_cal
        t = ref - g / (1.0 - g)
        peak = lp.max(axis=-1, keepdims=True)
        tau[..., tail] = t
        grow = (peak - t) / np.maximum(peak - ref, 1e-12)
        area[..., tail] = np.minimum(ref_area * grow, _SPHERE_KM2)
    return tau, area, q


def drawable_levels(calibration: Calibration | None, levels: Any, num_samples: int) -> np.ndarray:
    """Model levels (L,) of the regions at nominal ``levels`` for drawing from ``num_samples``
    sample log-densities: the calibration's q̂(α) (or the nominal levels without one), a level
    beyond the samples (an over-confident model's) taken as 1 − 1/(2S), the region holding
    every sample: drawn maps and GeoJSON then show a region smaller than the calibrated one
    (the answers' thresholds and areas are not capped: :func:`calibrated_regions`)."""
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    q = lv if calibration is None else calibration.level(lv)
    return np.minimum(q, 1.0 - 0.5 / max(int(num_samples), 1))


@dataclass(frozen=True)
class CalibrationRun:
    """Result of :func:`calibrate_run`: the ``calibration``, the file it was written to, the
    rows of the data used (``calibration_rows``) and left for testing (``test_rows``), and the
    coverage of the calibration rows' scores at the model's own levels (``raw_coverage``)."""

    calibration: Calibration
    path: Path
    calibration_rows: np.ndarray
    test_rows: np.ndarray
    raw_coverage: dict[str, float]
    seconds: float


def calibrate_run(
    model_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    num_samples: int = 32,
    steps: int = 8,
    guidance: float = 0.0,
    seed: int = 0,
    calibration_fraction: float = 1.0,
    split_seed: int = 0,
    device: str = "cpu",
    **likelihood_options: Any,
) -> CalibrationRun:
    """Fit the conformal calibration of the run ``model_dir`` on held-out rows of ``data_path``
    and write it to ``out`` (default: the run directory's ``calibration.json``, which
    :func:`globeflow.api.load` then attaches to the model). With ``calibration_fraction`` < 1
    only a seeded share of the rows calibrates (:func:`conformal_split`); the others are left
    for an honest test of coverage, and both sets of row indices are recorded in the file."""
    import time

    from globeflow.api import load
    from globeflow.runs import CALIBRATION_FILE
    from globeflow.data import read_dataset

    run = Path(model_dir)
    target = Path(out) if out is not None else run / CALIBRATION_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it (or --out elsewhere)")
    model = load(run, device=device)
    data = read_dataset(data_path, require_coords=True, expected_dim=model.embedding_dim)
    cal_rows, test_rows = conformal_split(len(data), calibration_fraction, split_seed)
    truth = np.stack([data.latitude, data.longitude], axis=1)
    start = time.perf_counter()
    source = {
        "data": str(Path(data_path).resolve()),
        "data_sha256": file_sha256(data_path),
        "data_rows": len(data),
        "calibration_fraction": calibration_fraction,
        "split_seed": split_seed,
        "split": "numpy.random.default_rng(split_seed).permutation(data_rows)[:floor(fraction * data_rows)]",
        "calibration_rows": cal_rows.tolist(),
        "test_rows": test_rows.tolist(),
    }
    s = hpd_scores(
        model,
        data.embeddings[cal_rows],
        truth[cal_rows],
        num_samples=num_samples,
        guidance=guidance,
        seed=seed,
        steps=steps,
        **likelihood_options,
    )
    cal = Calibration(
        scores=np.sort(s.scores),
        guidance=float(guidance),
        num_samples=int(num_samples),
        steps=int(steps),
        seed=int(seed),
        source=source,
    )
    path = save_calibration(target, cal, overwrite=overwrite)
    raw = {f"{a:g}": float((s.scores <= a).mean()) for a in (0.5, 0.9, 0.95)}
    return CalibrationRun(
        dataclasses.replace(cal, path=str(path)),
        path,
        cal_rows,
        test_rows,
        raw,
        time.perf_counter() - start,
    )


def format_calibration_run(res: CalibrationRun, data: str | os.PathLike) -> str:
    """The terminal text of ``globeflow calibrate`` for ``res`` fitted on ``data``: the rows and
    settings, the model level of each nominal level with its coverage before calibration, the
    finite-sample guarantee and the file written."""
    cal = res.calibration
    lines = [
        f"calibrated on {cal.n} rows of {data} ({len(res.test_rows)} left as test rows), "
        f"{cal.num_samples} samples, {cal.steps} RK4 steps, ω = {cal.guidance:g}, in {res.seconds:.1f} s",
        "nominal  model level  coverage before (calibration rows)",
    ]
    for a in (0.5, 0.9, 0.95):
        lines.append(f"  {100 * a:4.0f}%   {float(cal.level(a)):.4f}       {100 * res.raw_coverage[f'{a:g}']:.1f}%")
    lines.append(f"guarantee: coverage ≥ nominal and ≤ nominal + 1/(n+1) = +{1 / (cal.n + 1):.4f} on exchangeable rows")
    lines.append(f"calibration written to {res.path}")
    return "\n".join(lines)
