"""Post-diffusion calibration and the occupancy correction."""

from __future__ import annotations

import numpy as np
import pytest

from calogen.calibration import (
    OccupancyCorrection,
    assign_layers,
    calibrate,
    clip_negative_energies,
    clump_halo_azimuth,
    distribute_counts,
    equalise_core_azimuth,
    pseudo_azimuth,
    rescale_energy,
    rescale_layer_energies,
    shift_cog,
)
from calogen.errors import CalogenError, UsageError


def _random_packed(seed: int = 0, counts=(5, 3, 0, 7, 40)):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts)
    shower = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(shower)  # calibration must not rely on sorted points
    points = rng.normal(size=(len(shower), 4)).astype(np.float32)
    points[:, 3] = np.abs(points[:, 3])
    per_layer = np.zeros((len(counts), 30), np.int64)
    for s, c in enumerate(counts):
        np.add.at(per_layer[s], rng.integers(0, 30, size=c), 1)
    return rng, counts, shower, points, per_layer


def test_clip_negative() -> None:
    pts = np.array([[0, 0, 0, -1.0], [0, 0, 0, 2.0]], np.float32)
    clip_negative_energies(pts)
    np.testing.assert_array_equal(pts[:, 3], [0.0, 2.0])


def test_rescale_energy_and_layers() -> None:
    rng, counts, shower, pts, _ = _random_packed()
    target = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    rescale_energy(pts, shower, target)
    totals = np.bincount(shower, weights=pts[:, 3], minlength=5)
    np.testing.assert_allclose(totals[counts > 0], target[counts > 0], rtol=1e-6)
    # zero-energy shower gets the target shared equally
    pts2 = np.zeros((3, 4), np.float32)
    rescale_energy(pts2, np.zeros(3, np.int64), np.array([3.0]))
    np.testing.assert_allclose(pts2[:, 3], 1.0)
    # per layer
    pts[:, 2] = rng.integers(0, 30, size=len(pts))
    target_layers = rng.random((5, 30))
    rescale_layer_energies(pts, shower, target_layers)
    key = shower * 30 + pts[:, 2].astype(int)
    got = np.bincount(key, weights=pts[:, 3], minlength=150).reshape(5, 30)
    present = np.bincount(key, minlength=150).reshape(5, 30) > 0
    np.testing.assert_allclose(got[present], target_layers[present], rtol=1e-5)


def test_assign_layers_depth_sorted_exact_counts() -> None:
    rng, counts, shower, pts, per_layer = _random_packed(1)
    depth = rng.random(len(shower))
    assign_layers(pts, shower, per_layer, depth)
    for s in range(len(counts)):
        sel = shower == s
        layers = pts[sel, 2].astype(int)
        np.testing.assert_array_equal(np.bincount(layers, minlength=30), per_layer[s])
        order = np.argsort(depth[sel])
        assert np.all(np.diff(layers[order]) >= 0)  # deeper points never get earlier layers
    with pytest.raises(CalogenError):
        assign_layers(pts, shower, per_layer + 1)


def test_assign_layers_ties_broken_by_point_order() -> None:
    """Depths that tie (generated depths pile up at the network's output clip) go to layers
    in point order: the per-shower fast path equals the stable lexsort of the general path."""
    rng, counts, shower, pts, per_layer = _random_packed(5, counts=(50, 0, 300, 120))
    order = np.argsort(shower, kind="stable")
    shower, pts = shower[order], pts[order]  # contiguous showers, as generated
    depth = np.clip(rng.normal(0, 0.8, len(shower)), -1.2, 1.2).astype(np.float32)
    depth[rng.random(len(shower)) < 0.05] = 0.25  # more ties inside the range
    assert np.sum(np.abs(depth) == 1.2) > 10
    fast = assign_layers(pts.copy(), shower, per_layer, depth)
    expected = np.empty(len(shower))
    by_depth = np.lexsort((depth, shower))  # stable: ties in point order
    for s in range(len(counts)):
        expected[by_depth[shower[by_depth] == s]] = np.repeat(np.arange(30), per_layer[s])
    np.testing.assert_array_equal(fast[:, 2], expected)


def test_shift_cog() -> None:
    _, counts, shower, pts, _ = _random_packed(2)
    shift_cog(pts, shower, np.array([1.5, -2.0]), n_showers=len(counts))
    e = pts[:, 3].astype(np.float64)
    for s in np.flatnonzero(counts):
        sel = shower == s
        assert np.sum(pts[sel, 0] * e[sel]) / e[sel].sum() == pytest.approx(1.5, abs=1e-4)
        assert np.sum(pts[sel, 1] * e[sel]) / e[sel].sum() == pytest.approx(-2.0, abs=1e-4)


