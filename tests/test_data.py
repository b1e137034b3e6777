"""Readers/writers for Parquet and NPZ: round trips and every validation error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from globeflow.data import DataError, GeoDataset, read_dataset, write_parquet
from globeflow.data import parquet as readers


def _data(n: int = 7, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    lat = rng.uniform(-90, 90, n)
    lon = rng.uniform(-180, 180, n)
    return emb, lat, lon


def _table(emb_rows: list, lat: list | None, lon: list | None, value_type: pa.DataType = pa.float32(), **extra) -> pa.Table:
    cols = {"embedding": pa.array(emb_rows, type=pa.list_(value_type))}
    if lat is not None:
        cols["latitude"] = pa.array(lat, type=pa.float64())
    if lon is not None:
        cols["longitude"] = pa.array(lon, type=pa.float64())
    cols.update({k: pa.array(v) for k, v in extra.items()})
    return pa.table(cols)


def _expect(path: Path, *fragments: str, **kwargs) -> DataError:
    """read_dataset must raise DataError naming the file and containing every fragment."""
    with pytest.raises(DataError) as info:
        read_dataset(path, **kwargs)
    msg = str(info.value)
    assert path.name in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return info.value


# ----------------------------------------------------------------------------- round trips


def test_parquet_round_trip_with_passthrough(tmp_path: Path) -> None:
    emb, lat, lon = _data()
    ids = np.array([f"img{i}" for i in range(len(emb))], dtype=object)
    aux = np.arange(14, dtype=np.int32).reshape(7, 2)
    path = tmp_path / "emb.parquet"
    write_parquet(path, emb, lat, lon, extra={"id": ids, "aux": aux})
    ds = read_dataset(path)
    assert isinstance(ds, GeoDataset)
    assert len(ds) == 7 and ds.dim == 5 and ds.path == str(path)
    assert ds.embeddings.dtype == np.float32 and ds.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(ds.embeddings, emb)
    assert ds.latitude is not None and ds.longitude is not None
    assert ds.latitude.dtype == np.float64
    np.testing.assert_array_equal(ds.latitude, lat)
    np.testing.assert_array_equal(ds.longitude, lon)
    assert list(ds.extra) == ["id", "aux"]
    assert ds.extra["id"].tolist() == ids.tolist()
    np.testing.assert_array_equal(ds.extra["aux"], aux)
    # No temp files left behind by the atomic write; the extra column survives a second trip.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet"]
    write_parquet(path, ds.embeddings, ds.latitude, ds.longitude, extra=ds.extra)
    assert read_dataset(path).extra["id"].tolist() == ids.tolist()


@pytest.mark.parametrize("value_type", [pa.float16(), pa.float32(), pa.float64()])
@pytest.mark.parametrize("layout", ["list", "large_list", "fixed_size_list"])
def test_parquet_embedding_layouts_and_float_types(tmp_path: Path, value_type: pa.DataType, layout: str) -> None:
    emb, lat, lon = _data(n=9, d=4)
    values = pa.array(emb.reshape(-1).astype(value_type.to_pandas_dtype()))
    if layout == "fixed_size_list":
        col = pa.FixedSizeListArray.from_arrays(values, 4)
    else:
        offsets = pa.array(np.arange(0, 37, 4, dtype=np.int32 if layout == "list" else np.int64))
        cls = pa.ListArray if layout == "list" else pa.LargeListArray
        col = cls.from_arrays(offsets, values)
    path = tmp_path / "e.pq"
    # Small row groups + small batches: row indices must stay global across batches.
    pq.write_table(pa.table({"id": np.arange(9), "embedding": col, "latitude": lat, "longitude": lon}), path, row_group_size=4)
    ds = read_dataset(path)
    expected = emb.astype(value_type.to_pandas_dtype()).astype(np.float32)
    assert ds.embeddings.dtype == np.float32 and ds.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(ds.embeddings, expected)
    np.testing.assert_array_equal(ds.extra["id"], np.arange(9))


def test_parquet_integer_coordinates_and_no_coords(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"embedding": pa.array([[1.0], [2.0]]), "latitude": [10, -90], "longitude": [180, 0]}), path)
    ds = read_dataset(path)
    assert ds.latitude is not None and ds.latitude.dtype == np.float64
    np.testing.assert_array_equal(ds.latitude, [10.0, -90.0])
    write_parquet(path, np.ones((3, 2)))
    ds = read_dataset(path, require_coords=False)
    assert ds.latitude is None and ds.longitude is None and not ds.has_coords and len(ds) == 3


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npz_round_trip(tmp_path: Path, dtype: type) -> None:
    emb, lat, lon = _data(n=6, d=3)
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=emb.astype(dtype), latitude=lat, longitude=lon.astype(np.float32),
             id=np.arange(6), classes=np.array(["a", "b"]))
    ds = read_dataset(path)
    np.testing.assert_array_equal(ds.embeddings, emb.astype(dtype).astype(np.float32))
    assert ds.embeddings.dtype == np.float32 and ds.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(ds.latitude, lat)
    assert ds.longitude is not None and ds.longitude.dtype == np.float64
    # Per-row arrays pass through; archive-level metadata of another length does not.
    assert set(ds.extra) == {"id"}
    np.testing.assert_array_equal(ds.extra["id"], np.arange(6))


def test_write_parquet_rejects_bad_shapes_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    with pytest.raises(ValueError, match="rows"):
        write_parquet(path, np.zeros((3, 2)), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="both"):
        write_parquet(path, np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="reserved"):
        write_parquet(path, np.zeros((3, 2)), extra={"latitude": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- file-level errors


def test_data_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(DataError("a.parquet", "bad value", row=3, field="latitude")))
    assert isinstance(err, DataError) and (err.path, err.row, err.field) == ("a.parquet", 3, "latitude")
    assert str(err) == "`a.parquet` (row 3, field `latitude`): bad value"


def test_duplicate_columns(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    table = pa.Table.from_arrays(
        [pa.array([[1.0]]), pa.array([0.0]), pa.array([0.0]), pa.array([1.0])],
        names=["embedding", "latitude", "longitude", "latitude"],
    )
    pq.write_table(table, path)
    _expect(path, "duplicate", "`latitude`")


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.parquet", "not found")
    _expect(tmp_path / "nope.npz", "not found")


def test_unknown_suffix_lists_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "emb.csv"
    path.write_text("a,b\n")
    _expect(path, "'.csv'", ".parquet", ".pq", ".npz")


def test_directory_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dir.parquet"
    path.mkdir()
    _expect(path, "not a regular file")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _expect(path, "Parquet")


def test_truncated_parquet(tmp_path: Path) -> None:
    emb, lat, lon = _data(n=2000, d=16)
    good = tmp_path / "good.parquet"
    write_parquet(good, emb, lat, lon)
    raw = good.read_bytes()
    bad = tmp_path / "trunc.parquet"
    bad.write_bytes(raw[: len(raw) // 2])
    _expect(bad, "Parquet")
    # Footer intact but data pages overwritten with garbage: fails while decoding.
    mangled = bytearray(raw)
    mangled[4 : len(raw) // 2] = np.random.default_rng(1).bytes(len(raw) // 2 - 4)
    bad.write_bytes(bytes(mangled))
    with pytest.raises(DataError, match="trunc.parquet"):
        read_dataset(bad)


def test_corrupt_npz_and_plain_npy(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    _expect(path, "not an .npz archive", "zip")
    # A real zip signature but a truncated archive.
    good = tmp_path / "good.npz"
    np.savez(good, embeddings=np.zeros((50, 8)), latitude=np.zeros(50), longitude=np.zeros(50))
    path.write_bytes(good.read_bytes()[:300])
    _expect(path, "NPZ")
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros((3, 2)))
    _expect(npy, "not an .npz archive")


def test_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(_table([], [], []), path)
    _expect(path, "no rows")
    npz = tmp_path / "empty.npz"
    np.savez(npz, embeddings=np.zeros((0, 4), np.float32), latitude=np.zeros(0), longitude=np.zeros(0))
    _expect(npz, "no rows")


# ----------------------------------------------------------------------------- missing columns


def test_missing_embedding_column_lists_found_columns(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"emb": [[1.0]], "latitude": [0.0], "longitude": [0.0]}), path)
    err = _expect(path, "`embedding`", "`emb`", "`latitude`", "`longitude`")
    assert err.field == "embedding"
    npz = tmp_path / "m.npz"
    np.savez(npz, embedding=np.zeros((2, 2)), latitude=np.zeros(2), longitude=np.zeros(2))
    _expect(npz, "missing array `embeddings`", "`embedding`")


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_missing_coordinates(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    if suffix == ".npz":
        np.savez(path, embeddings=np.zeros((2, 2)), latitude=np.zeros(2))
    else:
        pq.write_table(_table([[0.0, 0.0]] * 2, [0.0, 0.0], None), path)
    _expect(path, "missing", "`longitude`", "found", "`latitude`")
    # Without required coordinates a lone latitude is still an error (half a location).
    _expect(path, "`longitude`", "`latitude` is present", require_coords=False)


# ----------------------------------------------------------------------------- embedding errors


@pytest.fixture(params=[1_000_000, 2])
def batch_rows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run row-index tests with one batch and with many tiny batches (global row indices)."""
    monkeypatch.setattr(readers, "_BATCH_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_embedding_parquet(tmp_path: Path, batch_rows: int, bad: float) -> None:
    rows = [[0.0, 1.0, 2.0] for _ in range(6)]
    rows[4][1] = bad
    path = tmp_path / "nf.parquet"
    pq.write_table(_table(rows, [0.0] * 6, [0.0] * 6), path)
    err = _expect(path, "row 4", "`embedding`", "non-finite", "position 1")
    assert err.row == 4 and err.field == "embedding"


def test_float64_embedding_overflowing_float32(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(_table([[0.0], [1e39]], [0.0] * 2, [0.0] * 2, value_type=pa.float64()), path)
    _expect(path, "row 1", "`embedding`", "overflows float32")


def test_large_finite_embeddings_are_not_flagged(tmp_path: Path) -> None:
    # Row sums overflow float32 here, yet every value is finite and must be accepted.
    emb = np.full((3, 4), 3e38, dtype=np.float32)
    emb[1] = -3e38
    path = tmp_path / "huge.npz"
    np.savez(path, embeddings=emb, latitude=np.zeros(3), longitude=np.zeros(3))
    np.testing.assert_array_equal(read_dataset(path).embeddings, emb)


def test_nonfinite_embedding_npz(tmp_path: Path) -> None:
    emb, lat, lon = _data(n=5, d=3)
    emb[3, 2] = np.nan
    path = tmp_path / "nf.npz"
    np.savez(path, embeddings=emb, latitude=lat, longitude=lon)
    _expect(path, "row 3", "`embeddings`", "non-finite", "position 2")


def test_null_embedding(tmp_path: Path, batch_rows: int) -> None:
    path = tmp_path / "null.parquet"
    pq.write_table(_table([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], None, [1.0, 2.0]], [0.0] * 5, [0.0] * 5), path)
    err = _expect(path, "row 3", "`embedding`", "null")
    assert err.row == 3


def test_null_value_inside_embedding(tmp_path: Path, batch_rows: int) -> None:
    path = tmp_path / "nullval.parquet"
    pq.write_table(_table([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, None]], [0.0] * 5, [0.0] * 5), path)
    _expect(path, "row 4", "`embedding`", "null value at position 1")


