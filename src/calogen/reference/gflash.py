"""GFlash: the Grindhammer–Peters parameterisation of electromagnetic showers.

A fast, non-learned reference simulator for photon showers in the 30-layer Si-W slab of the
shared Geant4 data (layers 0-19: 2.1 mm W, layers 20-29: 4.2 mm W, 0.5 mm Si each), following
G. Grindhammer and S. Peters, "The parameterized simulation of electromagnetic showers in
homogeneous and sampling calorimeters", hep-ex/0001020. Units: energies in GeV unless a name
says MeV, lengths in mm, depths ``t`` in radiation lengths ``X0`` of the effective medium,
radii in Molière radii ``R_M`` where stated.

One shower of incident energy ``E`` is made as follows (all vectorised over spots):

1. **Start.** A photon converts after an exponentially distributed depth ``t0`` (mean
   ``9/7 X0``); the electromagnetic cascade starts there.
2. **Longitudinal profile.** ``dE/dt`` is a gamma distribution in ``t - t0`` with shape
   ``alpha`` and depth of maximum ``T = (alpha - 1)/beta``. For each shower, ``(ln T, ln alpha)``
   is drawn from a correlated bivariate normal whose means, widths and correlation are the
   paper's functions of ``y = E / E_c`` and ``Z`` for homogeneous media, moved to the sampling
   calorimeter by the effective medium (``Z_eff``, ``X0_eff``, ``E_c,eff``) and the sampling
   corrections in ``F_S`` (sampling frequency) and ``ê`` (e/mip ratio).
3. **Radial profile.** ``f(r) = p f_C(r) + (1 - p) f_T(r)`` with
   ``f_i(r) = 2 r R_i^2 / (r^2 + R_i^2)^2`` (``r`` in ``R_M``); core radius ``R_C``, tail
   radius ``R_T`` and core weight ``p`` are the paper's functions of ``tau = (t - t0)/T``,
   ``E`` and ``Z``, again with the sampling corrections.
4. **Spots.** The energy is split into ``N_spot = a E^b`` spots; each spot gets a depth from
   the longitudinal profile, a radius from the radial profile and a uniform azimuth, all
   measured along and around the shower axis; the radial profile has a Gaussian cutoff
   ``exp(-(r/r_c)^2)`` far out. The axis follows the incident direction: at depth ``z`` it is
   displaced by ``z tan(theta)``, and depths along it are stretched by ``1/cos(theta)``. A
   spot sits at its 3D position, which decides its layer (ahead of the axis a layer sees
   later shower depths, behind it earlier ones), and is moved along the axis onto the silicon
   mid-plane of that layer (the footprint is stretched by ``1/cos(theta)`` along the tilt).
5. **Sampling.** A spot deposits in the silicon of the layer it falls into, a fraction
   ``f_samp`` (one value for the thin-absorber layers 0-19, another for 20-29, and a factor
   for the last layer) of its energy, times ``(1/cos(theta))^kappa`` for inclined showers
   (Geant4's sampling fraction grows with the angle). Spots behind layer 29 leak and are lost.
   Sampling fluctuations multiply each layer's visible energy by a gamma-distributed factor of
   relative width ``c_samp / sqrt(E_layer / GeV)`` (so the total visible energy fluctuates by
   ``c_samp / sqrt(E)``); spot energies fluctuate log-normally around their mean.
6. **Points.** Spots are summed per layer on the 0.848 mm sub-cell grid of the data's
   clustering (cell edges at integer multiples of ``5.0883/6 mm``, impact point on a grid
   corner, points at sub-cell centres, ``|x|, |y| < 200 mm``), which keeps the number of
   points per shower close to that of the clustered Geant4 data.

The tuned constants live in :class:`GFlashParameters`; ``scripts/tune_gflash.py`` reproduces
the tuning and ``docs/gflash.md`` lists the results against Geant4.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import showerdata
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammainc

from calogen.data.packed import PackedPoints, unpack
from calogen.errors import UsageError
from calogen.generator import Seed, as_rng, check_directions, check_energies
from calogen.geometry import ABSORBER_MM, CELL_SIZE_MM, N_LAYERS, SILICON_MM
from calogen.reference.materials import SILICON, TUNGSTEN, EffectiveMedium

__all__ = [
    "BOX_HALF_WIDTH_MM",
    "SUBCELL_MM",
    "GFlash",
    "GFlashParameters",
    "longitudinal_fractions",
    "sampling_fractions",
    "simulate",
    "spot_counts",
]

#: Pitch of the clustering grid: 6 x 6 sub-cells per 5.0883 mm cell, mm.
SUBCELL_MM = CELL_SIZE_MM / 6.0
#: Points are kept inside |x|, |y| < BOX_HALF_WIDTH_MM around the impact point, mm.
BOX_HALF_WIDTH_MM = 200.0
# sub-cells per side of the +-200 mm box; index 0 is the sub-cell starting at -_HALF_GRID pitches
_HALF_GRID = int(np.ceil(BOX_HALF_WIDTH_MM / SUBCELL_MM))
_GRID = 2 * _HALF_GRID
# spots simulated per chunk (bounds the working memory to about 100 MB)
_SPOTS_PER_CHUNK = 500_000


@dataclass(frozen=True)
class GFlashParameters:
    """Constants of the GFlash simulation; the defaults are tuned to the shared Geant4 data.

    The paper's functional forms (means, widths and correlation of ``ln T`` and ``ln alpha``;
    ``R_C``, ``R_T``, ``p`` of the radial profile; sampling corrections) are fixed in the code;
    these parameters scale or shift them and set what the paper leaves to the detector.
    Tuned with ``python scripts/tune_gflash.py --tune`` against the showers of
    ``g4_photons_10-90GeV_train.h5`` near 10, 50 and 90 GeV (see ``docs/gflash.md``); the
    defaults are the printed values rounded to four digits.

    Attributes:
        sampling_fraction: visible (silicon) / deposited energy in layers 0-19 (2.1 mm W).
        back_sampling_ratio: sampling fraction of layers 20-29 (4.2 mm W) relative to layers
            0-19 (about 1/2: twice the tungsten per silicon layer).
        last_layer_factor: extra factor on the sampling fraction of the last layer (its
            silicon has no absorber behind it, hence no backscattered particles).
        conversion_length_x0: mean depth of the photon conversion, X0 (``9/7``; not tuned).
        t_offset_x0: added to the mean depth of the maximum ``T`` of every shower, X0.
        alpha_scale: multiplies the mean shape parameter ``alpha``.
        sigma_ln_t_scale: multiplies the paper's width of ``ln T``.
        sigma_ln_alpha_scale: multiplies the paper's width of ``ln alpha`` (kept at 1: the
            data cannot separate it from the width of ``ln T`` and the conversion depth).
        moliere_scale: multiplies the Molière radius of the effective medium.
        core_scale: multiplies the core radius ``R_C``.
        tail_scale: multiplies the tail radius ``R_T``.
        core_weight_scale: multiplies the core weight ``p`` (result clipped to [0, 1]).
        radial_cutoff_moliere: ``r_c`` in (scaled) Molière radii: the radial profile is
            multiplied by ``exp(-(r / r_c)^2)``. The paper's ``r^-3`` tail holds too much
            energy far out (Geant4 falls off steeply beyond about 50 mm); with spots placed in
            3D, that far tail moves energy many layers away from its depth in inclined
            showers and flattens their fitted axis. ``inf`` switches the cutoff off.
        spots_per_gev: spot count ``a`` in ``N_spot = a (E/GeV)^b``.
        spots_exponent: ``b`` in ``N_spot = a (E/GeV)^b``.
        max_spots: upper limit of spots per shower (bounds time and memory at high E).
        sampling_term: stochastic term ``c_samp`` of the sampling fluctuations, GeV^0.5
            (relative width of a layer's visible energy ``c_samp / sqrt(E_layer/GeV)``).
        sampling_path_exponent: ``kappa``: the sampling fraction of an inclined shower is
            ``f_samp (1/cos(theta))^kappa`` (Geant4's calibrated visible energy grows with
            the path length through the thin layers; see ``docs/gflash.md``).
        spot_sigma: width of the log-normal fluctuation of single-spot energies (normalised
            per shower and layer: it shapes the point-energy spectrum and the number of cells
            above threshold, not the layer energies).
        min_param_energy_gev: the paper's formulas are evaluated at
            ``max(E, min_param_energy_gev)`` (they break down far below 1 GeV).
    """

    sampling_fraction: float = 0.03318
    back_sampling_ratio: float = 0.4981
    last_layer_factor: float = 0.7606
    conversion_length_x0: float = 9.0 / 7.0
    t_offset_x0: float = -0.3678
    alpha_scale: float = 0.9420
    sigma_ln_t_scale: float = 0.8513
    sigma_ln_alpha_scale: float = 1.0
    moliere_scale: float = 1.006
    core_scale: float = 1.119
    tail_scale: float = 0.9335
    core_weight_scale: float = 0.9267
    radial_cutoff_moliere: float = 5.75
    spots_per_gev: float = 107.1
    spots_exponent: float = 0.9607
    max_spots: int = 200_000
    sampling_term: float = 0.1794
    sampling_path_exponent: float = 0.0902
    spot_sigma: float = 1.203
    min_param_energy_gev: float = 0.5

    def replace(self, **changes: Any) -> GFlashParameters:
        """A copy with some fields changed (unknown names raise :class:`UsageError`)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UsageError(f"unknown GFlash parameter(s): {', '.join(unknown)}")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, float]:
        """All parameters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class _Detector:
    """Layer structure used by the simulation (derived from :mod:`calogen.geometry`)."""

    absorber_mm: tuple[float, ...] = ABSORBER_MM
    silicon_mm: float = SILICON_MM
    medium: EffectiveMedium = field(
        default_factory=lambda: EffectiveMedium(TUNGSTEN, SILICON, ABSORBER_MM[0], SILICON_MM)
    )

    @property
    def boundaries_mm(self) -> NDArray[np.float64]:
        """Front face of every layer (absorber + silicon) and the back face, mm ``[31]``."""
        period = np.asarray(self.absorber_mm) + self.silicon_mm
        return np.concatenate(([0.0], np.cumsum(period)))

    @property
    def boundaries_x0(self) -> NDArray[np.float64]:
        """The same boundaries in radiation lengths (W and Si with their own X0) ``[31]``."""
        period = np.asarray(self.absorber_mm) / TUNGSTEN.x0_mm + self.silicon_mm / SILICON.x0_mm
        return np.concatenate(([0.0], np.cumsum(period)))

    @property
    def thin(self) -> NDArray[np.bool_]:
        """Layers with the thin absorber (sampling fraction ``f``)."""
        absorber = np.asarray(self.absorber_mm)
        return absorber <= absorber[0] + 1e-9


_DETECTOR = _Detector()


# -----------------------------------------------------------------------------------------
# the paper's parameterisation (vectorised over showers or spots)
# -----------------------------------------------------------------------------------------


def _longitudinal_moments(
    energy_gev: NDArray[np.float64], medium: EffectiveMedium, par: GFlashParameters
) -> tuple[NDArray[np.float64], ...]:
    """Means and widths of ``ln T`` and ``ln alpha`` and their correlation, per shower.

    The homogeneous-medium forms of the paper, evaluated for the effective medium, then moved
    to the sampling calorimeter by the corrections in ``1/F_S`` and ``1 - ê``::

        <ln T_hom>     = ln(ln y - 0.812)
        <ln alpha_hom> = ln(0.81 + (0.458 + 2.26/Z) ln y)
        <ln T_sam>     = ln(exp<ln T_hom> - 0.55/F_S - 0.69 (1 - ê))
        <ln alpha_sam> = ln(exp<ln alpha_hom> - 0.476/F_S)
        sigma(ln T_sam)     = 1 / (-2.5 + 1.25 ln y)
        sigma(ln alpha_sam) = 1 / (-0.82 + 0.79 ln y)
        rho(ln T, ln alpha) = 0.784 - 0.023 ln y

    with ``y = E / E_c``. Returns ``(mu_ln_t, mu_ln_alpha, sigma_ln_t, sigma_ln_alpha, rho)``.
    """
    z = medium.z_eff
    inv_fs = 1.0 / medium.sampling_frequency
    one_minus_e = 1.0 - medium.e_over_mip
    e_mev = 1000.0 * np.maximum(energy_gev, par.min_param_energy_gev)
    ln_y = np.log(e_mev / medium.critical_energy_mev)
    t_hom = ln_y - 0.812
    alpha_hom = 0.81 + (0.458 + 2.26 / z) * ln_y
    t_sam = t_hom - 0.55 * inv_fs - 0.69 * one_minus_e + par.t_offset_x0
    alpha_sam = (alpha_hom - 0.476 * inv_fs) * par.alpha_scale
    mu_ln_t = np.log(np.maximum(t_sam, 0.5))
    mu_ln_alpha = np.log(np.maximum(alpha_sam, 1.2))
    sigma_ln_t = par.sigma_ln_t_scale / np.maximum(-2.5 + 1.25 * ln_y, 1.0)
    sigma_ln_alpha = par.sigma_ln_alpha_scale / np.maximum(-0.82 + 0.79 * ln_y, 1.0)
    rho = np.clip(0.784 - 0.023 * ln_y, -0.99, 0.99)
    return mu_ln_t, mu_ln_alpha, sigma_ln_t, sigma_ln_alpha, rho


def _radial_parameters(
    tau: NDArray[np.float64],
    energy_gev: NDArray[np.float64],
    medium: EffectiveMedium,
    par: GFlashParameters,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Core radius, tail radius (both in Molière radii) and core weight at depth ``tau``.

    Homogeneous forms of the paper (``E`` in GeV, ``Z`` of the effective medium)::

        R_C = z1 + z2 tau,   z1 = 0.0251 + 0.00319 ln E,  z2 = 0.1162 - 0.000381 Z
        R_T = k1 (exp(k3 (tau - k2)) + exp(k4 (tau - k2))),
              k1 = 0.659 - 0.00309 Z, k2 = 0.645, k3 = -2.59, k4 = 0.3585 + 0.0421 ln E
        p   = p1 exp((p2 - tau)/p3 - exp((p2 - tau)/p3)),
              p1 = 2.632 - 0.00094 Z, p2 = 0.401 + 0.00187 Z, p3 = 1.313 - 0.0686 ln E

    plus the sampling corrections ``R_C += -0.0203 (1 - ê) + 0.0397/F_S exp(-tau)``,
    ``R_T += -0.14 (1 - ê) - 0.495/F_S exp(-tau)``,
    ``p += (1 - ê)(0.348 - 0.642/F_S exp(-(tau - 1)^2))``.
    ``tau`` and ``energy_gev`` broadcast together.
    """
    z = medium.z_eff
    inv_fs = 1.0 / medium.sampling_frequency
    one_minus_e = 1.0 - medium.e_over_mip
    ln_e = np.log(np.maximum(energy_gev, par.min_param_energy_gev))
    exp_tau = np.exp(-tau)

    z1 = 0.0251 + 0.00319 * ln_e
    z2 = 0.1162 - 0.000381 * z
    r_core = z1 + z2 * tau - 0.0203 * one_minus_e + 0.0397 * inv_fs * exp_tau

    k1 = 0.659 - 0.00309 * z
    k2 = 0.645
    k3 = -2.59
    k4 = 0.3585 + 0.0421 * ln_e
    r_tail = k1 * (np.exp(k3 * (tau - k2)) + np.exp(k4 * (tau - k2)))
    r_tail = r_tail - 0.14 * one_minus_e - 0.495 * inv_fs * exp_tau

    p1 = 2.632 - 0.00094 * z
    p2 = 0.401 + 0.00187 * z
    p3 = 1.313 - 0.0686 * ln_e
    u = (p2 - tau) / p3
    weight = p1 * np.exp(u - np.exp(u))
    weight = weight + one_minus_e * (0.348 - 0.642 * inv_fs * np.exp(-((tau - 1.0) ** 2)))

    r_core = np.maximum(r_core * par.core_scale, 1e-3)
    r_tail = np.maximum(r_tail * par.tail_scale, r_core)
    weight = np.clip(weight * par.core_weight_scale, 0.0, 1.0)
    return r_core, r_tail, weight


