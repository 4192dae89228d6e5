"""BIB-AE at tiny size: network shapes on any grid, losses, exact resume, angle conditioning
through the generator interface, registry and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calogen.data.io import write_showers
from calogen.data.voxels import mirror_flips
from calogen.errors import UsageError
from calogen.generator import Generator
from calogen.models.bibae import (
    BIBAE,
    BIBAEConfig,
    BIBAETrainer,
    Resize3d,
    get_config,
    gradient_penalty,
    mmd,
    sorted_energies,
    train,
)
from calogen.models.registry import MODELS, load_generator
from calogen.reference.gflash import GFlash

TINY = {
    "base": "small",
    "nx": 12,
    "ny": 12,
    "channels": [2, 4],
    "critic_channels": [2, 4],
    "hidden": 8,
    "critic_hidden": 8,
    "latent_dim": 4,
    "latent_critic_hidden": [8],
    "pp_channels": [4],
    "latent_flow_transforms": 1,
    "latent_flow_hidden": [8],
    "evis_flow_transforms": 1,
    "evis_flow_hidden": [8],
    "sorted_top_k": 50,
    "iterations": 4,
    "pp_start": 0.5,
    "batch_size": 4,
    "checkpoint_every": 2,
    "max_showers": 12,
    "generation_batch": 3,
}


@pytest.fixture(scope="module")
def subset(fixtures):  # type: ignore[no-untyped-def]
    return fixtures / "g4_photons_subset.h5"


@pytest.fixture(scope="module")
def angled(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A few GFlash showers at angles in the y-z plane (with directions stored)."""
    rng = np.random.default_rng(0)
    theta = np.deg2rad(rng.uniform(0, 30, 12))
    dirs = np.stack([np.zeros(12), np.sin(theta), np.cos(theta)], 1)
    showers = GFlash().sample(rng.uniform(10, 90, 12), dirs, seed=1)
    path = tmp_path_factory.mktemp("angles") / "gflash.h5"
    write_showers(path, showers)
    return path


def test_presets_and_validation() -> None:
    paper = get_config("paper")
    assert (paper.n_layers, paper.nx, paper.ny) == (30, 30, 30)
    assert paper.n_critic == 5 and paper.gp_weight == 10.0 and paper.latent == "prior"
    small = get_config("small")
    assert small.iterations < paper.iterations and small.batch_size <= 32
    assert BIBAEConfig.from_dict(small.to_dict()) == small
    assert "bibae" in MODELS
    with pytest.raises(UsageError):
        get_config({"nonsense": 1})
    with pytest.raises(UsageError):
        get_config({"latent": "other"})
    with pytest.raises(UsageError):
        get_config({"nx": 3})  # too small for three stride-2 stages


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in BENCHMARKS.glob("*.yaml") if p.name.startswith(("bibae", "grid"))),
)
def test_documented_configs_still_load(name: str) -> None:
    """The BIB-AE recipes that docs/bibae_l2lflows.md quotes resolve against today's config
    (a renamed or removed key would otherwise break them only when someone reruns them)."""
    config = get_config(str(BENCHMARKS / name))
    assert config.iterations > 0
    if name == "bibae_open_latent_small.yaml":  # the recipe of the open-latent runs
        small = get_config("small")
        assert (config.w_mmd_latent, config.latent, config.mirror) == (10.0, "flow", True)
        assert config.augment_mirror and config.channels == small.channels
        assert config.validation_showers == 500 and config.max_showers == 9000