def test_shift_cog_of_the_core_leaves_the_tail_out() -> None:
    """With ``core_radius_mm`` the core (points within the radius of the axis) lands on the
    target, whatever a far, asymmetric tail does; a shower with nothing inside falls back to
    its full centre of gravity."""
    from calogen.models.shower_flow import core_cog

    rng = np.random.default_rng(4)
    core = np.column_stack(
        [rng.normal(0.3, 1.0, 200), rng.normal(-0.2, 1.0, 200), np.zeros(200), np.full(200, 1.0)]
    )
    tail = np.array([[60.0, 5.0, 3.0, 20.0], [55.0, -3.0, 4.0, 10.0]])  # heavy one-sided tail
    outside = np.array([[40.0, 40.0, 1.0, 2.0], [50.0, 30.0, 2.0, 1.0]])  # no core at all
    pts = np.vstack([core, tail, outside]).astype(np.float32)
    shower = np.concatenate([np.zeros(202, int), np.ones(2, int)])
    target = np.array([[0.5, -0.4], [1.0, 2.0]])
    before = core_cog(pts, shower, 2, 10.0)
    assert before[0, 0] < 5.0  # the core's centre, not pulled towards the tail at 55-60 mm
    shift_cog(pts, shower, target, n_showers=2, core_radius_mm=10.0)
    shifted_core = pts[:200]
    e = shifted_core[:, 3].astype(np.float64)
    assert np.sum(shifted_core[:, 0] * e) / e.sum() == pytest.approx(0.5, abs=1e-4)
    assert np.sum(shifted_core[:, 1] * e) / e.sum() == pytest.approx(-0.4, abs=1e-4)
    e_out = pts[202:, 3].astype(np.float64)
    assert np.sum(pts[202:, 0] * e_out) / e_out.sum() == pytest.approx(1.0, abs=1e-4)
    # the same shift moved every point of a shower: the tail keeps its place relative to the core
    assert pts[200, 0] - pts[0, 0] == pytest.approx(tail[0, 0] - core[0, 0], abs=1e-4)
    # shower features: core values as computed here, full values pulled by the tail
    assert core_cog(pts, shower, 2, 10.0)[0] == pytest.approx([0.5, -0.4], abs=1e-4)


def test_calibrate_all_steps() -> None:
    rng, counts, shower, pts, per_layer = _random_packed(3)
    pts[::3, 3] = -0.5
    target = rng.random(len(counts)) + 0.5
    calibrate(
        pts,
        shower,
        n_showers=len(counts),
        energy_total=target,
        counts_per_layer=per_layer,
        depth=rng.random(len(shower)),
        cog_xy=np.zeros(2),
    )
    assert np.all(pts[:, 3] >= 0)
    for s in np.flatnonzero(counts):
        sel = shower == s
        assert pts[sel, 3].sum() == pytest.approx(target[s], rel=1e-5)
        np.testing.assert_array_equal(
            np.bincount(pts[sel, 2].astype(int), minlength=30), per_layer[s]
        )


def test_distribute_counts() -> None:
    counts = np.array([[3, 0, 1], [0, 0, 0], [5, 5, 5]])
    out = distribute_counts(counts, np.array([8.0, 2.0, 4.4]))
    np.testing.assert_array_equal(out.sum(1), [8, 2, 4])
    assert out[0, 1] == 0 and out[0, 0] == 6
    assert out[1, 0] == 2


def test_occupancy_correction_fit_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    n = np.linspace(200, 4000, 50)
    occ_data = 0.4 * n + 1e-5 * n**2
    n_gen = np.linspace(200, 4000, 50)
    occ_gen = 1.1 * (0.4 * n_gen + 1e-5 * n_gen**2)  # generated showers have 10 % more hits
    corr = OccupancyCorrection.fit(n, occ_data, n_gen, occ_gen)
    factor = corr.factor(np.array([500.0, 2000.0]))
    assert np.all(factor < 1.0) and np.all(factor > 0.85)
    # corrected N reproduces the data occupancy through the generated relation
    n_cal = 2000 * corr.factor([2000.0])[0]
    occ_at_cal = 1.1 * (0.4 * n_cal + 1e-5 * n_cal**2)
    assert occ_at_cal == pytest.approx(0.4 * 2000 + 1e-5 * 2000**2, rel=2e-3)
    path = corr.save(tmp_path / "occ.json")
    again = OccupancyCorrection.load(path)
    np.testing.assert_allclose(again.factor([1234.0]), corr.factor([1234.0]))
    per_layer = np.array([[100, 200, 0], [10, 0, 0]])
    applied = corr.apply(per_layer)
    np.testing.assert_array_equal(
        applied.sum(1), np.rint(per_layer.sum(1) * corr.factor(per_layer.sum(1)))
    )
    np.testing.assert_allclose(OccupancyCorrection.identity().factor([10.0, 3000.0]), 1.0)
    with pytest.raises(UsageError):
        OccupancyCorrection.from_dict({"p_data": [1]})
    with pytest.raises(UsageError):
        OccupancyCorrection.fit(n[:2], occ_data[:2], n_gen, occ_gen)


def test_occupancy_refinement_converges_on_a_sublinear_generator() -> None:
    """A generator whose hits grow as N'^0.4 at fixed energy defeats the open-loop fit; the
    closed-loop refinement brings the hits to the Geant4 target within a few per cent."""
    n_flow = np.linspace(800, 4000, 60)  # points the Shower Flow asks for

    def hits(n_asked: np.ndarray, n_used: np.ndarray) -> np.ndarray:
        # 30 % too many hits at the model's own N, elasticity 0.4 when N' departs from it
        return 1.3 * 0.22 * n_asked * (n_used / n_asked) ** 0.4

    occ_data = 0.22 * n_flow
    corr = OccupancyCorrection.fit(n_flow, occ_data, n_flow, hits(n_flow, n_flow))
    corr.factor_range = (0.2, 2.0)
    open_loop = hits(n_flow, n_flow * corr.factor(n_flow))
    assert np.mean(open_loop / occ_data) > 1.15  # open loop leaves > 15 % too many hits
    for _ in range(3):
        achieved = hits(n_flow, n_flow * corr.factor(n_flow))
        corr = corr.refine(n_flow, achieved, elasticity=0.4)
    final = hits(n_flow, n_flow * corr.factor(n_flow))
    np.testing.assert_allclose(final / occ_data, 1.0, atol=0.03)
    # the refinement survives the JSON round trip; old files without it load as no refinement
    again = OccupancyCorrection.from_dict(corr.to_dict())
    np.testing.assert_allclose(again.factor(n_flow), corr.factor(n_flow))
    old = {k: v for k, v in corr.to_dict().items() if k != "p_refine"}
    assert OccupancyCorrection.from_dict(old).p_refine == [0.0]


