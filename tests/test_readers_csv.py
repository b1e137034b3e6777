"""Metadata CSVs of OSV-5M and YFCC/Im2GPS style datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _samples import OSV5M_SAMPLE

from globeflow.data import DataError, read_labels

SAMPLE = OSV5M_SAMPLE / "labels.csv"


def _csv(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_osv5m_layout_ids_stay_exact_strings(tmp_path: Path) -> None:
    # 12345678901234567 > 2^53: as a float it would become ...568.
    p = _csv(
        tmp_path,
        "id,latitude,longitude,country,region,sub-region,city\n"
        "12345678901234567,48.85,2.35,FR,IDF,,Paris\n7,-33.9,151.2,AU,NSW,,Sydney\n",
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "7.jpg").write_bytes(b"x")
    t = read_labels(p)
    assert t.ids.tolist() == ["12345678901234567", "7"]
    np.testing.assert_array_equal(t.latitude, [48.85, -33.9])
    np.testing.assert_array_equal(t.longitude, [2.35, 151.2])
    assert t.paths is None and sorted(t.extra) == ["city", "country", "region", "sub-region"]
    assert t.extra["city"].tolist() == ["Paris", "Sydney"]
    assert t.resolve_image(1) == tmp_path / "images" / "7.jpg"  # found under images/
    assert t.resolve_image(0, tmp_path / "root") == tmp_path / "root" / "12345678901234567.jpg"


@pytest.mark.parametrize(
    ("lat", "lon"),
    [("LAT", "LON"), ("lat", "lng"), ("Latitude", "Longitude"), ("gps_latitude", "gps_longitude"), ("lat", "long")],
)
def test_coordinate_column_spellings(tmp_path: Path, lat: str, lon: str) -> None:
    p = _csv(tmp_path, f"IMG_ID,AUTHOR,{lat},{lon}\na/b.jpg,me,10.5,-20.25\nc.jpg,you,,\n")
    t = read_labels(p)
    assert t.ids.tolist() == ["a/b.jpg", "c.jpg"]
    assert t.latitude[0] == 10.5 and t.longitude[0] == -20.25
    assert np.isnan(t.latitude[1]) and np.isnan(t.longitude[1])  # empty cells: unknown
    assert t.extra["AUTHOR"].tolist() == ["me", "you"]


def test_path_column(tmp_path: Path) -> None:
    t = read_labels(_csv(tmp_path, "path,lat,lon\nsub/x.png,1,2\n/abs/y.jpg,3,4\n"))
    assert t.ids.tolist() == ["x", "y"]
    assert t.resolve_image(0) == tmp_path / "sub" / "x.png" and t.resolve_image(1) == Path("/abs/y.jpg")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("id,lat,lon\n1,91,0\n", r"row 0, field `lat`.*91"),
        ("id,lat,lon\n1,0,0\n2,0,-180.5\n", r"row 1, field `lon`.*-180.5"),
        ("id,lat,lon\n1,abc,0\n", r"row 0, field `lat`.*not a number: 'abc'"),
        ("id,lat,lon\n1,5,\n", r"row 0.*both given or both empty"),
        ("id,lat\n1,5\n", r"no longitude column.*lng"),
        ("lat,lon\n1,2\n", r"no image column"),
        ("id,lat,lon\n", r"no rows"),
        ("id,lat,lon\n,1,2\n", r"row 0, field `id`.*empty image reference"),
    ],
)
def test_errors_name_row_and_field(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_labels(_csv(tmp_path, body))


def test_require_coords_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no latitude column"):
        read_labels(_csv(tmp_path, "id,city\n1,Paris\n"), require_coords=True)
    assert read_labels(_csv(tmp_path, "id,city\n1,Paris\n")).latitude is None
    with pytest.raises(DataError, match="not found"):
        read_labels(tmp_path / "nope.csv")


def test_real_osv5m_sample() -> None:
    if not SAMPLE.is_file():
        pytest.skip("OSV-5M sample not available")
    t = read_labels(SAMPLE, require_coords=True)
    assert len(t) == 71 and np.isfinite(t.latitude).all()
    assert all(t.resolve_image(i).is_file() for i in range(len(t)))
