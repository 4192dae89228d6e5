"""CaloClouds end to end at tiny size: training lowers the loss, calibration is exact,
model folders round-trip, the registry and CLI find the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calogen.data.normalisation import Normalisation
from calogen.errors import UsageError
from calogen.generator import Generator
from calogen.models.caloclouds import (
    CaloCloudsConfig,
    CaloCloudsTrainer,
    build_model,
    export_model,
    get_config,
    load_training_data,
    train,
)
from calogen.models.registry import load_generator
from calogen.models.shower_flow import shower_features

TINY = {
    "base": "small",
    "widths": [8, 16, 8],
    "latent_dim": 4,
    "encoder_hidden": 8,
    "encoder_global": 4,
    "encoder_layers": 1,
    "latent_flow_transforms": 2,
    "latent_flow_hidden": [8, 8],
    "shower_flow": {
        "feature_set": "caloclouds",
        "blocks": 1,
        "affine_per_block": 1,
        "spline_per_block": 1,
        "hidden": [16, 16],
        "bins": 4,
        "seed": 0,
    },
    "diffusion_steps": 10,
    "iterations": 6,
    "batch_size": 4,
    "points_per_shower": 32,
    "encoder_points": 64,
    "shower_flow_iterations": 6,
    "shower_flow_batch": 32,
    "checkpoint_every": 3,
    "max_showers": 20,
}


@pytest.fixture(scope="module")
def subset(fixtures):  # type: ignore[no-untyped-def]
    return fixtures / "g4_photons_subset.h5"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, subset):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cc") / "model"
    train(config=dict(TINY), data=subset, out=out, seed=3, progress=False)
    return out


def test_training_ends_with_the_occupancy_correction(trained) -> None:  # type: ignore[no-untyped-def]
    """The finished model carries its occupancy correction, fitted on the training showers
    (no separate 'calogen fit-occupancy')."""
    info = json.loads((trained / "model.json").read_text())
    assert info["occupancy"]["p_data"] != [0.0, 0.0, 1.0, 0.0]  # not the identity
    assert json.loads((trained / "occupancy.json").read_text()) == info["occupancy"]


def test_presets() -> None:
    paper = get_config("paper")
    assert paper.widths == (128, 256, 512, 256, 128)
    assert paper.diffusion_steps == 100 and paper.beta_1 == 1e-4 and paper.beta_T == 0.02
    assert paper.latent_dim == 256 and paper.encoder_hidden == 128 and paper.encoder_layers == 3
    assert paper.kld_weight == 1e-3 and paper.kld_min == 1.0
    assert paper.latent_flow_transforms == 10
    small = get_config("small")
    assert small.iterations < paper.iterations
    assert CaloCloudsConfig.from_dict(small.to_dict()) == small
    with pytest.raises(UsageError):
        get_config({"nonsense": 1})
    with pytest.raises(UsageError):
        get_config("no-such-preset")


def test_training_steps_lower_loss(subset) -> None:  # type: ignore[no-untyped-def]
    cfg = get_config({**TINY, "lr_start": 1e-2, "lr_end": 1e-2, "iterations": 40})
    data = load_training_data(subset, 8)
    model = build_model(cfg, data, Normalisation.fit(subset), seed=0)
    trainer = CaloCloudsTrainer(model, data, seed=0, data_path=str(subset))

    def fixed_loss() -> float:  # the same batch, time steps and noise every time
        with torch.no_grad():
            return float(
                np.mean([float(trainer.diffusion_losses(10**6 + k)["diffusion"]) for k in range(4)])
            )

    before = fixed_loss()
    for it in range(40):
        trainer.step(it)
    assert fixed_loss() < before


def test_generated_showers_are_calibrated(trained) -> None:  # type: ignore[no-untyped-def]
    gen = load_generator(trained)
    assert isinstance(gen, Generator)
    model = gen.model
    energies = np.array([12.0, 50.0, 88.0])
    packed, targets = model.generate(energies, torch.Generator().manual_seed(0))
    from calogen.data.packed import unpack

    feats = shower_features(unpack(packed, energies))
    np.testing.assert_array_equal(feats["n_per_layer"], targets["n_per_layer"])
    np.testing.assert_allclose(feats["e_vis"], targets["e_vis"], rtol=1e-5)
    assert np.all(packed.points[:, 3] >= 0)
    np.testing.assert_allclose(feats["cog_x"], model.cog_xy[0], atol=1e-2)
    np.testing.assert_allclose(feats["cog_y"], model.cog_xy[1], atol=1e-2)
    assert np.all(packed.counts <= gen.max_points)


def test_round_trip_same_samples(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gen = load_generator(trained)
    a = gen.sample(np.array([20.0, 60.0]), seed=5)
    export_model(gen.model, tmp_path / "copy")
    b = load_generator(tmp_path / "copy").sample(np.array([20.0, 60.0]), seed=5)
    c = load_generator(trained).sample(np.array([20.0, 60.0]), seed=6)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.energies, b.energies)
    assert not np.array_equal(a.points, c.points) or a.points.shape != c.points.shape
    with pytest.raises(UsageError):
        gen.sample(np.array([20.0]), directions=np.array([[0.0, 0.0, 1.0]]))


def test_load_generator_errors(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="no such model folder"):
        load_generator(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"model\.json"):
        load_generator(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    info = json.loads((trained / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="weights missing"):
        load_generator(broken)
    (broken / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes())
    info["config"]["widths"] = [8, 8]
    (broken / "model.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="do not fit"):
        load_generator(broken)
    info["calogen_model"] = "mystery"
    (broken / "model.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="not known"):
        load_generator(broken)


@pytest.mark.slow
def test_fit_occupancy_cli(trained, subset, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from calogen.cli import main

    model = tmp_path / "occ"
    shutil.copytree(trained, model)
    assert (
        main(
            [
                "fit-occupancy",
                "--model",
                str(model),
                "--data",
                str(subset),
                "--showers",
                "20",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["showers"] == 20
    info = json.loads((model / "model.json").read_text())
    assert info["occupancy"]["kind"] == "occupancy_correction"
    assert (model / "occupancy.json").is_file()
    assert load_generator(model).model.occupancy.p_data == info["occupancy"]["p_data"]