def _packed_gaussian_showers(rng, n_showers: int, width_mm: float, energies):  # type: ignore[no-untyped-def]
    """Round Gaussian showers of 400 points (x, y mm; layers 0-29; e GeV) and their index."""
    points = np.zeros((n_showers * 400, 4))
    points[:, :2] = rng.normal(0.0, width_mm, size=(n_showers * 400, 2))
    points[:, 2] = rng.integers(0, 30, size=n_showers * 400)
    points[:, 3] = rng.exponential(1e-3, size=n_showers * 400)
    return points, np.repeat(np.arange(n_showers), 400), np.asarray(energies, np.float64)


def test_radial_correction_maps_generated_radii_onto_the_data() -> None:
    from calogen.calibration import RadialCorrection, weighted_quantiles

    rng = np.random.default_rng(0)
    energies = rng.uniform(10, 90, 200)
    data = _packed_gaussian_showers(rng, 200, 2.0, energies)
    gen = _packed_gaussian_showers(rng, 200, 5.0, energies)  # 2.5x too wide
    corr = RadialCorrection.fit(data, gen)
    fresh = _packed_gaussian_showers(rng, 200, 5.0, energies)
    before = fresh[0].copy()
    corr.apply(fresh[0], fresh[1], energies)
    r_data = np.hypot(*data[0][:, :2].T)
    r_new = np.hypot(*fresh[0][:, :2].T)
    levels = np.array([0.25, 0.5, 0.9])
    q_data = weighted_quantiles(r_data, data[0][:, 3], levels)
    q_new = weighted_quantiles(r_new, fresh[0][:, 3], levels)
    np.testing.assert_allclose(q_new, q_data, rtol=0.08)
    # azimuth, layer and energy are kept; only the radius changes
    np.testing.assert_allclose(
        np.arctan2(fresh[0][:, 1], fresh[0][:, 0]),
        np.arctan2(before[:, 1], before[:, 0]),
        atol=1e-9,
    )
    np.testing.assert_array_equal(fresh[0][:, 2:], before[:, 2:])
    # the map is monotone in r within each bin
    sel = (corr.energy_bin(energies)[fresh[1]] == 1) & (corr.layer_group(before[:, 2]) == 2)
    order = np.argsort(np.hypot(*before[sel, :2].T))
    assert np.all(np.diff(r_new[sel][order]) >= -1e-9)
    # JSON round trip, and bad tables are refused with one line
    again = RadialCorrection.from_dict(corr.to_dict())
    np.testing.assert_allclose(again.log_r_data, corr.log_r_data, atol=1e-6)
    broken = corr.to_dict()
    broken["log_r_gen"] = broken["log_r_gen"][:1]
    with pytest.raises(UsageError, match="radial correction"):
        RadialCorrection.from_dict(broken)


def _aged_showers(rng, n_showers: int, aged: bool, energies):  # type: ignore[no-untyped-def]
    """Showers of 400 points in the 15 layers from a start layer of 5 or 10 (half each);
    ``aged``: the width grows with the layer after the start (1 + 0.4 age mm), else 3 mm."""
    start = np.where(np.arange(n_showers) % 2 == 0, 5, 10)
    shower = np.repeat(np.arange(n_showers), 400)
    layer = start[shower] + rng.integers(0, 15, size=shower.size)
    width = 1.0 + 0.4 * (layer - start[shower]) if aged else np.full(shower.size, 3.0)
    points = np.zeros((shower.size, 4))
    points[:, :2] = rng.normal(0.0, 1.0, size=(shower.size, 2)) * width[:, None]
    points[:, 2] = layer
    points[:, 3] = rng.exponential(1e-3, size=shower.size)
    return points, shower, np.asarray(energies, np.float64)


def test_radial_correction_by_layers_relative_to_the_shower_depth() -> None:
    """A map by layer index gives a late shower's young layers the width of the average
    shower there; grouped relative to each shower's depth it gives them their own."""
    from calogen.calibration import RadialCorrection, relative_layers, weighted_quantiles

    rng = np.random.default_rng(2)
    energies = np.full(200, 50.0)
    data = _aged_showers(rng, 200, True, energies)
    gen = _aged_showers(rng, 200, False, energies)
    pts, shower = np.array([[0, 0, 3, 1.0], [0, 0, 5, 3.0], [0, 0, 20, 2.0]]), np.array([0, 0, 1])
    np.testing.assert_allclose(relative_layers(pts, shower), [14.0, 16.0, 15.0])  # depth 4.5 -> 4
    medians = {}
    for relative in (False, True):
        corr = RadialCorrection.fit(data, gen, depth_relative=relative)
        assert RadialCorrection.from_dict(corr.to_dict()).depth_relative == relative
        fresh = _aged_showers(rng, 200, False, energies)
        corr.apply(fresh[0], fresh[1], energies)
        # late showers (start 10, depth 17: relative layers 10-14 are ages 2-6)
        age = fresh[0][:, 2] - 10
        late_young = (fresh[1] % 2 == 1) & (age >= 2) & (age <= 6)
        r = np.hypot(*fresh[0][late_young, :2].T)
        medians[relative] = weighted_quantiles(r, fresh[0][late_young, 3], np.array([0.5]))[0]
    sel = (data[1] % 2 == 1) & (data[0][:, 2] >= 12) & (data[0][:, 2] <= 16)
    target = weighted_quantiles(np.hypot(*data[0][sel, :2].T), data[0][sel, 3], np.array([0.5]))
    assert abs(medians[True] / target[0] - 1) < 0.15
    # by layer index, layers 10-14 and 15-19 mix in the early showers' older, wider layers
    assert medians[False] / target[0] - 1 > 0.2


