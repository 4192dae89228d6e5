"""Observables from hand-made cell hits with known answers, and their chunked accumulation."""

from __future__ import annotations

import numpy as np
import pytest

from calogen.data.io import make_showers, read_showers
from calogen.directions import directions_from_angles
from calogen.evaluation.observables import (
    AXIS_FEATURE_NAMES,
    LONGITUDINAL_EDGES,
    RADIAL_EDGES_MM,
    ObservableAccumulator,
    ShowerFeatures,
    cell_radius_mm,
    feature_names,
    longitudinal_profile,
    radial_profile,
    shower_features,
)
from calogen.geometry import CellHits, project, slab


def make_hits(rows: list[tuple[int, int, float, float, float]], energies: list[float]) -> CellHits:
    """CellHits from rows (shower, layer, x mm, y mm, E MeV) and incident energies (GeV)."""
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return CellHits(
        shower=arr[:, 0].astype(np.int64),
        layer=arr[:, 1].astype(np.int64),
        ix=np.zeros(len(arr), np.int64),
        iy=np.zeros(len(arr), np.int64),
        x_mm=arr[:, 2].astype(np.float32),
        y_mm=arr[:, 3].astype(np.float32),
        energy_mev=arr[:, 4].astype(np.float32),
        n_showers=len(energies),
        incident_energy_gev=np.asarray(energies, np.float32),
    )


