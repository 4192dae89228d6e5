"""Validation loss of the voxel models (L2LFlows, BIB-AE) during training: held-out showers
disjoint from the training ones, logged at the right iterations, best value kept on resume,
and the offline function on a saved model equal to the value logged in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calogen.data.io import ShowerFile
from calogen.errors import UsageError
from calogen.models import bibae, l2lflows
from calogen.models.scaffold import (
    stored_checkpoint,
    validation_loss,
    validation_split,
    voxel_trainer,
)
from test_bibae import TINY as BIBAE_BASE
from test_l2lflows import TINY as L2L_BASE

#: the tiny configs of the models' own tests, with a validation loss; 80 showers in the
#: fixture: L2LFlows trains on 0-15 and validates on 16-23, the BIB-AE on 0-11 and 12-17
L2L_TINY = {
    **{k: v for k, v in L2L_BASE.items() if k != "generation_batch"},
    "layer_transforms": 1,
    "checkpoint_every": 4,
    "validation_showers": 8,
    "validate_every": 3,
}
BIBAE_TINY = {
    **{k: v for k, v in BIBAE_BASE.items() if k not in ("pp_start", "generation_batch")},
    "iterations": 2,
    "validation_showers": 6,
    "validate_every": 1,
}


@pytest.fixture(scope="module")
def subset(fixtures: Path) -> Path:
    return fixtures / "g4_photons_subset.h5"


@pytest.fixture(scope="module")
def l2l_run(tmp_path_factory: pytest.TempPathFactory, subset: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("l2l_val") / "run"
    summary = l2lflows.train(config=dict(L2L_TINY), data=subset, out=out, seed=3, progress=False)
    return out, summary


def val_entries(out: Path) -> list[dict]:
    log = json.loads((out / "train_log.json").read_text())
    return [h for h in log["history"] if "val_loss" in h]


def test_validation_split() -> None:
    assert validation_split(10_000, 9000, 500) == (9000, 9000, 9500)
    assert validation_split(80, None, 8) == (72, 72, 80)
    with pytest.raises(UsageError, match="need 10500"):
        validation_split(10_000, 9000, 1500)
    with pytest.raises(UsageError, match="none to train on"):
        validation_split(80, None, 80)
    with pytest.raises(UsageError, match="validation_showers"):
        l2lflows.get_config({"validation_showers": -1})
    with pytest.raises(UsageError, match="validate_every"):
        bibae.get_config({"validate_every": 0})
    assert l2lflows.get_config("small").validation_showers == 0  # off by default


@pytest.mark.parametrize("max_showers", [16, None])
def test_validation_showers_are_held_out(subset: Path, max_showers: int | None) -> None:
    cfg = l2lflows.get_config({**L2L_TINY, "max_showers": max_showers})
    trainer = voxel_trainer(l2lflows.L2LFlowsTrainer, l2lflows.build_model)(cfg, subset, 0, None)
    with ShowerFile(subset) as f:
        n_file = len(f)
        incident = f.incident_energies(0, n_file).reshape(-1)
    n_train = 16 if max_showers is not None else n_file - 8
    assert trainer.data is not None and trainer.validation is not None
    assert len(trainer.data) == n_train and len(trainer.validation) == 8
    assert trainer.validation_ranges == [(str(subset), n_train, n_train + 8)]
    np.testing.assert_array_equal(trainer.data.incident, incident[:n_train])
    np.testing.assert_array_equal(trainer.validation.incident, incident[n_train : n_train + 8])


def test_l2lflows_val_loss_logged_and_offline_equal(
    l2l_run: tuple[Path, dict], subset: Path
) -> None:
    out, summary = l2l_run
    entries = val_entries(out)
    # every validate_every (3) iterations and after the last (4); both with training losses
    assert [h["iteration"] for h in entries] == [3, 4]
    for h in entries:
        assert {"loss", "val_loss", "val_nll_energy", "val_nll_voxels"} <= set(h)
        assert np.isfinite(h["val_loss"])
    best = min(entries, key=lambda h: h["val_loss"])
    expected = {"iteration": best["iteration"], "val_loss": best["val_loss"]}
    log = json.loads((out / "train_log.json").read_text())
    assert log["best_val_loss"] == expected == summary["best_val_loss"]
    assert stored_checkpoint(out)["best_val_loss"] == expected
    assert log["validation"]["ranges"] == [[str(subset), 16, 24]]
    # the offline function on the saved (final) model gives the final logged value
    offline = validation_loss(out, subset, 16, 24)
    assert offline == pytest.approx(entries[-1]["val_loss"], rel=1e-6, abs=1e-9)
    # other showers, another value; an empty range is refused
    assert validation_loss(out, subset, 24, 32) != pytest.approx(offline)
    with pytest.raises(UsageError, match="first < last"):
        validation_loss(out, subset, 8, 8)


def test_resume_keeps_validation(l2l_run: tuple[Path, dict], subset: Path, tmp_path: Path) -> None:
    out, summary = l2l_run
    part = tmp_path / "part"
    config = dict(L2L_TINY)
    l2lflows.train(config=config, data=subset, out=part, seed=3, progress=False, stop_after=3)
    assert stored_checkpoint(part)["best_val_loss"]["iteration"] == 3
    resumed = l2lflows.train(
        config=dict(L2L_TINY), data=subset, out=part, seed=3, progress=False, resume=True
    )
    # an interrupted run validates at the same iterations, with the same values
    assert [(h["iteration"], h["val_loss"]) for h in val_entries(part)] == [
        (h["iteration"], h["val_loss"]) for h in val_entries(out)
    ]
    assert resumed["best_val_loss"] == summary["best_val_loss"]
    assert stored_checkpoint(part)["best_val_loss"] == summary["best_val_loss"]


def test_validation_does_not_change_training(
    l2l_run: tuple[Path, dict], subset: Path, tmp_path: Path
) -> None:
    out, _ = l2l_run
    plain = tmp_path / "plain"
    config = {**L2L_TINY, "validation_showers": 0}
    l2lflows.train(config=config, data=subset, out=plain, seed=3, progress=False)
    assert not val_entries(plain)
    assert "best_val_loss" not in json.loads((plain / "train_log.json").read_text())
    # same training showers, same weights: validating does not touch the training
    assert (out / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()


def test_bibae_val_loss(subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bibae"
    summary = bibae.train(config=dict(BIBAE_TINY), data=subset, out=out, seed=1, progress=False)
    entries = val_entries(out)
    assert [h["iteration"] for h in entries] == [1, 2]
    for h in entries:
        assert h["val_loss"] == pytest.approx(
            0.05 * h["val_rec"] + 0.05 * h["val_kld"], rel=1e-9
        )  # w_rec, w_kld of 'small'
        assert "vae_loss" in h and np.isfinite(h["val_loss"])
    assert summary["validation"]["ranges"] == [[str(subset), 12, 18]]
    offline = validation_loss(out, subset, 12, 18)
    assert offline == pytest.approx(entries[-1]["val_loss"], rel=1e-6)


def test_loss_curve_script(l2l_run: tuple[Path, dict], tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "grid_models" / "loss_curve.py"
    spec = importlib.util.spec_from_file_location("loss_curve", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, _ = l2l_run
    png = tmp_path / "curve.png"
    assert module.main([str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keys = {"loss", "vae_loss", "kld", "rec"}
    assert module.counterpart("val_loss", keys) == "vae_loss"
    assert module.counterpart("val_loss", keys - {"vae_loss"}) == "loss"
    assert module.counterpart("val_rec", keys) == "loss"
    assert module.counterpart("val_kld", keys) == "kld"
    assert module.counterpart("val_nll_energy", keys) is None
