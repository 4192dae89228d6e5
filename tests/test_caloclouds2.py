"""CaloClouds II and CaloClouds II (CM): network layouts, batches, train → distill → sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calogen.cli import main as cli_main
from calogen.generator import Generator
from calogen.models import caloclouds2 as cc2
from calogen.models.registry import MODELS, load_generator
from calogen.models.shower_flow import shower_features
from calogen.models.training import load_tensors
from conftest import full_size

torch.set_num_threads(1)

TINY_FLOW = {
    "feature_set": "caloclouds2",
    "blocks": 1,
    "affine_per_block": 1,
    "spline_per_block": 0,
    "hidden": [16, 16],
}


def tiny_config(iterations: int = 12) -> dict:
    return {
        "base": "small",
        "widths": [16, 32, 16],
        "time_features": 8,
        "shower_flow": TINY_FLOW,
        "iterations": iterations,
        "batch_size": 4,
        "points_per_shower": 64,
        "checkpoint_every": 6,
        "shower_flow_iterations": iterations,
        "shower_flow_batch": 32,
        "lr_warmup": 0,
        "max_points": 600,
    }


TINY_DISTILL = {
    "iterations": 8,
    "batch_size": 4,
    "points_per_shower": 64,
    "checkpoint_every": 4,
    "lr_warmup": 0,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fixtures):
    """A tiny teacher and its distilled student on the committed 80-shower subset."""
    root = tmp_path_factory.mktemp("cc2")
    data = fixtures / "g4_photons_subset.h5"
    iterations = 200 if full_size() else 12
    teacher = root / "teacher"
    cc2.train(config=tiny_config(iterations), data=data, out=teacher, progress=False)
    student = root / "student"
    cc2.distill(teacher=teacher, config=TINY_DISTILL, data=data, out=student, progress=False)
    return {"teacher": teacher, "student": student, "data": data, "root": root}


# -- unit tests -------------------------------------------------------------------------------


def test_presets_and_config_round_trip() -> None:
    paper = cc2.get_config("paper")
    assert paper.widths == (128, 256, 512, 256, 128)
    assert (paper.sigma_data, paper.p_mean, paper.p_std) == (0.5, -1.2, 1.2)
    assert (paper.sigma_min, paper.sigma_max, paper.rho, paper.sampler_steps) == (
        0.002,
        80.0,
        7.0,
        13,
    )
    assert paper.optimizer == "radam" and paper.lr_start == 1e-4 and paper.batch_size == 128
    small = cc2.get_config("small")
    assert small.widths == (32, 64, 128, 64, 32)
    assert cc2.CaloClouds2Config.from_dict(small.to_dict()) == small
    d = cc2.get_distill_config("paper")
    assert (d.n_grid, d.target_decay, d.sample_sigmas, d.loss) == (40, 0.95, (80.0,), "l2")
    huber = cc2.get_distill_config({"base": "small", "loss": "pseudo_huber", "huber_c": 0.01})
    assert (huber.loss, huber.huber_c, huber.n_grid) == ("pseudo_huber", 0.01, 40)
    with pytest.raises(Exception, match="loss"):
        cc2.get_distill_config({"loss": "l1"})
    with pytest.raises(Exception, match="huber_c"):
        cc2.get_distill_config({"huber_c": 0.0})
    weighted = cc2.get_distill_config({"base": "small", "feature_weights": [1, 1, 1, 4]})
    assert weighted.feature_weights == (1.0, 1.0, 1.0, 4.0)
    assert cc2.DistillConfig.from_dict(weighted.to_dict()) == weighted
    assert cc2.DistillConfig.from_dict(d.to_dict()).feature_weights is None
    for bad in ([1, 1, 1], [1, 1, 1, -1], [0, 0, 0, 0], [1, 1, 1, float("nan")]):
        with pytest.raises(Exception, match="feature_weights"):
            cc2.get_distill_config({"feature_weights": bad})
    # both presets carry the recipe of the shipped default (docs/default_model.md)
    for name in ("small", "paper"):
        cfg = cc2.get_config(name)
        assert cfg.core_radius_mm == 2.0 and cfg.mirror_points and cfg.rotate_points
        assert cfg.shower_flow["feature_set"] == "caloclouds2_core"
        assert cc2.get_distill_config(name).n_grid == 40
    assert small.shower_flow_iterations == 15_000
    assert cc2.DistillConfig.from_dict(d.to_dict()) == d
    with pytest.raises(Exception, match="unknown"):
        cc2.get_config({"base": "small", "no_such_key": 1})
    with pytest.raises(Exception, match="time_features"):
        cc2.get_config({"time_features": 3})


def test_net_context_layouts_agree() -> None:
    torch.manual_seed(0)
    net = cc2.CaloClouds2Net((16, 16), time_features=8)
    x = torch.randn(10, 4)
    index = torch.tensor([0] * 4 + [1] * 6)
    values = torch.randn(2, 2)
    cond = cc2.Conditioning(values, index)
    c = torch.tensor(0.3)
    scalar = net(x, c, cond)
    per_point = net(x, torch.full((10, 1), 0.3), cond)
    assert torch.allclose(scalar, per_point, atol=1e-6)
    # padded layout with per-shower noise gives the same as packed for the first shower
    padded = net(x[:4][None], torch.full((1, 1, 1), 0.3), cc2.Conditioning(values[:1]))
    assert torch.allclose(padded[0], scalar[:4], atol=1e-6)
    per_point_padded = net(x[:4][None], torch.full((1, 4, 1), 0.3), cc2.Conditioning(values[:1]))
    assert torch.allclose(per_point_padded[0], scalar[:4], atol=1e-6)


def test_subsample_points() -> None:
    rng = np.random.default_rng(0)
    offsets = np.array([0, 5, 105, 110, 400])
    showers = np.array([1, 3, 0])
    idx, owner = cc2.subsample_points(offsets, showers, 50, rng)
    assert np.bincount(owner).tolist() == [50, 50, 5]
    assert np.all((idx[owner == 0] >= 5) & (idx[owner == 0] < 105))
    assert np.all((idx[owner == 1] >= 110) & (idx[owner == 1] < 400))
    assert len(np.unique(idx)) == len(idx)
    all_idx, all_owner = cc2.subsample_points(offsets, showers, None, rng)
    assert np.array_equal(all_idx, np.r_[np.arange(5, 105), np.arange(110, 400), np.arange(5)])
    assert np.bincount(all_owner).tolist() == [100, 290, 5]


def test_registry_and_cli_entries(capsys) -> None:
    assert MODELS["caloclouds2"].module == "calogen.models.caloclouds2"
    assert MODELS["caloclouds2-cm"].train == "train_cm"
    with pytest.raises(SystemExit) as exc:
        cli_main(["distill", "--help"])
    assert exc.value.code == 0
    assert "--teacher" in capsys.readouterr().out
    code = cli_main(["train", "caloclouds2-cm", "--data", "x.h5", "--out", "y"])
    assert code == 2  # the whole recipe in one command; its data are checked first
    assert "x.h5: no such file" in capsys.readouterr().err
    assert not Path("y").exists()


# -- end to end -------------------------------------------------------------------------------


def _check_calibrated(model: cc2.CaloClouds2, energies: np.ndarray, **kwargs) -> None:
    gen = torch.Generator().manual_seed(3)
    packed, info = model.generate(energies, gen, **kwargs)
    assert packed.n_showers == len(energies)
    from calogen.data.packed import unpack

    showers = unpack(packed, energies)
    feats = shower_features(showers)
    target_e = info_e_per_layer(model, energies)
    # layer counts from the Shower Flow (points of layers whose predicted energy is zero are
    # dropped), per-layer energies rescaled to its prediction
    lit = target_e > 0
    assert np.array_equal(feats["n_per_layer"][lit], info["n_per_layer"][lit])
    assert np.all(feats["n_per_layer"][~lit] == 0)
    pts = packed.points
    assert np.all(pts[:, 3] > 0)
    assert np.all(pts[:, 2] == np.rint(pts[:, 2])) and pts[:, 2].min() >= 0
    assert pts[:, 2].max() <= 29
    occupied = feats["n_per_layer"] > 0
    assert np.allclose(feats["e_per_layer"][occupied], target_e[occupied], rtol=1e-4)
    has_energy = feats["e_vis"] > 0
    flow = model.shower_flow.sample(energies, torch.Generator().manual_seed(3))
    if "core_cog_x" in flow:
        # the core's centre of gravity (before the shift: points within CORE_COG_RADIUS_MM of
        # the axis) went to the Shower Flow's; tested exactly in test_calibration.py
        assert np.array_equal(info["cog_xy"][:, 0], flow["core_cog_x"])
        assert set(np.unique(info["mirror_signs"])) <= {-1.0, 1.0}
        assert np.all(np.isfinite(pts[:, :2]))
        return
    # centre of gravity moved to the Shower Flow's (x, y), then the shower mirrored (x -> -x
    # and/or y -> -y, the signs of info["mirror_signs"])
    target = info["cog_xy"] * info["mirror_signs"]
    assert np.allclose(feats["cog_x"][has_energy], target[has_energy, 0], atol=1e-3)
    assert np.allclose(feats["cog_y"][has_energy], target[has_energy, 1], atol=1e-3)


def info_e_per_layer(model: cc2.CaloClouds2, energies: np.ndarray) -> np.ndarray:
    """The Shower Flow draw that :meth:`generate` makes first with the same generator (moved
    by the model's depth stretch, if it has one)."""
    flow = model.shower_flow.sample(energies, torch.Generator().manual_seed(3))
    if model.depth_stretch is not None:
        return model.depth_stretch.apply(flow["e_per_layer"], flow["n_per_layer"], energies)[0]
    return flow["e_per_layer"]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_samplers_return_calibrated_showers(trained, which: str) -> None:
    gen = load_generator(trained[which])
    assert isinstance(gen, Generator)
    assert gen.name == ("caloclouds2" if which == "teacher" else "caloclouds2-cm")
    assert gen.evaluations == (25 if which == "teacher" else 1)
    energies = np.array([10.0, 50.0, 90.0, 33.0])
    showers = gen.sample(energies, seed=7)
    assert len(showers) == 4
    assert np.allclose(showers.energies.reshape(-1), energies)
    counts = np.asarray(showers._num_points)
    assert np.all(counts >= 1) and np.all(counts <= gen.max_points)
    again = gen.sample(energies, seed=7)
    assert np.array_equal(showers.points, again.points)
    other = gen.sample(energies, seed=8)
    assert not np.array_equal(showers.points[:, :1], other.points[:, :1])
    _check_calibrated(gen.model, energies)
    with pytest.raises(Exception, match="direction"):
        gen.sample(energies, directions=np.tile([0.0, 0.0, 1.0], (4, 1)))


def test_core_centre_of_gravity_flow(fixtures, tmp_path) -> None:
    """Feature set ``caloclouds2_core``: the Shower Flow draws the core's centre of gravity
    and the calibration shifts the core there."""
    config = tiny_config(6)
    config["shower_flow"] = {**TINY_FLOW, "feature_set": "caloclouds2_core"}
    cc2.train(
        config=config, data=fixtures / "g4_photons_subset.h5", out=tmp_path / "t", progress=False
    )
    gen = load_generator(tmp_path / "t")
    assert "core_cog_x" in gen.model.shower_flow.names
    _check_calibrated(gen.model, np.array([15.0, 60.0, 85.0]))


def test_shower_depth_and_depth_condition() -> None:
    """``shower_depth`` is the energy-weighted mean layer; a ``depth_condition`` model takes it
    as one more condition (``depth / 15 - 1``, last) and refuses to go without it."""
    e = np.zeros((3, 30))
    e[0, 10] = 2.0
    e[1, [4, 8]] = [1.0, 3.0]
    e[2, 5] = -1.0  # no positive energy: the middle layer
    np.testing.assert_allclose(cc2.shower_depth(e), [10.0, 7.0, 15.0])
    cfg = cc2.get_config({"base": "small", "depth_condition": True})
    assert cfg.n_conditions == 3 and cc2.get_config("small").n_conditions == 2
    angles = cc2.get_config({"base": "small-angles", "depth_condition": True})
    assert angles.n_conditions == 4
    assert cc2.CaloClouds2Config.from_dict(cfg.to_dict()) == cfg
    model = cc2.CaloClouds2(cfg, load_generator(None).model.normalisation)
    values = model.conditions(torch.tensor([50.0]), torch.tensor([600]), None, e[:1])
    np.testing.assert_allclose(values.numpy(), [[0.0, -0.8, -1.0 / 3.0]], atol=1e-6)
    with pytest.raises(ValueError, match="energies per layer"):
        model.conditions(torch.tensor([50.0]), torch.tensor([600]))
    # the visible energy as a share of the incident energy, after the depth
    both = cc2.get_config({"base": "small", "depth_condition": True, "visible_condition": True})
    assert both.n_conditions == 4
    model = cc2.CaloClouds2(both, model.normalisation)
    values = model.conditions(torch.tensor([50.0, 100.0]), torch.tensor([600, 600]), None, e[:2])
    np.testing.assert_allclose(values[:, 2].numpy(), [10.0 / 15 - 1, 7.0 / 15 - 1], atol=1e-6)
    share = np.array([2.0 / 50.0, 4.0 / 100.0])  # 0.04: (0.04 / 0.03 - 1) * 5 = 5/3
    np.testing.assert_allclose(values[:, 3].numpy(), (share / 0.03 - 1) * 5, rtol=1e-6)


def test_depth_conditioned_train_distill_generate(fixtures, tmp_path) -> None:
    """A ``depth_condition`` + ``visible_condition`` teacher and student train, generate
    calibrated showers, and both conditions follow the Shower Flow's energies per layer of
    each shower."""
    data = fixtures / "g4_photons_subset.h5"
    config = {**tiny_config(6), "depth_condition": True, "visible_condition": True}
    cc2.train(config=config, data=data, out=tmp_path / "t", progress=False)
    cc2.distill(
        teacher=tmp_path / "t", config=TINY_DISTILL, data=data, out=tmp_path / "s", progress=False
    )
    gen = load_generator(tmp_path / "s")
    assert gen.model.config.depth_condition
    energies = np.array([15.0, 60.0, 85.0])
    _check_calibrated(gen.model, energies)
    seen: list[torch.Tensor] = []
    original = gen.model.conditions

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out)
        return out

    gen.model.conditions = spy  # type: ignore[method-assign]
    gen.model.generate(energies, torch.Generator().manual_seed(3))
    e_layer = info_e_per_layer(gen.model, energies)
    depth = cc2.shower_depth(e_layer)
    np.testing.assert_allclose(seen[0][:, -2].numpy(), depth / 15.0 - 1.0, rtol=1e-6)
    share = e_layer.sum(1) / energies
    np.testing.assert_allclose(seen[0][:, -1].numpy(), (share / 0.03 - 1) * 5, rtol=1e-5)