@pytest.mark.parametrize("decoder", ["transposed", "upsample"])
@pytest.mark.parametrize("shape", [(30, 30, 30), (30, 12, 17)])
def test_network_shapes_on_any_grid(shape, decoder) -> None:  # type: ignore[no-untyped-def]
    cfg = get_config(
        {**TINY, "n_layers": shape[0], "nx": shape[1], "ny": shape[2], "decoder": decoder}
    )
    model = BIBAE(cfg)
    y = torch.rand(2, 1, *shape)
    cond = torch.randn(2, 4)
    xyz = model.coordinates(cond)
    assert [tuple(c.shape[2:]) for c in xyz][:2] == [shape, tuple(s // 2 for s in shape)]
    mu, logvar = model.encoder(y, cond, xyz)
    assert mu.shape == (2, 4) and logvar.shape == (2, 4)
    rec = model.decoder(mu, cond, xyz)
    assert rec.shape == y.shape and (rec >= 0).all()
    assert model.critic(y, cond, xyz).shape == (2,)
    # the post-processor starts as the identity (zero-initialised last layer)
    torch.testing.assert_close(model.post(y, cond, xyz), y)


def test_upsample_decoder_has_no_preferred_side() -> None:
    """The upsample-and-convolve stage commutes with mirroring when its kernel is symmetric
    (odd output sizes included); the transposed convolution with a symmetric kernel does not:
    at 7 -> 15 its one-sided output padding shifts the image (the +x/+y offset of
    docs/bibae_l2lflows.md)."""
    with pytest.raises(UsageError, match="decoder"):
        get_config({"decoder": "pixelshuffle"})
    torch.manual_seed(0)
    x = torch.rand(1, 1, 7, 7, 7)
    mirror = (3, 4)
    up = Resize3d(1, 1)
    with torch.no_grad():
        up.conv.weight.copy_(torch.rand(1, 1, 3, 3, 3))
        up.conv.weight.copy_(up.conv.weight + up.conv.weight.flip(mirror))  # symmetric in x, y
        out = up(x, (15, 15, 15))
        torch.testing.assert_close(up(x.flip(mirror), (15, 15, 15)), out.flip(mirror))
        tconv = torch.nn.ConvTranspose3d(1, 1, 4, 2, 1)
        tconv.weight.copy_(torch.ones(1, 1, 4, 4, 4))
        t_out = tconv(x, output_size=(15, 15, 15))
        assert not torch.allclose(
            tconv(x.flip(mirror), output_size=(15, 15, 15)), t_out.flip(mirror)
        )


def test_coordinates_follow_the_requested_axis() -> None:
    model = BIBAE(get_config(dict(TINY)))
    cond = torch.zeros(2, 4)
    cond[1, 2] = 0.4 / model.config.slope_scale  # dy/dz = 0.4
    xyz = model.coordinates(cond)[0]
    depth = model._depth_mm
    # y relative to the axis: shifted by 0.4 * depth (in units of 50 mm) for the inclined one
    shift = (xyz[0, 2] - xyz[1, 2])[:, 0, 0] * 50.0
    torch.testing.assert_close(shift, 0.4 * depth, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(xyz[0, 1], xyz[1, 1])  # x unchanged


def test_energy_scaling_round_trip() -> None:
    model = BIBAE(get_config(dict(TINY)))
    vox = np.abs(np.random.default_rng(0).normal(0, 1e-3, (2, 30, 12, 12))).astype(np.float32)
    y = model.to_network(vox)
    assert y.shape == (2, 1, 30, 12, 12) and (y >= 0).all()
    np.testing.assert_allclose(model.to_gev(y)[:, 0].numpy(), vox, rtol=1e-4, atol=1e-9)


def test_losses() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 5, generator=gen)
    b = torch.randn(64, 5, generator=gen)
    assert abs(float(mmd(a, a, (0.5, 1.0)))) < 1e-6
    assert float(mmd(a, b + 3.0, (0.5, 1.0))) > float(mmd(a, b, (0.5, 1.0)))
    y = torch.tensor([[[[[1.0, 3.0], [2.0, 0.0]]]]])
    torch.testing.assert_close(sorted_energies(y, 3), torch.tensor([[3.0, 2.0, 1.0]]))
    # linear critic D(x) = w.x has gradient norm |w| everywhere
    w = torch.tensor([3.0, 4.0])
    pen = gradient_penalty(lambda x: x @ w, a[:, :2], b[:, :2], gen)
    assert torch.isclose(pen, torch.tensor(16.0))


def test_profiles_sum_layers_and_rings_around_the_axis() -> None:
    """Layer and ring energies of profile_loss: a voxel's energy lands in its layer and in
    the ring of its distance to the requested axis; the loss is zero for equal images and
    pulls a reconstruction that drops the halo back towards it."""
    model = BIBAE(get_config(dict(TINY)))  # 12 x 12 cells of 5.0883 mm, centred on the axis
    unit = model.config.energy_unit_mev
    vox = np.zeros((2, 30, 12, 12), np.float32)
    vox[0, 3, 6, 6] = 5e-3  # 5 MeV in the cell at (+2.5, +2.5) mm: ring 0
    vox[0, 7, 11, 6] = 1e-3  # 1 MeV at x = +27.98 mm, y = +2.54 mm: 28.1 mm, ring 5
    vox[1, 0, 0, 0] = 2e-3  # the corner cell, 39.6 mm out: ring 7 (of 10)
    y = model.to_network(vox)
    cond = torch.zeros(2, 4)
    xyz = model.coordinates(cond)[0]
    prof = torch.expm1(model.profiles(y, xyz)) * unit  # MeV
    assert prof.shape == (2, 30 + model.n_rings) and model.n_rings == 10
    layers, rings = prof[:, :30], prof[:, 30:]
    torch.testing.assert_close(layers[0, 3], torch.tensor(5.0), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(layers[0, 7], torch.tensor(1.0), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(rings[0, 0], torch.tensor(5.0), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(rings[0, 5], torch.tensor(1.0), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(rings[1, 7], torch.tensor(2.0), rtol=1e-4, atol=0.0)
    assert float(prof.sum()) == pytest.approx(2 * (5.0 + 1.0 + 2.0), rel=1e-4)
    # an inclined axis moves the rings: the same corner is nearer the axis at depth
    tilted = cond.clone()
    tilted[:, 1] = -0.5 / model.config.slope_scale  # dx/dz = -0.5: the axis moves to -x
    far = torch.expm1(model.profiles(y, model.coordinates(tilted)[0]))[0, 30:]
    assert float(far[0]) < float(rings[0, 0]) / unit  # the core cell is off-axis there
    assert float(model.profile_loss(y, model.profiles(y, xyz), xyz)) == 0.0
    no_halo = y.clone().requires_grad_(True)
    with torch.no_grad():
        no_halo[0, 0, 7, 11, 6] = 0.0
    loss = model.profile_loss(no_halo, model.profiles(y, xyz), xyz)
    loss.backward()
    assert float(loss.detach()) > 0 and float(no_halo.grad[0, 0, 7, 11, 6]) < 0  # raise it


def test_profile_loss_enters_training(subset) -> None:  # type: ignore[no-untyped-def]
    """w_profile > 0 adds the profile loss to the decoder's and post-processor's steps."""
    from calogen.data.voxels import SparseVoxels

    cfg = get_config({**TINY, "w_profile": 1.0})
    model = BIBAE(cfg)
    data = SparseVoxels.from_file(subset, cfg.grid, max_showers=12)
    trainer = BIBAETrainer(model, data, 0, str(subset))
    logs = trainer.step(cfg.iterations - 1)  # in the post-processor's part
    assert logs["profile"] > 0 and "pp_rec" in logs
    assert "profile" not in BIBAETrainer(BIBAE(get_config(dict(TINY))), data, 0, "").step(0)
    with pytest.raises(UsageError, match="w_profile"):
        get_config({**TINY, "w_profile": -1.0})


def test_resume_is_exact_and_normal_incidence_generator(subset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    train(config=dict(TINY), data=subset, out=out_a, seed=1, progress=False)
    train(config=dict(TINY), data=subset, out=out_b, seed=1, progress=False, stop_after=2)
    train(config=dict(TINY), data=subset, out=out_b, seed=1, progress=False, resume=True)
    a, b = load_generator(out_a), load_generator(out_b)
    assert isinstance(a, Generator) and not a.supports_direction
    energies = np.array([15.0, 60.0, 85.0])
    sa, sb = a.sample(energies, seed=4), b.sample(energies, seed=4)
    np.testing.assert_array_equal(sa.points, sb.points)
    assert sa.points.shape[1] <= a.max_points
    np.testing.assert_array_equal(a.sample(energies, seed=4).points, sa.points)
    with pytest.raises(UsageError):
        a.sample(energies, np.tile([0.0, 0.3, 0.954], (3, 1)) / 1.0004, seed=1)
    info = json.loads((out_a / "model.json").read_text())
    assert info["calogen_model"] == "bibae" and info["slope_range"] == [[0.0, 0.0], [0.0, 0.0]]
    # the latent flow can replace the prior; the post-processor can be switched off
    a.latent = "flow"
    assert a.sample_voxels(energies, seed=4).shape == (3, 30, 12, 12)
    assert a.sample_voxels(energies, seed=4, post_process=False).min() >= 0
    # rescaling to the drawn visible energy changes the totals, not the shapes
    scaled = a.sample_voxels(energies, seed=4)
    a.rescale = False
    raw = a.sample_voxels(energies, seed=4)
    ratio = scaled.sum((1, 2, 3)) / raw.sum((1, 2, 3))
    np.testing.assert_allclose(scaled, raw * ratio[:, None, None, None], rtol=1e-4, atol=1e-12)
    # mirror (generation only): each shower as before, or flipped in x, y or both
    many = np.linspace(15.0, 85.0, 12)
    a.model.config.generation_batch = 12  # one batch: the flips are drawn after it
    plain = a.sample_voxels(many, seed=5)
    a.model.config.mirror = True
    mirrored = a.sample_voxels(many, seed=5)
    a.model.config.mirror = False
    kinds = []
    for p, m in zip(plain, mirrored, strict=True):
        options = [p, p[:, ::-1, :], p[:, :, ::-1], p[:, ::-1, ::-1]]
        kinds.append(next(k for k, o in enumerate(options) if np.array_equal(o, m)))
    assert len(set(kinds)) >= 3  # the flips happen, independently in x and y


def test_mirror_flips_follow_the_symmetry() -> None:
    """Both axes at normal incidence, y only for an inclined shower in the axis frame,
    neither for one inclined in the detector frame."""
    uniform = np.zeros((3, 2))  # every draw asks for a flip
    slopes = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.3]])
    assert mirror_flips(uniform, slopes, axis_frame=True).tolist() == [
        [True, True], [False, True], [False, True]
    ]  # fmt: skip
    assert mirror_flips(uniform, slopes, axis_frame=False).tolist() == [
        [True, True], [False, False], [False, False]
    ]  # fmt: skip
    assert not mirror_flips(np.full((3, 2), 0.7), slopes, axis_frame=False).any()


def test_training_batches_are_mirrored(subset) -> None:  # type: ignore[no-untyped-def]
    """augment_mirror: each training shower as it is, or flipped in x, y or both (the flips
    independent per shower and axis); refused on a grid not centred on the axis."""
    from calogen.data.voxels import SparseVoxels

    cfg = get_config({**TINY, "batch_size": 12, "augment_mirror": True})
    model = BIBAE(cfg)
    data = SparseVoxels.from_file(subset, cfg.grid, max_showers=12)
    trainer = BIBAETrainer(model, data, 0, str(subset))
    y, _, _ = trainer._batch(np.random.default_rng(3))
    rows = np.random.default_rng(3).choice(len(data), size=12, replace=False)
    plain = model.to_network(data.dense(rows))
    kinds = []
    for p, m in zip(plain, y, strict=True):
        options = [p, p.flip(2), p.flip(3), p.flip(2).flip(3)]
        kinds.append(next(k for k, o in enumerate(options) if torch.equal(o, m)))
    assert len(set(kinds)) >= 3
    with pytest.raises(UsageError, match="centred on the axis"):
        get_config({**TINY, "augment_mirror": True, "grid_centre_mm": [0.0, 10.0]})


def test_angle_condition_is_used(angled, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "ang"
    train(config={**TINY, "grid_centre_mm": [0.0, 10.0]}, data=angled, out=out, progress=False)
    gen = load_generator(out)
    assert gen.supports_direction
    lo, hi = gen.slope_range[1]
    assert 0 <= lo < hi <= np.tan(np.deg2rad(30)) + 1e-6
    e = np.full(2, 50.0)
    d0 = np.tile([0.0, 0.0, 1.0], (2, 1))
    d1 = np.tile([0.0, np.sin(0.4), np.cos(0.4)], (2, 1))
    v0 = gen.sample_voxels(e, d0, seed=3)
    v1 = gen.sample_voxels(e, d1, seed=3)
    assert not np.allclose(v0, v1)
    showers = gen.sample(e, d1, seed=3)
    assert showers.directions is not None
    np.testing.assert_allclose(showers.directions, d1, rtol=1e-6)


@pytest.mark.slow
def test_cli_train_and_generate(subset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from calogen.cli import main

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "m"
    args = ["train", "bibae", "--config", str(cfg), "--data", str(subset), "--out", str(out)]
    assert main([*args, "--threads", "1", "--no-progress", "--iterations", "2"]) == 0
    gen = tmp_path / "gen.h5"
    rc = main(
        [
            "generate",
            "--model",
            str(out),
            "--energy",
            "20",
            "-n",
            "4",
            "--seed",
            "1",
            "-o",
            str(gen),
            "--quiet",
        ]
    )
    assert rc == 0 and gen.exists()
