"""Cell geometry and projection of point clouds into cell hits."""

from __future__ import annotations

import numpy as np
import pytest

from calogen.data.io import make_showers
from calogen.geometry import CELL_SIZE_MM, get_calorimeter, ild_ecal, project, slab


def _showers(points: list[list[float]], energy: float = 10.0):
    arr = np.asarray(points, dtype=np.float32)[None]
    return make_showers(arr, [arr.shape[1]], [energy])


def test_points_in_one_cell_are_summed_and_threshold_applies() -> None:
    # two points in cell (0, 0) of layer 3; one weak point elsewhere (0.05 MeV)
    showers = _showers([[1.0, 1.0, 3, 1e-4], [4.0, 2.0, 3, 2e-4], [20.0, 1.0, 3, 5e-5]])
    hits = project(showers, slab())
    assert len(hits) == 1
    assert hits.layer[0] == 3 and hits.ix[0] == 0 and hits.iy[0] == 0
    assert np.isclose(hits.energy_mev[0], 0.3, rtol=1e-5)
    np.testing.assert_allclose([hits.x_mm[0], hits.y_mm[0]], [CELL_SIZE_MM / 2] * 2, rtol=1e-6)
    assert len(project(showers, slab(), threshold_mev=0.01)) == 2


def test_translation_moves_cell_boundaries() -> None:
    showers = _showers([[1.0, 1.0, 0, 1e-3], [-1.0, 1.0, 0, 1e-3]])
    assert len(project(showers, slab())) == 2  # x = 0 is a cell edge
    hits = project(showers, slab(), impact_mm=(2.5, 0.0))
    assert len(hits) == 1  # both points now in the cell [0, 5.09) mm
    np.testing.assert_allclose(hits.x_mm, [CELL_SIZE_MM / 2 - 2.5], rtol=1e-5)


def test_ild_gaps_drop_energy_and_staggering_shifts_cells() -> None:
    ild = ild_ecal()
    wafer = 18 * CELL_SIZE_MM
    # a point in the 1 mm gap after the first wafer along x (layer 0 stagger 2.474 mm)
    x_gap = ild.grid_origin_mm[0] + ild.stagger_x_mm[0] + wafer + 0.5
    showers = _showers([[x_gap, 10.0, 0, 1e-3], [x_gap + 1.0, 10.0, 0, 1e-3]])
    hits = project(showers, ild)
    assert len(hits) == 1
    # y: 3 mm tower gap
    showers = _showers([[10.0, ild.grid_origin_mm[1] + wafer + 1.5, 0, 1e-3]])
    assert len(project(showers, ild)) == 0
    # stagger: the same point falls in different cells in layers of different slabs
    pt = 2.0
    ix0, _, _ = ild.cell_index(np.array([pt]), np.array([1.0]), np.array([0]))
    ix2, _, _ = ild.cell_index(np.array([pt]), np.array([1.0]), np.array([2]))
    assert ix0[0] != ix2[0]
    assert ild.stagger_x_mm[0] == ild.stagger_x_mm[1]  # two layers share a slab


def test_cell_centres_are_inside_their_cells() -> None:
    ild = ild_ecal()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-300, 300, 5000), rng.uniform(-300, 300, 5000)
    layer = rng.integers(0, 30, 5000)
    ix, iy, live = ild.cell_index(x, y, layer)
    cx, cy = ild.cell_centre(ix, iy, layer)
    assert np.all(np.abs(cx - x)[live] <= CELL_SIZE_MM / 2 + 1e-9)
    assert np.all(np.abs(cy - y)[live] <= CELL_SIZE_MM / 2 + 1e-9)
    assert 0.9 < live.mean() < 0.99  # gaps are a few per cent of the area


def test_many_showers_are_kept_apart(fixtures) -> None:
    from calogen.data.io import read_showers

    showers = read_showers(fixtures / "g4_photons_subset.h5", 0, 10)
    hits = project(showers, slab())
    one_by_one = [len(project(showers[i], slab())) for i in range(10)]
    assert hits.hits_per_shower().tolist() == one_by_one
    total = np.bincount(hits.shower, weights=hits.energy_mev, minlength=10)
    visible = showers.points[..., 3].sum(axis=1) * 1000
    assert np.all(total <= visible + 1e-3)
    assert np.all(total > 0.95 * visible)  # the threshold removes only a little energy