def _visible_showers(rng, n_showers: int, correlated: bool, energies):  # type: ignore[no-untyped-def]
    """Showers of 400 points whose visible energy varies by x 0.8-1.2 from shower to shower;
    ``correlated``: the width falls with it (2.5 mm at 0.8, 1.5 mm at 1.2), else 2 mm."""
    scale = rng.uniform(0.8, 1.2, n_showers)
    shower = np.repeat(np.arange(n_showers), 400)
    width = 2.0 - 2.5 * (scale - 1.0) if correlated else np.full(n_showers, 2.0)
    points = np.zeros((shower.size, 4))
    points[:, :2] = rng.normal(0.0, 1.0, size=(shower.size, 2)) * width[shower, None]
    points[:, 2] = rng.integers(0, 30, size=shower.size)
    points[:, 3] = 1e-3 * scale[shower] * np.asarray(energies)[shower] / 50.0
    return points, shower, np.asarray(energies, np.float64)


def test_radial_correction_by_shower_class_restores_a_correlation() -> None:
    """With classes by the visible energy, the map gives the bright and the faint showers
    their own widths (Geant4's core share falls with E_vis); one class cannot."""
    from calogen.calibration import RadialCorrection, ShowerClasses, weighted_quantiles

    rng = np.random.default_rng(4)
    energies = rng.uniform(20.0, 80.0, 600)
    data = _visible_showers(rng, 600, True, energies)
    gen = _visible_showers(rng, 600, False, energies)
    fresh = _visible_showers(rng, 600, False, energies)
    bright = ShowerClasses.residuals(*fresh, "visible")[0] > 0  # E_vis / E above its trend
    widths = {}
    for kinds in ((), ("visible",)):
        corr = RadialCorrection.fit(data, gen, shower_classes=kinds)
        again = RadialCorrection.from_dict(corr.to_dict())
        assert again.binning == corr.binning and again.n_groups == corr.n_groups
        points = fresh[0].copy()
        corr.apply(points, fresh[1], energies)
        r = np.hypot(*points[:, :2].T)
        widths[kinds] = [
            weighted_quantiles(r[sel[fresh[1]]], points[sel[fresh[1]], 3], np.array([0.5]))[0]
            for sel in (bright, ~bright)
        ]
    # Geant4-like sample: faint half 2.25 mm, bright half 1.75 mm wide on average (1.29)
    assert widths[("visible",)][1] / widths[("visible",)][0] > 1.2
    assert abs(widths[()][1] / widths[()][0] - 1.0) < 0.05  # one class: no correlation
    classes = RadialCorrection.fit(data, gen, shower_classes=("depth", "visible")).shower_classes
    assert classes is not None and classes.n_classes == 9
    assert classes.classify(*data).max() == 8
    with pytest.raises(UsageError, match="shower classes"):
        RadialCorrection.fit(data, gen, shower_classes=("width",))
    with pytest.raises(UsageError, match="incident energies"):
        RadialCorrection.fit(data, gen, shower_classes=("depth",)).point_groups(*data[:2])


def test_radial_correction_of_equal_samples_is_close_to_identity() -> None:
    from calogen.calibration import RadialCorrection

    rng = np.random.default_rng(1)
    energies = rng.uniform(10, 90, 300)
    corr = RadialCorrection.fit(
        _packed_gaussian_showers(rng, 300, 3.0, energies),
        _packed_gaussian_showers(rng, 300, 3.0, energies),
    )
    pts, shower, _ = _packed_gaussian_showers(rng, 50, 3.0, energies[:50])
    r = np.hypot(*pts[:, :2].T)
    corr.apply(pts, shower, energies[:50])
    ratio = np.hypot(*pts[:, :2].T) / r
    assert np.median(np.abs(ratio - 1.0)) < 0.03


# -- axis shift (angle-aware models) ---------------------------------------------------------


def _leaning_showers(rng, n, lean_mm_per_layer, theta):
    """Points in the axis frame whose layer centroids sit at ``lean * layer`` in x."""
    from calogen.calibration import AxisShiftCorrection  # noqa: F401

    pts, owner = [], []
    for s in range(n):
        layer = rng.integers(0, 30, 400).astype(np.float32)
        x = rng.normal(0, 3, 400) + lean_mm_per_layer * layer
        y = rng.normal(0, 3, 400)
        e = rng.uniform(0.5, 1.5, 400)
        pts.append(np.c_[x, y, layer, e])
        owner.append(np.full(400, s))
    return np.concatenate(pts).astype(np.float32), np.concatenate(owner), np.full(n, theta)


