"""L2LFlows at tiny size: preprocessing inverts, layer flows see only earlier layers,
training resumes exactly, model folders load through the registry and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calogen.data.voxels import SparseVoxels, voxelise
from calogen.errors import UsageError
from calogen.generator import Generator
from calogen.models.l2lflows import (
    L2LFlows,
    L2LFlowsConfig,
    build_model,
    get_config,
    train,
)
from calogen.models.registry import MODELS, load_generator

TINY = {
    "base": "small",
    "energy_transforms": 1,
    "energy_hidden": [8],
    "layer_transforms": 2,
    "layer_hidden": [8],
    "layer_bins": 4,
    "embedding_hidden": [8],
    "embedding_dim": 3,
    "iterations": 4,
    "batch_size": 6,
    "checkpoint_every": 2,
    "max_showers": 16,
    "stats_showers": 16,
    "generation_batch": 3,
}


@pytest.fixture(scope="module")
def subset(fixtures):  # type: ignore[no-untyped-def]
    return fixtures / "g4_photons_subset.h5"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, subset):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("l2l") / "model"
    train(config=dict(TINY), data=subset, out=out, seed=2, progress=False)
    return out


def test_presets_and_validation() -> None:
    paper = get_config("paper")
    assert (paper.n_layers, paper.nx, paper.ny) == (30, 10, 10)
    assert paper.context_layers == 5 and paper.layer_passes is None
    small = get_config("small")
    assert small.iterations < paper.iterations
    assert L2LFlowsConfig.from_dict(small.to_dict()) == small
    assert "l2lflows" in MODELS
    with pytest.raises(UsageError):
        get_config({"nonsense": 1})
    with pytest.raises(UsageError):
        get_config({"alpha": 0.7})


def test_preprocessing_inverts(subset) -> None:  # type: ignore[no-untyped-def]
    cfg = get_config(dict(TINY))
    data = SparseVoxels.from_file(subset, cfg.grid, max_showers=10)
    model = build_model(cfg, data, seed=0)
    vox = data.dense()
    c, x_e, y = model.preprocess(vox, data.incident, np.random.default_rng(1))
    assert c.shape == (10, 1) and x_e.shape == (10, 30) and y.shape == (10, 30, 100)
    assert torch.isfinite(x_e).all() and torch.isfinite(y).all()
    back = model.decode(x_e, y).numpy().reshape(vox.shape)
    # exact up to the dequantisation noise (1e-7 GeV per voxel, 1e-6 GeV per layer)
    np.testing.assert_allclose(back.sum((2, 3)), vox.sum((2, 3)), atol=3e-5)
    np.testing.assert_allclose(back, vox, atol=3e-5)


def test_layer_context_is_autoregressive() -> None:
    model = L2LFlows(get_config(dict(TINY)))
    c = torch.randn(3, 1)
    x_e = torch.randn(3, 30)
    y = torch.randn(3, 30, 100)
    layer = 7
    ref = model.layer_context(layer, c, x_e, y)
    y2, x2 = y.clone(), x_e.clone()
    y2[:, layer:] = 0.0
    x2[:, layer + 1 :] = 0.0
    torch.testing.assert_close(model.layer_context(layer, c, x2, y2), ref)
    y2[:, layer - 1] += 1.0
    assert not torch.allclose(model.layer_context(layer, c, x2, y2), ref)
    # layers further back than context_layers do not matter
    y3 = y.clone()
    y3[:, : layer - 5] = 0.0
    torch.testing.assert_close(model.layer_context(layer, c, x_e, y3), ref)


def test_resume_is_exact_and_generator_works(trained, subset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "resumed"
    train(config=dict(TINY), data=subset, out=out, seed=2, progress=False, stop_after=2)
    summary = train(config=dict(TINY), data=subset, out=out, seed=2, progress=False, resume=True)
    assert summary["iterations"] == 4
    a = load_generator(trained)
    b = load_generator(out)
    assert isinstance(a, Generator) and not a.supports_direction
    energies = np.array([10.0, 40.0, 90.0, 20.0])
    sa = a.sample(energies, seed=5)
    sb = b.sample(energies, seed=5)
    np.testing.assert_array_equal(sa.points, sb.points)
    assert len(sa) == 4 and sa.points.shape[1] <= a.max_points
    # same seed, same showers; different seed, different showers
    np.testing.assert_array_equal(a.sample(energies, seed=5).points, sa.points)
    assert not np.array_equal(a.sample(energies, seed=6).points, sa.points)
    vox = a.sample_voxels(energies, seed=5)
    assert vox.shape == (4, 30, 10, 10) and np.all(vox >= 0)
    # points are the voxels above the cut
    back = voxelise(sa, a.grid)
    kept = np.where(vox > a.model.config.min_energy_gev, vox, 0.0)
    np.testing.assert_allclose(back, kept, rtol=1e-5, atol=1e-9)
    with pytest.raises(UsageError):
        a.sample(energies, np.tile([0.0, 0.0, 1.0], (4, 1)), seed=1)
    info = json.loads((trained / "model.json").read_text())
    assert info["calogen_model"] == "l2lflows" and info["grid"]["nx"] == 10


def test_training_mirror_flips_showers(subset, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """augment_mirror: the flows are trained on each shower as it is or mirrored in x, y or
    both, independently per shower and axis."""
    seen = []
    preprocess = L2LFlows.preprocess

    def spy(self, voxels, incident, rng):  # type: ignore[no-untyped-def]
        seen.append(np.array(voxels))
        return preprocess(self, voxels, incident, rng)

    monkeypatch.setattr(L2LFlows, "preprocess", spy)
    cfg = {**TINY, "augment_mirror": True, "iterations": 2, "batch_size": 16}
    train(config=cfg, data=subset, out=tmp_path / "m", seed=2, progress=False)
    assert len(seen) == 2  # one batch per iteration
    data = SparseVoxels.from_file(subset, get_config(cfg).grid, max_showers=16).dense()
    kinds = []
    for shower in np.concatenate(seen):
        mirrored = [
            k for f in data for k, o in enumerate((f, f[:, ::-1], f[:, :, ::-1], f[:, ::-1, ::-1]))
            if np.array_equal(o, shower)
        ]  # fmt: skip
        assert mirrored, "a training shower that is no mirror image of a data shower"
        kinds.append(mirrored[0])
    assert len(set(kinds)) >= 3


@pytest.mark.slow
def test_cli_train_and_generate(subset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from calogen.cli import main

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "m"
    args = ["train", "l2lflows", "--config", str(cfg), "--data", str(subset), "--out", str(out)]
    assert main([*args, "--threads", "1", "--no-progress", "--iterations", "2"]) == 0
    gen = tmp_path / "gen.h5"
    rc = main(
        [
            "generate",
            "--model",
            str(out),
            "--energy",
            "10",
            "90",
            "-n",
            "5",
            "--seed",
            "1",
            "-o",
            str(gen),
            "--quiet",
        ]
    )
    assert rc == 0 and gen.exists()
    assert main([*args, "--no-progress"]) == 2  # checkpoints exist: needs --resume


def test_compact_weights_load_as_float16_rounded(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The shipping form (float16, masks and orders left out) loads into the same model
    with its weights rounded to float16; a plain file still needs every tensor."""
    import shutil

    from calogen.models.l2lflows import load_model
    from calogen.models.training import (
        MODEL_TENSORS,
        load_tensors,
        save_compact_model,
        save_tensors,
    )

    compact = tmp_path / "compact"
    shutil.copytree(trained, compact)
    full = load_model(trained)
    save_compact_model(compact, full.generation_modules())
    stored = load_tensors(compact / MODEL_TENSORS)
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert not any(k.endswith((".mask", ".order")) for k in stored)
    small = load_model(compact)
    for (key, a), b in zip(full.state_dict().items(), small.state_dict().values(), strict=True):
        expected = a.half().float() if a.is_floating_point() else a
        assert torch.equal(b, expected), key
    assert load_generator(compact).sample(np.array([30.0]), seed=1).points.shape[0] == 1
    # the same tensors without the compact marker: the missing masks are an error
    save_tensors(compact / MODEL_TENSORS, stored)
    with pytest.raises(UsageError, match="do not fit"):
        load_model(compact)


def test_shipped_l2lflows_is_selected_by_name() -> None:
    from calogen.cli import SHIPPED_MODELS, model_dir

    assert "l2lflows" in SHIPPED_MODELS
    folder = model_dir("l2lflows")
    assert folder is not None and folder.endswith("pretrained/l2lflows")
    generator = load_generator(folder)
    assert generator.name == "l2lflows"
    showers = generator.sample(np.array([50.0]), seed=3)
    e_vis_mev = 1e3 * float(showers.points[0, :, 3].sum())
    assert 1000.0 < e_vis_mev < 1800.0  # Geant4 at 50 GeV: 1,401 MeV (grid: 98 %)
