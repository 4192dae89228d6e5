"""Pre-clustering of Geant4 steps against the data producer's clustering."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calogen.data.clustering import cluster_steps
from calogen.data.io import make_showers, read_showers
from calogen.data.packed import pack


def _sorted(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort((points[:, 1], points[:, 0], points[:, 2]))]


def test_clustering_reproduces_the_producers_clustered_file(fixtures: Path) -> None:
    steps = read_showers(fixtures / "g4_steps_subset.h5")
    reference = read_showers(fixtures / "g4_steps_subset_clustered.h5")
    result = cluster_steps(steps)
    np.testing.assert_array_equal(result.showers._num_points, reference._num_points)
    ours, theirs = _sorted(pack(result.showers).points), _sorted(pack(reference).points)
    np.testing.assert_allclose(ours[:, :3], theirs[:, :3], atol=1e-4)
    # stored energies are rounded to 13 mantissa bits (1e-4 relative)
    np.testing.assert_allclose(ours[:, 3], theirs[:, 3], rtol=3e-4)
    # energy is conserved and the number of points falls by a large factor
    np.testing.assert_allclose(
        result.showers.points[..., 3].sum(), steps.points[..., 3].sum(), rtol=1e-5
    )
    assert result.input_points > 5 * int(result.showers._num_points.sum())


def test_bounding_box_drops_and_counts() -> None:
    points = np.array(
        [[[0.1, 0.1, 0, 1.0], [0.2, 0.3, 0, 2.0], [250.0, 0.0, 3, 0.5], [0.0, -199.9, 3, 0.25]]],
        dtype=np.float32,
    )
    result = cluster_steps(make_showers(points, [4], [10.0]))
    assert result.dropped_points == 1
    assert np.isclose(result.dropped_energy_gev, 0.5)
    packed = pack(result.showers)
    assert packed.points.shape[0] == 2  # the first two steps share a sub-cell
    assert np.isclose(packed.points[:, 3].sum(), 3.25)


def test_granularity_sets_the_grid_pitch() -> None:
    points = np.array([[[0.1, 0.1, 2, 1.0], [3.0, 0.1, 2, 1.0]]], dtype=np.float32)
    fine = pack(cluster_steps(make_showers(points, [2], [10.0]), granularity=6).showers)
    coarse = pack(cluster_steps(make_showers(points, [2], [10.0]), granularity=1).showers)
    assert fine.points.shape[0] == 2
    assert coarse.points.shape[0] == 1
    np.testing.assert_allclose(coarse.points[0, :2], [5.0883 / 2, 5.0883 / 2], rtol=1e-6)
