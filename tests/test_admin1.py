"""The shipped admin-1 (state/province) lines: real borders where they are, and drawn in the zoom panel."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
from _answer_helpers import FixedVMF

from globeflow.answers import answer
from globeflow.basemap import ADMIN1_CREDIT, admin1_geojson, admin1_lines, admin1_lines_within
from globeflow.describe import map_annotations
from globeflow.geometry.coords import latlon_to_xyz


def _has_meridian_segment(lon: float, lat_a: float, lat_b: float, tol: float = 0.05) -> bool:
    """Some stored line runs along the meridian ``lon`` from ``lat_a`` to ``lat_b`` (± tol degrees)."""
    for line in admin1_lines_within(lat_a - 1, lat_b + 1, lon - 1, lon + 1):
        on = np.abs(line[:, 0] - lon) <= tol
        # Consecutive vertices on the meridian, together spanning [lat_a, lat_b].
        run = on[:-1] & on[1:]
        for i in np.flatnonzero(run):
            lo, hi = sorted((line[i, 1], line[i + 1, 1]))
            if lo <= lat_a + tol and hi >= lat_b - tol:
                return True
    return False


def test_state_borders_that_are_meridians_are_where_they_are():
    # Illinois–Indiana (87.53°W, from the Wabash at ~39.35°N to Lake Michigan at 41.76°N) and
    # Ohio–Indiana (84.81°W, 39.10°N to 41.70°N): straight surveyed lines, so closed-form oracles.
    assert _has_meridian_segment(-87.53, 39.4, 41.7)
    assert _has_meridian_segment(-84.81, 39.15, 41.65)
    # A meridian with no state border along it (central Illinois) is not found.
    assert not _has_meridian_segment(-89.0, 39.4, 41.7)


def test_lines_cover_many_countries_and_none_is_degenerate():
    from matplotlib.path import Path

    lines = admin1_lines()
    assert len(lines) > 10_000 and all(len(x) >= 2 for x in lines)
    pts = np.concatenate(lines)
    assert np.all(np.abs(pts[:, 0]) <= 180.0) and np.all(np.abs(pts[:, 1]) <= 90.0)
    ref = resources.files("globeflow") / "viz" / "data" / "ne_110m_countries.npz"
    with resources.as_file(ref) as path, np.load(path) as d:
        ring_pts = d["lonlat"].astype(float) / float(d["scale"])
        off, owner, names = d["ring_offsets"], d["ring_country"], d["country_names"]
    mid = np.array([x[len(x) // 2] for x in lines])
    counts = {}
    for want in ("China", "India", "Russia", "Brazil", "France", "Nigeria", "United States of America", "Australia"):
        (k,) = np.flatnonzero(names == want)
        inside = np.zeros(len(mid), dtype=bool)
        for r in np.flatnonzero(owner == k):
            inside |= Path(ring_pts[off[r] : off[r + 1]]).contains_points(mid)
        counts[want] = int(inside.sum())
    assert all(n >= 20 for n in counts.values()), counts


def test_lines_within_a_box_meet_it_and_follow_it_round_the_globe():
    box = (36.0, 43.0, -92.0, -80.0)
    got = admin1_lines_within(*box)
    assert len(got) > 20
    for line in got:
        assert line[:, 0].max() >= box[2] and line[:, 0].min() <= box[3]
        assert line[:, 1].max() >= box[0] and line[:, 1].min() <= box[1]
    # The same box one globe east: the same lines, shifted by +360°.
    east = admin1_lines_within(box[0], box[1], box[2] + 360, box[3] + 360)
    assert len(east) == len(got) and all(np.array_equal(a + [360.0, 0.0], b) for a, b in zip(got, east))
    with pytest.raises(ValueError, match="empty box"):
        admin1_lines_within(10, 0, 0, 1)


def test_geojson_is_one_multilinestring_of_every_line():
    import json

    fc = json.loads(admin1_geojson())
    (f,) = fc["features"]
    assert f["geometry"]["type"] == "MultiLineString" and f["properties"]["kind"] == "admin1"
    assert len(f["geometry"]["coordinates"]) == len(admin1_lines())


def test_zoom_panel_draws_the_admin1_lines_of_its_box():
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    from globeflow.viz.answer_maps import _draw_zoom, answer_map

    columbus = latlon_to_xyz(np.array([39.96]), np.array([-83.0])).astype(np.float32)
    (a,) = answer(FixedVMF(2e4), columbus, num_samples=128, seed=0)
    amap = answer_map(a)
    z = amap.zoom
    assert z is not None
    words = map_annotations((z.lat[0], z.lat[-1], z.lon[0], z.lon[-1]))
    assert len(words.admin1) > 5 and ADMIN1_CREDIT in words.credit
    assert map_annotations(None).admin1 == () and ADMIN1_CREDIT not in map_annotations(None).credit
    ax = Figure().add_subplot()
    _draw_zoom(ax, z, amap.thresholds, a, None, -1.0, 3.0, words, 10.0)
    (drawn,) = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_label() == "admin-1 boundaries"]
    assert len(drawn.get_segments()) == len(words.admin1)