def test_axis_shift_moves_generated_layers_onto_the_data():
    from calogen.calibration import AxisShiftCorrection

    rng = np.random.default_rng(0)
    data = [
        _leaning_showers(rng, 60, lean, th) for lean, th in ((0.0, 0.0), (0.10, 22.0), (0.20, 50.0))
    ]
    gen = [
        _leaning_showers(rng, 60, lean, th)
        for lean, th in ((-0.05, 0.0), (0.0, 22.0), (0.05, 50.0))
    ]

    def cat(parts):
        off = np.cumsum([0] + [p[2].size for p in parts[:-1]])
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] + o for p, o in zip(parts, off, strict=True)]),
            np.concatenate([p[2] for p in parts]),
        )

    corr = AxisShiftCorrection.fit(cat(data), cat(gen))
    # nodes: 0, the mean angle of each bin with showers, then the last edge (extrapolated)
    np.testing.assert_allclose(corr.theta_nodes_deg, [0, 22, 50, 60])
    layers = np.arange(30)
    # normal incidence: the generated showers lean by -0.05 mm per layer, the data not
    np.testing.assert_allclose(corr.shift_mm[0], 0.05 * layers, atol=0.45)
    # 22 deg: data lean 0.10 mm/layer more than the generated showers; 50 deg: 0.15
    np.testing.assert_allclose(corr.shift_mm[1], 0.10 * layers, atol=0.45)
    np.testing.assert_allclose(corr.shift_mm[2], 0.15 * layers, atol=0.45)
    slope = (corr.shift_mm[2] - corr.shift_mm[1]) / 28.0  # linear beyond the last bin's angle
    np.testing.assert_allclose(corr.shift_mm[3], corr.shift_mm[2] + 10 * slope, atol=1e-9)
    # linear in theta between nodes, constant beyond the last node
    s = corr.shift(np.array([0.0, 11.0, 22.0, 60.0, 70.0]), np.full(5, 20))
    row = corr.shift_mm[:, 20]
    np.testing.assert_allclose(s, [row[0], 0.5 * (row[0] + row[1]), row[1], row[3], row[3]])
    again = AxisShiftCorrection.from_dict(corr.to_dict())
    np.testing.assert_allclose(again.shift_mm, corr.shift_mm, atol=1e-4)
    with pytest.raises(UsageError, match="axis-shift"):
        AxisShiftCorrection.from_dict({"theta_nodes_deg": [0, 1], "shift_mm": [[0.0]]})


def test_occupancy_fit_in_logarithms_ignores_capped_showers() -> None:
    """``log_space``: hits a power of the points on both sides; generated showers at the
    point cap are left out, and the factor then brings the hits to Geant4's at every N."""
    from calogen.calibration import OccupancyCorrection

    rng = np.random.default_rng(7)
    n_data = rng.uniform(400, 3000, 2000)
    hits_data = 2.0 * n_data**0.8 * rng.lognormal(0.0, 0.03, n_data.size)
    n_gen = rng.uniform(400, 3000, 2000)
    hits_gen = 3.0 * n_gen**0.7 * rng.lognormal(0.0, 0.03, n_gen.size)
    n_gen[:40] = 6000.0  # the generator's cap: these points say nothing about hits(N)
    corr = OccupancyCorrection.fit(n_data, hits_data, n_gen, hits_gen, log_space=True, n_cap=6000)
    assert corr.log_space and len(corr.p_data) == 3
    n = np.array([450.0, 1000.0, 2900.0])
    achieved = 3.0 * (n * corr.factor(n)) ** 0.7
    # within 3 %: p_gen regresses points on the noisy hits (the closed-loop refinement of
    # fit_occupancy removes the rest)
    np.testing.assert_allclose(achieved, 2.0 * n**0.8, rtol=0.03)
    np.testing.assert_allclose(corr.target_hits(n), 2.0 * n**0.8, rtol=0.01)
    again = OccupancyCorrection.from_dict(corr.to_dict())
    assert again.log_space
    np.testing.assert_allclose(again.factor(n), corr.factor(n))
    assert corr.refine(n, achieved, 0.7).log_space
    assert not OccupancyCorrection.from_dict(
        {k: v for k, v in corr.to_dict().items() if k != "log_space"}
    ).log_space  # files written before: cubic fits in N


def test_log_space_refinement_is_not_moved_by_a_few_far_off_showers() -> None:
    """The closed-loop step of a log-space fit follows the median in bins of N: 2 % of the
    showers at ten times their target (e.g. capped ones) leave it where it was."""
    from calogen.calibration import OccupancyCorrection

    rng = np.random.default_rng(3)
    n_flow = rng.uniform(400, 4000, 2000)
    corr = OccupancyCorrection(
        p_data=[0.0, 0.8, np.log(2.0)], p_gen=[0.0, 1.0, 0.0], n_range=(400.0, 4000.0),
        log_space=True,
    )  # fmt: skip
    achieved = corr.target_hits(n_flow) * rng.lognormal(0.0, 0.02, n_flow.size)
    achieved[rng.choice(n_flow.size, 40, replace=False)] *= 10.0
    refined = corr.refine(n_flow, achieved, elasticity=0.7)
    n = np.array([400.0, 1000.0, 2500.0, 4000.0])
    np.testing.assert_allclose(refined.factor(n) / corr.factor(n), 1.0, atol=0.02)


def test_pseudo_azimuth_orders_points_as_their_azimuth():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2, 2000))
    x[:4], y[:4] = [1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]  # on the axes: 0, 1, 2, 3
    a = pseudo_azimuth(x, y)
    np.testing.assert_array_equal(a[:4], [0.0, 1.0, 2.0, 3.0])
    assert np.all((a >= 0) & (a < 4))
    phi = np.mod(np.arctan2(y, x), 2 * np.pi)
    np.testing.assert_array_equal(np.argsort(a), np.argsort(phi))
    assert pseudo_azimuth(np.zeros(1), np.zeros(1))[0] == 1.0


