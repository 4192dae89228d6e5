"""Property-based tests (hypothesis) of the calibration, the occupancy correction and of
projection and clustering on edge cases: random shapes, empty showers, single-point showers,
zero-energy showers, points in any order and showers entirely outside the bounding box."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from calogen.calibration import (
    OccupancyCorrection,
    assign_layers,
    calibrate,
    clip_negative_energies,
    distribute_counts,
    rescale_energy,
    rescale_layer_energies,
    shift_cog,
)
from calogen.data.clustering import cluster_steps
from calogen.data.io import make_showers
from calogen.data.normalisation import Normalisation
from calogen.data.packed import pack
from calogen.errors import CalogenError
from calogen.geometry import ild_ecal, project, slab

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_LAYERS = 30


def _f32(value: float) -> float:
    return float(np.float32(value))


@st.composite
def packed_points(draw, max_showers: int = 6, max_points: int = 30, zero_energy: bool = True):
    """Packed points ``[P, 4]`` with shuffled shower indices; some showers empty, some with a
    single point, some (with ``zero_energy``) whose points all carry zero energy."""
    n = draw(st.integers(0, max_showers))
    counts = np.asarray(draw(st.lists(st.integers(0, max_points), min_size=n, max_size=n)), int)
    shower = np.repeat(np.arange(n, dtype=np.int64), counts)
    total = int(counts.sum())
    order = draw(st.permutations(range(total))) if total else []
    shower = shower[np.asarray(order, dtype=np.int64)] if total else shower
    points = np.zeros((total, 4), np.float32)
    if total:
        points[:, :2] = draw(
            arrays(np.float32, (total, 2), elements=st.floats(_f32(-300), _f32(300), width=32))
        )
        points[:, 2] = draw(arrays(np.int64, total, elements=st.integers(0, N_LAYERS - 1)))
        low = 0.0 if zero_energy else _f32(1e-6)
        points[:, 3] = draw(arrays(np.float32, total, elements=st.floats(low, _f32(0.1), width=32)))
    return points, shower, counts


def _sums(values, shower, n):  # type: ignore[no-untyped-def]
    return np.bincount(shower, weights=np.asarray(values, np.float64), minlength=n)


@st.composite
def layer_counts(draw, counts: np.ndarray) -> np.ndarray:
    """Points per layer ``[S, 30]`` for showers with ``counts`` points each."""
    per_layer = np.zeros((len(counts), N_LAYERS), np.int64)
    for s, c in enumerate(counts):
        if c:
            layers = draw(arrays(np.int64, int(c), elements=st.integers(0, N_LAYERS - 1)))
            per_layer[s] = np.bincount(layers, minlength=N_LAYERS)
    return per_layer


# -- calibration steps ---------------------------------------------------------------------------


@SETTINGS
@given(packed_points(), st.data())
def test_rescale_energy_meets_every_target(packed, data) -> None:  # type: ignore[no-untyped-def]
    points, shower, counts = packed
    n = len(counts)
    target = data.draw(arrays(np.float64, n, elements=st.floats(1e-3, 100.0)))
    before = points.copy()
    out = rescale_energy(points, shower, target)
    assert out is points
    assert np.all(np.isfinite(points)) and np.all(points[:, 3] >= 0)
    totals = _sums(points[:, 3], shower, n)
    np.testing.assert_allclose(totals[counts > 0], target[counts > 0], rtol=1e-5)
    np.testing.assert_array_equal(points[:, :3], before[:, :3])
    # showers without energy get the target shared equally among their points
    zero = _sums(before[:, 3], shower, n) <= 0
    for s in np.flatnonzero(zero & (counts > 0)):
        np.testing.assert_allclose(points[shower == s, 3], target[s] / counts[s], rtol=1e-6)


@SETTINGS
@given(packed_points(), st.data())
def test_rescale_layer_energies_meets_every_present_layer(packed, data) -> None:  # type: ignore[no-untyped-def]
    points, shower, counts = packed
    n = len(counts)
    target = data.draw(arrays(np.float64, (n, N_LAYERS), elements=st.floats(0.0, 10.0)))
    rescale_layer_energies(points, shower, target)
    assert np.all(np.isfinite(points[:, 3])) and np.all(points[:, 3] >= 0)
    key = shower * N_LAYERS + points[:, 2].astype(np.int64)
    got = _sums(points[:, 3], key, n * N_LAYERS).reshape(n, N_LAYERS)
    present = np.bincount(key, minlength=n * N_LAYERS).reshape(n, N_LAYERS) > 0
    np.testing.assert_allclose(got[present], target[present], rtol=1e-5, atol=1e-7)
    assert np.all(got[~present] == 0)


@SETTINGS
@given(packed_points(), st.data())
def test_assign_layers_gives_exact_depth_ordered_counts(packed, data) -> None:  # type: ignore[no-untyped-def]
    points, shower, counts = packed
    per_layer = data.draw(layer_counts(counts))
    # coarse depths so that ties occur; ties keep the original point order
    depth = data.draw(
        arrays(np.float64, len(shower), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    )
    before = points.copy()
    assign_layers(points, shower, per_layer, depth)
    layers = points[:, 2]
    assert np.all(layers == np.rint(layers)) and np.all((layers >= 0) & (layers < N_LAYERS))
    np.testing.assert_array_equal(points[:, [0, 1, 3]], before[:, [0, 1, 3]])
    for s in np.flatnonzero(counts):
        sel = np.flatnonzero(shower == s)
        got = np.bincount(layers[sel].astype(np.int64), minlength=N_LAYERS)
        np.testing.assert_array_equal(got, per_layer[s])
        order = sel[np.lexsort((sel, depth[sel]))]  # by depth, ties by position
        assert np.all(np.diff(layers[order]) >= 0)


@SETTINGS
@given(packed_points(), st.data())
def test_assign_layers_refuses_counts_that_do_not_add_up(packed, data) -> None:  # type: ignore[no-untyped-def]
    points, shower, counts = packed
    assume(len(counts) > 0)
    per_layer = data.draw(layer_counts(counts))
    s = data.draw(st.integers(0, len(counts) - 1))
    layer = data.draw(st.integers(0, N_LAYERS - 1))
    per_layer[s, layer] += data.draw(st.sampled_from([-1, 1]))
    before = points.copy()
    with pytest.raises(CalogenError):
        assign_layers(points, shower, per_layer)
    np.testing.assert_array_equal(points, before)  # refused before anything changed


@SETTINGS
@given(packed_points(), st.data(), st.booleans())
def test_shift_cog_reaches_target(packed, data, per_shower: bool) -> None:  # type: ignore[no-untyped-def]
    points, shower, counts = packed
    n = len(counts)
    xy = st.floats(-50.0, 50.0)
    target = (
        data.draw(arrays(np.float64, (n, 2), elements=xy))
        if per_shower
        else data.draw(arrays(np.float64, 2, elements=xy))
    )
    before = points.copy()
    shift_cog(points, shower, target, n_showers=n)
    assert np.all(np.isfinite(points))
    np.testing.assert_array_equal(points[:, 2:], before[:, 2:])
    e = points[:, 3].astype(np.float64)
    total = _sums(e, shower, n)
    goal = np.broadcast_to(target, (n, 2))
    for axis in (0, 1):
        cog = _sums(points[:, axis] * e, shower, n)
        has = total > 0
        np.testing.assert_allclose(cog[has] / total[has], goal[has, axis], atol=5e-3)
    # showers without energy are not moved
    still = (total <= 0)[shower]
    np.testing.assert_array_equal(points[still, :2], before[still, :2])


@SETTINGS
@given(packed_points(), st.data())
def test_calibrate_runs_all_steps(packed, data) -> None:  # type: ignore[no-untyped-def]
    points, shower, counts = packed
    n = len(counts)
    # some negative energies to clip
    flip = data.draw(arrays(np.bool_, len(shower)))
    points[flip, 3] *= -1
    per_layer = data.draw(layer_counts(counts))
    target = data.draw(arrays(np.float64, n, elements=st.floats(0.01, 100.0)))
    calibrate(
        points,
        shower,
        n_showers=n,
        energy_total=target,
        counts_per_layer=per_layer,
        depth=data.draw(arrays(np.float64, len(shower), elements=st.floats(-1, 1))),
        cog_xy=np.zeros(2),
    )
    assert np.all(np.isfinite(points)) and np.all(points[:, 3] >= 0)
    totals = _sums(points[:, 3], shower, n)
    np.testing.assert_allclose(totals[counts > 0], target[counts > 0], rtol=1e-5)
    for s in np.flatnonzero(counts):
        sel = shower == s
        got = np.bincount(points[sel, 2].astype(np.int64), minlength=N_LAYERS)
        np.testing.assert_array_equal(got, per_layer[s])
        e = points[sel, 3].astype(np.float64)
        assert abs(np.sum(points[sel, 0] * e) / e.sum()) < 5e-3


def test_calibration_of_no_points_at_all() -> None:
    points = np.zeros((0, 4), np.float32)
    shower = np.zeros(0, np.int64)
    calibrate(
        points,
        shower,
        n_showers=2,
        energy_per_layer=np.ones((2, N_LAYERS)),
        counts_per_layer=np.zeros((2, N_LAYERS), np.int64),
        cog_xy=np.array([1.0, 2.0]),
    )
    assert points.shape == (0, 4)
    rescale_energy(points, shower, np.ones(2))
    shift_cog(points, shower, np.zeros(2))  # no target per shower, no n_showers: zero showers
    clip_negative_energies(points)


# -- occupancy correction -----------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_distribute_counts_sums_exactly_and_keeps_proportions(data) -> None:  # type: ignore[no-untyped-def]
    n = data.draw(st.integers(0, 6))
    layers = data.draw(st.integers(1, N_LAYERS))
    counts = data.draw(arrays(np.int64, (n, layers), elements=st.integers(0, 500)))
    # some rows empty
    empty_rows = data.draw(arrays(np.bool_, n))
    counts[empty_rows] = 0
    totals = data.draw(arrays(np.float64, n, elements=st.floats(-10.0, 20000.0)))
    out = distribute_counts(counts, totals)
    want = np.maximum(np.rint(totals), 0).astype(np.int64)
    assert out.shape == counts.shape and out.dtype == np.int64
    assert np.all(out >= 0)
    np.testing.assert_array_equal(out.sum(1), want)
    current = counts.sum(1)
    for s in range(n):
        if current[s] > 0:
            ideal = counts[s] * want[s] / current[s]
            assert np.all(np.abs(out[s] - ideal) < 1.0 + 1e-9)
            assert np.all(out[s][counts[s] == 0] == 0)  # empty layers stay empty
        else:
            assert out[s, 0] == want[s]


poly = st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=5)


@SETTINGS
@given(
    poly,
    poly,
    st.tuples(st.floats(0.0, 1e4), st.floats(0.0, 1e4)).map(sorted),
    st.tuples(st.floats(0.01, 1.0), st.floats(1.0, 10.0)),
    arrays(np.float64, st.integers(0, 8), elements=st.floats(-1e6, 1e9)),
)
def test_occupancy_factor_is_finite_and_clipped(p_data, p_gen, n_range, factor_range, n) -> None:  # type: ignore[no-untyped-def]
    corr = OccupancyCorrection(p_data, p_gen, tuple(n_range), factor_range)
    factor = corr.factor(n)
    assert factor.shape == n.shape
    assert np.all(np.isfinite(factor))
    assert np.all((factor >= factor_range[0]) & (factor <= factor_range[1]))
    # the JSON form round-trips exactly
    again = OccupancyCorrection.from_dict(json.loads(json.dumps(corr.to_dict())))
    np.testing.assert_array_equal(again.factor(n), factor)


@SETTINGS
@given(
    poly,
    poly,
    arrays(np.int64, st.tuples(st.integers(0, 5), st.just(N_LAYERS)), elements=st.integers(0, 80)),
)
def test_occupancy_apply_totals(p_data, p_gen, counts) -> None:  # type: ignore[no-untyped-def]
    corr = OccupancyCorrection(p_data, p_gen, (1.0, 5000.0))
    out = corr.apply(counts)
    total = counts.sum(1)
    np.testing.assert_array_equal(out.sum(1), np.rint(total * corr.factor(total)).astype(int))
    assert np.all(out >= 0)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = OccupancyCorrection.load(corr.save(Path(tmp) / "occ.json"))
    np.testing.assert_array_equal(loaded.apply(counts), out)


@SETTINGS
@given(
    arrays(np.float64, st.integers(4, 30), elements=st.floats(1.0, 5000.0)),
    st.floats(0.2, 2.0),
    st.floats(0.5, 1.5),
)
def test_occupancy_fit_is_finite_even_for_degenerate_samples(n, slope, ratio) -> None:  # type: ignore[no-untyped-def]
    # a sample of identical N (or few distinct values) makes the cubic fit rank deficient
    corr = OccupancyCorrection.fit(n, slope * n, n, ratio * slope * n)
    assert np.all(np.isfinite(corr.p_data)) and np.all(np.isfinite(corr.p_gen))
    factor = corr.factor(np.array([0.0, 1.0, float(n.mean()), 1e7]))
    assert np.all(np.isfinite(factor))


# -- projection, clustering and normalisation on edge cases ------------------------------------


@st.composite
def outside_showers(draw, max_showers: int = 4, max_points: int = 20):
    """Showers whose points all lie outside the ±200 mm box (some far outside, some just)."""
    n = draw(st.integers(1, max_showers))
    counts = draw(st.lists(st.integers(0, max_points), min_size=n, max_size=n))
    width = max(max(counts), 1)
    points = np.zeros((n, width, 4), np.float32)
    far = st.floats(_f32(200.0), _f32(1e5), width=32)
    for i, count in enumerate(counts):
        if not count:
            continue
        magnitude = draw(arrays(np.float32, (count, 2), elements=far))
        sign = draw(arrays(np.bool_, (count, 2)))
        xy = np.where(sign, magnitude, -magnitude)
        # one coordinate may be inside the box as long as the other is outside
        inside = draw(arrays(np.bool_, count))
        axis = draw(arrays(np.int64, count, elements=st.integers(0, 1)))
        rows = np.flatnonzero(inside)
        xy[rows, axis[rows]] = xy[rows, axis[rows]] % 199.0
        points[i, :count, :2] = xy
        points[i, :count, 2] = draw(arrays(np.int64, count, elements=st.integers(0, 29)))
        points[i, :count, 3] = draw(
            arrays(np.float32, count, elements=st.floats(_f32(1e-6), _f32(0.05), width=32))
        )
    energies = np.full(n, 50.0, np.float32)
    return make_showers(points, counts, energies)


@SETTINGS
@given(outside_showers(), st.integers(1, 8))
def test_clustering_drops_showers_entirely_outside_the_box(s, granularity: int) -> None:
    result = cluster_steps(s, granularity=granularity)
    assert len(result.showers) == len(s)
    assert np.all(result.showers._num_points == 0)
    assert result.dropped_points == int(s._num_points.sum())
    packed = pack(s)
    assert result.dropped_energy_gev == pytest.approx(float(packed.points[:, 3].sum()), rel=1e-5)


@SETTINGS
@given(outside_showers(), st.sampled_from(["slab", "ild"]))
def test_projection_of_showers_outside_the_box(s, name: str) -> None:
    geometry = slab() if name == "slab" else ild_ecal()
    hits = project(s, geometry, threshold_mev=0.0)
    assert hits.n_showers == len(s)
    assert np.all(np.isfinite(hits.energy_mev)) and np.all(hits.energy_mev > 0)
    deposited = np.bincount(hits.shower, weights=hits.energy_mev, minlength=len(s))
    visible = s.points[..., 3].sum(axis=1).astype(np.float64) * 1000
    assert np.all(deposited <= visible * (1 + 1e-5) + 1e-6)
    if name == "slab":
        np.testing.assert_allclose(deposited, visible, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(hits.shower) >= 0)  # rows sorted by shower


@SETTINGS
@given(st.floats(-199.0, 199.0), st.floats(-199.0, 199.0), st.integers(0, 29), st.floats(2e-4, 1.0))
def test_single_point_shower_projects_to_one_cell(x, y, layer, energy) -> None:  # type: ignore[no-untyped-def]
    points = np.array([[[x, y, layer, energy]]], np.float32)
    s = make_showers(points, [1], [10.0])
    for geometry in (slab(), ild_ecal()):
        hits = project(s, geometry)
        assert len(hits) <= 1
        if geometry.name == "slab":
            assert len(hits) == 1 and hits.layer[0] == layer
            assert hits.energy_mev[0] == pytest.approx(np.float32(energy) * 1000, rel=1e-6)
            # the point lies inside its cell
            half = geometry.cell_size_mm / 2
            assert abs(hits.x_mm[0] - np.float32(x)) <= half + 1e-3
            assert abs(hits.y_mm[0] - np.float32(y)) <= half + 1e-3


def test_projection_and_clustering_of_no_showers() -> None:
    empty = make_showers(np.zeros((0, 0, 4), np.float32), np.zeros(0, int), np.zeros(0))
    hits = project(empty, slab())
    assert len(hits) == 0 and hits.n_showers == 0
    result = cluster_steps(empty)
    assert len(result.showers) == 0 and result.dropped_points == 0


@SETTINGS
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(0, 50), st.just(4)),
        elements=st.floats(_f32(-0.999), _f32(0.999), width=32),
    )
)
def test_normalisation_inverse_then_forward(z) -> None:  # type: ignore[no-untyped-def]
    """Any network output in the box maps back to a valid point and forward again."""
    norm = Normalisation(e_min_gev=1e-6, e_max_gev=0.06)
    points = norm.inverse(z)
    assert np.all(np.isfinite(points))
    assert np.all((points[:, 2] >= 0) & (points[:, 2] <= 29))
    assert np.all(points[:, 2] == np.floor(points[:, 2]))
    assert np.all(np.abs(points[:, :2]) < 200.0)
    assert np.all((points[:, 3] >= 1e-6 * (1 - 1e-5)) & (points[:, 3] <= 0.06 * (1 + 1e-5)))
    again = norm.forward(points, smear=False)
    np.testing.assert_allclose(again[:, [0, 1, 3]], z[:, [0, 1, 3]], atol=1e-4)
    # the layer goes to its centre: within half a layer of the original depth
    assert np.all(np.abs(again[:, 2] - z[:, 2]) <= 1.0 / 30 + 1e-5)
