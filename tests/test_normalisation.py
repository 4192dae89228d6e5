"""Normalisation to [-1, 1] and its inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calogen.data.normalisation import Normalisation
from calogen.errors import UsageError


def _points(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.uniform(-199, 199, n),
            rng.uniform(-199, 199, n),
            rng.integers(0, 30, n),
            np.exp(rng.uniform(np.log(2e-6), np.log(0.05), n)),
        ],
        axis=1,
    ).astype(np.float32)


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_inverse_recovers_points_exactly(scale: str) -> None:
    norm = Normalisation(energy_scale=scale)  # type: ignore[arg-type]
    points = _points()
    normalised = norm.forward(points, rng=np.random.default_rng(1))
    assert normalised.min() >= -1 and normalised.max() <= 1
    back = norm.inverse(normalised)
    np.testing.assert_allclose(back[:, :2], points[:, :2], rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(back[:, 2], points[:, 2])  # layers exact despite smearing
    # float32: relative precision in log scale, absolute (of e_max) in linear scale
    np.testing.assert_allclose(back[:, 3], points[:, 3], rtol=1e-4, atol=1e-7 * norm.e_max_gev)


def test_torch_and_numpy_agree_without_smearing() -> None:
    norm = Normalisation()
    points = _points(50)
    a = norm.forward(points, smear=False)
    b = norm.forward(torch.from_numpy(points), smear=False).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        norm.inverse(torch.from_numpy(a)).numpy(), norm.inverse(a), rtol=1e-5
    )


def test_smearing_stays_inside_the_layer() -> None:
    norm = Normalisation()
    points = _points(2000)
    z = norm.forward(points, rng=np.random.default_rng(3))[:, 2]
    depth = (z + 1) / 2 * 30
    assert np.all(depth >= points[:, 2]) and np.all(depth < points[:, 2] + 1)


def test_dict_round_trip_and_validation() -> None:
    norm = Normalisation(e_min_gev=1e-5, e_max_gev=0.2)
    assert Normalisation.from_dict(norm.to_dict()) == norm
    with pytest.raises(UsageError):
        Normalisation(e_min_gev=0.1, e_max_gev=0.01)


def test_fit_on_file(fixtures) -> None:
    norm = Normalisation.fit(fixtures / "g4_photons_subset.h5")
    assert 0 < norm.e_min_gev < 1e-4 < norm.e_max_gev < 1.0


def test_core_radius_compression_round_trip_and_shape() -> None:
    """asinh compression of the radius: invertible, azimuth kept, core spread out, torch = numpy."""
    norm = Normalisation(core_radius_mm=2.0)
    points = _points()
    points[0, :2] = 0.0  # on the axis
    points[1, :2] = (1e-7, 0.0)  # next to it (the r -> 0 limit)
    normalised = norm.forward(points, smear=False)
    assert np.abs(normalised[:, :2]).max() <= 1.06  # the box corner, r = 200 sqrt(2) mm
    back = norm.inverse(normalised)
    np.testing.assert_allclose(back[:, :2], points[:, :2], rtol=1e-4, atol=1e-4)
    # same azimuth
    phi = np.arctan2(points[2:, 1], points[2:, 0])
    np.testing.assert_allclose(np.arctan2(normalised[2:, 1], normalised[2:, 0]), phi, atol=1e-5)
    # a 2 mm core maps to ~ asinh(1) / asinh(100) = 0.17 of the range, 8x the linear 0.01
    core = norm.forward(np.array([[2.0, 0.0, 0, 1e-3]], np.float32), smear=False)
    assert core[0, 0] == pytest.approx(np.arcsinh(1.0) / np.arcsinh(100.0), rel=1e-5)
    # torch agrees with numpy
    torch_back = norm.inverse(norm.forward(torch.as_tensor(points), smear=False))
    np.testing.assert_allclose(torch_back.numpy(), back, rtol=1e-5, atol=1e-4)
    with pytest.raises(UsageError):
        Normalisation(core_radius_mm=-1.0)
    assert Normalisation.from_dict(norm.to_dict()) == norm
    # models saved before the option existed load as linear
    old = {k: v for k, v in norm.to_dict().items() if k != "core_radius_mm"}
    assert Normalisation.from_dict(old).core_radius_mm == 0.0