def test_inconsistent_embedding_length(tmp_path: Path, batch_rows: int) -> None:
    rows = [[0.0] * 3] * 5 + [[0.0] * 4] + [[0.0] * 3]
    path = tmp_path / "ragged.parquet"
    pq.write_table(_table(rows, [0.0] * 7, [0.0] * 7), path)
    _expect(path, "row 5", "`embedding`", "length 4", "length 3")


def test_empty_embedding(tmp_path: Path) -> None:
    path = tmp_path / "zero.parquet"
    pq.write_table(_table([[], []], [0.0] * 2, [0.0] * 2), path)
    _expect(path, "row 0", "length 0")


def test_embedding_wrong_types(tmp_path: Path) -> None:
    path = tmp_path / "str.parquet"
    pq.write_table(pa.table({"embedding": ["a", "b"], "latitude": [0.0, 0.0], "longitude": [0.0, 0.0]}), path)
    _expect(path, "`embedding`", "list of floats", "string")
    pq.write_table(pa.table({"embedding": [[1, 2], [3, 4]], "latitude": [0.0, 0.0], "longitude": [0.0, 0.0]}), path)
    _expect(path, "`embedding`", "floating point", "int64")


@pytest.mark.parametrize("shape", [(6,), (2, 3, 1)])
def test_npz_embeddings_must_be_2d(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "nd.npz"
    np.savez(path, embeddings=np.zeros(shape), latitude=np.zeros(2), longitude=np.zeros(2))
    _expect(path, "`embeddings`", "2-D", str(shape))


def test_npz_coordinate_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "len.npz"
    np.savez(path, embeddings=np.zeros((3, 2)), latitude=np.zeros(4), longitude=np.zeros(3))
    _expect(path, "`latitude`", "(3,)", "(4,)")


def test_expected_dim_mismatch(tmp_path: Path) -> None:
    emb, lat, lon = _data(n=4, d=512)
    path = tmp_path / "emb.parquet"
    write_parquet(path, emb, lat, lon)
    assert read_dataset(path, expected_dim=512).dim == 512
    _expect(path, "embedding length 512 does not match the model's embedding dimension 1024", expected_dim=1024)
    npz = tmp_path / "emb.npz"
    np.savez(npz, embeddings=emb, latitude=lat, longitude=lon)
    _expect(npz, "embedding length 512 does not match the model's embedding dimension 1024", expected_dim=1024)


# ----------------------------------------------------------------------------- coordinate errors


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("latitude", 90.5, "outside [-90, 90]"),
        ("latitude", -91.0, "outside [-90, 90]"),
        ("longitude", 180.25, "outside [-180, 180]"),
        ("longitude", -200.0, "outside [-180, 180]"),
        ("latitude", np.nan, "not finite (nan)"),
        ("longitude", np.inf, "not finite (inf)"),
    ],
)
@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_bad_coordinate(tmp_path: Path, batch_rows: int, field: str, value: float, fragment: str, suffix: str) -> None:
    emb, lat, lon = _data(n=6, d=2)
    coords = {"latitude": lat, "longitude": lon}
    coords[field][2] = value
    coords[field][5] = value  # only the first bad row is reported
    path = tmp_path / f"coords{suffix}"
    if suffix == ".npz":
        np.savez(path, embeddings=emb, **coords)
    else:
        write_parquet(path, emb, coords["latitude"], coords["longitude"])
    err = _expect(path, "row 2", f"`{field}`", fragment)
    assert err.row == 2 and err.field == field
    if np.isfinite(value):
        assert f"value {value!r} outside" in str(err)
    # Present coordinates are validated even when they are not required.
    _expect(path, "row 2", f"`{field}`", require_coords=False)


def test_null_coordinate(tmp_path: Path, batch_rows: int) -> None:
    path = tmp_path / "nullc.parquet"
    pq.write_table(_table([[1.0]] * 4, [0.0, 1.0, 2.0, 3.0], [0.0, 0.0, None, 0.0]), path)
    _expect(path, "row 2", "`longitude`", "null")


def test_boundary_coordinates_are_valid(tmp_path: Path) -> None:
    path = tmp_path / "edge.parquet"
    write_parquet(path, np.zeros((4, 1)), np.array([90.0, -90.0, 0.0, 0.0]), np.array([0.0, 0.0, 180.0, -180.0]))
    np.testing.assert_array_equal(read_dataset(path).longitude, [0.0, 0.0, 180.0, -180.0])
