"""GeoJSON / raster export of HPD regions and the PNG map."""

import json
import math

import numpy as np
import pytest
from _density_helpers import vmf_mixture
from matplotlib.path import Path as MplPath

from globeflow.density import density_map
from globeflow.viz import (
    hpd_level_raster,
    hpd_polygons,
    region_thresholds,
    regions_geojson,
    save_density_npz,
    write_esri_ascii,
    write_geojson,
)
from globeflow.viz.maps import equal_earth, equal_earth_inverse, load_basemap, plot_density_map


def _segments_cross(ring):
    """Whether two non-adjacent edges of a closed ring properly intersect (O(K²), small rings)."""
    a, b = ring[:-1], ring[1:]
    d = b - a
    k = len(a)

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    # Orientation of each edge's end points w.r.t. every other edge.
    o1 = cross(d[:, None], a[None] - a[:, None])
    o2 = cross(d[:, None], b[None] - a[:, None])
    o3 = cross(d[None], a[:, None] - a[None])
    o4 = cross(d[None], b[:, None] - a[None])
    proper = (o1 * o2 < 0) & (o3 * o4 < 0)
    i, j = np.triu_indices(k, 2)
    adjacent = (i == 0) & (j == k - 1)
    return bool(proper[i[~adjacent], j[~adjacent]].any())


def _signed_area(ring):
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * (np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def check_geojson_polygon(poly):
    """RFC 7946 rules: closed rings of ≥ 4 positions, exterior CCW, holes CW and inside it,
    longitudes/latitudes in range, no self-intersections."""
    rings = [np.asarray(r, dtype=np.float64) for r in poly]
    for k, r in enumerate(rings):
        assert r.ndim == 2 and r.shape[1] == 2 and len(r) >= 4
        assert np.array_equal(r[0], r[-1])
        assert np.all(np.abs(r[:, 0]) <= 180.0) and np.all(np.abs(r[:, 1]) <= 90.0)
        assert (_signed_area(r) > 0) == (k == 0)
        assert not _segments_cross(r)
    shell = MplPath(rings[0])
    for hole in rings[1:]:
        assert shell.contains_points(hole[:-1], radius=-1e-9).mean() > 0.95


def _rasterise(polygons, lat, lon):
    ll = np.meshgrid(lat, lon, indexing="ij")
    pts = np.stack([ll[1].ravel(), ll[0].ravel()], 1)
    inside = np.zeros(len(pts), bool)
    for poly in polygons:
        ins = MplPath(np.asarray(poly[0])).contains_points(pts)
        for hole in poly[1:]:
            ins &= ~MplPath(np.asarray(hole)).contains_points(pts)
        inside |= ins
    return inside.reshape(ll[0].shape)


@pytest.fixture(scope="module")
def world():
    # Modes straddling the antimeridian, around the north pole, and an ordinary one.
    log_prob, sample = vmf_mixture([(10.0, 179.0), (85.0, 30.0), (-40.0, -60.0)], [300.0, 50.0, 20.0], [0.4, 0.3, 0.3])
    s = sample(4000)
    return density_map(log_prob, 1.0, samples_xyz=s[:1000]), log_prob(s)


def test_geojson_regions_are_valid_and_match_the_raster(world, tmp_path):
    dmap, lp = world
    collection = regions_geojson(dmap, (0.5, 0.9, 0.95), sample_log_prob=lp, properties={"row": 7})
    assert [f["properties"]["level"] for f in collection["features"]] == [0.95, 0.9, 0.5]
    path = write_geojson(tmp_path / "r.geojson", collection)
    loaded = json.loads(path.read_text())
    assert loaded["type"] == "FeatureCollection"
    for feature in loaded["features"]:
        props = feature["properties"]
        assert props["row"] == 7 and props["area_km2"] > 0 and props["area_se_km2"] > 0
        assert props["mass"] == pytest.approx(props["level"], abs=0.01)
        assert props["area_km2_map"] == pytest.approx(props["area_km2"], rel=0.05)
        polys = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "MultiPolygon"
        for poly in polys:
            check_geojson_polygon(poly)
        # The antimeridian mode is split in two polygons meeting at ±180; none crosses it.
        east = [p for p in polys if np.max(np.asarray(p[0])[:, 0]) == 180.0]
        west = [p for p in polys if np.min(np.asarray(p[0])[:, 0]) == -180.0]
        assert east and west
        # The polar region reaches the pole.
        assert any(np.max(np.asarray(p[0])[:, 1]) == 90.0 for p in polys)
        inside = _rasterise(polys, dmap.lat, dmap.lon)
        expected = dmap.log_prob >= props["threshold_log_prob"]
        assert (inside != expected).mean() < 0.002


def test_polygons_of_an_annulus_have_a_hole():
    lat = -90.0 + np.arange(180) + 0.5
    lon = -180.0 + np.arange(360) + 0.5
    ll = np.meshgrid(lat, lon, indexing="ij")
    # Distance in degrees from (20, 40) (flat approximation is fine here): a ring 10–20° away.
    d = np.hypot(ll[0] - 20.0, (ll[1] - 40.0) * np.cos(np.deg2rad(20.0)))
    values = -((d - 15.0) ** 2) / 10.0
    polys = hpd_polygons(lat, lon, values, -2.0)
    assert len(polys) == 1 and len(polys[0]) == 2
    check_geojson_polygon([r.tolist() for r in polys[0]])
    assert (_rasterise(polys, lat, lon) != (values >= -2.0)).mean() < 0.002
    assert hpd_polygons(lat, lon, values, 5.0) == []
    # The ring checker itself can fail: a bow-tie crosses itself.
    assert _segments_cross(np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))


