"""Angles <-> unit vectors, axis offsets per layer and the fitted shower axis."""

import numpy as np
import pytest

from calogen.directions import (
    angles_from_directions,
    axis_offset_mm,
    check_angles,
    directions_from_angles,
    fit_axis,
)
from calogen.errors import UsageError
from calogen.geometry import slab


def test_angles_round_trip():
    theta = np.array([0.0, 15.0, 30.0, 60.0, 89.0])
    phi = np.array([0.0, 90.0, 200.0, 359.0, 45.0])
    d = directions_from_angles(theta, phi)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    t, p = angles_from_directions(d)
    np.testing.assert_allclose(t, theta, atol=1e-9)
    np.testing.assert_allclose(p[1:], phi[1:], atol=1e-9)
    assert p[0] == 0.0  # azimuth of the normal is defined as 0


@pytest.mark.parametrize("bad", [90.0, 95.0, -1.0, np.nan, np.inf])
def test_bad_theta_is_refused(bad):
    with pytest.raises(UsageError, match="theta"):
        check_angles([bad])


def test_phi_wraps_and_broadcasts():
    theta, phi = check_angles([30.0], [-90.0, 725.0])
    np.testing.assert_allclose(phi, [270.0, 5.0])
    np.testing.assert_allclose(theta, [30.0, 30.0])


def test_axis_offset_matches_data_convention():
    depth = slab().layer_z_mm
    # depth_l = 2.6 l + 2.35 (l < 20), 52 + 4.7 (l - 20) + 4.45 (l >= 20)
    expected = np.where(
        np.arange(30) < 20, 2.6 * np.arange(30) + 2.35, 52 + 4.7 * (np.arange(30) - 20) + 4.45
    )
    np.testing.assert_allclose(depth, expected, atol=1e-9)
    off = axis_offset_mm(directions_from_angles([30.0], [90.0]), depth)
    np.testing.assert_allclose(off[0, :, 0], 0.0, atol=1e-9)
    np.testing.assert_allclose(off[0, :, 1], depth * np.tan(np.radians(30.0)))


@pytest.mark.parametrize(("theta", "phi"), [(0.0, 0.0), (15.0, 30.0), (30.0, 0.0), (60.0, 250.0)])
def test_fit_axis_recovers_a_straight_line(theta, phi):
    depth = slab().layer_z_mm
    off = axis_offset_mm(directions_from_angles([theta], [phi]), depth)
    weight = np.exp(-0.5 * ((np.arange(30) - 12) / 5.0) ** 2)[None, :]
    weight[0, 25:] = 0.0  # empty layers are ignored
    fit = fit_axis(off[..., 0] + 1.5, off[..., 1] - 2.0, weight, depth)
    assert abs(fit["theta_deg"][0] - theta) < 1e-6
    np.testing.assert_allclose(fit["x0_mm"], 1.5, atol=1e-9)
    np.testing.assert_allclose(fit["y0_mm"], -2.0, atol=1e-9)
    if theta > 0:
        assert abs(fit["phi_deg"][0] - phi) < 1e-6


def test_fit_axis_needs_two_layers():
    depth = slab().layer_z_mm
    weight = np.zeros((1, 30))
    weight[0, 3] = 1.0
    fit = fit_axis(np.zeros((1, 30)), np.zeros((1, 30)), weight, depth)
    assert np.isnan(fit["theta_deg"][0]) and np.isnan(fit["slope_x"][0])