@pytest.mark.slow
def test_sampler_step_options(trained) -> None:
    teacher = load_generator(trained["teacher"])
    student = load_generator(trained["student"])
    energies = np.array([20.0, 70.0])
    # the number of Heun steps is a sampler argument
    for steps in (1, 2, 13):
        out = teacher.sample(energies, seed=1, n_steps=steps)
        assert len(out) == 2
    a = teacher.sample(energies, seed=1, n_steps=2)
    b = teacher.sample(energies, seed=1, n_steps=13)
    assert not np.array_equal(a.points, b.points)
    # multi-step consistency sampling
    multi = student.sample(energies, seed=1, cm_sigmas=(80.0, 0.8))
    assert len(multi) == 2
    _check_calibrated(student.model, energies, cm_sigmas=(80.0, 0.8))
    _check_calibrated(teacher.model, energies, n_steps=3)


@pytest.mark.slow
def test_student_starts_from_ema_teacher(trained, tmp_path) -> None:
    info = json.loads((trained["student"] / "model.json").read_text())
    assert info["calogen_model"] == "caloclouds2-cm"
    assert info["distillation"]["config"]["target_decay"] == 0.95
    # a zero-iteration distillation exports the teacher's EMA weights unchanged
    out = tmp_path / "zero"
    cfg = dict(TINY_DISTILL, iterations=1, lr_start=0.0, lr_end=0.0)
    cc2.distill(
        teacher=trained["teacher"], config=cfg, data=trained["data"], out=out, progress=False
    )
    t = load_tensors(trained["teacher"] / "model.safetensors")
    s = load_tensors(out / "model.safetensors")
    for key, value in t.items():
        assert torch.allclose(value, s[key]), key
    # the teacher's fitted corrections are not inherited (the student fits its own)
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(trained["teacher"], teacher)
    info = json.loads((teacher / "model.json").read_text())
    info.update(core_azimuth_radius_mm=3.0, halo_clump=2, halo_clump_radius_mm=3.0)
    (teacher / "model.json").write_text(json.dumps(info))
    out = tmp_path / "bare"
    cc2.distill(
        teacher=teacher, config=cfg, data=trained["data"], out=out, progress=False,
        corrections=False,
    )  # fmt: skip
    student = json.loads((out / "model.json").read_text())
    inherited = {"core_azimuth_radius_mm", "halo_clump", "halo_clump_radius_mm"}
    assert not inherited & set(student)
    assert not set(cc2.FITTED_CORRECTION_KEYS) & set(student)