def test_raster_exports_round_trip(world, tmp_path):
    dmap, lp = world
    regions = region_thresholds(dmap, (0.5, 0.9), sample_log_prob=lp)
    levels = hpd_level_raster(dmap, [(r["level"], r["threshold_log_prob"]) for r in regions])
    assert set(np.unique(levels)) == {0, 50, 90}
    assert np.all((levels == 50) <= (dmap.log_prob >= regions[0]["threshold_log_prob"]))
    path = write_esri_ascii(tmp_path / "levels.asc", dmap.lat, dmap.lon, levels)
    lines = path.read_text().splitlines()
    header = dict(line.split() for line in lines[:6])
    assert header["ncols"] == "360" and header["nrows"] == "180"
    assert float(header["xllcorner"]) == -180.0 and float(header["yllcorner"]) == -90.0
    back = np.loadtxt(lines[6:], dtype=np.int64)
    np.testing.assert_array_equal(back[::-1], levels)  # the format's first row is the north
    logp = write_esri_ascii(tmp_path / "logp.asc", dmap.lat, dmap.lon, dmap.log_prob)
    np.testing.assert_allclose(np.loadtxt(logp, skiprows=6)[::-1], dmap.log_prob, rtol=1e-5)
    npz = save_density_npz(tmp_path / "map.npz", dmap, level_raster=levels)
    with np.load(npz, allow_pickle=False) as d:
        np.testing.assert_array_equal(d["log_prob"], dmap.log_prob)
        np.testing.assert_array_equal(d["hpd_level"], levels)
    with pytest.raises(ValueError, match="values"):
        write_esri_ascii(tmp_path / "bad.asc", dmap.lat, dmap.lon, levels[:10])


def test_equal_earth_round_trip_and_equal_area():
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-89.9, 89.9, 1000), rng.uniform(-180, 180, 1000)
    x, y = equal_earth(lat, lon)
    lat2, lon2, on = equal_earth_inverse(x, y)
    assert on.all()
    np.testing.assert_allclose(lat2, lat, atol=1e-9)
    np.testing.assert_allclose(lon2, lon, atol=1e-9)
    # Equal area: the map area of a 1° cell ∝ its area on the sphere, at any latitude.
    ratios = []
    for phi in (0.0, 30.0, 60.0, 85.0):
        corners = np.array([[phi, 10.0], [phi, 11.0], [phi + 1, 11.0], [phi + 1, 10.0], [phi, 10.0]])
        px, py = equal_earth(corners[:, 0], corners[:, 1])
        map_area = abs(_signed_area(np.stack([px, py], 1)))
        sphere = np.deg2rad(1.0) * (math.sin(math.radians(phi + 1)) - math.sin(math.radians(phi)))
        ratios.append(map_area / sphere)
    np.testing.assert_allclose(ratios, ratios[0], rtol=2e-3)
    assert not equal_earth_inverse(np.array([3.0]), np.array([0.0]))[2][0]


def test_basemap_is_natural_earth_110m():
    rings = load_basemap()
    assert len(rings) > 200 and sum(len(r) for r in rings) > 10_000
    pts = np.concatenate(rings)
    assert np.all(np.abs(pts[:, 0]) <= 180) and np.all(np.abs(pts[:, 1]) <= 90)
    # Paris is on land, the middle of the Atlantic is not.
    paths = [MplPath(r) for r in rings]
    assert any(p.contains_point((2.35, 48.85)) for p in paths)
    assert not any(p.contains_point((-30.0, 30.0)) for p in paths)


def test_plot_density_map_writes_a_png(world, tmp_path):
    dmap, lp = world
    regions = region_thresholds(dmap, (0.5, 0.9), sample_log_prob=lp)
    out = plot_density_map(
        dmap,
        tmp_path / "map.png",
        samples=np.array([[10.0, 179.0], [-40.0, -60.0]]),
        estimate=(10.0, 179.0),
        truth=(12.0, -178.0),
        regions=[(r["level"], r["threshold_log_prob"]) for r in regions],
        title="test",
        width_px=400,
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 400 <= width <= 500 and 250 <= height <= 350


def test_density_report_writes_files_and_places_the_truth(tmp_path):
    from test_density_maps import _VMFMethod

    from globeflow.viz import density_report

    method = _VMFMethod()
    emb = np.array([35.0, 139.0, math.log(300.0)], dtype=np.float32)
    summary = density_report(
        method,
        emb,
        out_png=tmp_path / "m.png",
        geojson=tmp_path / "r.geojson",
        ascii_grid=tmp_path / "r.asc",
        truth=(35.0, 139.0),
        resolution_deg=2.0,
        num_samples=500,
    )
    assert abs(summary["mass"] - 1.0) < 0.01
    assert summary["truth"]["smallest_level_containing"] == 0.5  # the mode is in every region
    est = summary["estimate"]
    assert abs(est[0] - 35.0) < 3 and abs(est[1] - 139.0) < 3
    assert [r["level"] for r in summary["regions"]] == [0.5, 0.9, 0.95]
    for name in ("m.png", "r.geojson", "r.asc"):
        assert (tmp_path / name).stat().st_size > 100
    far = density_report(method, emb, truth=(-35.0, -41.0), resolution_deg=4.0, num_samples=200)
    assert far["truth"]["smallest_level_containing"] is None
