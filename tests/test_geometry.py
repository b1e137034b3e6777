"""Laws and closed-form oracles for globeflow.geometry (coordinates, S² maps, uniform, vMF).

References are computed independently of the library: in high precision with mpmath where
rounding matters, otherwise with float64 formulas written out here.
"""

from __future__ import annotations

import functools
import math

import mpmath
import numpy as np
import pytest
import torch

from globeflow.geometry import (
    EARTH_RADIUS_KM,
    LOG_AREA,
    angle,
    exp_map,
    geodesic,
    geodesic_velocity,
    great_circle_km,
    inner,
    latlon_to_xyz,
    log_map,
    project,
    project_tangent,
    uniform,
    uniform_log_prob,
    vmf_log_prob,
    vmf_sample,
    wrap_longitude,
    xyz_to_latlon,
)

# The library's quadrature (and its Gauss–Legendre rule) is the oracle of the integral tests below.
from globeflow.geometry.harmonics import _gauss_legendre, sphere_quadrature

R = 6371.0
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand_sphere(n: int, seed: int, dtype=F64) -> torch.Tensor:
    z = torch.randn(n, 3, generator=_gen(seed), dtype=F64)
    return (z / z.norm(dim=-1, keepdim=True)).to(dtype)


def _rand_tangent(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Unit tangent vectors at x, random directions (independent of the library)."""
    z = torch.randn(x.shape, generator=_gen(seed), dtype=x.dtype)
    t = z - (z * x).sum(-1, keepdim=True) * x
    return t / t.norm(dim=-1, keepdim=True)


def _mp_angle(x, y) -> mpmath.mpf:
    """Exact angle between the directions of two float vectors (taken as exact binary values)."""
    with mpmath.workdps(50):
        a = [mpmath.mpf(float(v)) for v in x]
        b = [mpmath.mpf(float(v)) for v in y]
        cross = [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
        dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
        return mpmath.atan2(mpmath.sqrt(sum(c * c for c in cross)), dot)


def _np_angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """atan2(|x × y|, x·y) in float64: an independent reference for the angle."""
    c = torch.linalg.cross(x, y, dim=-1).norm(dim=-1)
    return torch.atan2(c, (x * y).sum(-1))


def _mp_haversine_km(lat1, lon1, lat2, lon2) -> mpmath.mpf:
    with mpmath.workdps(50):
        p1, l1, p2, l2 = (mpmath.radians(mpmath.mpf(float(v))) for v in (lat1, lon1, lat2, lon2))
        h = mpmath.sin((p2 - p1) / 2) ** 2 + mpmath.cos(p1) * mpmath.cos(p2) * mpmath.sin((l2 - l1) / 2) ** 2
        return 2 * mpmath.mpf(R) * mpmath.asin(mpmath.sqrt(h))


# --------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------


def test_earth_radius_constant():
    assert EARTH_RADIUS_KM == R


def test_latlon_xyz_matches_convention_at_cardinal_points():
    lat = np.array([0.0, 0.0, 90.0, -90.0, 0.0])
    lon = np.array([0.0, 90.0, 0.0, 0.0, -90.0])
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [0, -1, 0]], dtype=np.float64)
    np.testing.assert_allclose(latlon_to_xyz(lat, lon), expected, atol=1e-15)


def test_latlon_round_trip_numpy_random():
    rng = np.random.default_rng(0)
    lat = rng.uniform(-89.999, 89.999, 10_000)
    lon = rng.uniform(-180.0, 180.0, 10_000)
    xyz = latlon_to_xyz(lat, lon)
    assert isinstance(xyz, np.ndarray) and xyz.shape == (10_000, 3) and xyz.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1), 1.0, atol=1e-15)
    back = xyz_to_latlon(xyz)
    assert back.shape == (10_000, 2)
    np.testing.assert_allclose(back[:, 0], lat, atol=1e-11)
    np.testing.assert_allclose(back[:, 1], lon, atol=1e-11)


def test_latlon_round_trip_near_poles():
    """atan2(z, hypot(x, y)) keeps latitudes within 1 µ° of a pole; asin(z) would round them to ±90."""
    lat = np.array([90 - 1e-7, 90 - 1e-5, 89.9999, -90 + 1e-7, -90 + 3e-9])
    lon = np.array([12.0, -170.0, 179.0, -45.0, 100.0])
    back = xyz_to_latlon(latlon_to_xyz(lat, lon))
    np.testing.assert_allclose(back[:, 0], lat, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back[:, 1], lon, rtol=0, atol=1e-5)


def test_latlon_round_trip_torch_inputs():
    lat = torch.tensor([[10.0, -45.5], [89.0, -0.25]], dtype=F64)
    lon = torch.tensor([[-170.0, 3.0], [120.0, 179.5]], dtype=F64)
    xyz = latlon_to_xyz(lat, lon)
    assert isinstance(xyz, torch.Tensor) and xyz.shape == (2, 2, 3) and xyz.dtype == F64
    np.testing.assert_allclose(xyz.numpy(), latlon_to_xyz(lat.numpy(), lon.numpy()), atol=1e-15)
    back = xyz_to_latlon(xyz)
    assert isinstance(back, np.ndarray) and back.dtype == np.float64 and back.shape == (2, 2, 2)
    np.testing.assert_allclose(back[..., 0], lat.numpy(), atol=1e-11)
    np.testing.assert_allclose(back[..., 1], lon.numpy(), atol=1e-11)
    # float32 torch in -> float32 torch out, round trip to float32 accuracy
    xyz32 = latlon_to_xyz(lat.float(), lon.float())
    assert xyz32.dtype == torch.float32
    back32 = xyz_to_latlon(xyz32)
    np.testing.assert_allclose(back32[..., 0], lat.numpy(), atol=1e-4)
    np.testing.assert_allclose(back32[..., 1], lon.numpy(), atol=1e-4)


def test_xyz_to_latlon_accepts_non_unit_vectors():
    xyz = 7.5 * latlon_to_xyz(np.array([33.0, -60.0]), np.array([-100.0, 45.0]))
    np.testing.assert_allclose(xyz_to_latlon(xyz), [[33.0, -100.0], [-60.0, 45.0]], atol=1e-12)


@pytest.mark.parametrize("pole", [90.0, -90.0])
def test_poles(pole):
    lon = np.array([-180.0, -45.0, 0.0, 77.0, 180.0])
    xyz = latlon_to_xyz(np.full(5, pole), lon)
    np.testing.assert_allclose(xyz, np.tile([0.0, 0.0, np.sign(pole)], (5, 1)), atol=1e-15)
    back = xyz_to_latlon(xyz)
    assert np.all(back[:, 0] == pole)  # atan2 form: exactly ±90, not 89.99999...
    assert np.all((back[:, 1] >= -180.0) & (back[:, 1] < 180.0))
    # xyz -> latlon -> xyz is a fixed point even though the longitude is arbitrary at a pole
    np.testing.assert_allclose(latlon_to_xyz(back[:, 0], back[:, 1]), xyz, atol=1e-15)
    # exact pole vectors
    exact = np.array([[0.0, 0.0, np.sign(pole)], [0.0, 0.0, 3.0 * np.sign(pole)]])
    assert np.all(xyz_to_latlon(exact)[:, 0] == pole)


def test_antimeridian():
    lat = np.array([0.0, 0.0, 45.0, -30.0])
    lon = np.array([180.0, -180.0, 180.0, -180.0])
    back = xyz_to_latlon(latlon_to_xyz(lat, lon))
    np.testing.assert_allclose(back[:, 0], lat, atol=1e-12)
    np.testing.assert_allclose(back[:, 1], -180.0, atol=1e-12)
    assert np.all((back[:, 1] >= -180.0) & (back[:, 1] < 180.0))
    # points just either side of the antimeridian keep their side
    side = xyz_to_latlon(latlon_to_xyz(np.zeros(2), np.array([179.999999, -179.999999])))
    np.testing.assert_allclose(side[:, 1], [179.999999, -179.999999], atol=1e-10)
    # y = -0.0 with x < 0 is atan2 = -π; y = +0.0 is +π: both must land on -180
    signed = np.array([[-1.0, 0.0, 0.0], [-1.0, -0.0, 0.0]])
    np.testing.assert_array_equal(xyz_to_latlon(signed)[:, 1], [-180.0, -180.0])


def test_wrap_longitude_half_open_interval():
    lon = np.array([-540.0, -180.0, 180.0, 540.0, 359.0, -181.0, 0.0, 179.5, -179.5, 720.0])
    expected = np.array([-180.0, -180.0, -180.0, -180.0, -1.0, 179.0, 0.0, 179.5, -179.5, 0.0])
    np.testing.assert_allclose(wrap_longitude(lon), expected, atol=1e-12)
    # values just below -180 (or just below any odd multiple) must not round up to +180
    edge = np.array([np.nextafter(-180.0, -np.inf), -180.0 - 1e-300, np.nextafter(180.0, np.inf), np.nextafter(-540.0, -np.inf)])
    out = wrap_longitude(edge)
    assert np.all((out >= -180.0) & (out < 180.0)), out
    rng = np.random.default_rng(1)
    many = wrap_longitude(rng.uniform(-1e4, 1e4, 100_000))
    assert np.all((many >= -180.0) & (many < 180.0))


# --------------------------------------------------------------------------------------
# Great-circle distances
# --------------------------------------------------------------------------------------


def test_great_circle_paris_london():
    paris = (48.8566, 2.3522)
    london = (51.5074, -0.1278)
    d = great_circle_km(*paris, *london)
    ref = float(_mp_haversine_km(*paris, *london))
    assert abs(ref - 343.5) < 0.5  # sanity of the reference itself
    assert abs(float(d) - ref) < 1e-9
    # symmetric
    assert float(great_circle_km(*london, *paris)) == pytest.approx(float(d), rel=1e-15)


def test_great_circle_known_distances():
    # quarter of the equator, and equator -> pole
    np.testing.assert_allclose(great_circle_km(0.0, 0.0, 0.0, 90.0), math.pi * R / 2, rtol=1e-14)
    np.testing.assert_allclose(great_circle_km(0.0, 17.0, 90.0, 0.0), math.pi * R / 2, rtol=1e-14)
    # antipodes: πR exactly-ish, also across the antimeridian and pole-to-pole
    anti = great_circle_km(
        np.array([0.0, 90.0, 30.0, -12.5]),
        np.array([0.0, 0.0, 100.0, -179.0]),
        np.array([0.0, -90.0, -30.0, 12.5]),
        np.array([180.0, 0.0, -80.0, 1.0]),
    )
    np.testing.assert_allclose(anti, math.pi * R, rtol=1e-14)
    # identical points: exactly 0
    lat = np.array([0.0, 45.0, 90.0, -90.0, -33.3])
    lon = np.array([0.0, -120.0, 10.0, 180.0, 179.9])
    assert np.all(great_circle_km(lat, lon, lat, lon) == 0.0)
    # ±180 are the same meridian
    assert float(great_circle_km(10.0, 180.0, 10.0, -180.0)) < 1e-9


def test_great_circle_matches_haversine_random_and_broadcasts():
    rng = np.random.default_rng(2)
    lat1, lat2 = rng.uniform(-90, 90, (2, 200))
    lon1, lon2 = rng.uniform(-180, 180, (2, 200))
    d = great_circle_km(lat1, lon1, lat2, lon2)
    ref = np.array([float(_mp_haversine_km(*a)) for a in zip(lat1, lon1, lat2, lon2)])
    np.testing.assert_allclose(d, ref, rtol=1e-13, atol=1e-9)
    # broadcasting: one point against many
    d_b = great_circle_km(lat1[0], lon1[0], lat2, lon2)
    assert d_b.shape == (200,)
    np.testing.assert_allclose(d_b, great_circle_km(np.full(200, lat1[0]), np.full(200, lon1[0]), lat2, lon2), rtol=1e-15)


@pytest.mark.parametrize(
    "lat,lon",
    [(0.0, 0.0), (0.0, 100.0), (45.0, -120.0), (12.3, 179.9), (-60.0, 33.3), (89.5, 10.0), (-7.25, -179.0)],
)
@pytest.mark.parametrize("dlat,dlon", [(0.0, 1e-9), (1e-9, 0.0), (7e-10, 7e-10), (-3e-10, 1e-9)])
def test_great_circle_tiny_separation_relative_accuracy(lat, lon, dlat, dlon):
    """1e-9 degrees ≈ 0.1 mm: relative error 1e-6 against an mpmath haversine of the same inputs."""
    lat2, lon2 = lat + dlat, lon + dlon
    d = float(great_circle_km(lat, lon, lat2, lon2))
    ref = float(_mp_haversine_km(lat, lon, lat2, lon2))
    assert ref > 0
    assert abs(d / ref - 1.0) < 1e-6, (d, ref)


# --------------------------------------------------------------------------------------
# exp / log maps
# --------------------------------------------------------------------------------------


def _special_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs at the poles, across the antimeridian, near-antipodes and tiny angles (float64)."""
    xs, ys = [], []
    # poles, both as x and as y
    r = _rand_sphere(20, 10)
    for p in ([0.0, 0.0, 1.0], [0.0, 0.0, -1.0]):
        pt = torch.tensor(p, dtype=F64).expand(20, 3)
        xs += [pt, r]
        ys += [r, pt]
    # across the antimeridian
    lat = torch.linspace(-80, 80, 9, dtype=F64)
    xs.append(latlon_to_xyz(lat, torch.full_like(lat, 179.99)))
    ys.append(latlon_to_xyz(lat.flip(0), torch.full_like(lat, -179.97)))
    # near-antipodes (angle π − 1e-6) and tiny angles (1e-9 rad), built by rotation in a plane
    x = _rand_sphere(30, 11)
    e = _rand_tangent(x, 12)
    for theta in (math.pi - 1e-6, 1e-9, 1e-6, 3.0):
        xs.append(x)
        ys.append(project(math.cos(theta) * x + math.sin(theta) * e))
    return torch.cat(xs), torch.cat(ys)


def _all_pairs():
    x = _rand_sphere(2000, 0)
    y = _rand_sphere(2000, 1)
    sx, sy = _special_pairs()
    return torch.cat([x, sx]), torch.cat([y, sy])


def test_exp_log_inverse_float64():
    x, y = _all_pairs()
    v = log_map(x, y)
    back = exp_map(x, v)
    assert torch.isfinite(v).all()
    err = (back - y).norm(dim=-1)
    assert err.max() < 1e-12, err.max()


def test_log_norm_is_angle_and_log_is_tangent():
    x, y = _all_pairs()
    v = log_map(x, y)
    ref = _np_angle(x, y)
    torch.testing.assert_close(v.norm(dim=-1), ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(angle(x, y), ref, rtol=1e-9, atol=1e-12)
    assert inner(x, v).abs().max() < 1e-12


def test_log_and_angle_against_mpmath_tiny_and_near_antipodal():
    x = _rand_sphere(5, 20)
    e = _rand_tangent(x, 21)
    for theta, rtol in ((1e-9, 1e-9), (1e-12, 1e-6), (1e-4, 1e-12), (math.pi - 1e-6, 1e-14), (math.pi - 1e-10, 1e-14)):
        y = project(math.cos(theta) * x + math.sin(theta) * e)
        ln = log_map(x, y).norm(dim=-1)
        an = angle(x, y)
        for i in range(len(x)):
            ref = float(_mp_angle(x[i], y[i]))
            assert abs(float(ln[i]) - ref) <= rtol * ref, (theta, float(ln[i]), ref)
            assert abs(float(an[i]) - ref) <= rtol * ref, (theta, float(an[i]), ref)


def test_dist_of_exp_equals_norm_of_v():
    x = _rand_sphere(3000, 30)
    e = _rand_tangent(x, 31)
    norms = torch.cat([
        torch.rand(2000, generator=_gen(32), dtype=F64) * (math.pi - 1e-3),
        torch.logspace(-12, -1, 500, dtype=F64),
        math.pi - torch.logspace(-7, -2, 500, dtype=F64),
    ])
    v = norms[:, None] * e
    y = exp_map(x, v)
    np.testing.assert_allclose(y.norm(dim=-1).numpy(), 1.0, atol=2e-16 * 4)
    torch.testing.assert_close(_np_angle(x, y), norms, rtol=1e-9, atol=1e-13)
    # and log recovers v itself (not just its length); near the cut locus the direction is
    # ill-conditioned: an O(ε) error in y moves it by O(ε / (π − |v|))
    err = (log_map(x, y) - v).norm(dim=-1)
    assert (err <= 1e-13 + 2e-15 / (math.pi - norms)).all(), (err * (math.pi - norms)).max()


def test_exp_of_zero_and_log_of_same_point():
    x = _rand_sphere(50, 40)
    assert (exp_map(x, torch.zeros_like(x)) - x).abs().max() <= 2.3e-16  # re-normalised: ≤ 1 ulp
    assert (log_map(x, x).abs().max()) == 0.0


def test_exp_result_is_unit_even_for_long_vectors():
    x = _rand_sphere(500, 41)
    e = _rand_tangent(x, 42)
    for length in (1e-20, 0.5, math.pi, 10.0, 1000.0):
        y = exp_map(x, length * e)
        assert (y.norm(dim=-1) - 1).abs().max() < 1e-15
    # exp is 2π-periodic along a great circle
    torch.testing.assert_close(exp_map(x, (0.7 + 2 * math.pi) * e), exp_map(x, 0.7 * e), rtol=0, atol=1e-14)


def test_exact_antipodes_give_tangent_of_length_pi():
    x = torch.cat([
        torch.eye(3, dtype=F64),
        -torch.eye(3, dtype=F64),
        _rand_sphere(20_000, 50),
    ])
    for dtype, tol in ((F64, 1e-12), (torch.float32, 1e-5)):
        xd = x.to(dtype)
        v = log_map(xd, -xd)
        assert torch.isfinite(v).all()
        torch.testing.assert_close(v.norm(dim=-1), torch.full((len(x),), math.pi, dtype=dtype), rtol=0, atol=tol)
        assert inner(xd, v).abs().max() < tol * 10, inner(xd, v).abs().max()
        # and exp along it lands on the antipode
        assert (exp_map(xd, v) + xd).norm(dim=-1).max() < tol * 10


def test_near_antipodes_log_stays_tangent():
    """Within rounding of the antipode the direction is arbitrary but must still be tangent."""
    x = _rand_sphere(20_000, 51)
    for scale in (1e-15, 1e-13, 1e-11):
        y = project(-x + scale * torch.randn(x.shape, generator=_gen(52), dtype=F64))
        v = log_map(x, y)
        assert inner(x, v).abs().max() < 1e-9
        torch.testing.assert_close(v.norm(dim=-1), _np_angle(x, y), rtol=0, atol=1e-9)
        assert (exp_map(x, v) - y).norm(dim=-1).max() < 1e-12


def test_project_and_project_tangent_laws():
    z = torch.randn(1000, 3, generator=_gen(60), dtype=F64) * torch.logspace(-100, 100, 1000, dtype=F64)[:, None]
    p = project(z)
    assert (p.norm(dim=-1) - 1).abs().max() < 1e-15
    torch.testing.assert_close(project(p), p, rtol=0, atol=4.5e-16)
    torch.testing.assert_close(project(3.7 * z), p, rtol=0, atol=4.5e-16)
    # same direction as z
    assert (torch.linalg.cross(p, z / z.norm(dim=-1, keepdim=True), dim=-1).norm(dim=-1)).max() < 1e-15
    x = _rand_sphere(1000, 61)
    v = torch.randn(1000, 3, generator=_gen(62), dtype=F64)
    t = project_tangent(x, v)
    assert inner(x, t).abs().max() < 1e-15
    torch.testing.assert_close(project_tangent(x, t), t, rtol=0, atol=1e-15)
    # the removed part is normal: v − t ∥ x
    assert torch.linalg.cross(v - t, x, dim=-1).norm(dim=-1).max() < 1e-14
    # Pythagoras
    torch.testing.assert_close(t.norm(dim=-1) ** 2 + inner(x, v) ** 2, v.norm(dim=-1) ** 2, rtol=1e-13, atol=0)


@pytest.mark.parametrize("theta", [1e-3, 1e-4, 1e-5, 1e-6])
def test_float32_tiny_angles_are_stable(theta):
    # x exactly representable and on axis-free directions, y at angle θ, both rounded to float32
    x64 = _rand_sphere(200, 70)
    e64 = _rand_tangent(x64, 71)
    y64 = project(math.cos(theta) * x64 + math.sin(theta) * e64)
    x, y = x64.float(), y64.float()
    v = log_map(x, y)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    # reference: the exact angle between the float32 vectors as given
    ref = torch.tensor([float(_mp_angle(x[i].double(), y[i].double())) for i in range(len(x))], dtype=F64)
    rel = ((v.double().norm(dim=-1) - ref).abs() / ref).max()
    assert rel < 1e-4 if theta >= 1e-5 else rel < 1e-2, rel
    back = exp_map(x, v)
    assert torch.isfinite(back).all()
    assert (back - y).norm(dim=-1).max() < 4e-7
    # exp of a tiny float32 tangent vector moves by its length
    w = (theta * _rand_tangent(x64, 72)).float()
    z = exp_map(x, w)
    assert torch.isfinite(z).all() and ((z.norm(dim=-1) - 1).abs().max() < 2e-7)
    moved = torch.tensor([float(_mp_angle(x[i].double(), z[i].double())) for i in range(len(x))], dtype=F64)
    assert ((moved - w.double().norm(dim=-1)).abs()).max() < 3e-7


# --------------------------------------------------------------------------------------
# Geodesics
# --------------------------------------------------------------------------------------


def _geo_pairs():
    x0 = _rand_sphere(500, 80)
    x1 = _rand_sphere(500, 81)
    e = _rand_tangent(x0, 82)
    near = project(math.cos(1e-7) * x0[:50] + math.sin(1e-7) * e[:50])
    far = project(math.cos(math.pi - 1e-4) * x0[:50] + math.sin(math.pi - 1e-4) * e[:50])
    return torch.cat([x0, x0[:50], x0[:50]]), torch.cat([x1, near, far])


def test_geodesic_velocity_endpoints():
    x0, x1 = _geo_pairs()
    n = len(x0)
    xs0, _ = geodesic_velocity(x0, x1, torch.zeros(n, 1, dtype=F64))
    xs1, _ = geodesic_velocity(x0, x1, torch.ones(n, 1, dtype=F64))
    assert (xs0 - x0).norm(dim=-1).max() < 1e-15
    assert (xs1 - x1).norm(dim=-1).max() < 1e-12
    g0 = geodesic(x0, x1, torch.zeros(n, 1, dtype=F64))
    g1 = geodesic(x0, x1, torch.ones(n, 1, dtype=F64))
    assert (g0 - x0).norm(dim=-1).max() < 1e-15
    assert (g1 - x1).norm(dim=-1).max() < 1e-12


def test_geodesic_velocity_matches_finite_difference_and_is_tangent():
    x0, x1 = _geo_pairs()
    n = len(x0)
    s = torch.rand(n, 1, generator=_gen(83), dtype=F64) * 0.9 + 0.05
    theta = _np_angle(x0, x1)
    # step: truncation error ~ h²θ³/6, rounding ~ ε/h; tiny arcs are nearly straight so take h big
    h = torch.where(theta[:, None] < 1e-3, 0.04, 1e-5).to(F64)
    x_s, v_s = geodesic_velocity(x0, x1, s)
    fd = (geodesic(x0, x1, s + h) - geodesic(x0, x1, s - h)) / (2 * h)
    rel = (v_s - fd).norm(dim=-1) / theta
    assert rel[theta >= 1e-3].max() < 1e-8
    assert rel[theta < 1e-3].max() < 1e-7  # rounding ε/(hθ) dominates for θ = 1e-7
    # x_s agrees with exp_{x0}(s log_{x0} x1), is on the sphere at distance sθ from x0, (1-s)θ from x1
    torch.testing.assert_close(x_s, geodesic(x0, x1, s), rtol=0, atol=1e-13)
    assert (x_s.norm(dim=-1) - 1).abs().max() < 1e-15
    torch.testing.assert_close(_np_angle(x0, x_s), s[:, 0] * theta, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_np_angle(x_s, x1), (1 - s[:, 0]) * theta, rtol=1e-9, atol=1e-12)
    # velocity: tangent at x_s, norm = d(x0, x1)
    assert (inner(x_s, v_s).abs() / theta).max() < 1e-12
    torch.testing.assert_close(v_s.norm(dim=-1), theta, rtol=1e-9, atol=1e-14)


def test_geodesic_velocity_constant_path():
    x0 = _rand_sphere(10, 84)
    x_s, v_s = geodesic_velocity(x0, x0, torch.full((10, 1), 0.3, dtype=F64))
    assert torch.isfinite(v_s).all() and v_s.abs().max() == 0.0
    torch.testing.assert_close(x_s, x0, rtol=0, atol=4.5e-16)


# --------------------------------------------------------------------------------------
# Uniform distribution
# --------------------------------------------------------------------------------------


def test_uniform_moments():
    n = 200_000
    x = uniform((n,), generator=_gen(90), dtype=F64)
    assert x.shape == (n, 3) and x.dtype == F64
    assert (x.norm(dim=-1) - 1).abs().max() < 1e-15
    # CLT: Var(x_i) = 1/3; Var(x_i²) = 1/5 − 1/9 = 4/45; Var(x_i x_j) = E[x_i² x_j²] = 1/15
    mean = x.mean(0)
    assert mean.abs().max() < 5 * math.sqrt(1 / 3 / n), mean
    m2 = x.T @ x / n
    diag_tol = 5 * math.sqrt(4 / 45 / n)
    off_tol = 5 * math.sqrt(1 / 15 / n)
    assert (m2.diagonal() - 1 / 3).abs().max() < diag_tol, m2
    off = m2 - torch.diag(m2.diagonal())
    assert off.abs().max() < off_tol, m2
    # z is uniform on [−1, 1] (Archimedes): its CDF at a few points
    for q in (-0.5, 0.0, 0.8):
        frac = (x[:, 2] < q).double().mean().item()
        p = (q + 1) / 2
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_uniform_shape_and_dtype():
    x = uniform((4, 5), generator=_gen(91))
    assert x.shape == (4, 5, 3) and x.dtype == torch.float32
    assert (x.norm(dim=-1) - 1).abs().max() < 1e-6


def test_uniform_log_prob():
    x = _rand_sphere(7, 92).reshape(7, 1, 3)
    lp = uniform_log_prob(x)
    assert lp.shape == (7, 1) and lp.dtype == F64
    assert torch.all(lp == -math.log(4 * math.pi))
    assert LOG_AREA == pytest.approx(math.log(4 * math.pi), rel=1e-16)


# --------------------------------------------------------------------------------------
# von Mises–Fisher
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _sphere_quadrature(n_z: int = 500, n_phi: int = 500):
    """Nodes and weights integrating exactly-ish over S²: Gauss–Legendre in z, trapezoid in φ."""
    return sphere_quadrature(n_z, n_phi)


def test_quadrature_itself_is_exact_on_known_integrals():
    z, wz = _gauss_legendre(50)
    np.testing.assert_allclose(z, np.polynomial.legendre.leggauss(50)[0][::-1], rtol=0, atol=1e-14)
    for k in range(0, 99, 2):  # exact for polynomials of degree ≤ 2n − 1
        assert float((wz * z**k).sum()) == pytest.approx(2 / (k + 1), rel=1e-13), k
    pts, w = _sphere_quadrature()
    assert float(w.sum()) == pytest.approx(4 * math.pi, rel=1e-13)
    assert float((w * pts[:, 0] ** 2).sum()) == pytest.approx(4 * math.pi / 3, rel=1e-12)
    assert float((w * pts[:, 0] ** 2 * pts[:, 1] ** 2 * pts[:, 2] ** 2).sum()) == pytest.approx(4 * math.pi / 105, rel=1e-12)


@pytest.mark.parametrize("kappa", [1e-6, 1e-3, 1.0, 50.0, 500.0])
def test_vmf_density_integrates_to_one(kappa):
    pts, w = _sphere_quadrature()
    mus = torch.tensor([[0.0, 0.0, 1.0], [0.3, -0.5, 0.2], [-1.0, 0.0, 0.0]], dtype=F64)
    mus = mus / mus.norm(dim=-1, keepdim=True)
    for mu in mus:
        lp = vmf_log_prob(pts, mu.expand_as(pts), torch.full((len(pts),), kappa, dtype=F64))
        total = float((w * lp.exp()).sum())
        assert total == pytest.approx(1.0, abs=1e-9), (kappa, mu, total)
        # first moment: ∫ x p(x) dx = (coth κ − 1/κ) μ
        a = 1 / math.tanh(kappa) - 1 / kappa if kappa > 1e-3 else kappa / 3
        m1 = (w[:, None] * lp.exp()[:, None] * pts).sum(0)
        torch.testing.assert_close(m1, a * mu, rtol=0, atol=1e-8)


def _mp_vmf_log_prob(cos_angle, kappa) -> float:
    with mpmath.workdps(50):
        k = mpmath.mpf(kappa)
        return float(mpmath.log(k / (4 * mpmath.pi * mpmath.sinh(k))) + k * mpmath.mpf(cos_angle))


@pytest.mark.parametrize("kappa", [1e-6, 3e-5, 0.99e-4, 1e-4, 1.01e-4, 1e-3, 0.1, 1.0, 10.0, 50.0, 700.0, 1e4])
def test_vmf_log_prob_matches_closed_form(kappa):
    mu = _rand_sphere(1, 100)[0]
    # points at exactly known angles from μ: cos computed in mpmath from the float64 vectors
    e = _rand_tangent(mu[None], 101)[0]
    thetas = [0.0, 1e-6, 1e-3, 0.3, 1.5, 3.0, math.pi]
    xs = torch.stack([project(math.cos(t) * mu + math.sin(t) * e) for t in thetas])
    lp = vmf_log_prob(xs, mu.expand_as(xs), torch.full((len(xs),), kappa, dtype=F64))
    assert torch.isfinite(lp).all()
    for i in range(len(xs)):
        with mpmath.workdps(50):
            c = mpmath.cos(_mp_angle(mu, xs[i]))
        ref = _mp_vmf_log_prob(c, kappa)
        assert float(lp[i]) == pytest.approx(ref, abs=1e-12 * max(1.0, kappa)), (kappa, thetas[i])


@pytest.mark.parametrize("kappa", [1e-3, 0.5, 1.0, 7.0, 50.0])
def test_vmf_log_prob_matches_naive_formula(kappa):
    mu = _rand_sphere(1, 102)[0]
    x = _rand_sphere(1000, 103)
    naive = np.log(kappa / (4 * np.pi * np.sinh(kappa)) * np.exp(kappa * (x.numpy() @ mu.numpy())))
    lp = vmf_log_prob(x, mu.expand_as(x), torch.full((1000,), kappa, dtype=F64)).numpy()
    np.testing.assert_allclose(lp, naive, rtol=0, atol=1e-12)


def test_vmf_log_prob_extreme_kappas():
    mu = _rand_sphere(3, 104)
    x = _rand_sphere(3, 105)
    tiny = vmf_log_prob(x, mu, torch.full((3,), 1e-6, dtype=F64))
    assert torch.isfinite(tiny).all()
    # κ → 0: uniform up to κ μᵀx
    assert (tiny + math.log(4 * math.pi)).abs().max() < 2e-6
    huge = torch.full((3,), 1e7, dtype=F64)
    at_mean = vmf_log_prob(mu, mu, huge)
    assert torch.isfinite(at_mean).all()
    torch.testing.assert_close(at_mean, torch.full((3,), math.log(1e7 / (2 * math.pi)), dtype=F64), rtol=1e-15, atol=0)
    # 1e-4 rad from the mean: log density drops by κ(1 − cos θ) ≈ 0.05
    e = _rand_tangent(mu, 106)
    near = project(math.cos(1e-4) * mu + math.sin(1e-4) * e)
    lp = vmf_log_prob(near, mu, huge)
    for i in range(3):
        with mpmath.workdps(50):
            ref = math.log(1e7 / (2 * math.pi)) - float(1e7 * (1 - mpmath.cos(_mp_angle(mu[i], near[i]))))
        assert float(lp[i]) == pytest.approx(ref, abs=1e-7)
    # far from the mean: very negative but finite
    assert torch.isfinite(vmf_log_prob(-mu, mu, huge)).all()
    # float32 also finite at both ends
    assert torch.isfinite(vmf_log_prob(x.float(), mu.float(), torch.full((3,), 1e-6))).all()
    assert torch.isfinite(vmf_log_prob(mu.float(), mu.float(), torch.full((3,), 1e7))).all()


def _mp_mean_resultant(kappa: float) -> tuple[float, float]:
    """A(κ) = E[μᵀx] = coth κ − 1/κ and Var(μᵀx) = 1 − 2A/κ − A², in high precision."""
    with mpmath.workdps(60):
        k = mpmath.mpf(kappa)
        a = mpmath.coth(k) - 1 / k
        var = 1 - 2 * a / k - a * a
        return float(a), float(var)


def test_vmf_sample_moments():
    kappas = [0.01, 1.0, 10.0, 1000.0, 1e6]
    n = 100_000
    mu = _rand_sphere(len(kappas), 110)
    mu[0] = torch.tensor([0.0, 0.0, 1.0], dtype=F64)  # one at the pole
    x = vmf_sample(mu, torch.tensor(kappas, dtype=F64), n, generator=_gen(111))
    assert x.shape == (len(kappas), n, 3) and x.dtype == F64
    assert (x.norm(dim=-1) - 1).abs().max() < 1e-15
    # an orthonormal frame (e1, e2) at each μ chosen independently of the sampler
    e1 = _rand_tangent(mu, 112)
    e2 = torch.linalg.cross(mu, e1, dim=-1)
    for i, k in enumerate(kappas):
        a, var_w = _mp_mean_resultant(k)
        w = x[i] @ mu[i]
        # mean resultant length along μ
        assert abs(w.mean().item() - a) < 5 * math.sqrt(var_w / n) + 1e-14, (k, w.mean().item(), a)
        assert w.max() <= 1.0 + 1e-15 and w.min() >= -1.0 - 1e-15
        # isotropy around μ: tangent components have mean 0 and equal variance A/κ
        t1, t2 = x[i] @ e1[i], x[i] @ e2[i]
        tvar = a / k  # E[t1²] = (1 − E[w²]) / 2 = A/κ
        for t in (t1, t2):
            assert abs(t.mean().item()) < 5 * math.sqrt(tvar / n), (k, t.mean().item())
            m2 = (t * t).mean().item()
            se = math.sqrt(((t**4).mean().item() - m2 * m2) / n)
            assert abs(m2 - tvar) < 5 * se, (k, m2, tvar)
        se12 = math.sqrt(((t1 * t2) ** 2).mean().item() / n)
        assert abs((t1 * t2).mean().item()) < 5 * se12
        # mean direction ≈ μ
        m = x[i].mean(0)
        ang = _np_angle(m[None], mu[i][None]).item()
        assert ang < 5 * math.sqrt(2 * tvar / n) / a, (k, ang)


def test_vmf_sample_extreme_kappa_distribution_of_w():
    """1 − w is Exp(κ) truncated to [0, 2]; check its CDF for κ = 1e6 and uniformity for κ → 0."""
    n = 100_000
    mu = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    x = vmf_sample(mu, torch.tensor([1e6, 1e-9], dtype=F64), n, generator=_gen(113))
    one_minus_w = 1 - x[0, :, 0]
    for q in (0.1e-6, 1e-6, 3e-6):
        p = 1 - math.exp(-1e6 * q)
        frac = (one_minus_w < q).double().mean().item()
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-3, (q, frac, p)
    w = x[1, :, 1]
    for q in (-0.5, 0.0, 0.9):
        p = (q + 1) / 2
        assert abs((w < q).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_vmf_sample_validates_shape():
    with pytest.raises(ValueError, match="mu"):
        vmf_sample(torch.zeros(3, dtype=F64), torch.ones(1, dtype=F64), 4)
