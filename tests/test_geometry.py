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
