"""Incident directions travel with showers through every reader and writer (issue 14).

Legacy CaloClouds-layout files with a ``directions [N, 3]`` dataset, showerdata files,
``merge``, ``cluster``, packing, voxelisation and the training dataset; files without
directions stay at normal incidence; bad direction datasets are refused with one line.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from calogen.data.clustering import cluster_steps
from calogen.data.dataset import ShowerDataset, collate_padded
from calogen.data.io import (
    ShowerFile,
    ShowerWriter,
    make_showers,
    merge_files,
    read_showers,
    write_showers,
)
from calogen.data.packed import pack, unpack
from calogen.data.voxels import SparseVoxels, VoxelGrid
from calogen.directions import angles_from_directions, directions_from_angles
from calogen.errors import CalogenError, UsageError

NORMAL = np.array([0.0, 0.0, 1.0], np.float32)


def _angles(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 60.0, n), rng.uniform(0.0, 360.0, n)


def _legacy_with_directions(
    src: Path, dst: Path, n: int, directions: np.ndarray | None, **extra: np.ndarray
) -> None:
    """Copy the first ``n`` showers of a legacy file, adding ``directions`` (and ``extra``)."""
    with h5py.File(src) as f:
        events, energy, n_points = f["events"][:n], f["energy"][:n], f["n_points"][:n]
    with h5py.File(dst, "w") as f:
        f["events"], f["energy"], f["n_points"] = events, energy, n_points
        if directions is not None:
            f["directions"] = directions
        for key, value in extra.items():
            f[key] = value


@pytest.fixture
def angled(tmp_path: Path, fixtures: Path) -> tuple[Path, np.ndarray]:
    """A legacy file of 12 Geant4 showers with directions (like the shared angles file)."""
    theta, phi = _angles(12)
    directions = directions_from_angles(theta, phi).astype(np.float32)
    path = tmp_path / "angled_legacy.h5"
    _legacy_with_directions(
        fixtures / "g4_photons_subset.h5",
        path,
        12,
        directions,
        theta_deg=theta.astype(np.float32),
        phi_deg=phi.astype(np.float32),
    )
    return path, directions


def test_legacy_directions_are_read(angled: tuple[Path, np.ndarray]) -> None:
    path, directions = angled
    with ShowerFile(path) as f:
        assert f.format == "legacy" and f.has_directions
        np.testing.assert_array_equal(f.incident_directions(), directions)
        np.testing.assert_array_equal(f.incident_directions(3, 7), directions[3:7])
        np.testing.assert_array_equal(f.read().directions, directions)
        chunks = list(f.iter_chunks(5))
        f.check_columns()
    np.testing.assert_array_equal(np.concatenate([c.directions for c in chunks]), directions)


def test_files_without_directions_are_at_normal_incidence(fixtures: Path) -> None:
    with ShowerFile(fixtures / "g4_photons_subset.h5") as f:
        assert not f.has_directions
        showers = f.read(0, 5)
        np.testing.assert_array_equal(f.incident_directions(0, 5), np.tile(NORMAL, (5, 1)))
        summary = f.summary()
    np.testing.assert_array_equal(showers.directions, np.tile(NORMAL, (5, 1)))
    assert summary.theta_range_deg is None
    assert "directions:  none stored (normal incidence)" in summary.lines()


def test_summary_gives_the_angle_ranges(angled: tuple[Path, np.ndarray]) -> None:
    path, directions = angled
    theta, phi = angles_from_directions(directions)
    with ShowerFile(path) as f:
        summary = f.summary()
    np.testing.assert_allclose(summary.theta_range_deg, (theta.min(), theta.max()))
    np.testing.assert_allclose(summary.phi_range_deg, (phi.min(), phi.max()))
    text = "\n".join(summary.lines())
    assert f"theta:       {theta.min():.2f} - {theta.max():.2f} deg" in text
    assert f"phi:         {phi.min():.2f} - {phi.max():.2f} deg" in text


def test_showerdata_round_trip_keeps_directions(
    tmp_path: Path, angled: tuple[Path, np.ndarray]
) -> None:
    path, directions = angled
    showers = read_showers(path)
    out = write_showers(tmp_path / "out.h5", showers)
    with ShowerFile(out) as f:
        assert f.format == "showerdata" and f.has_directions
        back = f.read()
        np.testing.assert_array_equal(f.incident_directions(), directions)
    np.testing.assert_array_equal(back.directions, directions)
    np.testing.assert_array_equal(back.points, showers.points)


def test_pack_unpack_and_voxels_keep_directions(angled: tuple[Path, np.ndarray]) -> None:
    path, directions = angled
    showers = read_showers(path)
    back = unpack(pack(showers), showers.energies, showers.directions)
    np.testing.assert_array_equal(back.directions, directions)
    grid = VoxelGrid(n_layers=30, nx=10, ny=10, cell_size_mm=5.0883)
    voxels = SparseVoxels.from_file(path, grid, chunk_size=5)
    np.testing.assert_allclose(voxels.directions, directions)
    np.testing.assert_allclose(voxels.select(np.array([4, 1])).directions, directions[[4, 1]])


def test_training_dataset_carries_directions(angled: tuple[Path, np.ndarray]) -> None:
    path, directions = angled
    ds = ShowerDataset(path, rank=1, world_size=2)
    np.testing.assert_array_equal(ds.directions, directions[1::2])
    batch = collate_padded([ds[0], ds[2]])
    np.testing.assert_array_equal(batch["direction"].numpy(), directions[[1, 5]])


def test_merge_keeps_directions_in_order(
    tmp_path: Path, fixtures: Path, angled: tuple[Path, np.ndarray]
) -> None:
    path, directions = angled
    showerdata_file = write_showers(tmp_path / "sd.h5", read_showers(path, 8, 12))
    plain = fixtures / "g4_photons_subset.h5"  # legacy, no directions: normal incidence
    out = merge_files([path, showerdata_file, plain], tmp_path / "merged.h5", chunk_size=5)
    with ShowerFile(out) as f:
        merged = f.incident_directions()
        assert len(f) == 12 + 4 + 80
    np.testing.assert_array_equal(merged[:12], directions)
    np.testing.assert_array_equal(merged[12:16], directions[8:12])
    np.testing.assert_array_equal(merged[16:], np.tile(NORMAL, (80, 1)))


def test_cluster_keeps_directions(tmp_path: Path, fixtures: Path) -> None:
    theta, phi = _angles(4, seed=1)
    directions = directions_from_angles(theta, phi).astype(np.float32)
    steps_path = tmp_path / "steps.h5"
    _legacy_with_directions(fixtures / "g4_steps_subset.h5", steps_path, 4, directions)
    steps = read_showers(steps_path)
    np.testing.assert_array_equal(steps.directions, directions)
    clustered = cluster_steps(steps).showers
    np.testing.assert_array_equal(clustered.directions, directions)
    # the points do not depend on the directions (the steps are already in the front-face frame)
    plain = cluster_steps(read_showers(fixtures / "g4_steps_subset.h5")).showers
    np.testing.assert_array_equal(clustered.points, plain.points)


def test_writer_refuses_bad_directions(tmp_path: Path) -> None:
    points = np.ones((2, 3, 4), np.float32)
    bad = make_showers(points, [3, 3], [10.0, 20.0], directions=[[0, 0, 1], [1, 0, 0]])
    with pytest.raises(CalogenError, match="directions must be finite unit vectors"):
        write_showers(tmp_path / "bad.h5", bad)
    assert not (tmp_path / "bad.h5").exists()
    with ShowerWriter(tmp_path / "good.h5", 2, 3) as writer:
        writer.write(make_showers(points, [3, 3], [10.0, 20.0], directions=[[0, 0, 1]] * 2))


def _showerdata_with(tmp_path: Path, angled: tuple[Path, np.ndarray], directions) -> Path:  # type: ignore[no-untyped-def]
    path = write_showers(tmp_path / "sd_bad.h5", read_showers(angled[0]))
    with h5py.File(path, "a") as f:
        del f["directions"]
        f["directions"] = directions
    return path


@pytest.mark.parametrize("layout", ["legacy", "showerdata"])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong shape", "'directions' must have shape [N, 3] = [12, 3]"),
        ("too few", "'directions' must have shape [N, 3] = [12, 3]"),
        ("NaN", "direction of shower 5 is (nan, 0, 1)"),
        ("away", "direction of shower 5 is (0, 0, -1)"),
    ],
)
def test_bad_direction_datasets_are_refused(
    tmp_path: Path, angled: tuple[Path, np.ndarray], layout: str, case: str, message: str
) -> None:
    directions = np.tile(NORMAL, (12, 1))
    if case == "wrong shape":
        directions = directions[:, :2]
    elif case == "too few":
        directions = directions[:11]
    elif case == "NaN":
        directions[5, 0] = np.nan
    else:
        directions[5] = [0.0, 0.0, -1.0]
    if layout == "legacy":
        path = tmp_path / "bad.h5"
        _legacy_with_directions(angled[0], path, 12, directions)
    else:
        path = _showerdata_with(tmp_path, angled, directions)
    with pytest.raises(UsageError) as info:
        with ShowerFile(path) as f:
            f.check_columns()
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1
    if "shape" not in message:  # readers of the points refuse the shower too
        with pytest.raises(UsageError, match="direction of shower 5"):
            read_showers(path)


def test_shared_angled_file(shared_data: Path) -> None:
    """The shared Geant4 file at angles: directions agree with its theta_deg and phi_deg."""
    path = shared_data / "g4_photons_angles_train.h5"
    if not path.exists():
        pytest.skip("g4_photons_angles_train.h5 not in the shared data")
    with ShowerFile(path) as f:
        showers = f.read(0, 20)
        summary = f.summary()
    with h5py.File(path) as h5:
        theta_file, phi_file = h5["theta_deg"][:20], h5["phi_deg"][:20]
    theta, phi = angles_from_directions(showers.directions)
    np.testing.assert_allclose(theta, theta_file, atol=1e-3)
    dphi = np.mod(phi - phi_file + 180.0, 360.0) - 180.0
    np.testing.assert_allclose(dphi, 0.0, atol=1e-2)
    lo, hi = summary.theta_range_deg  # type: ignore[misc]
    assert 0.0 <= lo < 1.0 and 59.0 < hi < 60.0
