"""Shower Flow: features from showers, preprocessing, training and sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calogen.data.io import make_showers, read_showers
from calogen.errors import UsageError
from calogen.models.shower_flow import (
    FEATURE_SETS,
    ShowerFlow,
    ShowerFlowConfig,
    shower_features,
)


@pytest.fixture(scope="module")
def features(fixtures):  # type: ignore[no-untyped-def]
    return shower_features(read_showers(fixtures / "g4_photons_subset.h5"))


def test_shower_features_by_hand() -> None:
    points = np.zeros((2, 3, 4), np.float32)
    points[0, :2] = [[1.0, 0.0, 0, 0.1], [3.0, 2.0, 2, 0.3]]
    points[1, :3] = [[0.0, 1.0, 29, 1.0], [0.0, -1.0, 29, 1.0], [0.0, 0.0, 5, 2.0]]
    f = shower_features(make_showers(points, np.array([2, 3]), np.array([10.0, 20.0])))
    np.testing.assert_array_equal(f["n_points"], [2, 3])
    np.testing.assert_allclose(f["e_vis"], [0.4, 4.0], rtol=1e-6)
    np.testing.assert_allclose(f["cog_x"], [(0.1 + 0.9) / 0.4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(f["cog_z"], [0.6 / 0.4, (29 * 2 + 10) / 4.0], rtol=1e-6)
    # every point lies within CORE_COG_RADIUS_MM of the axis: the core is the whole shower
    np.testing.assert_allclose(f["core_cog_x"], f["cog_x"], rtol=1e-6)
    np.testing.assert_allclose(f["core_cog_y"], f["cog_y"], rtol=1e-6)
    assert f["n_per_layer"][0, 0] == 1 and f["n_per_layer"][0, 2] == 1
    assert f["n_per_layer"][1, 29] == 2 and f["n_per_layer"].sum() == 5
    np.testing.assert_allclose(f["e_per_layer"][1, 29], 2.0)
    np.testing.assert_allclose(f["energy"], [10.0, 20.0])


@pytest.mark.parametrize("feature_set", sorted(FEATURE_SETS))
def test_fit_lowers_loss_and_samples(features, feature_set: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    flow = ShowerFlow(
        ShowerFlowConfig(
            feature_set=feature_set,
            blocks=1,
            affine_per_block=1,
            spline_per_block=1,
            hidden=(16, 16),
        )
    )
    losses = flow.fit(features, features["energy"], iterations=60, batch_size=64, lr=5e-3)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    out = flow.sample(np.array([10.0, 50.0, 90.0]), torch.Generator().manual_seed(1))
    again = flow.sample(np.array([10.0, 50.0, 90.0]), torch.Generator().manual_seed(1))
    for name in FEATURE_SETS[feature_set]:
        assert name in out
        np.testing.assert_array_equal(out[name], again[name])
    assert out["n_per_layer"].shape == (3, 30)
    assert out["n_per_layer"].dtype == np.int64 and np.all(out["n_per_layer"] >= 0)
    assert np.all(out["e_vis"] >= 0)
    assert out["n_points"].dtype == np.int64
    if feature_set == "caloclouds":
        np.testing.assert_array_equal(out["n_points"], out["n_per_layer"].sum(1))
    else:
        assert out["e_per_layer"].shape == (3, 30)
        assert "n_points_sum" in out


def test_preprocessing_round_trip(features) -> None:  # type: ignore[no-untyped-def]
    flow = ShowerFlow(ShowerFlowConfig(feature_set="caloclouds2", blocks=1, hidden=(8,)))
    raw = flow._stack(features)
    pre = flow._transform(raw, np.random.default_rng(0))
    back = flow._untransform(pre)
    np.testing.assert_array_equal(back["n_per_layer"], features["n_per_layer"])
    np.testing.assert_allclose(back["e_per_layer"], features["e_per_layer"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(back["cog_x"], features["cog_x"])


def test_unknown_feature_set() -> None:
    with pytest.raises(UsageError):
        ShowerFlow(ShowerFlowConfig(feature_set="nope"))


def _default_flow():  # type: ignore[no-untyped-def]
    from calogen.models.registry import load_generator

    return load_generator(None).model.shower_flow


def test_samples_beyond_the_training_support_are_drawn_again() -> None:
    """Before FLOW_SUPPORT_Z, one of these 50,000 draws of the default's Shower Flow had a
    visible energy of 2e8 times the incident energy and 485 million points."""
    from calogen.models.shower_flow import FLOW_SUPPORT_Z

    torch.set_num_threads(1)
    flow = _default_flow()
    rng = np.random.default_rng(0)
    energies = rng.uniform(10, 90, 50_000)
    theta = rng.uniform(0, 60, 50_000)
    out = flow.sample(energies, torch.Generator().manual_seed(5), theta)
    share = out["e_per_layer"].sum(1) / energies
    assert share.max() < 0.2  # this calorimeter's sampling fraction is about 0.03
    assert out["n_per_layer"].sum(1).max() < 20_000
    # the rows concerned: their noise halved gives what the sample holds
    c = flow.condition(energies, theta)
    z = torch.randn((energies.size, flow.dim), generator=torch.Generator().manual_seed(5))
    x = flow.inverse(c, z).numpy()
    outside = np.flatnonzero(np.abs(x).max(1) > FLOW_SUPPORT_Z)
    assert 10 < outside.size < 500
    again = flow.inverse(c[outside], z[outside] * 0.5).numpy()
    pre = np.clip(again, -FLOW_SUPPORT_Z, FLOW_SUPPORT_Z) * flow.std.numpy() + flow.mean.numpy()
    expected = flow._untransform(pre.astype(np.float64))["e_per_layer"]
    np.testing.assert_allclose(out["e_per_layer"][outside], expected, rtol=1e-5, atol=1e-9)


def test_exported_flow_draws_outside_rows_again_like_python() -> None:
    """The exported pipeline gets the same noise and makes the same per-layer energies for
    a row beyond the support (redrawn from its halved noise) and an ordinary row."""
    from calogen.export import build_pipeline
    from calogen.models.registry import load_generator
    from calogen.models.shower_flow import FLOW_SUPPORT_Z

    torch.set_num_threads(1)
    pipeline, _ = build_pipeline(None)
    flow = pipeline.shower_flow
    rng = np.random.default_rng(0)
    energies = rng.uniform(10, 90, 50_000)
    theta = rng.uniform(0, 60, 50_000)
    z = torch.randn((energies.size, flow.dim), generator=torch.Generator().manual_seed(5))
    x = flow.inverse(flow.condition(energies, theta), z).numpy()
    bad = int(np.flatnonzero(np.abs(x).max(1) > FLOW_SUPPORT_Z)[0])
    rows = [bad, 0]
    e = torch.as_tensor(energies[rows], dtype=torch.float32)
    t = torch.as_tensor(theta[rows], dtype=torch.float32)
    weights = pipeline._angle_weights(t)
    _, e_layer, _ = pipeline._shower_flow(e, z[rows], t, weights)
    share = e_layer.sum(1).numpy() / energies[rows]
    assert np.all(share < 0.1) and np.all(share > 0.005)
    c = flow.condition(energies[rows], theta[rows])
    x = flow.inverse(c, z[rows] * torch.tensor([[0.5], [1.0]])).numpy()
    pre = np.clip(x, -FLOW_SUPPORT_Z, FLOW_SUPPORT_Z) * flow.std.numpy() + flow.mean.numpy()
    features = flow._untransform(pre.astype(np.float64))
    expected = features["e_per_layer"]
    stretch = load_generator(None).model.depth_stretch
    if stretch is not None:  # the shipped default moves the flow's profiles next
        expected = stretch.apply(
            expected, features["n_per_layer"], e.double().numpy(), t.double().numpy()
        )[0]
    np.testing.assert_allclose(e_layer.numpy(), expected, rtol=1e-4, atol=1e-9)
