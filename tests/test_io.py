"""Reading and writing shower files: both layouts, chunking, atomic writes, bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from calogen.data.io import ShowerFile, ShowerWriter, make_showers, read_showers, write_showers
from calogen.data.packed import pack, unpack
from calogen.errors import CalogenError, UsageError


def _legacy_file(path: Path, counts: list[int], width: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    events = np.zeros((len(counts), 4, width), dtype=np.float32)
    for i, n in enumerate(counts):
        if n:
            events[i, :, -n:] = rng.uniform(0.1, 1.0, (4, n))
    with h5py.File(path, "w") as f:
        f["events"] = events
        f["energy"] = np.arange(1, len(counts) + 1, dtype=np.float32)[:, None] * 10
    return events


def test_legacy_front_padding_is_moved_to_the_end(tmp_path: Path) -> None:
    events = _legacy_file(tmp_path / "legacy.h5", [3, 0, 10, 1])
    with ShowerFile(tmp_path / "legacy.h5") as f:
        assert f.format == "legacy"
        assert len(f) == 4
        showers = f.read()
    assert showers._num_points.tolist() == [3, 0, 10, 1]
    assert showers.points.shape == (4, 10, 4)
    np.testing.assert_array_equal(showers.points[0, :3], events[0, :, -3:].T)
    np.testing.assert_array_equal(showers.points[2], events[2].T)
    assert np.all(showers.points[0, 3:] == 0)
    np.testing.assert_allclose(showers.energies.ravel(), [10, 20, 30, 40])


def test_chunks_cover_the_file_in_order(fixtures: Path) -> None:
    with ShowerFile(fixtures / "g4_photons_subset.h5") as f:
        whole = f.read()
        chunks = list(f.iter_chunks(33))
    assert [len(c) for c in chunks] == [33, 33, 14]
    np.testing.assert_array_equal(
        np.concatenate([c.energies for c in chunks]).ravel(), whole.energies.ravel()
    )
    assert sum(int(c._num_points.sum()) for c in chunks) == int(whole._num_points.sum())


def test_showerdata_round_trip(tmp_path: Path, fixtures: Path) -> None:
    showers = read_showers(fixtures / "g4_photons_subset.h5", 0, 7)
    out = write_showers(tmp_path / "out.h5", showers, attrs={"generator": "test"})
    with ShowerFile(out) as f:
        assert f.format == "showerdata"
        back = f.read()
        assert f.attrs["generator"] == "test"
        assert f.max_points == int(showers._num_points.max())
    np.testing.assert_array_equal(back._num_points, showers._num_points)
    np.testing.assert_array_equal(pack(back).points, pack(showers).points)
    np.testing.assert_array_equal(back.energies, showers.energies)


def test_pack_unpack_round_trip(fixtures: Path) -> None:
    showers = read_showers(fixtures / "g4_photons_subset.h5", 0, 5)
    packed = pack(showers)
    assert packed.points.shape == (int(showers._num_points.sum()), 4)
    again = unpack(packed, showers.energies)
    np.testing.assert_array_equal(again.points, showers.points)


def test_existing_output_is_not_overwritten(tmp_path: Path, fixtures: Path) -> None:
    showers = read_showers(fixtures / "g4_photons_subset.h5", 0, 2)
    write_showers(tmp_path / "o.h5", showers)
    with pytest.raises(UsageError, match="exists"):
        write_showers(tmp_path / "o.h5", showers)
    write_showers(tmp_path / "o.h5", showers, overwrite=True)


def test_interrupted_write_leaves_no_file(tmp_path: Path, fixtures: Path) -> None:
    showers = read_showers(fixtures / "g4_photons_subset.h5", 0, 4)
    target = tmp_path / "partial.h5"
    with pytest.raises(RuntimeError), ShowerWriter(target, 8, 4000) as writer:
        writer.write(showers)
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CalogenError, match="only 4 of 8"), ShowerWriter(target, 8, 4000) as writer:
        writer.write(showers)
    assert list(tmp_path.iterdir()) == []


def test_nan_showers_are_refused(tmp_path: Path) -> None:
    points = np.ones((1, 3, 4), dtype=np.float32)
    points[0, 1, 0] = np.nan
    with pytest.raises(CalogenError, match="NaN"):
        write_showers(tmp_path / "nan.h5", make_showers(points, [3], [10.0]))
    assert not (tmp_path / "nan.h5").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"not hdf5 at all", "not an HDF5 file"),
    ],
)
def test_bad_files_give_one_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        ShowerFile(path)


def test_foreign_and_truncated_hdf5(tmp_path: Path, fixtures: Path) -> None:
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["images"] = np.zeros((3, 30, 30))
    with pytest.raises(UsageError, match="not a shower file"):
        ShowerFile(tmp_path / "foreign.h5")
    with h5py.File(tmp_path / "shape.h5", "w") as f:
        f["events"] = np.zeros((3, 3, 5))
        f["energy"] = np.ones((3, 1))
    with pytest.raises(UsageError, match=r"\[N, 4, max_points\]"):
        ShowerFile(tmp_path / "shape.h5")
    data = (fixtures / "g4_photons_subset.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError):
        with ShowerFile(tmp_path / "trunc.h5") as f:
            f.read()