def test_equalise_core_azimuth_spreads_the_core_evenly_in_energy():
    """Equal energies at one radius end evenly spaced (their centroid on the axis); the
    azimuth order, radii, layers and energies stay; points outside the core, without energy
    or in other layers are untouched; each shower's layers are treated apart."""
    rng = np.random.default_rng(6)
    n = 12
    phi = np.sort(rng.uniform(0.0, 2 * np.pi, n))
    core = np.c_[2.0 * np.cos(phi), 2.0 * np.sin(phi), np.full(n, 4.0), np.full(n, 1e-3)]
    outside = np.array([[5.0, 1.0, 4.0, 1e-3], [0.5, 0.5, 4.0, 0.0]])  # beyond 3 mm; no energy
    other = np.c_[rng.normal(0.0, 1.0, (6, 2)), np.full(6, 7.0), np.full(6, 2e-3)]
    points = np.concatenate([core, outside, other, core]).astype(np.float32)
    shower = np.repeat([0, 0, 0, 1], [n, 2, 6, n])  # shower 1: the same core again
    out = equalise_core_azimuth(points.copy(), shower, 3.0)
    np.testing.assert_array_equal(out[n : n + 2], points[n : n + 2])
    np.testing.assert_array_equal(out[:, 2:], points[:, 2:])
    np.testing.assert_allclose(
        np.hypot(out[:, 0], out[:, 1]), np.hypot(points[:, 0], points[:, 1]), rtol=1e-6
    )
    for rows in (slice(0, n), slice(n + 8, None)):
        new = np.mod(np.arctan2(out[rows, 1], out[rows, 0]), 2 * np.pi)
        gaps = np.diff(np.sort(new))
        np.testing.assert_allclose(gaps, 2 * np.pi / n, atol=1e-5)
        np.testing.assert_allclose(out[rows, :2].mean(0), 0.0, atol=1e-6)
    np.testing.assert_array_equal(
        out[n:], np.concatenate([points[n : n + 2], out[n + 2 : n + 8], out[:n]])
    )
    # a heavy point takes its share of the circle: energies 3, 1, 1, 1 -> half a turn for it
    four = np.array(
        [[1.0, 0.0, 0, 3e-3], [0.0, 1.0, 0, 1e-3], [-1.0, 0.0, 0, 1e-3], [0.0, -1.0, 0, 1e-3]],
        np.float32,
    )
    out = equalise_core_azimuth(four.copy(), np.zeros(4, np.int64), 3.0)
    turned = np.mod(np.arctan2(out[:, 1], out[:, 0]), 2 * np.pi)
    np.testing.assert_allclose(
        turned,
        [np.pi * 3 / 6, 2 * np.pi * 3.5 / 6, 2 * np.pi * 4.5 / 6, 2 * np.pi * 5.5 / 6],
        atol=1e-6,
    )
    assert (
        equalise_core_azimuth(four.copy(), np.zeros(4, np.int64), 0.0).tobytes() == four.tobytes()
    )


