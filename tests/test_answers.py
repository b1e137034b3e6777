"""Answers (modes, P(country), localizability, HPD areas) against closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _answer_helpers import FixedVMF

from globeflow.answers import answer, country_name, country_probabilities, find_modes
from globeflow.geometry.coords import EARTH_RADIUS_KM, great_circle_km, latlon_to_xyz, xyz_to_latlon
from globeflow.geometry.vmf import vmf_log_prob, vmf_sample

PARIS = (48.8566, 2.3522)
TOKYO = (35.6895, 139.6917)
NAIROBI = (-1.2864, 36.8172)
MADRID = (40.4168, -3.7038)


def _vmf_samples(center, kappa: float, n: int, seed: int) -> np.ndarray:
    mu = torch.tensor(latlon_to_xyz(np.array([center[0]]), np.array([center[1]])), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return vmf_sample(mu, torch.tensor([kappa], dtype=torch.float64), n, generator=g)[0].numpy()


def test_two_separated_clusters_give_two_modes_with_their_masses():
    # κ = 2·10⁴: σ = R/√κ ≈ 45 km, far below the 200 km kernel, and 9,700 km apart.
    x = np.concatenate([_vmf_samples(PARIS, 2e4, 300, 0), _vmf_samples(TOKYO, 2e4, 100, 1)])[None]
    (modes,) = find_modes(x)
    assert len(modes) == 2
    assert [m.mass for m in modes] == [0.75, 0.25]
    for m, c in zip(modes, (PARIS, TOKYO)):
        # The mode of the kernel estimate of n samples lies within ~σ/√n of the centre.
        assert great_circle_km(m.latitude, m.longitude, *c) < 15.0


def test_mode_mass_counts_every_sample_once_and_max_modes_truncates():
    centers = [(0.0, 0.0), (0.0, 40.0), (0.0, 80.0), (45.0, -100.0)]
    x = np.concatenate([_vmf_samples(c, 1e4, n, i) for i, (c, n) in enumerate(zip(centers, (40, 30, 20, 10)))])
    (all_modes,) = find_modes(x[None], max_modes=10)
    assert [m.mass for m in all_modes] == [0.4, 0.3, 0.2, 0.1]
    (top2,) = find_modes(x[None], max_modes=2)
    assert [m.mass for m in top2] == [0.4, 0.3]


def test_one_wide_cluster_is_one_mode_at_its_centre():
    # σ ≈ 64 km < kernel: the kernel estimate is unimodal, at the centre.
    (modes,) = find_modes(_vmf_samples(NAIROBI, 1e4, 500, 3)[None])
    assert len(modes) == 1 and modes[0].mass == 1.0
    assert great_circle_km(modes[0].latitude, modes[0].longitude, *NAIROBI) < 10.0


def test_find_modes_rejects_bad_input():
    with pytest.raises(ValueError, match="xyz"):
        find_modes(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="bandwidth_km"):
        find_modes(np.ones((1, 2, 3)) / math.sqrt(3), bandwidth_km=0.0)


def test_samples_inside_one_country_give_probability_one():
    # σ ≈ 6 km around central Paris: every sample's nearest place is in France.
    latlon = xyz_to_latlon(_vmf_samples(PARIS, 1e6, 200, 4))[None]
    (countries,) = country_probabilities(latlon)
    assert len(countries) == 1
    assert (countries[0].code, countries[0].name, countries[0].probability) == ("FR", "France", 1.0)


def test_country_probabilities_are_sample_fractions():
    latlon = np.concatenate(
        [xyz_to_latlon(_vmf_samples(NAIROBI, 1e6, 60, 5)), xyz_to_latlon(_vmf_samples(MADRID, 1e6, 40, 6))]
    )
    (countries,) = country_probabilities(latlon[None])
    assert [(c.code, c.probability) for c in countries] == [("KE", 0.6), ("ES", 0.4)]


def test_country_names():
    assert country_name("US") == "United States"
    assert country_name("BO") == "Bolivia"  # the common name, not "Plurinational State of"
    assert country_name("XK") == "Kosovo"  # GeoNames code outside ISO 3166-1


def test_answer_matches_the_closed_form_vmf():
    """Localizability (Eq. 19) and the 90% HPD area of vMF(μ, κ) in closed form."""
    kappa = 2000.0
    method = FixedVMF(kappa)
    emb = np.array([latlon_to_xyz(np.array([PARIS[0]]), np.array([PARIS[1]]))[0], [0.0, 0.0, 1.0]], np.float32)
    answers = answer(method, emb, num_samples=4000, seed=0)
    # E[log p] = log C(κ) + κ (E[cos] − 1), E[cos] = coth κ − 1/κ.
    log_c = math.log(kappa / (2 * math.pi * (1 - math.exp(-2 * kappa))))
    bits = (log_c + kappa * (1 / math.tanh(kappa) - 1 / kappa - 1)) / math.log(2)
    # The HPD region is a cap; mass in {1 − cos θ ≤ u} = (1 − e^{−κu}) / (1 − e^{−2κ}).
    u90 = -math.log(1 - 0.9 * (1 - math.exp(-2 * kappa))) / kappa
    area90 = 2 * math.pi * u90 * EARTH_RADIUS_KM**2
    for a, center in zip(answers, (PARIS, (90.0, 0.0))):
        assert abs(a.localizability_bits - bits) < 4 * a.localizability_stderr
        assert a.hpd90_area_km2 == pytest.approx(area90, rel=0.06)
        assert a.hpd50_area_km2 < a.hpd90_area_km2
        # One mode holding every sample, at the mean direction: the estimate.
        assert len(a.modes) == 1 and a.modes[0].mass == 1.0
        assert great_circle_km(a.latitude, a.longitude, *center) < 25.0
        d = a.to_dict()
        assert set(d) >= {"latitude", "longitude", "modes", "countries", "localizability_bits", "hpd90_area_km2"}
    # σ = R/√κ ≈ 140 km around Paris: mostly France, some neighbours.
    assert answers[0].countries[0].code == "FR" and 0.7 < answers[0].countries[0].probability < 1.0
    assert {c.code for c in answers[0].countries[1:]} <= {"BE", "GB", "DE", "LU", "NL", "CH"}


def test_answer_rejects_bad_input():
    with pytest.raises(ValueError, match="emb"):
        answer(FixedVMF(10.0), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="num_samples"):
        answer(FixedVMF(10.0), np.ones((1, 3), np.float32), num_samples=1)


def _mixture_log_prob(x: np.ndarray, centers, kappas, weights) -> np.ndarray:
    mu = torch.tensor(latlon_to_xyz(np.array([c[0] for c in centers]), np.array([c[1] for c in centers])))
    lp = vmf_log_prob(torch.from_numpy(x)[:, None], mu[None], torch.tensor(kappas, dtype=torch.float64)[None])
    return torch.logsumexp(lp + torch.log(torch.tensor(weights, dtype=torch.float64)), dim=-1).numpy()


def test_density_adapted_kernels_split_near_clusters_and_keep_a_wide_one_whole():
    # Springfield IL and MO, 400 km apart, σ ≈ 37 km each: a fixed 200 km kernel merges them.
    centers, kappas, weights = [(39.80, -89.64), (37.21, -93.29)], [3e4, 3e4], [0.6, 0.4]
    x = np.concatenate([_vmf_samples(centers[0], 3e4, 240, 7), _vmf_samples(centers[1], 3e4, 160, 8)])
    lp = _mixture_log_prob(x, centers, kappas, weights)
    (fixed,) = find_modes(x[None])
    assert fixed[0].mass == 1.0
    (adapted,) = find_modes(x[None], lp[None])
    assert [m.mass for m in adapted] == [0.6, 0.4]
    for m, c in zip(adapted, centers):
        assert great_circle_km(m.latitude, m.longitude, *c) < 15.0
    # A country-wide vMF (σ ≈ 370 km) with its exact density: one mode, not bumps.
    wide = _vmf_samples(NAIROBI, 300.0, 500, 9)
    (one,) = find_modes(wide[None], _mixture_log_prob(wide, [NAIROBI], [300.0], [1.0])[None])
    assert len(one) == 1 and one[0].mass == 1.0
    assert great_circle_km(one[0].latitude, one[0].longitude, *NAIROBI) < 60.0


def test_precision_auto_follows_the_device_and_bad_values_name_the_field(monkeypatch):
    from globeflow import answers as mod

    assert mod.resolve_precision("float32", "cpu") == "float32"
    assert mod.resolve_precision("bfloat16", "cpu") == "bfloat16"
    assert mod.resolve_precision("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert mod.resolve_precision("auto", "cpu") == "float32"  # emulated bfloat16 would be slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert mod.resolve_precision("auto", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        mod.resolve_precision("half", "cpu")


def test_bfloat16_answers_keep_the_float32_samples_and_densities():
    # The likelihood solve in bfloat16 moves the samples and their log p only by rounding.
    from globeflow.methods import create_method

    torch.manual_seed(0)
    method = create_method("rfm", 8, width=32, depth=2)
    with torch.no_grad():  # a field that moves the samples (a new network starts at the identity)
        for p in method.parameters():
            p.add_(0.3 * torch.randn_like(p))
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    a32 = answer(method, emb, num_samples=64, precision="float32", calibration=None)
    a16 = answer(method, emb, num_samples=64, precision="bfloat16", calibration=None)
    for x, y in zip(a32, a16):
        km = great_circle_km(x.samples[:, 0], x.samples[:, 1], y.samples[:, 0], y.samples[:, 1])
        assert np.median(km) < 5.0 and km.max() > 0.0  # close, and bfloat16 did run
        # log p of this sharp random field is 7-17 nats: bfloat16 products move it by < 1%.
        dlp = np.abs(x.sample_log_prob - y.sample_log_prob)
        assert dlp.max() < 0.15 and dlp.mean() < 0.03