def longitudinal_fractions(
    energies: ArrayLike,
    parameters: GFlashParameters | None = None,
    seed: Seed = None,
) -> NDArray[np.float64]:
    """Fraction of each shower's energy deposited in each layer (absorber + silicon).

    Draws the per-shower start ``t0`` and ``(T, alpha)`` exactly as :meth:`GFlash.sample`
    does, then integrates the gamma profile over the layers analytically (no spots, no
    sampling fluctuations; normal incidence). Useful for fast tuning of the longitudinal
    parameters: the visible energy of layer ``l`` is ``E * fraction[l] * f_samp[l]``.

    Args:
        energies: ``[N]`` incident energies, GeV.
        parameters: GFlash constants (default: the tuned ones).
        seed: integer seed or numpy Generator.

    Returns:
        ``[N, 30]`` fractions; ``1 - sum`` is the energy leaking out of the back.
    """
    par = parameters if parameters is not None else GFlashParameters()
    e = check_energies(energies)
    rng = as_rng(seed)
    t0, alpha, beta = _draw_profiles(e, _DETECTOR.medium, par, rng)
    edges = _DETECTOR.boundaries_x0[None, :] - t0[:, None]
    cdf = gammainc(alpha[:, None], beta[:, None] * np.maximum(edges, 0.0))
    return np.diff(cdf, axis=1)