def test_clump_halo_azimuth_groups_halo_points_in_row_order():
    """Groups of ``size`` halo points of a layer (in row order) take the azimuth of their
    first; radii, layers, energies, core points, points without energy and other showers'
    layers are kept apart."""
    rng = np.random.default_rng(7)
    n = 3000
    points = np.zeros((n, 4), np.float32)
    points[:, :2] = rng.normal(0.0, 8.0, (n, 2))
    points[:, 2] = rng.integers(0, 30, n)
    points[:, 3] = rng.exponential(1e-3, n)
    points[::11, 3] = 0.0
    shower = rng.integers(0, 4, n)
    out = clump_halo_azimuth(points.copy(), shower, 3.0, 3)
    r = np.hypot(points[:, 0], points[:, 1])
    halo = (r >= 3.0) & (points[:, 3] > 0)
    np.testing.assert_array_equal(out[~halo], points[~halo])
    np.testing.assert_array_equal(out[:, 2:], points[:, 2:])
    np.testing.assert_allclose(np.hypot(out[:, 0], out[:, 1]), r, rtol=1e-5)
    phi_in = np.arctan2(points[:, 1], points[:, 0])
    phi_out = np.arctan2(out[:, 1], out[:, 0])
    for s in range(4):
        for layer in (0, 13, 29):
            rows = np.flatnonzero(halo & (shower == s) & (points[:, 2] == layer))
            lead = rows[(np.arange(rows.size) // 3) * 3]
            np.testing.assert_allclose(phi_out[rows], phi_in[lead], atol=1e-5)
    assert clump_halo_azimuth(points.copy(), shower, 3.0, 1).tobytes() == points.tobytes()
    # a mean size of 2.5: groups of 3 and 2 in turn
    out = clump_halo_azimuth(points.copy(), shower, 3.0, 2.5)
    phi_out = np.arctan2(out[:, 1], out[:, 0])
    rows = np.flatnonzero(halo & (shower == 1) & (points[:, 2] == 13))
    assert rows.size >= 6
    first = np.array([0, 0, 0, 3, 3, 5, 5, 5, 8, 8, 10, 10, 10, 13, 13])[: rows.size]
    np.testing.assert_allclose(phi_out[rows[: first.size]], phi_in[rows[first]], atol=1e-5)
    # sizes by layer: pairs before layer 18, groups of 4 from it on; the same as one size
    # wherever the sizes are equal
    from calogen.calibration import parse_halo_clump

    sizes = parse_halo_clump("2,18:4")
    out = clump_halo_azimuth(points.copy(), shower, 3.0, sizes)
    phi_out = np.arctan2(out[:, 1], out[:, 0])
    for layer, size in ((5, 2), (17, 2), (18, 4), (29, 4)):
        rows = np.flatnonzero(halo & (shower == 2) & (points[:, 2] == layer))
        lead = rows[(np.arange(rows.size) // size) * size]
        np.testing.assert_allclose(phi_out[rows], phi_in[lead], atol=1e-5)
    same = clump_halo_azimuth(points.copy(), shower, 3.0, (2,) * 30)
    assert same.tobytes() == clump_halo_azimuth(points.copy(), shower, 3.0, 2).tobytes()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("2", 2), (2.5, 2.5), ([3] * 30, 3), ("0", 0), ("2,18:4", (2,) * 18 + (4,) * 12),
     ("1,5:2.5,20:3", (1,) * 5 + (2.5,) * 15 + (3,) * 10)],
)  # fmt: skip
def test_parse_halo_clump(spec, expected) -> None:
    from calogen.calibration import parse_halo_clump

    assert parse_halo_clump(spec) == expected


@pytest.mark.parametrize(
    "spec", ["x", "2,40:4", "2,18:4,10:3", "2,18", "-1", [2] * 29, True, "2,18:nan", None]
)
def test_parse_halo_clump_refuses_with_one_line(spec) -> None:
    from calogen.calibration import parse_halo_clump
    from calogen.errors import UsageError

    with pytest.raises(UsageError, match="halo clump size must be"):
        parse_halo_clump(spec)


# ---------------------------------------------------------------------------------------------
# axis tilt
# ---------------------------------------------------------------------------------------------


def _layer_centroid_slopes(points, shower, n_showers, depth):  # type: ignore[no-untyped-def]
    """Slopes [S, 2] of the axis fitted to each shower's energy-weighted layer centroids."""
    from calogen.directions import fit_axis

    layer = points[:, 2].astype(np.int64)
    e = points[:, 3].astype(np.float64)
    cell = shower * 30 + layer
    w = np.bincount(cell, e, n_showers * 30).reshape(n_showers, 30)
    norm = np.where(w > 0, w, 1.0)
    cx = np.bincount(cell, e * points[:, 0], n_showers * 30).reshape(n_showers, 30) / norm
    cy = np.bincount(cell, e * points[:, 1], n_showers * 30).reshape(n_showers, 30) / norm
    axis = fit_axis(cx, cy, w, depth)
    return np.stack([axis["slope_x"], axis["slope_y"]], 1)


def test_axis_tilt_adds_its_slope_and_keeps_the_centre_of_gravity() -> None:
    from calogen.calibration import AxisTilt, axis_tilt_cogs

    rng = np.random.default_rng(3)
    n_showers, depth = 6, np.arange(30) * 2.6 + 2.35
    counts = rng.integers(200, 400, n_showers)
    shower = np.repeat(np.arange(n_showers), counts)
    points = np.zeros((shower.size, 4), np.float32)
    points[:, :2] = rng.normal(0.3, 5.0, (shower.size, 2))
    points[:, 2] = rng.integers(0, 30, shower.size)
    points[:, 3] = rng.exponential(1e-3, shower.size)
    energies = rng.uniform(10, 90, n_showers)
    normals = rng.standard_normal((n_showers, 2))
    tilt = AxisTilt(np.array([20.0, 80.0]), np.array([0.03, 0.01]), np.array([0.004, 0.002]))
    cog_before = axis_tilt_cogs(points, shower, n_showers)
    slopes_before = _layer_centroid_slopes(points, shower, n_showers, depth)
    tilted = points.copy()
    tilt.apply(tilted, shower, energies, normals, depth)
    contiguous = points.copy()  # the generators' layout: counts instead of scatter/gather
    tilt.apply(contiguous, shower, energies, normals, depth, counts=counts)
    np.testing.assert_allclose(contiguous, tilted, atol=1e-5)
    uneven = points.copy()  # unequally spaced layers: the depth table is gathered
    tilt.apply(uneven, shower, energies, normals, depth + 0.01 * np.arange(30) ** 2)
    assert not np.allclose(uneven, tilted, atol=1e-3)
    # the centre of gravity stays; the layer centroids lean by k(E) * cog + sigma(E) * n
    np.testing.assert_allclose(axis_tilt_cogs(tilted, shower, n_showers), cog_before, atol=2e-5)
    k, sigma = tilt.parameters(energies)
    np.testing.assert_allclose(k, np.interp(energies, [20.0, 80.0], [0.03, 0.01]))
    expected = k[:, None] * cog_before + sigma[:, None] * normals
    added = _layer_centroid_slopes(tilted, shower, n_showers, depth) - slopes_before
    np.testing.assert_allclose(added, expected, atol=1e-5)
    np.testing.assert_array_equal(tilted[:, 2:], points[:, 2:])  # layers and energies kept
    # constant beyond the outer nodes
    k_out, _ = tilt.parameters(np.array([5.0, 200.0]))
    np.testing.assert_allclose(k_out, [0.03, 0.01])


def test_axis_tilt_round_trip_and_bad_tables() -> None:
    from calogen.calibration import AxisTilt

    tilt = AxisTilt(np.array([20.0, 40.0]), np.array([0.02, 0.018]), np.array([0.004, 0.0]))
    again = AxisTilt.from_dict(tilt.to_dict())
    np.testing.assert_allclose(again.k_per_mm, tilt.k_per_mm)
    bad = [
        {"energy_nodes_gev": [40.0, 20.0], "k_per_mm": [0, 0], "sigma": [0, 0]},
        {"energy_nodes_gev": [20.0, 40.0], "k_per_mm": [0], "sigma": [0, 0]},
        {"energy_nodes_gev": [20.0], "k_per_mm": [0.01], "sigma": [-1.0]},
        {"energy_nodes_gev": [20.0], "k_per_mm": [float("nan")], "sigma": [0.0]},
        {"k_per_mm": [0.01], "sigma": [0.0]},
    ]
    for entry in bad:
        with pytest.raises(UsageError, match="axis tilt"):
            AxisTilt.from_dict(entry)


def _profiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gamma-shaped longitudinal profiles [n, 30] (GeV) with random starts, and counts."""
    rng = np.random.default_rng(seed)
    t = np.arange(30.0)[None, :] - rng.normal(0.0, 1.5, (n, 1))
    shape = np.clip(t, 0.0, None) ** 3 * np.exp(-np.clip(t, 0.0, None) / 3.0)
    energy = 1e-3 * shape / shape.sum(1, keepdims=True) * rng.uniform(0.9, 1.1, (n, 1))
    return energy, np.rint(5e5 * energy).astype(np.int64)


def test_depth_stretch_of_one_changes_nothing() -> None:
    from calogen.calibration import DepthStretch
    from calogen.geometry import slab

    e, n = _profiles(50, 0)
    stretch = DepthStretch(slab().layer_z_mm, np.array([0.0]), np.array([1.0]), np.zeros(6))
    e2, n2 = stretch.apply(e, n, np.full(50, 50.0))
    np.testing.assert_allclose(e2, e, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(n2, n)


def test_depth_stretch_moves_profiles_with_their_depth() -> None:
    """s = 1.5 about a mean depth of 40 mm: a deep shower goes deeper by half its distance
    from the mean (the shift in mm is the energy-weighted depth's, before resampling), loses
    energy to the sparser back layers and the leakage, and a shallow one comes forward."""
    from calogen.calibration import DepthStretch, depth_stretch_features
    from calogen.geometry import slab

    z = slab().layer_z_mm
    e, n = _profiles(400, 1)
    trend = np.zeros(6)
    trend[0] = 40.0
    assert depth_stretch_features(np.array([50.0]), np.array([0.0])).shape == (1, 6)
    stretch = DepthStretch(z, np.array([0.0, 60.0]), np.array([1.5, 1.5]), trend)
    energies = np.full(400, 50.0)
    shift = stretch.shifts(e, energies, None)
    depth = stretch.depth(e)
    np.testing.assert_allclose(shift, 0.5 * (depth - 40.0))
    e2, n2 = stretch.apply(e, n, energies, np.zeros(400))
    moved = stretch.depth(e2)
    deep, shallow = np.argmax(depth), np.argmin(depth)
    assert moved[deep] > depth[deep] + 0.5 * shift[deep]
    # forward: what would lie in front of the calorimeter is cut, so it moves less
    assert moved[shallow] < depth[shallow] + 0.25 * shift[shallow] < depth[shallow]
    assert e2[deep].sum() < e[deep].sum()  # further into the back layers
    assert np.std(moved) > 1.3 * np.std(depth)
    assert np.all(e2 >= 0) and n2.dtype == np.int64 and np.all(n2 >= 0)
    assert abs(n2.sum(1) / e2.sum(1) / 5e5 - 1).max() < 0.05  # counts follow the energies


def test_depth_stretch_round_trip_and_bad_tables() -> None:
    from calogen.calibration import DepthStretch
    from calogen.geometry import slab

    z = slab().layer_z_mm
    stretch = DepthStretch(z, np.array([0.0, 30.0]), np.array([1.1, 1.25]), np.arange(6.0))
    again = DepthStretch.from_dict(stretch.to_dict())
    np.testing.assert_allclose(again.stretch, stretch.stretch)
    np.testing.assert_allclose(again.trend, stretch.trend)
    good = stretch.to_dict()
    bad = [
        {**good, "theta_nodes_deg": [30.0, 0.0]},
        {**good, "stretch": [1.1]},
        {**good, "stretch": [1.1, -1.0]},
        {**good, "trend": [0.0] * 5},
        {**good, "layer_z_mm": [1.0]},
        {**good, "trend": [float("nan")] * 6},
        {key: value for key, value in good.items() if key != "trend"},
    ]
    for entry in bad:
        with pytest.raises(UsageError, match="depth stretch"):
            DepthStretch.from_dict(entry)


def test_hit_axis_relation_recovers_a_known_regression() -> None:
    from calogen.calibration import hit_axis_relation

    rng = np.random.default_rng(0)
    energies = rng.uniform(10, 90, 4000)
    cog = rng.normal(0, 0.2, (4000, 2))
    slope = 0.02 * cog + rng.normal(0, 0.01, (4000, 2))
    k, variance = hit_axis_relation(cog, slope, energies)
    assert k.shape == (4,)
    np.testing.assert_allclose(k, 0.02, atol=0.003)
    np.testing.assert_allclose(variance, 1e-4, rtol=0.1)
    k_few, _ = hit_axis_relation(cog[:30], slope[:30], energies[:30])
    assert np.all(np.isnan(k_few))  # too few showers in every bin