@pytest.mark.slow
def test_distillation_distance_reaches_the_trainer(trained, tmp_path) -> None:
    """``loss: pseudo_huber`` and ``feature_weights`` are recorded with the student and train
    other weights than plain L2 from the same teacher, seed and batches."""
    outs = {}
    variants = {
        "l2": {"loss": "l2"},
        "pseudo_huber": {"loss": "pseudo_huber"},
        "weighted": {"feature_weights": [1, 1, 1, 4]},
    }
    for loss, extra in variants.items():
        outs[loss] = tmp_path / loss
        cfg = dict(TINY_DISTILL, iterations=3, **extra)
        cc2.distill(
            teacher=trained["teacher"],
            config=cfg,
            data=trained["data"],
            out=outs[loss],
            progress=False,
        )
    info = json.loads((outs["pseudo_huber"] / "model.json").read_text())
    assert info["distillation"]["config"]["loss"] == "pseudo_huber"
    weighted = json.loads((outs["weighted"] / "model.json").read_text())
    assert weighted["distillation"]["config"]["feature_weights"] == [1.0, 1.0, 1.0, 4.0]
    a = load_tensors(outs["l2"] / "model.safetensors")
    for other in ("pseudo_huber", "weighted"):
        b = load_tensors(outs[other] / "model.safetensors")
        assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("net")), other