def test_presets_by_name() -> None:
    assert get_calorimeter("slab").name == "slab"
    assert get_calorimeter("ild").wafer_cells == 18
    with pytest.raises(ValueError, match="unknown geometry"):
        get_calorimeter("atlas")
    assert np.all(np.diff(slab().layer_z_mm) > 0)


@pytest.mark.parametrize(("wafers_x", "towers_y"), [(0, 0), (-3, 1), (2, -2)])
def test_inclined_shower_crossing_a_wafer_gap(wafers_x: int, towers_y: int) -> None:
    """A line of points along the axis of a shower at theta = 45 deg, phi = 0 crosses the 1 mm
    x gap of the ILD-like ECAL: the energy in the gap is dropped, the energy on either side
    lands in the cells next to the gap, at any impact point (shifted by whole wafers/towers)."""
    from calogen.directions import axis_offset_mm, directions_from_angles

    ild = ild_ecal()
    wafer = ild.wafer_cells * CELL_SIZE_MM
    period_x, period_y = wafer + ild.gap_x_mm, wafer + ild.gap_y_mm
    depth = ild.layer_z_mm
    axis_x = axis_offset_mm(directions_from_angles([45.0], [0.0]), depth)[0, :, 0]
    np.testing.assert_allclose(axis_x, depth)  # tan 45 deg = 1
    crossing = 10  # the axis crosses the gap after wafer `wafers_x` in the middle of layer 10
    gap_lo = ild.grid_origin_mm[0] + wafers_x * period_x + wafer + np.asarray(ild.stagger_x_mm)
    impact = (gap_lo[crossing] + 0.5 - axis_x[crossing], 10.0 + towers_y * period_y)
    # per layer: 32 points of 1 MeV every 0.25 mm within 4 mm of the axis, all at y = 0
    offsets = np.arange(-4.0, 4.0, 0.25) + 0.125
    layer = np.repeat(np.arange(ild.n_layers), offsets.size)
    x = (axis_x[:, None] + offsets[None, :]).reshape(-1)
    points = np.stack([x, np.zeros_like(x), layer, np.full_like(x, 1e-3)], axis=1)
    hits = project(_showers(points.tolist(), energy=50.0), ild, impact, threshold_mev=0.0)

    # expected, from the wafer layout around the gap of each layer (detector frame, mm)
    x_det = x + impact[0]
    lo = gap_lo[layer]
    hi = lo + ild.gap_x_mm
    in_gap = (x_det >= lo) & (x_det < hi)
    assert in_gap[layer == crossing].sum() == 4  # 1 mm of gap / 0.25 mm spacing
    left = np.floor((lo - x_det) / CELL_SIZE_MM)  # cells counted away from the gap
    right = np.floor((x_det - hi) / CELL_SIZE_MM)
    centre = np.where(
        x_det < lo, lo - (left + 0.5) * CELL_SIZE_MM, hi + (right + 0.5) * CELL_SIZE_MM
    )
    cells, inverse = np.unique(
        np.stack([layer, np.round((centre - impact[0]) * 1000.0)], axis=1)[~in_gap],
        axis=0,
        return_inverse=True,
    )
    expected_mev = np.bincount(inverse.reshape(-1), minlength=len(cells)).astype(np.float64)
    order = np.lexsort((hits.x_mm, hits.layer))  # hits sorted like the unique cells
    assert len(hits) == len(cells)
    np.testing.assert_array_equal(hits.layer[order], cells[:, 0])
    np.testing.assert_allclose(hits.x_mm[order], cells[:, 1] / 1000.0, atol=2e-3)
    np.testing.assert_allclose(hits.energy_mev[order], expected_mev, rtol=1e-5)
    np.testing.assert_allclose(hits.energy_mev.sum(), (~in_gap).sum(), rtol=1e-5)
    # in the crossing layer the energy is split between the last cell of one wafer and the
    # first cell of the next, on either side of the gap
    row = hits.layer == crossing
    assert sorted((hits.ix[row] - 18 * wafers_x).tolist()) == [17, 18]
    below = hits.x_mm[row] + impact[0] < gap_lo[crossing]
    assert sorted(hits.ix[row][below] - 18 * wafers_x) == [17]
    # y: every point sits at the impact point's y, well inside one tower
    assert np.unique(hits.iy).size == 1
    np.testing.assert_allclose(hits.y_mm + impact[1], hits.y_mm[0] + impact[1])
