"""Administrative accuracy and GeoScore on hand-computed cases (cities1000, great-circle search)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from globeflow.geometry import EARTH_RADIUS_KM
from globeflow.metrics import admin_accuracy, distance_metrics, keys_from_labels, load_gazetteer

PARIS = (48.8566, 2.3522)
SPRINGFIELD_IL = (39.8017, -89.6437)
SPRINGFIELD_MO = (37.2153, -93.2982)
ENCAMP = (42.5345, 1.5803)  # Andorra: cities1000 has no admin2 there


def test_geoscore_and_accuracies_by_hand():
    # On the equator, Δλ degrees is R·Δλ·π/180 km: 0 km, 20 km (< 25), 1492.7 km (one GeoScore scale).
    def deg(km):
        return km / EARTH_RADIUS_KM * 180 / math.pi

    true = np.zeros((3, 2))
    pred = np.array([[0.0, 0.0], [0.0, deg(20.0)], [0.0, deg(1492.7)]])
    m = distance_metrics(pred, true)
    assert m["geoscore"] == pytest.approx((5000 + 5000 * math.exp(-20 / 1492.7) + 5000 / math.e) / 3, rel=1e-9)
    assert m["distance_km"] == pytest.approx((20 + 1492.7) / 3, rel=1e-9)
    assert m["acc_1km"] == pytest.approx(1 / 3) and m["acc_25km"] == pytest.approx(2 / 3)
    assert m["acc_750km"] == pytest.approx(2 / 3) and m["acc_2500km"] == 1.0


def test_admin_keys_of_known_places():
    k = load_gazetteer().keys(np.array([PARIS, SPRINGFIELD_IL, SPRINGFIELD_MO, ENCAMP, (-22.56, 17.08)]))
    assert list(k.country) == ["FR", "US", "US", "AD", "NA"]  # Namibia's "NA" is a code, not a null
    assert k.region[0] == "Ile-de-France|FR" and k.city[0] == "Paris|Paris|Ile-de-France|FR"
    assert k.city[1] == "Springfield|Sangamon County|Illinois|US"
    assert k.city[2] == "Springfield|Greene County|Missouri|US"
    assert k.region[1] != k.region[2] and k.city[1] != k.city[2]
    assert k.city[3] == "Encamp||Encamp|AD"  # empty admin2, consistently


def test_great_circle_not_degrees():
    # Near the pole, a degree of longitude is tiny: the great-circle nearest place of a point
    # at 78.2°N is Longyearbyen (15.6°E) even 9° of longitude away, which a KD-tree on raw
    # degrees would not weigh correctly. Across the antimeridian, 179.99°E and -179.99°
    # are 2 km apart and must land in the same place.
    gaz = load_gazetteer()
    k = gaz.keys(np.array([[78.2, 15.6], [-16.5, 179.999], [-16.5, -179.999]]))
    assert k.city[0].startswith("Longyearbyen|")
    assert k.city[1] == k.city[2]


def test_admin_accuracy_counts_and_labels():
    true = np.array([PARIS, SPRINGFIELD_IL, SPRINGFIELD_IL, ENCAMP])
    # Paris exact; IL estimate in MO (country right, region wrong); IL estimate 200 m off
    # (same city); Andorra estimate in Paris (all wrong).
    pred = np.array([PARIS, SPRINGFIELD_MO, (SPRINGFIELD_IL[0] + 0.002, SPRINGFIELD_IL[1]), PARIS])
    m = admin_accuracy(pred, true)
    assert m == {"acc_country": 0.75, "acc_region": 0.5, "acc_city": 0.5}
    # The dataset's own labels (OSV-5M layout; missing sub-region like a place without admin2).
    labels = {
        "country": np.array(["FR", "US", "US", "AD"]),
        "region": np.array(["Ile-de-France", "Illinois", "Illinois", "Encamp"]),
        "sub-region": np.array(["Paris", "Sangamon County", "Sangamon County", None], dtype=object),
        "city": np.array(["Paris", "Springfield", "Springfield", "Encamp"]),
    }
    assert admin_accuracy(pred, true_keys=keys_from_labels(labels)) == m
    assert admin_accuracy(np.array([ENCAMP]), true_keys=keys_from_labels({c: v[3:] for c, v in labels.items()})) == {
        "acc_country": 1.0,
        "acc_region": 1.0,
        "acc_city": 1.0,
    }
    with pytest.raises(ValueError, match="latlon"):
        admin_accuracy(np.array([[np.nan, 0.0]]), true)
    with pytest.raises(ValueError, match="city"):
        keys_from_labels({"country": labels["country"], "region": labels["region"]})


def test_100k_lookups_are_fast():
    import time

    gaz = load_gazetteer()
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-60, 75, 100_000), rng.uniform(-180, 180, 100_000)]
    start = time.perf_counter()
    gaz.keys(pts)
    assert time.perf_counter() - start < 5.0


def test_nearest_brute_force_equals_the_kd_tree():
    # Small queries compare every pair (no scipy import); large ones use the tree: same places.
    from globeflow.metrics.admin import Gazetteer

    rng = np.random.default_rng(3)
    n = 5000
    lat, lon = np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)
    names = np.array([f"p{i}" for i in range(n)], dtype=object)
    g = Gazetteer(lat, lon, names, names, names, names)
    q = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, 300))), rng.uniform(-180, 180, 300)], axis=1)
    brute = g.nearest(q)
    assert g._tree is None  # the small query did not build the tree
    g.BRUTE_FORCE_PAIRS = 0
    np.testing.assert_array_equal(g.nearest(q), brute)
    assert g._tree is not None