def test_two_cells_known_answers() -> None:
    # shower 0: 1 MeV at (3, 4) mm in layer 2 and 3 MeV at (-1, 0) mm in layer 10
    # shower 1: no hits; shower 2: one 2 MeV cell at (0, 100) mm in layer 29
    hits = make_hits(
        [(0, 2, 3.0, 4.0, 1.0), (0, 10, -1.0, 0.0, 3.0), (2, 29, 0.0, 100.0, 2.0)],
        [10.0, 20.0, 40.0],
    )
    f = shower_features(hits, slab())
    assert len(f) == 3
    np.testing.assert_allclose(f.visible_energy_mev, [4.0, 0.0, 2.0])
    np.testing.assert_array_equal(f.n_hits, [2, 0, 1])
    np.testing.assert_allclose(f.cog_x_mm[[0, 2]], [(3 * 1 - 1 * 3) / 4, 0.0])
    np.testing.assert_allclose(f.cog_y_mm[[0, 2]], [(4 * 1 + 0 * 3) / 4, 100.0])
    np.testing.assert_allclose(f.cog_z_layer[[0, 2]], [(2 * 1 + 10 * 3) / 4, 29.0])
    z = slab().layer_z_mm
    np.testing.assert_allclose(f.cog_z_mm[0], (z[2] * 1 + z[10] * 3) / 4)
    assert np.isnan(f.cog_x_mm[1]) and np.isnan(f.cog_z_layer[1])  # no hits: undefined
    np.testing.assert_allclose(f.sampling_fraction, [4.0 / 10000, 0.0, 2.0 / 40000])
    # layer profile
    assert f.energy_per_layer_mev.shape == (3, 30)
    assert f.energy_per_layer_mev[0, 2] == 1.0 and f.energy_per_layer_mev[0, 10] == 3.0
    assert f.energy_per_layer_mev[2, 29] == 2.0
    assert f.hits_per_layer.sum() == 3
    # longitudinal bins: layer 2 -> bin 0 (0-7), layer 10 -> bin 1 (8-10), layer 29 -> bin 9
    np.testing.assert_allclose(f.longitudinal_mev[0], [1, 3, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(f.longitudinal_mev[2], [0] * 9 + [2])
    # radial bins: r = 5 mm -> bin 0; r = 1 mm -> bin 0; r = 100 mm -> bin 9 (68.8-300)
    np.testing.assert_allclose(f.radial_mev[0], [4] + [0] * 9)
    np.testing.assert_allclose(f.radial_mev[2], [0] * 9 + [2])
    np.testing.assert_allclose(f.radial_profile_mev.sum(axis=1), [4.0, 0.0, 2.0])
    # the feature matrix
    matrix, names = f.matrix()
    assert names == feature_names() and matrix.shape == (3, 25)
    assert names[:2] == ["occupancy", "sampling_fraction"] and names[-3:] == [
        "cog_x",
        "cog_y",
        "cog_z",
    ]
    np.testing.assert_allclose(matrix[0, :2], [2, 4.0 / 10000])
    np.testing.assert_allclose(matrix[1, -3:], 0.0)  # NaN CoG -> 0
    assert np.all(np.isfinite(matrix))


@pytest.mark.parametrize("layer", range(30))
def test_every_layer_in_one_longitudinal_bin(layer: int) -> None:
    f = shower_features(make_hits([(0, layer, 1.0, 1.0, 1.0)], [10.0]))
    assert f.longitudinal_mev.sum() == pytest.approx(1.0)
    k = int(np.argmax(f.longitudinal_mev[0]))
    lo, hi = LONGITUDINAL_EDGES[k], LONGITUDINAL_EDGES[k + 1]
    assert lo <= layer < hi or (k == 9 and layer == hi)


def test_radial_edges_half_open_last_inclusive() -> None:
    edge = RADIAL_EDGES_MM[3]
    hits = make_hits(
        [(0, 0, edge, 0.0, 1.0), (0, 0, 300.0, 0.0, 2.0), (0, 0, 301.0, 0.0, 4.0)], [10.0]
    )
    f = shower_features(hits)
    assert f.radial_mev[0, 3] == 1.0  # on a lower edge: that bin
    assert f.radial_mev[0, 9] == 2.0  # 300 mm included in the last bin
    assert f.radial_mev.sum() == 3.0  # beyond 300 mm: not counted
    assert f.visible_energy_mev[0] == 7.0


def test_profiles_and_select_concatenate() -> None:
    hits = make_hits(
        [(0, 1, 3.0, 4.0, 1.0), (1, 1, 0.0, 1.0, 2.0), (1, 5, 10.0, 0.0, 4.0)], [10.0, 50.0]
    )
    np.testing.assert_allclose(longitudinal_profile(hits)[[1, 5]], [3.0, 4.0])
    prof = radial_profile(hits, np.array([0.0, 2.0, 6.0, 20.0]))
    np.testing.assert_allclose(prof, [2.0, 1.0, 4.0])
    f = shower_features(hits)
    both = ShowerFeatures.concatenate([f.select(np.array([True, False])), f.select(np.array([1]))])
    np.testing.assert_allclose(both.visible_energy_mev, f.visible_energy_mev)
    np.testing.assert_allclose(both.energy_per_layer_mev, f.energy_per_layer_mev)


def test_accumulator_matches_single_pass(fixtures) -> None:
    showers = read_showers(fixtures / "g4_photons_subset.h5", 0, 30)
    calo = slab()
    whole = shower_features(project(showers, calo), calo)
    acc = ObservableAccumulator("g4", calo, max_cells=500, seed=1)
    for start in range(0, 30, 7):
        chunk = showers[start : start + 7]
        acc.add(project(chunk, calo), chunk)
    res = acc.result()
    assert res.n_showers == 30
    np.testing.assert_allclose(res.features.visible_energy_mev, whole.visible_energy_mev, rtol=1e-6)
    np.testing.assert_array_equal(res.features.n_hits, whole.n_hits)
    np.testing.assert_allclose(res.features.cog_z_layer, whole.cog_z_layer, rtol=1e-6)
    all_cells = project(showers, calo).energy_mev.astype(np.float64)
    assert res.n_cells == all_cells.size == res.cell_counts.sum()
    assert res.cell_sample_mev.size == 500  # bounded subsample
    assert np.isin(res.cell_sample_mev, all_cells).all()
    assert res.cell_sample_shower.max() < 30
    assert res.cell_moments["mean"] == pytest.approx(all_cells.mean(), rel=1e-9)
    assert res.cell_moments["std"] == pytest.approx(all_cells.std(), rel=1e-6)
    assert res.cell_moments["log10_mean"] == pytest.approx(np.log10(all_cells).mean(), rel=1e-9)
    assert res.display is not None and len(res.display.hits) > 0
    assert res.display.points.shape[1] == 4 and res.display.points.shape[0] > 0
    # the display shower is the one of the first chunk closest to 90 GeV
    first = showers.energies[:7].ravel()
    assert res.display.incident_energy_gev == pytest.approx(first[np.argmin(np.abs(first - 90))])


# ---------------------------------------------------------------------------------------------
# inclined showers: radii from the shower axis, the fitted axis
# ---------------------------------------------------------------------------------------------


def _line_hits(theta_deg: float, phi_deg: float, n_showers: int = 2) -> CellHits:
    """One 1 MeV hit per layer exactly on the axis of direction (theta, phi), per shower."""
    depth = slab().layer_z_mm
    t, p = np.radians(theta_deg), np.radians(phi_deg)
    rows = []
    for s in range(n_showers):
        for layer in range(30):
            r = depth[layer] * np.tan(t)
            rows.append((s, layer, r * np.cos(p), r * np.sin(p), 1.0 + layer % 3))
    return make_hits(rows, [50.0] * n_showers)


@pytest.mark.parametrize(("theta", "phi"), [(0.0, 0.0), (15.0, 0.0), (30.0, 90.0), (60.0, 135.0)])
def test_fitted_axis_of_a_straight_line(theta: float, phi: float) -> None:
    hits = _line_hits(theta, phi)
    dirs = directions_from_angles([theta, theta], [phi, phi])
    f = shower_features(hits, slab(), directions=dirs)
    np.testing.assert_allclose(f.axis_theta_deg, theta, atol=0.5)
    np.testing.assert_allclose(f.axis_theta_deg, theta, atol=1e-3)  # exact line, exact answer
    if theta > 0:
        np.testing.assert_allclose(f.axis_phi_deg, phi, atol=1e-3)
    slope = np.tan(np.radians(theta))
    np.testing.assert_allclose(f.axis_slope_x, slope * np.cos(np.radians(phi)), atol=1e-5)
    np.testing.assert_allclose(f.axis_slope_y, slope * np.sin(np.radians(phi)), atol=1e-5)
    # measured from the axis, every hit is at radius 0: all energy in the innermost bins
    assert np.all(f.radial_mev[:, 1:] == 0) and np.all(f.radial_mev[:, 0] > 0)
    assert np.all(f.radial_profile_mev[:, 1:] == 0)
    np.testing.assert_allclose(f.incident_theta_deg, theta, atol=1e-9)
    matrix, names = f.matrix(axis=True)
    assert matrix.shape == (2, 28) and names[-3:] == list(AXIS_FEATURE_NAMES)
    conditions, _ = f.conditions()
    np.testing.assert_allclose(conditions[:, 0], np.log(50.0))
    np.testing.assert_allclose(conditions[:, 1], np.cos(np.radians(theta)))


def test_projected_inclined_shower_keeps_its_axis() -> None:
    """A shower of points spread around a line at 30 deg, projected into 5 mm cells: the fitted
    axis is within 0.5 deg, the radial energy sits at the axis (from the z axis it would not)."""
    rng = np.random.default_rng(11)
    theta, phi = 30.0, 20.0
    depth = slab().layer_z_mm
    n, per_layer = 4, 400
    layer = np.repeat(np.arange(30), per_layer)
    slope = np.tan(np.radians(theta)) * np.array([np.cos(np.radians(phi)), np.sin(np.radians(phi))])
    points = np.zeros((n, layer.size, 4), np.float32)
    for s in range(n):
        xy = depth[layer, None] * slope + rng.normal(0.0, 3.0, (layer.size, 2))
        points[s, :, :2] = xy
        points[s, :, 2] = layer
        points[s, :, 3] = rng.exponential(1e-4, layer.size) + 1e-5
    showers = make_showers(points, np.full(n, layer.size), np.full(n, 50.0))
    dirs = directions_from_angles(np.full(n, theta), np.full(n, phi))
    hits = project(showers, slab())
    f = shower_features(hits, slab(), directions=dirs)
    np.testing.assert_allclose(f.axis_theta_deg, theta, atol=0.5)
    np.testing.assert_allclose(f.axis_phi_deg, phi, atol=1.0)
    fraction_core = f.radial_mev[:, :3].sum(axis=1) / f.visible_energy_mev
    assert np.all(fraction_core > 0.9)
    from_z = shower_features(hits, slab())  # the same hits measured from the z axis
    assert np.all(from_z.radial_mev[:, :3].sum(axis=1) / from_z.visible_energy_mev < 0.3)
    # the per-layer centroids follow the axis (cell size 5.09 mm)
    np.testing.assert_allclose(f.layer_cog_x_mm, depth * slope[0] + 0 * f.layer_cog_x_mm, atol=3)


def test_normal_incidence_unchanged(fixtures) -> None:
    """Directions (0, 0, 1) give exactly the numbers of no directions (the z axis)."""
    calo = slab()
    showers = read_showers(fixtures / "g4_photons_subset.h5")
    hits = project(showers, calo)
    plain = shower_features(hits, calo)
    normal = np.zeros((len(showers), 3))
    normal[:, 2] = 1.0
    with_dirs = shower_features(hits, calo, directions=normal)
    for name in ("radial_mev", "radial_profile_mev", "cog_x_mm", "axis_theta_deg"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(with_dirs, name))
    radius = np.hypot(hits.x_mm.astype(np.float64), hits.y_mm.astype(np.float64))
    np.testing.assert_array_equal(cell_radius_mm(hits, normal, calo), radius)
    assert plain.matrix()[0].shape == (len(showers), 25)