def test_narrower_student(trained, tmp_path) -> None:
    """``student_widths`` distils into a point network of other widths: stored with the
    student's config, its weights of those shapes, resumable, loaded and sampled like any
    student; the teacher's widths keep the teacher-initialised student."""
    cfg = dict(TINY_DISTILL, iterations=4, student_widths=[8, 16, 8])
    out = tmp_path / "narrow"
    kwargs = {"teacher": trained["teacher"], "data": trained["data"], "progress": False}
    cc2.distill(config=cfg, out=out, corrections=False, **kwargs)
    info = json.loads((out / "model.json").read_text())
    assert info["config"]["widths"] == [8, 16, 8]
    assert info["distillation"]["config"]["student_widths"] == [8, 16, 8]
    weights = load_tensors(out / "model.safetensors")
    assert weights["net.pwn.layers.0.layer.weight"].shape == (8, 4)
    assert weights["net.pwn.layers.1.layer.weight"].shape == (16, 8)
    teacher = load_tensors(trained["teacher"] / "model.safetensors")
    assert teacher["net.pwn.layers.0.layer.weight"].shape == (16, 4)
    # a killed run resumes to the same weights
    part = tmp_path / "part"
    cc2.distill(config=cfg, out=part, corrections=False, stop_after=2, **kwargs)
    cc2.distill(config=cfg, out=part, corrections=False, resume=True, **kwargs)
    resumed = load_tensors(part / "model.safetensors")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    showers = load_generator(out).sample(np.array([20.0, 60.0]), seed=1)
    assert len(showers) == 2 and showers._num_points.sum() > 0
    # the teacher's own widths: the student starts from the teacher (a zero-rate step)
    same = tmp_path / "same"
    zero = dict(TINY_DISTILL, iterations=1, lr_start=0.0, lr_end=0.0, student_widths=[16, 32, 16])
    cc2.distill(config=zero, out=same, corrections=False, **kwargs)
    s = load_tensors(same / "model.safetensors")
    assert all(torch.allclose(teacher[k], s[k]) for k in teacher)
    # a narrower student of the same depth starts as the pruned teacher: its layers are
    # slices of the teacher's (rows of the kept units, columns of the previous layer's)
    pruned = tmp_path / "pruned"
    cc2.distill(
        config=dict(zero, student_widths=[8, 16, 8]), out=pruned, corrections=False, **kwargs
    )
    p = load_tensors(pruned / "model.safetensors")
    for name in ("layers.0.hyper_gate.weight", "layers.1.hyper_bias.weight", "layers.3.layer.bias"):
        rows, full = p[f"net.pwn.{name}"], teacher[f"net.pwn.{name}"]
        full = full.reshape(full.shape[0], -1)
        gaps = (
            torch.cdist(
                rows.reshape(rows.shape[0], -1), full, compute_mode="donot_use_mm_for_euclid_dist"
            )
            .min(dim=1)
            .values
        )
        assert torch.all(gaps < 1e-6), name
    w1 = p["net.pwn.layers.1.layer.weight"]
    assert w1.shape == (16, 8)
    with pytest.raises(cc2.UsageError, match="student_widths"):
        cc2.get_distill_config({"base": "small", "student_widths": [8, 0]})