def _draw_profiles(
    energy: NDArray[np.float64],
    medium: EffectiveMedium,
    par: GFlashParameters,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per shower: conversion depth ``t0`` (X0), shape ``alpha`` and scale ``beta`` (1/X0)."""
    n = energy.shape[0]
    t0 = rng.exponential(par.conversion_length_x0, size=n)
    mu_t, mu_a, sig_t, sig_a, rho = _longitudinal_moments(energy, medium, par)
    g = rng.standard_normal((2, n))
    ln_t = mu_t + sig_t * g[0]
    ln_a = mu_a + sig_a * (rho * g[0] + np.sqrt(1.0 - rho**2) * g[1])
    t_max = np.exp(ln_t)
    alpha = np.maximum(np.exp(ln_a), 1.05)
    beta = (alpha - 1.0) / t_max
    return t0, alpha, beta


def sampling_fractions(parameters: GFlashParameters | None = None) -> NDArray[np.float64]:
    """Visible (silicon) / deposited energy of each layer ``[30]``."""
    par = parameters if parameters is not None else GFlashParameters()
    fraction = np.where(_DETECTOR.thin, 1.0, par.back_sampling_ratio) * par.sampling_fraction
    fraction[-1] *= par.last_layer_factor
    return fraction


def spot_counts(energies_gev: NDArray[np.float64], par: GFlashParameters) -> NDArray[np.int64]:
    """Number of spots per shower, ``a (E/GeV)^b`` clipped to ``[16, max_spots]``."""
    n = par.spots_per_gev * np.power(energies_gev, par.spots_exponent)
    return np.clip(np.rint(n), 16, max(16, par.max_spots)).astype(np.int64)


# -----------------------------------------------------------------------------------------
# the simulator
# -----------------------------------------------------------------------------------------


class GFlash:
    """GFlash reference simulator implementing :class:`calogen.generator.Generator`.

    Args:
        parameters: tuned constants (default: :class:`GFlashParameters`, tuned to Geant4).
        max_points: upper bound of points per shower; showers with more points (only far above
            100 GeV) are merged on a coarser grid (2x, 4x, ... the sub-cell pitch) until they
            fit. Energy is conserved by the merging.

    >>> showers = GFlash().sample(np.array([10.0, 50.0]), seed=1)
    """

    name = "gflash"
    supports_direction = True
    energy_range_gev = (1.0, 1000.0)

    def __init__(self, parameters: GFlashParameters | None = None, max_points: int = 6000) -> None:
        self.parameters = parameters if parameters is not None else GFlashParameters()
        if max_points < 1:
            raise UsageError(f"max_points must be positive, got {max_points}")
        self.max_points = int(max_points)
        self._detector = _DETECTOR

    def __repr__(self) -> str:
        return f"GFlash(max_points={self.max_points}, parameters={self.parameters})"

    # -- public -----------------------------------------------------------------------------
    def sample(
        self,
        energies: ArrayLike,
        directions: ArrayLike | None = None,
        *,
        seed: Seed = None,
    ) -> showerdata.Showers:
        """Simulate one shower per incident energy.

        Args:
            energies: ``[N]`` incident photon energies, GeV (finite, > 0).
            directions: ``[N, 3]`` (or one ``[3]``) unit vectors of the incident direction with
                positive z; ``None`` means normal incidence ``(0, 0, 1)``.
            seed: integer seed or numpy Generator; the same seed gives identical showers.

        Returns:
            :class:`showerdata.Showers` with points ``(x [mm], y [mm], layer, e [GeV])``
            relative to the impact point on the front face, padded at the end; incident
            energies as float32 GeV; directions stored when given.
        """
        e = check_energies(energies)
        dirs = check_directions(directions, e.shape[0])
        rng = as_rng(seed)
        n = e.shape[0]
        axis = dirs if dirs is not None else np.tile([0.0, 0.0, 1.0], (max(n, 0), 1))
        if n == 0:
            empty = PackedPoints(
                points=np.zeros((0, 4), np.float32),
                shower=np.zeros(0, np.int64),
                counts=np.zeros(0, np.int64),
            )
            return unpack(empty, np.zeros(0, np.float32), dirs)
        n_spots = spot_counts(e, self.parameters)
        points: list[NDArray[np.float32]] = []
        counts = np.zeros(n, dtype=np.int64)
        for start, stop in _chunks(n_spots, _SPOTS_PER_CHUNK):
            pts, cnt = self._simulate_chunk(
                e[start:stop], axis[start:stop], n_spots[start:stop], rng
            )
            points.append(pts)
            counts[start:stop] = cnt
        all_points = np.concatenate(points, axis=0)
        shower = np.repeat(np.arange(n, dtype=np.int64), counts)
        packed = PackedPoints(points=all_points, shower=shower, counts=counts)
        return unpack(packed, e.astype(np.float32), dirs)

    # -- internals --------------------------------------------------------------------------
    def _simulate_chunk(
        self,
        energy: NDArray[np.float64],
        axis: NDArray[np.float64],
        n_spots: NDArray[np.int64],
        rng: np.random.Generator,
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Points ``[P, 4]`` and per-shower point counts for a chunk of showers."""
        par = self.parameters
        det = self._detector
        medium = det.medium
        n = energy.shape[0]

        # ---- per shower: start, (T, alpha) with correlated log-normal fluctuations ---------
        t0, alpha, beta = _draw_profiles(energy, medium, par, rng)

        # ---- per spot: depth along the axis, radius, azimuth --------------------------------
        owner = np.repeat(np.arange(n), n_spots)
        n_total = owner.shape[0]
        t_rel = rng.standard_gamma(alpha[owner]) / beta[owner]
        tau = t_rel * (beta / (alpha - 1.0))[owner]  # = t_rel / T
        r_core, r_tail, weight = _radial_parameters(tau, energy[owner], medium, par)
        u = rng.random((3, n_total))
        radius = np.where(u[0] < weight, r_core, r_tail)

        # depth of the axis point: along-axis X0 -> z-depth X0 (x cos theta) -> layer
        cos_theta = axis[:, 2]
        depth_x0 = (t0[owner] + t_rel) * cos_theta[owner]
        layer = np.searchsorted(det.boundaries_x0, depth_x0, side="right") - 1

        moliere_mm = medium.moliere_radius_mm * par.moliere_scale
        scale_mm = moliere_mm * radius  # R_C or R_T of each spot, mm
        radius_mm = _radii_with_cutoff(scale_mm, u[1], par.radial_cutoff_moliere * moliere_mm, rng)
        phi = (2.0 * np.pi) * u[2]
        off_u = radius_mm * np.cos(phi)  # along the tilt (in the plane of axis and z)
        off_v = radius_mm * np.sin(phi)  # perpendicular to it (parallel to the layers)

        if np.any(np.abs(cos_theta - 1.0) > 1e-12):
            layer, x, y = _place_inclined(det, axis[owner], depth_x0, off_u, off_v)
        else:
            x, y = off_u, off_v

        inside = (
            (layer >= 0)
            & (layer < N_LAYERS)
            & (np.abs(x) < BOX_HALF_WIDTH_MM)
            & (np.abs(y) < BOX_HALF_WIDTH_MM)
        )
        owner, layer, x, y = owner[inside], layer[inside], x[inside], y[inside]

        # ---- energies: deposit, sampling fraction, sampling fluctuations --------------------
        spot_energy = energy / n_spots  # deposited energy per spot, GeV
        cell = owner * N_LAYERS + layer
        n_cells = n * N_LAYERS
        spot_count = np.bincount(cell, minlength=n_cells)
        deposited = spot_count * np.repeat(spot_energy, N_LAYERS)  # GeV per (shower, layer)
        shape = np.maximum(deposited, 1e-12) / par.sampling_term**2
        layer_factor = rng.standard_gamma(shape) / shape
        fraction = sampling_fractions(par)
        # log-normal spot energies, normalised per (shower, layer) so that they shape the
        # point-energy spectrum without adding to the sampling fluctuations
        spot_noise = np.exp(par.spot_sigma * rng.standard_normal(owner.shape[0]))
        noise_sum = np.bincount(cell, spot_noise, minlength=n_cells)
        norm = spot_count / np.where(noise_sum > 0, noise_sum, 1.0)
        # the sampling fraction grows with the path length through the layers, 1/cos(theta)
        path_factor = cos_theta ** (-par.sampling_path_exponent)
        visible = spot_energy * path_factor
        visible = visible[owner] * fraction[layer] * (layer_factor * norm)[cell] * spot_noise
        return _merge(owner, layer, x, y, visible, n, self.max_points)


def _radii_with_cutoff(
    scale_mm: NDArray[np.float64],
    u: NDArray[np.float64],
    cutoff_mm: float,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Radii (mm) from ``f(r) = 2 r R^2 / (r^2 + R^2)^2 * exp(-(r / r_c)^2)``, ``R = scale_mm``.

    ``r = R sqrt(u / (1 - u))`` samples ``f`` without the cutoff (``u`` uniform in [0, 1));
    the factor ``exp(-(r/r_c)^2)`` is applied by rejection: rejected radii are drawn again.
    The acceptance is close to 1 except in the far tail, so the loop ends after a few passes.
    """
    radius = scale_mm * np.sqrt(u / (1.0 - u))
    if not np.isfinite(cutoff_mm):
        return radius
    todo = np.arange(radius.shape[0])
    for _ in range(1000):
        reject = rng.random(todo.size) >= np.exp(-((radius[todo] / cutoff_mm) ** 2))
        todo = todo[reject]
        if todo.size == 0:
            break
        v = rng.random(todo.size)
        radius[todo] = scale_mm[todo] * np.sqrt(v / (1.0 - v))
    return radius


def _place_inclined(
    det: _Detector,
    axis: NDArray[np.float64],
    depth_x0: NDArray[np.float64],
    off_u: NDArray[np.float64],
    off_v: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Layer and x, y (mm) of spots of inclined showers.

    A spot lies at its 3D position: the axis point at z-depth ``depth_x0`` (X0, converted to
    mm with the layer structure) plus the transverse offset ``(off_u, off_v)`` (mm) in the
    plane perpendicular to the axis, ``u`` in the plane of the axis and the z axis. An offset
    ``u`` towards the tilt moves the spot ``u sin(theta)`` towards the front, so the spot's
    layer is the one that contains ``z_axis - u sin(theta)``: ahead of the axis a layer sees
    later shower depths, behind it earlier ones. In its layer, the spot is moved along the
    axis onto the silicon mid-plane (where the visible energy is deposited), so that it lies
    ``u / cos(theta)`` from the axis crossing of that plane. Spots in front of the front face
    get layer -1 and behind the back face layer 30 (both are dropped).

    Args:
        det: the layer structure.
        axis: ``[S, 3]`` unit direction of each spot's shower.
        depth_x0: ``[S]`` z-depth of the spot's axis point, X0.
        off_u, off_v: ``[S]`` transverse offsets from the axis, mm.

    Returns:
        ``(layer [S], x [S], y [S])``.
    """
    cos_theta = axis[:, 2]
    sin_theta = np.sqrt(np.maximum(1.0 - cos_theta**2, 0.0))
    tilted = sin_theta > 1e-12
    safe = np.where(tilted, sin_theta, 1.0)
    cos_az = np.where(tilted, axis[:, 0] / safe, 1.0)
    sin_az = np.where(tilted, axis[:, 1] / safe, 0.0)
    # z of the axis point in mm (1e9: behind the back face)
    z_axis = np.interp(depth_x0, det.boundaries_x0, det.boundaries_mm, right=1e9)
    z_spot = z_axis - off_u * sin_theta
    layer = np.searchsorted(det.boundaries_mm, z_spot, side="right") - 1
    z_silicon = det.boundaries_mm[np.clip(layer, 0, N_LAYERS - 1) + 1] - 0.5 * det.silicon_mm
    along = z_silicon * (sin_theta / cos_theta) + off_u / cos_theta
    x = along * cos_az - off_v * sin_az
    y = along * sin_az + off_v * cos_az
    return layer, x, y


def _chunks(n_spots: NDArray[np.int64], budget: int) -> list[tuple[int, int]]:
    """Consecutive shower ranges with at most ``budget`` spots each (at least one shower)."""
    out: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, count in enumerate(n_spots.tolist()):
        if total and total + count > budget:
            out.append((start, i))
            start, total = i, 0
        total += count
    out.append((start, len(n_spots)))
    return out


def _merge(
    owner: NDArray[np.int64],
    layer: NDArray[np.int64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    energy: NDArray[np.float64],
    n_showers: int,
    max_points: int,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Sum spots per (shower, layer, sub-cell); points at sub-cell centres.

    Returns points ``[P, 4]`` sorted by shower and the number of points per shower. Showers
    with more than ``max_points`` points are merged again on coarser grids.
    """
    points, counts = _grid_sum(owner, layer, x, y, energy, n_showers, 1)
    if np.all(counts <= max_points):
        return points, counts
    # rare (far above the tuned energy range): coarsen the offending showers
    offsets = np.concatenate(([0], np.cumsum(counts)))
    parts: list[NDArray[np.float32]] = []
    for i in range(n_showers):
        pts = points[offsets[i] : offsets[i + 1]]
        factor = 1
        while pts.shape[0] > max_points:
            factor *= 2
            sel = np.zeros(pts.shape[0], dtype=np.int64)
            pts, _ = _grid_sum(
                sel,
                pts[:, 2].astype(np.int64),
                pts[:, 0].astype(np.float64),
                pts[:, 1].astype(np.float64),
                pts[:, 3].astype(np.float64),
                1,
                factor,
            )
        parts.append(pts)
        counts[i] = pts.shape[0]
    return np.concatenate(parts, axis=0), counts


def _grid_sum(
    owner: NDArray[np.int64],
    layer: NDArray[np.int64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    energy: NDArray[np.float64],
    n_showers: int,
    factor: int,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Segmented sum of energies on a grid of pitch ``factor * SUBCELL_MM``."""
    pitch = SUBCELL_MM * factor
    half = int(np.ceil(BOX_HALF_WIDTH_MM / pitch))
    grid = 2 * half
    ix = np.clip(np.floor(x / pitch).astype(np.int64) + half, 0, grid - 1)
    iy = np.clip(np.floor(y / pitch).astype(np.int64) + half, 0, grid - 1)
    key = ((owner * N_LAYERS + layer) * grid + ix) * grid + iy
    order = np.argsort(key)
    key = key[order]
    if key.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(n_showers, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    e_sum = np.add.reduceat(energy[order], starts)
    k = key[starts]
    iy_u = k % grid
    ix_u = (k // grid) % grid
    cell = k // (grid * grid)
    out = np.empty((k.shape[0], 4), dtype=np.float32)
    out[:, 0] = (ix_u - half + 0.5) * pitch
    out[:, 1] = (iy_u - half + 0.5) * pitch
    out[:, 2] = cell % N_LAYERS
    out[:, 3] = e_sum
    counts = np.bincount(cell // N_LAYERS, minlength=n_showers).astype(np.int64)
    return out, counts


def simulate(
    energies: ArrayLike,
    directions: ArrayLike | None = None,
    seed: Seed = None,
    parameters: GFlashParameters | None = None,
) -> showerdata.Showers:
    """Simulate photon showers with GFlash (convenience for ``GFlash(parameters).sample``).

    Args:
        energies: ``[N]`` incident energies, GeV.
        directions: ``[N, 3]`` unit vectors or ``None`` (normal incidence).
        seed: integer seed or numpy Generator.
        parameters: GFlash constants (default: the tuned :class:`GFlashParameters`).

    Returns:
        :class:`showerdata.Showers` with points ``(x mm, y mm, layer, e GeV)``.
    """
    return GFlash(parameters).sample(energies, directions, seed=seed)
