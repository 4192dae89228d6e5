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
    from test_export_ddml import _assert_same_shower, _python_shower

    ddml = DDMLShower(ShowerPipeline(gen.model).eval(), slab().layer_z_mm).eval()
    for seed, (energy, theta, phi) in ((3, (40.0, 30.0, 10.0)), (4, (75.0, 55.0, -100.0))):
        ref = _python_shower(gen.model, energy, theta, phi, seed)
        torch.manual_seed(seed)
        with torch.inference_mode():
            row = ddml(*(torch.tensor([v]) for v in (energy, theta, phi))).numpy()
        _assert_same_shower(row, ref)
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


def test_bench_at_angles(capsys) -> None:
    timing = ["bench", "--model", "gflash", "-n", "4", "--batch", "2", "--repeats", "1"]
    code = cli_main([*timing, "--theta", "0", "60", "--phi", "0", "360", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["num_showers"] == 4
    assert cli_main(["bench", "--model", "default", "-n", "2", "--theta", "30"]) == 2
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