@pytest.mark.slow
def test_resume_is_exact(trained, tmp_path) -> None:
    data = trained["data"]
    full = tmp_path / "full"
    cc2.train(config=tiny_config(12), data=data, out=full, progress=False)
    part = tmp_path / "part"
    cc2.train(config=tiny_config(12), data=data, out=part, progress=False, stop_after=6)
    cc2.train(config=tiny_config(12), data=data, out=part, progress=False, resume=True)
    a = load_tensors(full / "model.safetensors")
    b = load_tensors(part / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and the same for distillation
    d_full = tmp_path / "d_full"
    cc2.distill(teacher=full, config=TINY_DISTILL, data=data, out=d_full, progress=False)
    d_part = tmp_path / "d_part"
    cc2.distill(
        teacher=full, config=TINY_DISTILL, data=data, out=d_part, progress=False, stop_after=4
    )
    cc2.distill(
        teacher=full, config=TINY_DISTILL, data=data, out=d_part, progress=False, resume=True
    )
    a = load_tensors(d_full / "model.safetensors")
    b = load_tensors(d_part / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_cli_generate_with_both_models(trained, tmp_path) -> None:
    for which in ("teacher", "student"):
        out = tmp_path / f"{which}.h5"
        code = cli_main(
            [
                "generate",
                "--model",
                str(trained[which]),
                "--energy",
                "10",
                "90",
                "--num",
                "3",
                "--seed",
                "1",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        assert code == 0 and out.is_file()


@pytest.mark.slow
def test_fit_occupancy_with_radial_correction(trained, tmp_path) -> None:
    """``fit-occupancy`` of a CaloClouds II model stores the occupancy correction and the
    radial quantile correction in model.json; the generator then loads and applies both."""
    import json
    import shutil

    from calogen.calibration import RadialCorrection
    from calogen.models.registry import fit_occupancy

    folder = tmp_path / "student"
    shutil.copytree(trained["student"], folder)
    summary = fit_occupancy(folder, trained["data"], n_showers=40, seed=1)
    assert summary["radial_correction"] is True
    assert len(summary["refinement"]) >= 4  # open loop, refinements, refit, final
    info = json.loads((folder / "model.json").read_text())
    radial = RadialCorrection.from_dict(info["radial_correction"])
    assert radial.log_r_gen.shape[:2] == (4, 6)
    gen = load_generator(folder)
    assert gen.model.radial is not None
    showers = gen.sample(np.array([20.0, 60.0]), seed=3)
    assert len(showers) == 2 and np.all(np.isfinite(showers.points))
    # --no-radial removes it again
    fit_occupancy(folder, trained["data"], n_showers=40, seed=1, radial=False)
    assert "radial_correction" not in json.loads((folder / "model.json").read_text())
    assert load_generator(folder).model.radial is None
    # the core's azimuths: spread evenly as fits end (stored), off with 0 (not stored)
    from calogen.calibration import CORE_AZIMUTH_RADIUS_MM, HALO_CLUMP_SPEC, parse_halo_clump

    assert info["core_azimuth_radius_mm"] == CORE_AZIMUTH_RADIUS_MM
    assert gen.model.core_azimuth_radius_mm == CORE_AZIMUTH_RADIUS_MM
    assert info["halo_clump"] == parse_halo_clump(HALO_CLUMP_SPEC) == 2 == gen.model.halo_clump
    # sizes by layer are stored as a list of 30 and load back
    fit_occupancy(folder, trained["data"], n_showers=40, seed=1, halo_clump="2,18:4")
    info = json.loads((folder / "model.json").read_text())
    assert info["halo_clump"] == [2] * 18 + [4] * 12
    assert load_generator(folder).model.halo_clump == (2,) * 18 + (4,) * 12
    fit_occupancy(folder, trained["data"], n_showers=40, seed=1, core_azimuth_mm=0.0, halo_clump=0)
    info = json.loads((folder / "model.json").read_text())
    assert "core_azimuth_radius_mm" not in info and "halo_clump" not in info
    assert load_generator(folder).model.core_azimuth_radius_mm == 0.0
    assert load_generator(folder).model.halo_clump == 0


def test_core_azimuth_in_generation(tmp_path) -> None:
    """With ``core_azimuth_radius_mm`` the shipped default's showers differ from those without
    only in the azimuths of their core points (same seed: same radii, layers, energies), and the
    core's energy-weighted centre in each layer lies closer to the axis; a bad value in
    model.json is one clear error."""
    import shutil

    from calogen.calibration import shift_cog
    from calogen.errors import UsageError
    from calogen.models.registry import DEFAULT_MODEL_DIR

    model = load_generator(None).model
    energies = np.full(20, 50.0)

    def showers(radius: float):  # type: ignore[no-untyped-def]
        model.core_azimuth_radius_mm = radius
        packed, _ = model.generate(energies, torch.Generator().manual_seed(7))
        # undo the CoG shift (the same target for both; it moves every point of a shower)
        points = packed.points.copy()
        shift_cog(points, packed.shower, np.zeros((20, 2)), 20, core_radius_mm=10.0)
        return points, packed.shower

    try:
        off, shower = showers(0.0)
        on, shower_on = showers(3.0)
    finally:
        model.core_azimuth_radius_mm = 0.0
    np.testing.assert_array_equal(shower, shower_on)
    np.testing.assert_array_equal(on[:, 2:], off[:, 2:])

    def hottest_quadrant(points):  # type: ignore[no-untyped-def]
        """Mean energy share of the richest quadrant of each layer's core (r < 3 mm)."""
        core = np.hypot(points[:, 0], points[:, 1]) < 3.0
        quadrant = (points[core, 0] > 0) * 2 + (points[core, 1] > 0)
        key = (shower[core] * 30 + points[core, 2].astype(int)) * 4 + quadrant
        e = np.bincount(key, points[core, 3].astype(float), minlength=20 * 30 * 4)
        e = e.reshape(-1, 4)
        ok = e.sum(1) > 2e-3
        return (e[ok].max(1) / e[ok].sum(1)).mean()

    assert hottest_quadrant(on) < hottest_quadrant(off) - 0.05
    folder = tmp_path / "bad"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    info = json.loads((folder / "model.json").read_text())
    info["core_azimuth_radius_mm"] = -1
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="core azimuth radius"):
        load_generator(folder)
    info["core_azimuth_radius_mm"] = 3.0
    info["halo_clump"] = "three"
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="halo clump size"):
        load_generator(folder)
    info["halo_clump"] = 2
    info["halo_clump_radius_mm"] = -2.0
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="halo clump radius"):
        load_generator(folder)


def test_cli_generate_sampler_options(trained, tmp_path, capsys) -> None:
    """``--steps`` (teacher) and ``--cm-sigmas`` (student) reach the sampler; misuse is one
    line and exit code 2, with no output file."""

    def run(which: str, *extra: str) -> int:
        out = tmp_path / f"{which}-{len(extra)}-{extra[-1] if extra else ''}.h5"
        args = ["generate", "--model", str(trained[which]), "--energy", "40", "--num", "2"]
        return cli_main([*args, "--seed", "2", "-o", str(out), "--quiet", *extra])

    assert run("teacher", "--steps", "2") == 0
    assert run("student", "--cm-sigmas", "80", "1.5") == 0
    student = load_generator(trained["student"])
    student.set_sampler(cm_sigmas=(80.0, 1.5))
    assert student.evaluations == 2
    teacher = load_generator(trained["teacher"])
    teacher.set_sampler(n_steps=2)
    assert teacher.evaluations == 3
    capsys.readouterr()
    for which, extra in (
        ("student", ("--steps", "3")),
        ("teacher", ("--cm-sigmas", "80")),
        ("student", ("--cm-sigmas", "1", "80")),
        ("student", ("--cm-sigmas", "80", "nan")),
        ("student", ("--cm-sigmas", "500")),
    ):
        assert run(which, *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("--steps" in err or "--cm-sigmas" in err)
    assert not [p for p in tmp_path.glob("*.h5") if p.stat().st_size == 0]
    assert len(list(tmp_path.glob("*.h5"))) == 2


def test_fit_tilt_recovers_a_known_tilt() -> None:
    """GFlash showers tilted by a known AxisTilt are the 'Geant4' side, the same showers
    untilted the 'generated' side: the fit finds the tilt back (cell level, slab cells)."""
    from calogen.calibration import AxisTilt
    from calogen.data.packed import PackedPoints, pack
    from calogen.geometry import slab
    from calogen.models.caloclouds2 import LAYER_DEPTH_MM, fit_tilt
    from calogen.reference.gflash import GFlash

    rng = np.random.default_rng(1)
    n = 1600
    energies = rng.uniform(10, 90, n)
    base = pack(GFlash().sample(energies, None, seed=2))
    nodes = np.array([20.0, 40.0, 60.0, 80.0])
    truth = AxisTilt(nodes, np.full(4, 0.03), np.full(4, 0.01))
    points = base.points.copy()
    truth.apply(points, base.shower, energies, rng.standard_normal((n, 2)), LAYER_DEPTH_MM)
    data = PackedPoints(points, base.shower, base.counts)
    tilt, summary = fit_tilt(data, base, energies, slab(), seed=5)
    np.testing.assert_allclose(tilt.energy_nodes_gev, nodes)
    # 400 showers per energy bin: each bin's k within 0.02, their mean within 0.006
    assert np.all(np.abs(tilt.k_per_mm - 0.03) < 0.02), tilt.k_per_mm
    assert abs(tilt.k_per_mm.mean() - 0.03) < 0.006, tilt.k_per_mm
    assert np.all(np.abs(tilt.sigma - 0.01) < 0.005), tilt.sigma
    assert abs(tilt.sigma.mean() - 0.01) < 0.003, tilt.sigma
    # the last round matches the data's relation better than no tilt
    last = summary["rounds"][-1]["k_per_mm"]
    gap_before = np.abs(
        np.subtract(summary["generated_without"]["k_per_mm"], summary["data"]["k_per_mm"])
    )
    assert np.all(np.abs(np.subtract(last, summary["data"]["k_per_mm"])) < gap_before)


def test_fit_depth_stretch_recovers_a_known_stretch() -> None:
    """The shipped model's Shower Flow, its profiles stretched by a known DepthStretch
    (s = 1.3), is the 'Geant4' side: the fit finds a factor near 1.3 and reaches the data's
    spread of the depth."""
    from calogen.calibration import DepthStretch
    from calogen.data.packed import PackedPoints
    from calogen.geometry import slab
    from calogen.models.caloclouds2 import fit_depth_stretch

    model = load_generator(None).model
    z = slab().layer_z_mm
    rng = np.random.default_rng(0)
    n = 1500
    energies = rng.uniform(10, 90, n)
    theta = np.zeros(n)
    flow = model.shower_flow.sample(energies, torch.Generator().manual_seed(3), theta)
    e_flow = np.asarray(flow["e_per_layer"], np.float64)
    probe = DepthStretch(z, np.zeros(1), np.ones(1), np.zeros(6))
    x = np.stack([np.ones(n), np.log(energies), np.log(energies) ** 2, theta, theta, theta], 1)
    trend = np.linalg.lstsq(x, probe.depth(e_flow), rcond=None)[0]
    truth = DepthStretch(z, np.zeros(1), np.array([1.3]), trend)
    e_data, _ = truth.apply(e_flow, flow["n_per_layer"], energies, theta)
    # one point per layer carrying the layer's energy
    layer = np.tile(np.arange(30.0), n)
    points = np.stack([np.zeros(30 * n), np.zeros(30 * n), layer, e_data.reshape(-1)], 1)
    data = PackedPoints(points.astype(np.float32), np.repeat(np.arange(n), 30), np.full(n, 30))
    stretch, summary = fit_depth_stretch(model, data, energies, theta, z, seed=1)
    (row,) = summary["classes"]
    assert row["showers"] == n and row["theta_deg"] == 0.0
    assert abs(stretch.stretch[0] - 1.3) < 0.1, stretch.stretch
    wanted = row["depth_std_mm_geant4"] / row["depth_std_mm_flow"]
    assert wanted > 1.2
    assert abs(row["depth_std_ratio_reached"] - wanted) < 0.02
    assert DepthStretch.from_dict(summary["stretch"]).trend.shape == (6,)


def test_tilt_parameters_are_smoothed_in_log_energy() -> None:
    from calogen.models.caloclouds2 import _smooth_in_log_energy

    nodes = np.array([20.0, 40.0, 60.0, 80.0])
    line = 0.05 - 0.008 * np.log(nodes)
    usable = np.ones(4, bool)
    np.testing.assert_allclose(_smooth_in_log_energy(nodes, line, usable), line)
    noisy = line + np.array([0.0, 0.0, 0.006, 0.0])  # one bin off: pulled towards the line
    smooth = _smooth_in_log_energy(nodes, noisy, usable)
    assert abs(smooth[2] - line[2]) < 0.5 * 0.006
    few = np.array([True, False, False, True])  # fewer than three bins: their mean
    np.testing.assert_allclose(_smooth_in_log_energy(nodes, noisy, few), noisy[[0, 3]].mean())
    assert np.all(_smooth_in_log_energy(nodes, np.array([-1.0, 0, 0, 0]), usable, 0.0) >= 0.0)
