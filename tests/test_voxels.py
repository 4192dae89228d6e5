"""Voxelisation of point clouds onto fixed grids and voxels → points."""

from __future__ import annotations

import numpy as np
import pytest

from calogen.data.io import make_showers
from calogen.data.voxels import (
    BIBAE_GRID,
    L2LFLOWS_GRID,
    SparseVoxels,
    VoxelGrid,
    containment,
    voxelise,
    voxels_to_points,
)
from calogen.errors import UsageError
from calogen.geometry import CELL_SIZE_MM, project, slab


def _random_showers(n: int = 6, seed: int = 0, spread: float = 30.0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 200, n)
    width = int(counts.max())
    points = np.zeros((n, width, 4), np.float32)
    for i, c in enumerate(counts):
        points[i, :c, 0] = rng.normal(0, spread, c)
        points[i, :c, 1] = rng.normal(0, spread, c)
        points[i, :c, 2] = rng.integers(0, 30, c)
        points[i, :c, 3] = rng.exponential(1e-3, c)
    return make_showers(points, counts, rng.uniform(10, 90, n))


def test_grid_edges_align_with_slab_cells() -> None:
    grid = L2LFLOWS_GRID
    assert grid.shape == (30, 10, 10)
    assert BIBAE_GRID.shape == (30, 30, 30)
    np.testing.assert_allclose(grid.origin_mm, [-5 * CELL_SIZE_MM] * 2)
    np.testing.assert_allclose(grid.x_centres()[5], CELL_SIZE_MM / 2)
    flat, inside = grid.flat_index(
        np.array([0.1, -0.1, 5 * CELL_SIZE_MM + 0.01]),
        np.array([0.1, 0.1, 0.0]),
        np.array([2, 2, 0]),
    )
    assert inside.tolist() == [True, True, False]
    assert flat[0] == (2 * 10 + 5) * 10 + 5 and flat[1] == (2 * 10 + 4) * 10 + 5
    with pytest.raises(UsageError):
        VoxelGrid(30, 0, 10)
    assert VoxelGrid.from_dict(grid.to_dict()) == grid


def test_voxelise_conserves_contained_energy_and_sums_points() -> None:
    showers = _random_showers()
    grid = VoxelGrid(30, 12, 8, centre_mm=(3.0, -2.0))
    vox = voxelise(showers, grid)
    assert vox.shape == (6, 30, 12, 8)
    total = showers.points[:, :, 3].sum(1)
    frac = containment(showers, grid)
    np.testing.assert_allclose(vox.reshape(6, -1).sum(1), total * frac, rtol=1e-5)
    assert np.all((frac > 0) & (frac <= 1))
    # two points in one voxel are summed
    pts = np.array([[[1.0, 1.0, 3, 1e-3], [2.0, 3.0, 3, 2e-3]]], np.float32)
    one = voxelise(make_showers(pts, [2], [10.0]), L2LFLOWS_GRID)
    assert np.count_nonzero(one) == 1 and np.isclose(one[0, 3, 5, 5], 3e-3)


def test_sparse_matches_dense_and_selects() -> None:
    showers = _random_showers(7, seed=3)
    grid = VoxelGrid(30, 10, 10)
    sparse = SparseVoxels.from_showers(showers, grid)
    dense = voxelise(showers, grid)
    np.testing.assert_allclose(sparse.dense(), dense, rtol=1e-6, atol=1e-12)
    rows = np.array([4, 1, 1])
    np.testing.assert_allclose(sparse.dense(rows), dense[rows], rtol=1e-6, atol=1e-12)
    sub = sparse.select(rows)
    np.testing.assert_allclose(sub.dense(), dense[rows], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(sparse.layer_energies(), dense.sum((2, 3)), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(sparse.containment, containment(showers, grid))
    both = SparseVoxels.concatenate([sparse, sub], grid)
    assert len(both) == 10
    np.testing.assert_allclose(both.dense(np.array([8])), dense[[1]], rtol=1e-6)


def test_sparse_from_file_reads_fixture(fixtures) -> None:
    path = fixtures / "g4_photons_subset.h5"
    sparse = SparseVoxels.from_file(path, L2LFLOWS_GRID, max_showers=20, chunk_size=7)
    assert len(sparse) == 20
    assert np.all(sparse.containment > 0.9)
    assert sparse.dense().sum() > 0


@pytest.mark.parametrize("jitter", [False, True])
def test_voxels_to_points_round_trip_and_projection(jitter: bool) -> None:
    showers = _random_showers(5, seed=1, spread=15.0)
    grid = L2LFLOWS_GRID
    vox = voxelise(showers, grid)
    rng = np.random.default_rng(0)
    back = voxels_to_points(vox, grid, showers.energies, jitter=jitter, rng=rng)
    assert len(back) == 5
    assert np.all(back._num_points == np.count_nonzero(vox.reshape(5, -1), axis=1))
    np.testing.assert_allclose(voxelise(back, grid), vox, rtol=1e-6)
    layers = back.points[:, :, 2]
    assert np.all(layers == np.round(layers))
    # projection on the slab sees exactly the voxels (the grid is aligned with the cells)
    hits = project(back, slab(), threshold_mev=0.0)
    hits_vox = project(showers, slab(), threshold_mev=0.0)
    inside = np.abs(hits_vox.x_mm) < 5 * CELL_SIZE_MM
    inside &= np.abs(hits_vox.y_mm) < 5 * CELL_SIZE_MM
    assert len(hits) == int(inside.sum())
    np.testing.assert_allclose(
        np.sort(hits.energy_mev), np.sort(hits_vox.energy_mev[inside]), rtol=1e-5
    )


def test_voxels_to_points_threshold_and_errors() -> None:
    vox = np.zeros((2, 30, 10, 10), np.float32)
    vox[0, 0, 0, 0] = 1e-3
    vox[0, 1, 2, 3] = 1e-6
    vox[1, 4, 4, 4] = -1e-3  # negative: never a point
    out = voxels_to_points(vox, L2LFLOWS_GRID, [10.0, 20.0], min_energy_gev=1e-5)
    assert out._num_points.tolist() == [1, 0]
    np.testing.assert_allclose(out.points[0, 0, :2], L2LFLOWS_GRID.x_centres()[[0, 0]])
    with pytest.raises(UsageError):
        voxels_to_points(vox, BIBAE_GRID, [10.0, 20.0])
    with pytest.raises(UsageError):
        voxels_to_points(vox, L2LFLOWS_GRID, [10.0, 20.0], jitter=True)
    dirs = np.tile([0.0, 0.0, 1.0], (2, 1))
    out = voxels_to_points(vox, L2LFLOWS_GRID, [10.0, 20.0], dirs)
    assert out.directions is not None and out.directions.shape == (2, 3)
