"""Tests of the GFlash reference simulator (calogen.reference)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import showerdata

from calogen.data.packed import pack
from calogen.errors import UsageError
from calogen.generator import Generator
from calogen.geometry import N_LAYERS, slab
from calogen.reference import GFlash, GFlashParameters, simulate
from calogen.reference.gflash import (
    BOX_HALF_WIDTH_MM,
    SUBCELL_MM,
    longitudinal_fractions,
    sampling_fractions,
)


def _visible(showers: showerdata.Showers) -> np.ndarray:
    """Sum of point energies per shower, GeV."""
    packed = pack(showers)
    return np.bincount(packed.shower, packed.points[:, 3].astype(np.float64), len(showers))


@pytest.fixture(scope="module")
def showers() -> showerdata.Showers:
    return GFlash().sample(np.array([10.0, 50.0, 90.0, 1.0, 25.0]), seed=3)


def test_protocol_attributes() -> None:
    gen = GFlash()
    assert isinstance(gen, Generator)
    assert gen.name == "gflash"
    assert gen.supports_direction is True
    assert gen.energy_range_gev[0] < 10 and gen.energy_range_gev[1] >= 100
    assert gen.max_points > 0


def test_shapes_and_ranges(showers: showerdata.Showers) -> None:
    n = len(showers)
    assert n == 5
    assert showers.points.dtype == np.float32
    assert showers.points.ndim == 3 and showers.points.shape[2] == 4
    assert showers.energies.dtype == np.float32
    np.testing.assert_array_equal(showers.energies[:, 0], [10, 50, 90, 1, 25])
    counts = np.asarray(showers._num_points)
    assert np.all(counts > 0) and np.all(counts <= GFlash().max_points)
    packed = pack(showers)
    x, y, layer, e = packed.points.T
    assert np.all(e > 0)
    assert np.all(np.isfinite(packed.points))
    np.testing.assert_array_equal(layer, np.rint(layer))
    assert layer.min() >= 0 and layer.max() <= N_LAYERS - 1
    assert np.abs(x).max() < BOX_HALF_WIDTH_MM and np.abs(y).max() < BOX_HALF_WIDTH_MM
    # points sit at sub-cell centres of the clustering grid
    np.testing.assert_allclose((x / SUBCELL_MM) % 1.0, 0.5, atol=1e-3)
    # end padding is zero
    width = showers.points.shape[1]
    pad = np.arange(width)[None, :] >= counts[:, None]
    assert np.all(showers.points[pad] == 0)
    # a few thousand points at most in the tuned range
    assert counts[:3].max() < 5000


def test_same_seed_reproducible_and_seeds_differ() -> None:
    energies = np.array([12.0, 47.0])
    a = GFlash().sample(energies, seed=42)
    b = simulate(energies, seed=42)
    c = GFlash().sample(energies, seed=43)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.points.shape != c.points.shape or not np.array_equal(a.points, c.points)


def test_visible_energy_scales_linearly() -> None:
    gen = GFlash()
    energies = np.array([10.0, 30.0, 60.0, 90.0])
    means = np.array([_visible(gen.sample(np.full(60, e), seed=int(e))).mean() for e in energies])
    fractions = means / energies
    assert np.all(np.diff(means) > 0)
    assert fractions.max() / fractions.min() < 1.15
    assert 0.02 < fractions.mean() < 0.04  # sampling fraction of a few per cent
    # linear up to the slow fall of the sampling fraction (leakage, as in Geant4)
    slope, intercept = np.polyfit(energies, means, 1)
    assert abs(intercept) < 0.25 * means[0]
    assert slope * 90.0 == pytest.approx(means[-1], rel=0.1)


@pytest.mark.parametrize("phi", [0.0, np.pi / 2])
def test_direction_tilts_shower_axis(phi: float) -> None:
    theta = 0.3
    direction = np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    n = 150
    showers = GFlash().sample(np.full(n, 20.0), np.tile(direction, (n, 1)), seed=5)
    assert showers.directions is not None
    np.testing.assert_allclose(showers.directions[0], direction, atol=1e-6)
    packed = pack(showers)
    x, y, layer, e = (packed.points[:, i].astype(np.float64) for i in range(4))
    layer = layer.astype(np.int64)
    e_layer = np.bincount(layer, e, N_LAYERS)
    mean_x = np.bincount(layer, e * x, N_LAYERS) / e_layer
    mean_y = np.bincount(layer, e * y, N_LAYERS) / e_layer
    along, across = (mean_x, mean_y) if phi == 0.0 else (mean_y, mean_x)
    sel = np.arange(3, 19)  # thin-absorber layers with plenty of energy
    z = slab().layer_z_mm[sel]
    slope = np.polyfit(z, along[sel], 1)[0]
    assert slope == pytest.approx(np.tan(theta), rel=0.1)
    pitch = slab().layer_z_mm[1] - slab().layer_z_mm[0]
    slope_per_layer = np.polyfit(sel, along[sel], 1)[0]
    assert slope_per_layer == pytest.approx(np.tan(theta) * pitch, rel=0.1)
    assert np.abs(across[sel]).max() < 1.0
    # normal incidence: no tilt
    normal = pack(GFlash().sample(np.full(n, 20.0), seed=5))
    xn, ln, en = normal.points[:, 0], normal.points[:, 2].astype(int), normal.points[:, 3]
    mean_xn = np.bincount(ln, en * xn, N_LAYERS) / np.bincount(ln, en, N_LAYERS)
    assert abs(np.polyfit(z, mean_xn[sel], 1)[0]) < 0.03


def test_single_direction_vector_is_broadcast() -> None:
    d = np.array([0.0, 0.0, 1.0])
    a = GFlash().sample([20.0, 30.0], d, seed=1)
    b = GFlash().sample([20.0, 30.0], seed=1)
    np.testing.assert_array_equal(a.points, b.points)


@pytest.mark.parametrize(
    "energies, directions",
    [
        ([10.0, np.nan], None),
        ([10.0, -5.0], None),
        ([0.0], None),
        ([10.0, np.inf], None),
        ([10.0, 20.0], np.zeros((3, 3))),
        ([10.0, 20.0], np.array([[0.0, 0.0, 1.0]] * 2)[:, :2]),
        ([10.0], np.array([[0.0, 0.0, 2.0]])),
        ([10.0], np.array([[0.0, 0.0, -1.0]])),
        ([10.0], np.array([[np.nan, 0.0, 1.0]])),
    ],
)
def test_bad_input_raises_usage_error(energies, directions) -> None:
    with pytest.raises(UsageError):
        GFlash().sample(np.asarray(energies), directions, seed=0)


def test_parameters() -> None:
    par = GFlashParameters()
    assert par.replace(spot_sigma=0.5).spot_sigma == 0.5
    with pytest.raises(UsageError):
        par.replace(not_a_parameter=1.0)
    sf = sampling_fractions(par)
    assert sf.shape == (N_LAYERS,)
    assert np.all(sf[:20] == sf[0]) and np.all(sf[20:29] < sf[0])
    with pytest.raises(UsageError):
        GFlash(max_points=0)


def test_longitudinal_fractions() -> None:
    frac = longitudinal_fractions(np.array([10.0, 90.0] * 50), seed=1)
    assert frac.shape == (100, N_LAYERS)
    assert np.all(frac >= 0) and np.all(frac.sum(1) <= 1 + 1e-9)
    # showers are longer at higher energy: more leakage, deeper centre of gravity
    cog = (frac * np.arange(N_LAYERS)).sum(1) / frac.sum(1)
    assert cog[1::2].mean() > cog[0::2].mean() + 1.0
    assert frac[1::2].sum(1).mean() < frac[0::2].sum(1).mean()


def test_max_points_enforced_and_energy_conserved() -> None:
    energies = np.array([80.0])
    full = GFlash().sample(energies, seed=9)
    capped = GFlash(max_points=500).sample(energies, seed=9)
    assert np.asarray(full._num_points)[0] > 500
    assert np.asarray(capped._num_points)[0] <= 500
    assert _visible(capped)[0] == pytest.approx(_visible(full)[0], rel=1e-5)


def test_empty_input() -> None:
    showers = GFlash().sample(np.zeros(0), seed=0)
    assert len(showers) == 0


def test_shower_maximum_and_hits_are_plausible() -> None:
    showers = GFlash().sample(np.full(40, 70.0), seed=2)
    packed = pack(showers)
    profile = np.bincount(packed.points[:, 2].astype(int), packed.points[:, 3], N_LAYERS)
    assert 11 <= int(np.argmax(profile)) <= 17
    from calogen.geometry import project

    hits = project(showers, slab()).hits_per_shower()
    assert 300 < hits.mean() < 1000


@pytest.mark.shared_data
def test_visible_energy_matches_geant4(shared_data: Path) -> None:
    """Mean visible energy within 2 % of Geant4 at 10, 50 and 90 GeV (+-2.5 GeV windows)."""
    with h5py.File(shared_data / "g4_photons_10-90GeV_train.h5", "r") as f:
        energy = f["energy"][:, 0].astype(np.float64)
        edep_gev = f["geant4_edep_mev"][:].astype(np.float64) / 1000.0
    gen = GFlash()
    rng = np.random.default_rng(2024)
    for centre in (10.0, 50.0, 90.0):
        window = np.flatnonzero(np.abs(energy - centre) <= 2.5)
        g4 = edep_gev[window].mean() / energy[window].mean()
        pick = rng.choice(window, size=200, replace=len(window) < 200)
        e = energy[pick]
        gf = _visible(gen.sample(e, seed=int(centre))).mean() / e.mean()
        assert gf == pytest.approx(g4, rel=0.02), f"{centre} GeV: GFlash {gf:.5f} vs G4 {g4:.5f}"


# -----------------------------------------------------------------------------------------
# inclined showers
# -----------------------------------------------------------------------------------------


def _axis_fit(showers: showerdata.Showers) -> dict[str, np.ndarray]:
    """Fitted axis as ``calogen evaluate`` measures it: per-layer centroids of the slab cells
    >= 0.1 MeV against the layer depth, weighted by the layer energy."""
    from calogen.evaluation.observables import shower_features
    from calogen.geometry import project

    cal = slab()
    f = shower_features(project(showers, cal), cal)
    return {
        "w": f.energy_per_layer_mev,
        "cx": np.nan_to_num(f.layer_cog_x_mm),
        "theta_deg": f.axis_theta_deg,
        "phi_deg": f.axis_phi_deg,
        "slope_x": f.axis_slope_x,
        "slope_y": f.axis_slope_y,
    }


def _direction(theta_deg: float, n: int) -> np.ndarray:
    t = np.radians(theta_deg)
    return np.tile([np.sin(t), 0.0, np.cos(t)], (n, 1))


def test_inclined_layers_see_the_profile_across_the_footprint() -> None:
    """Ahead of the axis a layer sees later shower depths, behind it earlier ones.

    So before the shower maximum the layer centroids lie ahead of the axis crossing (+x for
    phi = 0), after it behind, and the fitted axis is flatter than the incident direction
    (Geant4: 27.5 deg at 30 deg, see docs/gflash.md). Spots placed along the axis would give
    centroids on the axis and the incident angle back.
    """
    n = 200
    showers = GFlash().sample(np.full(n, 50.0), _direction(30.0, n), seed=11)
    fit = _axis_fit(showers)
    axis_x = slab().layer_z_mm * np.tan(np.radians(30.0))
    w = fit["w"]
    offset = ((fit["cx"] - axis_x) * w).sum(0) / w.sum(0)  # energy-weighted, per layer
    assert offset[1:6].mean() > 1.0  # early layers: ahead of the axis
    assert offset[22:29].mean() < -2.0  # late layers: behind it
    assert abs(offset[8:16].mean()) < 1.5  # around the maximum: close to the axis
    theta = np.nanmean(fit["theta_deg"])
    assert 25.5 < theta < 29.0
    wrapped = (fit["phi_deg"] + 180.0) % 360.0 - 180.0  # azimuth around 0
    assert abs(np.nanmean(wrapped)) < 1.0
    assert abs(np.nanmean(fit["slope_y"])) < 0.02


def test_inclined_axis_intercept_and_azimuth() -> None:
    """At phi = 90 deg the shower tilts in y only."""
    n = 150
    t = np.radians(45.0)
    d = np.tile([0.0, np.sin(t), np.cos(t)], (n, 1))
    fit = _axis_fit(GFlash().sample(np.full(n, 20.0), d, seed=4))
    assert np.nanmedian(fit["phi_deg"]) == pytest.approx(90.0, abs=2.0)
    assert abs(np.nanmean(fit["slope_x"])) < 0.02
    assert 0.8 < np.nanmean(fit["slope_y"]) < 1.0  # flatter than tan(45 deg) = 1


def test_visible_energy_grows_with_angle() -> None:
    """More of an inclined shower lies in the front layers (twice the sampling fraction of
    layers 20-29) and less leaks out of the back; on top, the sampling fraction grows as
    (1/cos theta)^kappa. The calibrated energy (layers 20-29 x 2) without that factor hardly
    depends on the angle."""
    n = 150
    weight = np.where(np.arange(N_LAYERS) >= 20, 2.0, 1.0)
    par = GFlashParameters()
    vis, cal = [], []
    for theta in (0.0, 30.0, 60.0):
        showers = GFlash().sample(np.full(n, 50.0), _direction(theta, n), seed=7)
        packed = pack(showers)
        layer = packed.points[:, 2].astype(np.int64)
        e = np.bincount(layer, packed.points[:, 3].astype(np.float64), N_LAYERS) / n
        vis.append(e.sum())
        cal.append((e * weight).sum() * np.cos(np.radians(theta)) ** par.sampling_path_exponent)
    assert vis[0] < vis[1] < vis[2]
    assert vis[2] / vis[0] > 1.15
    assert cal[1] / cal[0] == pytest.approx(1.0, abs=0.02)
    assert cal[2] / cal[0] == pytest.approx(1.0, abs=0.03)
    # without the path factor the visible energy is lower by exactly (1/cos)^kappa on average
    flat = GFlash(par.replace(sampling_path_exponent=0.0))
    showers = flat.sample(np.full(n, 50.0), _direction(60.0, n), seed=7)
    ratio = vis[2] / _visible(showers).mean()
    assert ratio == pytest.approx(2.0**par.sampling_path_exponent, rel=0.01)


def test_normal_incidence_untouched_by_angle_parameters() -> None:
    a = GFlash().sample(np.array([30.0, 60.0]), seed=8)
    b = GFlash(GFlashParameters().replace(sampling_path_exponent=0.5)).sample(
        np.array([30.0, 60.0]), seed=8
    )
    np.testing.assert_array_equal(a.points, b.points)


def test_radial_tail_cut_off() -> None:
    """exp(-(r/r_c)^2) removes the far tail of the r^-3 form and leaves the core alone."""
    energies = np.full(30, 50.0)
    par = GFlashParameters()

    def shares(parameters: GFlashParameters) -> tuple[float, float]:
        packed = pack(GFlash(parameters).sample(energies, seed=6))
        r = np.hypot(packed.points[:, 0], packed.points[:, 1])
        e = packed.points[:, 3].astype(np.float64)
        return e[r < 10.0].sum() / e.sum(), e[r > 70.0].sum() / e.sum()

    core, far = shares(par)
    core_free, far_free = shares(par.replace(radial_cutoff_moliere=np.inf))
    assert far < 0.4 * far_free
    assert far_free > 1e-3  # the uncut r^-3 tail
    assert core == pytest.approx(core_free, rel=0.02)


@pytest.mark.shared_data
def test_inclined_showers_match_geant4(shared_data: Path) -> None:
    """Visible energy within 2.5 % and fitted axis angle within 1 deg of the Geant4 showers of
    the angles training file at 35-65 GeV, theta 25-35 and 50-60 deg (same energies and
    directions; 100-150 showers each)."""
    path = shared_data / "g4_photons_angles_train.h5"
    if not path.exists():
        pytest.skip(f"{path} not found")
    from calogen.data.io import ShowerFile

    n = 3000  # the first half of the file: 100-150 showers per window
    with h5py.File(path, "r") as f:
        energy = f["energy"][:n, 0].astype(np.float64)
        theta = f["theta_deg"][:n].astype(np.float64)
        directions = f["directions"][:n].astype(np.float64)
    with ShowerFile(path) as f:
        g4_all = f.read(0, n)
    for lo, hi in ((25.0, 35.0), (50.0, 60.0)):
        idx = np.flatnonzero((energy > 35) & (energy < 65) & (theta >= lo) & (theta < hi))
        g4 = g4_all[idx]
        gf = GFlash().sample(energy[idx], directions[idx], seed=int(lo))
        e_g4, e_gf = _visible(g4).mean(), _visible(gf).mean()
        assert e_gf == pytest.approx(e_g4, rel=0.025), f"theta {lo}-{hi}: E_vis {e_gf} vs {e_g4}"
        t_g4 = np.nanmean(_axis_fit(g4)["theta_deg"])
        t_gf = np.nanmean(_axis_fit(gf)["theta_deg"])
        assert abs(t_gf - t_g4) < 1.0, f"theta {lo}-{hi}: axis {t_gf:.2f} vs {t_g4:.2f} deg"
