"""Checkpoints (safetensors + JSON, no pickle), exact resume, CLI train."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calogen.errors import CalogenError, UsageError
from calogen.models.training import (
    EMA,
    check_safetensors,
    latest_checkpoint,
    load_checkpoint,
    load_tensors,
    lr_schedule,
    save_checkpoint,
)

#: a tiny CaloClouds config (same as in test_caloclouds.py)
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


def test_checkpoint_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    ema = EMA(model, 0.9)
    ema.update(model)
    gen = torch.Generator().manual_seed(7)
    nrng = np.random.default_rng(8)
    path = save_checkpoint(
        tmp_path,
        3,
        modules={"m": model, "ema": ema},
        optimizers={"o": opt},
        generators={"g": gen, "n": nrng},
        extra_json={"note": "x", "t": (1, 2)},
    )
    assert latest_checkpoint(tmp_path) == path
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    ema2 = EMA(model2, 0.9)
    opt2 = torch.optim.Adam(model2.parameters(), lr=5.0)
    gen2, nrng2 = torch.Generator(), np.random.default_rng(0)
    meta, _ = load_checkpoint(
        path,
        modules={"m": model2, "ema": ema2},
        optimizers={"o": opt2},
        generators={"g": gen2, "n": nrng2},
    )
    assert meta["iteration"] == 3 and meta["extra"] == {"note": "x", "t": (1, 2)}
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ema.shadow.parameters(), ema2.shadow.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd1["param_groups"] == sd2["param_groups"]
    for k in sd1["state"]:
        for key in sd1["state"][k]:
            torch.testing.assert_close(sd1["state"][k][key], sd2["state"][k][key])
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=gen2))
    assert nrng.random() == nrng2.random()
    # a newer checkpoint replaces the older one; a corrupt newest one is skipped
    newer = save_checkpoint(tmp_path, 4, modules={"m": model})
    assert not path.exists() and latest_checkpoint(tmp_path) == newer
    (tmp_path / "ckpt-00000009.json").write_text(json.dumps({"tensors": "nope", "sha256": "0"}))
    assert latest_checkpoint(tmp_path) == newer


def test_pickle_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "weights.safetensors"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(CalogenError, match="pickle"):
        load_tensors(bad)
    raw = tmp_path / "raw.safetensors"
    import pickle

    raw.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CalogenError, match="refused"):
        check_safetensors(raw)
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not a tensor file")
    with pytest.raises(CalogenError):
        load_tensors(tmp_path / "junk.safetensors")


def test_lr_schedule() -> None:
    assert lr_schedule(0, 100, 1e-3, 1e-4, "cosine") == pytest.approx(1e-3)
    assert lr_schedule(100, 100, 1e-3, 1e-4, "cosine") == pytest.approx(1e-4)
    assert lr_schedule(50, 100, 1e-3, 1e-4, "exponential") == pytest.approx(1e-3 * 0.1**0.5)
    assert lr_schedule(50, 100, 1.0, 0.0, "linear") == pytest.approx(0.5)
    with pytest.raises(UsageError):
        lr_schedule(0, 1, 1.0, 1.0, "weird")


@pytest.mark.slow
def test_resume_matches_uninterrupted(tmp_path, fixtures) -> None:  # type: ignore[no-untyped-def]
    from calogen.models.caloclouds import train

    data = fixtures / "g4_photons_subset.h5"
    full, part = tmp_path / "full", tmp_path / "part"
    train(config=dict(TINY), data=data, out=full, seed=1, progress=False)
    train(config=dict(TINY), data=data, out=part, seed=1, progress=False, stop_after=3)
    with pytest.raises(UsageError, match="resume"):
        train(config=dict(TINY), data=data, out=part, seed=1, progress=False)
    summary = train(config="small", data=data, out=part, resume=True, progress=False)
    assert summary["iterations"] == TINY["iterations"]
    a = load_tensors(full / "model.safetensors")
    b = load_tensors(part / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    log = json.loads((part / "train_log.json").read_text())
    assert [h["iteration"] for h in log["history"]][-1] == TINY["iterations"]
    with pytest.raises(UsageError, match="no complete checkpoint"):
        train(config="small", data=data, out=tmp_path / "nothing", resume=True, progress=False)


@pytest.mark.slow
def test_cli_train(tmp_path, fixtures, capsys) -> None:  # type: ignore[no-untyped-def]
    from calogen.cli import main

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "iterations": 2, "checkpoint_every": 2}))
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "caloclouds",
            "--config",
            str(cfg),
            "--data",
            str(fixtures / "g4_photons_subset.h5"),
            "--out",
            str(out),
            "--seed",
            "2",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 2
    info = json.loads((out / "model.json").read_text())
    assert info["calogen_model"] == "caloclouds" and "normalisation" in info
    assert (
        main(
            [
                "train",
                "caloclouds",
                "--config",
                "nope",
                "--data",
                str(fixtures / "g4_photons_subset.h5"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "train",
                "caloclouds",
                "--data",
                str(tmp_path / "missing.h5"),
                "--out",
                str(tmp_path / "y"),
                "--threads",
                "1",
            ]
        )
        == 2
    )
    assert "error" in capsys.readouterr().err
