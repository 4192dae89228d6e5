"""The angle-aware CaloClouds II: axis frame, several training files, theta conditioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calogen.cli import main as cli_main
from calogen.data.io import read_showers, write_showers
from calogen.data.packed import PackedPoints, pack, unpack
from calogen.directions import (
    angles_from_directions,
    axis_offset_mm,
    directions_from_angles,
    incline_points,
    straighten_points,
)
from calogen.errors import UsageError
from calogen.generation import check_angle_range
from calogen.geometry import slab
from calogen.models import caloclouds2 as cc2
from calogen.models.caloclouds import load_training_data
from calogen.models.registry import load_generator
from test_caloclouds2 import TINY_DISTILL, tiny_config

torch.set_num_threads(1)
DEPTH = slab().layer_z_mm


def test_straighten_inverts_incline() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([40, 25, 30])
    n = int(counts.sum())
    points = np.c_[rng.normal(0, 20, (n, 2)), rng.integers(0, 30, n), rng.random(n) + 0.01].astype(
        np.float32
    )
    dirs = directions_from_angles([30.0, 60.0, 0.0], [45.0, 200.0, 0.0])
    axis = straighten_points(points, counts, dirs)
    theta, phi = angles_from_directions(dirs)
    x, y = incline_points(
        axis[:, 0], axis[:, 1], axis[:, 2], np.repeat(theta, counts), np.repeat(phi, counts), DEPTH
    )
    np.testing.assert_allclose(x, points[:, 0], atol=2e-3)
    np.testing.assert_allclose(y, points[:, 1], atol=2e-3)
    np.testing.assert_array_equal(axis[:, 2:], points[:, 2:])
    np.testing.assert_array_equal(axis[-30:], points[-30:])  # normal incidence: unchanged
    # a point on the axis (layer 12) lands on x = y = 0
    on_axis = axis_offset_mm(dirs[:2], DEPTH)[:, 12]
    pts = np.c_[on_axis, np.full(2, 12.0), np.ones(2)].astype(np.float32)
    np.testing.assert_allclose(straighten_points(pts, [1, 1], dirs[:2])[:, :2], 0.0, atol=1e-3)


@pytest.fixture(scope="module")
def inclined_file(tmp_path_factory, fixtures) -> Path:
    """The committed subset inclined at random angles (theta 0-60 deg) around its impact point."""
    showers = read_showers(fixtures / "g4_photons_subset.h5")
    packed = pack(showers)
    rng = np.random.default_rng(5)
    theta = rng.uniform(0.0, 60.0, packed.n_showers)
    phi = rng.uniform(0.0, 360.0, packed.n_showers)
    p = packed.points.copy()
    p[:, 0], p[:, 1] = incline_points(
        p[:, 0], p[:, 1], p[:, 2], theta[packed.shower], phi[packed.shower], DEPTH
    )
    out = tmp_path_factory.mktemp("angles") / "inclined.h5"
    dirs = directions_from_angles(theta, phi)
    write_showers(
        out, unpack(PackedPoints(p, packed.shower, packed.counts), showers.energies, dirs)
    )
    return out


def angle_config(iterations: int = 12) -> dict:
    return {
        **tiny_config(iterations),
        "base": "small-angles",
        "shower_flow": {
            **tiny_config()["shower_flow"],
            "feature_set": "caloclouds2_core",
            "angle": True,
        },
    }


def test_presets_and_validation() -> None:
    for name in ("small-angles", "paper-angles"):
        cfg = cc2.get_config(name)
        assert cfg.directions and cfg.shower_flow["angle"] and cfg.n_conditions == 3
        assert cfg.core_radius_mm == 2.0 and cfg.shower_flow["feature_set"] == "caloclouds2_core"
        assert cfg.mirror_points  # each point mirrored, not each shower
        assert cc2.CaloClouds2Config.from_dict(cfg.to_dict()) == cfg
        assert name in cc2.DISTILL_PRESETS
    assert cc2.get_config("small-angles").widths == cc2.get_config("small").widths
    assert cc2.get_config("paper-angles").widths == cc2.get_config("paper").widths
    assert not cc2.get_config("small").directions
    with pytest.raises(UsageError, match="angle: true"):
        cc2.get_config({"base": "small", "directions": True})


def test_several_files_and_axis_frame(fixtures, inclined_file) -> None:
    normal = fixtures / "g4_photons_subset.h5"
    one = load_training_data(normal, 20)
    both = load_training_data([normal, inclined_file], 20, straighten=True)
    assert both.n_showers == 40
    np.testing.assert_array_equal(both.features["theta_deg"][:20], 0.0)
    assert np.all(both.features["theta_deg"][20:] >= 0) and both.features["theta_deg"].max() > 10
    # normal-incidence showers are untouched by the axis frame
    np.testing.assert_array_equal(both.points[: one.offsets[-1]], one.points)
    # the inclined copies of the same showers, straightened, are the originals again
    n = one.offsets[-1]
    np.testing.assert_allclose(both.points[n:], one.points, atol=2e-3)
    assert "theta_deg" in one.features


def test_train_distill_generate_at_angles(fixtures, inclined_file, tmp_path) -> None:
    data = [str(fixtures / "g4_photons_subset.h5"), str(inclined_file)]
    teacher, student = tmp_path / "t", tmp_path / "s"
    config = str(_yaml(tmp_path, angle_config()))
    code = cli_main(
        ["train", "caloclouds2", "--config", config, "--data", *data, "-o", str(teacher), "--quiet"]
    )
    assert code == 0
    cc2.distill(teacher=teacher, config=dict(TINY_DISTILL), data=data, out=student, progress=False)
    summary = cc2.fit_occupancy(student, data, n_showers=20, refine_iterations=1, min_bin_showers=4)
    assert summary["showers"] == 40 and summary["radial_correction"] and summary["axis_shift"]
    # corrections per polar-angle bin: normal incidence and inclined showers
    bins = summary["angle_bins"]
    assert bins["showers"][0] >= 20 and sum(bins["showers"]) == 40 and all(bins["fitted"])
    gen = load_generator(student)
    assert len(gen.model.binned) == len(cc2.THETA_CORRECTION_EDGES_DEG) >= 1
    assert gen.model.binned[0][0].to_dict() != gen.model.occupancy.to_dict()
    shift = gen.model.axis_shift
    assert shift is not None and np.any(shift.shift_mm != 0)
    # the shift moves each layer along the inclination (x in the axis frame), nothing else
    dirs30 = directions_from_angles([30.0] * 2, [0.0] * 2)
    with_shift = pack(gen.sample(np.array([40.0, 60.0]), dirs30, seed=2))
    gen.model.axis_shift = None
    without = pack(gen.sample(np.array([40.0, 60.0]), dirs30, seed=2))
    gen.model.axis_shift = shift
    np.testing.assert_array_equal(with_shift.points[:, 1:], without.points[:, 1:])
    expected = shift.shift(np.full(len(without.points), 30.0), without.points[:, 2])
    np.testing.assert_allclose(with_shift.points[:, 0] - without.points[:, 0], expected, atol=1e-4)
    assert gen.supports_direction and gen.theta_range_deg[1] > 10
    energies = np.array([20.0, 50.0, 80.0])
    a = gen.sample(energies, directions_from_angles([30.0] * 3, [0.0] * 3), seed=4)
    b = gen.sample(energies, directions_from_angles([30.0] * 3, [90.0] * 3), seed=4)
    np.testing.assert_allclose(a.directions, directions_from_angles([30.0] * 3, [0.0] * 3), 1e-6)
    # phi only rotates: the same showers in the axis frame
    pa, pb = pack(a), pack(b)
    np.testing.assert_array_equal(pa.counts, pb.counts)
    np.testing.assert_allclose(
        straighten_points(pa.points, pa.counts, a.directions),
        straighten_points(pb.points, pb.counts, b.directions),
        atol=2e-3,
    )
    # the DDML export applies the same corrections, the axis shift included
    from calogen.export import DDMLShower, ShowerPipeline
    from calogen.geometry import slab
    from test_export_ddml import _assert_ddml_is_python

    ddml = DDMLShower(ShowerPipeline(gen.model).eval(), slab().layer_z_mm).eval()
    cases = ((3, (40.0, 30.0, 10.0)), (4, (75.0, 55.0, -100.0)), (6, (60.0, 0.0, 0.0)))
    for seed, (energy, theta, phi) in cases:
        _assert_ddml_is_python(ddml, gen.model, energy, theta, phi, seed)
    # the noise-as-input flavour (normal incidence) with the same noise as Python, the
    # per-point mirror signs in its last point-noise tensor
    from test_export import _compare, python_noise

    pipe = ShowerPipeline(gen.model).eval()
    assert pipe.mirror_points and not pipe.mirror
    assert pipe.noise_tensors == len(gen.model.cm_sigmas) + 1
    packed, info = gen.model.generate(energies, torch.Generator().manual_seed(9))
    counts = info["n_per_layer"].sum(1)
    flow_noise, noises = python_noise(pipe, torch.Generator().manual_seed(9), 3, int(counts.sum()))
    point_noise = torch.zeros((pipe.noise_tensors, 3, pipe.max_points, 4))
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for b in range(3):
        for k, noise in enumerate(noises):
            point_noise[k, b, : counts[b]] = noise[offsets[b] : offsets[b + 1]]
    with torch.inference_mode():
        flat = pipe(torch.as_tensor(energies, dtype=torch.float32), flow_noise, point_noise)
    showers = [packed.points[packed.shower == b] for b in range(3)]
    _compare(flat.numpy(), showers, atol_mm=1e-3, rtol_e=1e-4)
    # normal incidence without directions
    normal = gen.sample(energies, seed=4)
    np.testing.assert_array_equal(normal.directions, [[0.0, 0.0, 1.0]] * 3)
    assert pack(normal).points.shape[0] > 0


def test_angle_range_warning(fixtures, inclined_file, tmp_path, capsys) -> None:
    data = [str(fixtures / "g4_photons_subset.h5"), str(inclined_file)]
    cc2.train(config=angle_config(4), data=data, out=tmp_path / "t", progress=False)
    gen = load_generator(tmp_path / "t")
    hi = gen.theta_range_deg[1]
    inside = directions_from_angles([hi - 1.0], [0.0])
    outside = directions_from_angles([hi + 5.0], [0.0])
    assert check_angle_range(gen, inside) is None
    assert "outside the range" in check_angle_range(gen, outside)
    with pytest.raises(UsageError, match="polar angles"):
        check_angle_range(gen, outside, strict=True)
    base = ["generate", "--model", str(tmp_path / "t"), "--energy", "50", "-n", "2"]
    angle = ["--theta", str(hi + 5.0), "--phi", "30"]
    assert cli_main([*base, *angle, "-o", str(tmp_path / "a.h5"), "--quiet"]) == 0
    assert "polar angles lie outside" in capsys.readouterr().err
    assert cli_main([*base, *angle, "-o", str(tmp_path / "b.h5"), "--strict"]) == 2
    assert "polar angles lie outside" in capsys.readouterr().err
    assert not (tmp_path / "b.h5").exists()
    assert cli_main([*base, "--theta", "20", "-o", str(tmp_path / "c.h5"), "--quiet"]) == 0
    assert "polar angles" not in capsys.readouterr().err
    shown = read_showers(tmp_path / "a.h5")
    np.testing.assert_allclose(angles_from_directions(shown.directions)[0], hi + 5.0, atol=1e-3)


def test_bench_at_angles(capsys, normal_incidence_model) -> None:
    timing = ["bench", "-n", "4", "--batch", "2", "--repeats", "1"]
    for model in ("gflash", "default"):  # the shipped default is angle-aware
        code = cli_main(
            [*timing, "--model", model, "--theta", "0", "60", "--phi", "0", "360", "--json"]
        )
        assert code == 0
        assert json.loads(capsys.readouterr().out)["num_showers"] == 4
    refused = ["bench", "--model", str(normal_incidence_model), "-n", "2", "--theta", "30"]
    assert cli_main(refused) == 2
    assert "supports only normal incidence" in capsys.readouterr().err


def test_one_file_models_refuse_several(fixtures, tmp_path, capsys) -> None:
    data = str(fixtures / "g4_photons_subset.h5")
    code = cli_main(["train", "l2lflows", "--data", data, data, "-o", str(tmp_path / "l")])
    err = capsys.readouterr().err
    assert code == 2 and "trains on one file" in err and err.count("\n") == 1


def _yaml(tmp_path: Path, config: dict) -> Path:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_mirror_points_flips_single_points(fixtures, inclined_file, tmp_path) -> None:
    """``mirror_points``: each point's y (and x at normal incidence only) changes sign with
    probability 1/2; nothing else changes but the per-shower centre-of-gravity shift."""
    data = [str(fixtures / "g4_photons_subset.h5"), str(inclined_file)]
    out = tmp_path / "t"
    config = str(_yaml(tmp_path, angle_config(iterations=4)))
    cli_main(
        ["train", "caloclouds2", "--config", config, "--data", *data, "-o", str(out), "--quiet"]
    )
    model = load_generator(out).model
    model.axis_shift = None
    model.axis_tilt = None  # a per-shower tilt, not a rigid shift
    model.core_azimuth_radius_mm = 0.0  # it moves mirrored core points on
    model.config.rotate_points = False  # the mirror alone (rotation: the test below)
    energies = np.array([30.0, 70.0])
    for theta in (0.0, 30.0):
        got = {}
        for mode in ("points", "none"):
            model.config.mirror_points = mode == "points"
            model.config.mirror = mode == "points"
            packed, _ = model.generate(
                energies,
                torch.Generator().manual_seed(3),
                theta_deg=np.full(2, theta),
                phi_deg=np.zeros(2),
            )
            got[mode] = packed
        a, b = got["points"], got["none"]
        np.testing.assert_array_equal(a.shower, b.shower)
        np.testing.assert_array_equal(a.points[:, 2:], b.points[:, 2:])
        for axis, flips in ((0, theta == 0.0), (1, True)):
            for s in range(2):
                pa, pb = a.points[a.shower == s, axis], b.points[b.shower == s, axis]
                # per point either pa = pb + c or pa = -pb + c' (c, c': the CoG shifts)
                same, flipped = pa - pb, pa + pb
                c_same = np.median(same)
                kept = np.abs(same - c_same) < 1e-3
                if not flips:
                    assert kept.all()
                    continue
                c_flip = np.median(flipped[~kept])
                assert np.all(kept | (np.abs(flipped - c_flip) < 1e-3))
                assert 0.3 < kept.mean() < 0.7


def test_angle_class_edges_are_part_of_the_model(fixtures, inclined_file, tmp_path, capsys) -> None:
    """``--angle-edges``: the polar-angle classes of the corrections are chosen at fit time
    and stored in model.json; generation and the export use the model's own edges."""
    data = [str(fixtures / "g4_photons_subset.h5"), str(inclined_file)]
    out = tmp_path / "t"
    config = str(_yaml(tmp_path, angle_config(iterations=4)))
    cli_main(
        ["train", "caloclouds2", "--config", config, "--data", *data, "-o", str(out), "--quiet"]
    )
    code = cli_main(
        ["fit-occupancy", "--model", str(out), "--data", *data, "--angle-edges", "20", "10"]
    )
    assert code != 0 and "increasing" in capsys.readouterr().err
    thetas = angles_from_directions(read_showers(inclined_file).directions)[0]
    edge = float(np.median(thetas))  # two inclined classes of about equal size
    cc2.fit_occupancy(
        out, data, n_showers=20, refine_iterations=1, min_bin_showers=4,
        theta_edges_deg=(0.5, round(edge, 3)),
    )  # fmt: skip
    gen = load_generator(out)
    assert gen.model.theta_edges_deg == (0.5, round(edge, 3))
    assert len(gen.model.binned) == 2
    info = json.loads((out / "model.json").read_text())
    assert info["directional_corrections"]["theta_edges_deg"] == [0.5, round(edge, 3)]
    from calogen.export import DDMLShower, ShowerPipeline
    from test_export_ddml import _assert_ddml_is_python, _python_shower

    pipe = ShowerPipeline(gen.model).eval()
    assert pipe.angle_edges == [0.5, round(edge, 3)]
    # two inclined bins: their corrections are interpolated between their mean angles
    nodes = gen.model.theta_nodes_deg
    assert nodes is not None and 0.5 < nodes[0] < edge < nodes[1]
    assert info["directional_corrections"]["theta_nodes_deg"] == pytest.approx(list(nodes))
    mid = 0.5 * (nodes[0] + nodes[1])
    top = gen.model.theta_extrapolate_deg  # the largest angle of the fit showers
    assert top == pytest.approx(float(thetas.max())) and top > nodes[1]
    beyond = 0.5 * (nodes[1] + top)
    thetas_test = np.array([0.0, nodes[0] - 1, mid, beyond, top + 5])
    k0, k1, w = gen.model.correction_weights(thetas_test, 5)
    np.testing.assert_array_equal(k0, [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(k1, [0, 2, 2, 2, 2])
    span = nodes[1] - nodes[0]  # linear, extrapolated up to `top`, constant beyond
    expected = [0.0, 0.0, 0.5, (beyond - nodes[0]) / span, (top - nodes[0]) / span]
    np.testing.assert_allclose(w, expected)
    # ... in the exported model too (same shower as Python with the same seed)
    assert pipe.angle_nodes == pytest.approx(list(nodes))
    ddml = DDMLShower(pipe, slab().layer_z_mm).eval()
    for seed, theta64 in ((8, mid), (9, beyond)):
        theta = float(np.float32(theta64))  # DDML takes float32: the same angle in both
        _assert_ddml_is_python(ddml, gen.model, 50.0, theta, 30.0, seed)
    # the radial maps interpolated in the incident energy: Python and the export agree
    # between the energy bins' centres and beyond the outer ones
    gen.model.radial_energy = "interpolate"
    ddml = DDMLShower(ShowerPipeline(gen.model).eval(), slab().layer_z_mm).eval()
    for seed, energy, theta64 in ((10, 12.0, mid), (11, 57.0, 0.0), (12, 88.0, beyond)):
        _assert_ddml_is_python(ddml, gen.model, energy, float(np.float32(theta64)), 30.0, seed)
    interpolated = _python_shower(gen.model, 57.0, 0.0, 30.0, 11)
    gen.model.radial_energy = "bins"  # the interpolation moved the points
    binned = _python_shower(gen.model, 57.0, 0.0, 30.0, 11)
    assert binned.shape == interpolated.shape
    assert not np.allclose(binned[:, :2], interpolated[:, :2])
    # each point rotated at normal incidence (rotate_points): Python and the export agree
    from dataclasses import replace

    config = gen.model.config
    gen.model.config = replace(config, rotate_points=True)
    ddml = DDMLShower(ShowerPipeline(gen.model).eval(), slab().layer_z_mm).eval()
    for seed, theta in ((13, 0.0), (14, float(np.float32(mid)))):
        _assert_ddml_is_python(ddml, gen.model, 40.0, theta, 30.0, seed)
    rotated = _python_shower(gen.model, 40.0, 0.0, 0.0, 13)
    gen.model.config = replace(config, rotate_points=False)
    mirrored = _python_shower(gen.model, 40.0, 0.0, 0.0, 13)
    gen.model.config = config
    assert rotated.shape == mirrored.shape and not np.allclose(rotated[:, :2], mirrored[:, :2])
    # a model file whose bins do not match its edges is refused in one line
    info["directional_corrections"]["theta_edges_deg"] = [0.5]
    (out / "model.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="2 bins for theta edges"):
        load_generator(out)


def test_blended_radial_map_is_the_blend_of_two_maps() -> None:
    """Between two angle classes each shower's radius map is ``(1 - w) f0 + w f1`` in ln r
    (``w`` > 1: extrapolated); the one-table form computes exactly that, beyond the knots too."""
    from types import SimpleNamespace

    from calogen.calibration import RadialCorrection

    rng = np.random.default_rng(3)
    edges, groups = [10.0, 50.0, 90.0], [0, 10, 20, 30]

    def random_map() -> RadialCorrection:
        gen = np.sort(rng.normal(1.5, 1.0, (2, 3, 9)), axis=-1)
        data = np.sort(gen + rng.normal(0, 0.2, gen.shape), axis=-1)
        return RadialCorrection(edges, groups, gen, data)

    maps = [random_map(), None, random_map()]  # bin 1 has no map: the identity
    stub = SimpleNamespace(binned=[(None, maps[1]), (None, maps[2])])
    stub.corrections_for = lambda b: (None, maps[b])
    stub.radial_energy = "bins"
    stub._radial_combo_table = lambda *bins: cc2.CaloClouds2._radial_combo_table(stub, *bins)
    n = 8
    counts = rng.integers(20, 60, n)
    shower = np.repeat(np.arange(n), counts)
    points = np.zeros((shower.size, 4), np.float32)
    points[:, :2] = rng.normal(0, 1, (shower.size, 2)) * rng.lognormal(1.5, 1.5, (shower.size, 1))
    points[:, 2] = rng.integers(0, 30, shower.size)
    energies = rng.uniform(10, 90, n)
    energies[:2] = (12.0, 88.0)  # extrapolated below and above the outer bin centres
    k0 = np.array([0, 1, 1, 2, 0, 1, 2, 1])
    k1 = np.array([0, 2, 2, 2, 0, 2, 2, 2])
    w = np.array([0.0, 0.3, 1.0, 0.0, 0.0, 1.4, 0.0, 0.0])
    out = points.copy()
    cc2.CaloClouds2._blend_radial(stub, out, shower, energies, k0, k1, w)

    r = np.hypot(points[:, 0].astype(np.float64), points[:, 1].astype(np.float64))
    log_r = np.log(r)

    def mapped(b: int) -> np.ndarray:
        if maps[b] is None:
            return log_r
        return maps[b].mapped_log_radius(points, shower, energies)[2]

    ws = w[shower]
    new = (
        np.select([k0[shower] == b for b in range(3)], [mapped(b) for b in range(3)]) * (1 - ws)
        + np.select([k1[shower] == b for b in range(3)], [mapped(b) for b in range(3)]) * ws
    )
    np.testing.assert_allclose(np.hypot(out[:, 0], out[:, 1]), np.exp(new), rtol=2e-6)
    np.testing.assert_allclose(
        np.arctan2(out[:, 1], out[:, 0]), np.arctan2(points[:, 1], points[:, 0]), atol=1e-5
    )
    assert np.any(log_r < maps[0].log_r_gen.min()) and np.any(log_r > maps[0].log_r_gen.max())

    # interpolated in the incident energy too: the bilinear blend of four maps
    from calogen.calibration import map_log_radius

    stub.radial_energy = "interpolate"
    out = points.copy()
    cc2.CaloClouds2._blend_radial(stub, out, shower, energies, k0, k1, w)
    e0, e1, we = maps[0].energy_weights(energies)
    group = maps[0].layer_group(points[:, 2])

    def mapped_at(b: int, e: np.ndarray) -> np.ndarray:
        if maps[b] is None:
            return log_r
        m = maps[b]
        gen = m.log_r_gen.reshape(-1, m.log_r_gen.shape[-1])
        data = m.log_r_data.reshape(gen.shape)
        return map_log_radius(log_r, e[shower] * m.n_layer_groups + group, gen, data)

    def by_bin(k: np.ndarray, e: np.ndarray) -> np.ndarray:
        return np.select([k[shower] == b for b in range(3)], [mapped_at(b, e) for b in range(3)])

    wes = we[shower]
    new = (1 - ws) * ((1 - wes) * by_bin(k0, e0) + wes * by_bin(k0, e1)) + ws * (
        (1 - wes) * by_bin(k1, e0) + wes * by_bin(k1, e1)
    )
    np.testing.assert_allclose(np.hypot(out[:, 0], out[:, 1]), np.exp(new), rtol=2e-6)
    assert np.any((we > 0) & (we < 1)) and np.any(we < 0)  # between and below the centres


def test_radial_energy_weights() -> None:
    """Linear between the energy bins' centres, extrapolated to the outer edges."""
    from calogen.calibration import RadialCorrection

    shape = (4, 1, 3)
    gen = np.broadcast_to(np.arange(3.0), shape).copy()
    corr = RadialCorrection([10.0, 30.0, 50.0, 70.0, 90.0], [0, 30], gen, gen.copy())
    e0, e1, w = corr.energy_weights(np.array([5.0, 10.0, 20.0, 40.0, 50.0, 85.0, 90.0, 99.0]))
    np.testing.assert_array_equal(e0, [0, 0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(e1, e0 + 1)
    np.testing.assert_allclose(w, [-0.5, -0.5, 0.0, 0.0, 0.5, 1.25, 1.5, 1.5])


def test_rotate_by_draws_keeps_radius_and_spreads_azimuth() -> None:
    """Points all on the +x axis, rotated by the azimuth of normal draws: radii unchanged,
    azimuths uniform; unselected points untouched."""
    from scipy.stats import kstest

    rng = np.random.default_rng(5)
    n = 20_000
    points = np.zeros((n, 4), np.float32)
    points[:, 0] = rng.uniform(1.0, 50.0, n)
    points[:, 2:] = 1.0
    before = points.copy()
    draws = rng.standard_normal((n, 2)).astype(np.float32)
    select = np.arange(n) % 4 != 0
    cc2.rotate_by_draws(points, draws, select)
    np.testing.assert_array_equal(points[~select], before[~select])
    np.testing.assert_allclose(np.hypot(points[:, 0], points[:, 1]), before[:, 0], rtol=1e-6)
    phi = np.arctan2(points[select, 1], points[select, 0])
    assert kstest(phi, "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3
    np.testing.assert_array_equal(points[:, 2:], before[:, 2:])


def test_radial_shower_classes_across_angle_bins(fixtures, inclined_file, tmp_path) -> None:
    """Radial maps per shower class (``--radial-classes``): one set of classes for all
    angle bins (their maps are blended), stored in model.json, and the DDML export makes
    the Python model's showers."""
    data = [str(fixtures / "g4_photons_subset.h5"), str(inclined_file)]
    out = tmp_path / "c"
    config = str(_yaml(tmp_path, angle_config(iterations=4)))
    cli_main(
        ["train", "caloclouds2", "--config", config, "--data", *data, "-o", str(out), "--quiet"]
    )
    thetas = angles_from_directions(read_showers(inclined_file).directions)[0]
    edge = round(float(np.median(thetas)), 3)
    cc2.fit_occupancy(
        out, data, n_showers=20, refine_iterations=1, min_bin_showers=4,
        theta_edges_deg=(0.5, edge), radial_layers="relative",
        radial_classes=("depth", "visible"),
    )  # fmt: skip
    gen = load_generator(out)
    maps = [gen.model.radial] + [rad for _, rad in gen.model.binned]
    assert all(m is not None and m.shower_classes is not None for m in maps)
    assert len({m.binning for m in maps}) == 1  # the same classes in every angle bin
    assert maps[0].shower_classes.n_classes == 9 and maps[0].n_groups == 9 * 6
    info = json.loads((out / "model.json").read_text())
    assert info["radial_correction"]["shower_classes"]["kinds"] == ["depth", "visible"]
    from calogen.export import DDMLShower, ShowerPipeline
    from test_export_ddml import _assert_ddml_is_python

    ddml = DDMLShower(ShowerPipeline(gen.model).eval(), slab().layer_z_mm).eval()
    for seed, energy, theta64 in ((3, 20.0, 0.0), (4, 70.0, edge + 3.0)):
        _assert_ddml_is_python(ddml, gen.model, energy, float(np.float32(theta64)), 30.0, seed)


def test_training_ends_with_the_relative_radial_map_for_angle_aware_models(
    fixtures, inclined_file, tmp_path
) -> None:
    """The corrections at the end of training (``fit_corrections``): an angle-aware model's
    radial map groups layers relative to each shower's depth, a normal-incidence model's by
    layer index."""
    data = [str(fixtures / "g4_photons_subset.h5"), str(inclined_file)]
    angled, plain = tmp_path / "angled", tmp_path / "plain"
    cli_main(["train", "caloclouds2", "--config", str(_yaml(tmp_path, angle_config(4))),
              "--data", *data, "-o", str(angled), "--quiet"])  # fmt: skip
    normal_config = {**tiny_config(4), "base": "small"}
    cli_main(["train", "caloclouds2", "--config", str(_yaml(tmp_path, normal_config)),
              "--data", data[0], "-o", str(plain), "--quiet"])  # fmt: skip
    assert load_generator(angled).model.radial.depth_relative
    assert not load_generator(plain).model.radial.depth_relative


def test_auto_angle_classes(capsys) -> None:  # type: ignore[no-untyped-def]
    """``--angle-edges auto``: up to four inclined classes equal in tan theta, each with
    enough inclined fit showers; one inclined class for few."""
    from calogen.models.caloclouds2 import auto_theta_edges, tan_equal_theta_edges

    assert tan_equal_theta_edges(60.0) == (0.5, 23.4, 40.9, 52.4)  # the shipped default's
    rng = np.random.default_rng(0)
    many = np.r_[np.zeros(500), rng.uniform(0.0, 60.0, 3000)]
    assert auto_theta_edges(many) == tan_equal_theta_edges(float(many.max()))
    two = auto_theta_edges(np.r_[np.zeros(500), rng.uniform(0.0, 60.0, 1200)])
    assert two[0] == 0.5 and two[1] == pytest.approx(40.9, abs=0.2) and len(two) == 2
    assert auto_theta_edges(rng.uniform(0.0, 60.0, 400)) == (0.5,)
    assert auto_theta_edges(None) == (0.5,)
    assert cli_main(["fit-occupancy", "--model", "x", "--data", "y", "--angle-edges", "a"]) == 2
    assert "angles in deg or 'auto'" in capsys.readouterr().err


def test_angle_aware_corrections_use_3000_showers_per_file() -> None:
    """The corrections of an angle-aware model are fitted on 3,000 showers per file (four
    angle classes need them), also after a distillation, whose own config has no angles."""
    from calogen.models import pipeline, scaffold

    teacher, distill = pipeline.pipeline_configs("small-angles")
    assert teacher.directions and not hasattr(distill, "directions")
    assert scaffold.correction_showers(teacher, 20000) == 3000
    assert scaffold.correction_showers(distill, 20000, angled=teacher.directions) == 3000
    assert scaffold.correction_showers(distill, 20000) == 1000  # normal incidence
    assert scaffold.correction_showers(distill, 500, angled=True) == 500  # training showers only
