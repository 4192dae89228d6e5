"""Condition groups of inclined showers and the angle tables of the evaluation report.

A reference file (or several, concatenated) usually holds a few fixed conditions: e.g.
Geant4 at 50 GeV and theta = 0, 15, 30, 45, 60 deg. This module finds those groups from the
requested incident energies and polar angles of the reference and summarises every sample
in them:

* :func:`theta_groups` — windows of the requested polar angle: each distinct value (at most
  :data:`MAX_FIXED_GROUPS`, +-0.25 deg) or, for a continuous spectrum, +-2.5 deg around
  0, 15, 30, 45 and 60 deg;
* :func:`energy_groups` — the same for incident energies (+-0.5 %, or +-2.5 GeV windows
  around 20, 50 and 90 GeV);
* :func:`condition_table` — per (energy, theta) group and sample: number of showers, mean
  visible energy, mean and spread of the fitted axis angle;
* :func:`tilt_profile` — the mean energy-weighted centroid of each layer projected on the
  tilt direction ``(cos phi, sin phi)`` of each shower (mm), against layer.

Angles in degrees, energies in GeV (incident) and MeV (visible).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from calogen.evaluation.observables import ShowerFeatures

#: Requested polar angles (deg) of the angle-response figure for continuous angle spectra.
ANGLE_RESPONSE_THETAS_DEG: tuple[float, ...] = (0.0, 15.0, 30.0, 45.0, 60.0)
#: Incident energies (GeV) of the visible-energy-at-an-angle figure.
ANGLE_ENERGIES_GEV: tuple[float, ...] = (20.0, 50.0, 90.0)
#: Polar angle (deg) of the visible-energy-at-an-angle figure.
STEEP_THETA_DEG = 60.0
#: Largest number of distinct values treated as fixed conditions.
MAX_FIXED_GROUPS = 8
#: Fewest reference showers for a group to be shown.
MIN_GROUP_SHOWERS = 10
#: Polar angles below this (deg) count as normal incidence.
NORMAL_THETA_DEG = 0.1

Group = tuple[str, float, float, float]  # label, low, high (inclusive), nominal value


def _fixed_or_windows(
    values: NDArray[np.floating],
    decimals: int,
    tolerance: NDArray[np.floating] | float,
    nominal: Sequence[float],
    half_window: float,
    unit: str,
) -> list[Group]:
    values = np.asarray(values, dtype=np.float64)
    distinct = np.unique(np.round(values, decimals))
    if 0 < distinct.size <= MAX_FIXED_GROUPS:
        tol = np.broadcast_to(np.asarray(tolerance, np.float64), distinct.shape)
        groups = [
            (f"{v:g}{unit}", v - t, v + t, float(v)) for v, t in zip(distinct, tol, strict=False)
        ]
    else:
        groups = [
            (
                f"{max(v - half_window, 0.0):g}-{v + half_window:g}{unit}",
                v - half_window,
                v + half_window,
                v,
            )
            for v in nominal
        ]
    return [g for g in groups if np.sum((values >= g[1]) & (values <= g[2])) >= MIN_GROUP_SHOWERS]


def theta_groups(theta_deg: NDArray[np.floating]) -> list[Group]:
    """Groups of requested polar angle ``(label, low, high, nominal)`` of a reference sample."""
    return _fixed_or_windows(theta_deg, 1, 0.25, ANGLE_RESPONSE_THETAS_DEG, 2.5, " deg")


def energy_groups(energy_gev: NDArray[np.floating]) -> list[Group]:
    """Groups of incident energy ``(label, low, high, nominal)`` of a reference sample."""
    values = np.asarray(energy_gev, dtype=np.float64)
    distinct = np.unique(np.round(values, 1))
    return _fixed_or_windows(values, 1, 0.005 * distinct, ANGLE_ENERGIES_GEV, 2.5, " GeV")


def select(features: ShowerFeatures, energy: Group | None, theta: Group | None) -> ShowerFeatures:
    """Showers of ``features`` inside an energy group and a theta group (None: any)."""
    mask = np.ones(len(features), dtype=bool)
    if energy is not None:
        e = features.incident_energy_gev
        mask &= (e >= energy[1]) & (e <= energy[2])
    if theta is not None:
        t = features.incident_theta_deg
        mask &= (t >= theta[1]) & (t <= theta[2])
    return features.select(mask)


def is_inclined(features: ShowerFeatures) -> bool:
    """Whether any shower of ``features`` comes in at a polar angle above 0.1 deg."""
    return bool(np.any(features.incident_theta_deg > NORMAL_THETA_DEG))


def response_energy(features: ShowerFeatures, nominal_gev: float = 50.0) -> Group | None:
    """The energy group of the angle-response figure: the fixed group at ``nominal_gev`` if the
    reference has one, else None (all energies)."""
    for group in energy_groups(features.incident_energy_gev):
        if group[1] <= nominal_gev <= group[2] and group[2] - group[1] < 1.0:
            return group
    return None


def _stats(values: NDArray[np.floating]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "sem": float("nan")}
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "sem": float(v.std() / np.sqrt(v.size)),
    }


def condition_table(reference: ShowerFeatures, samples: Sequence[ShowerFeatures]) -> list[dict]:
    """Per (energy, theta) group of the reference: statistics of every sample in that group.

    Returns one dict per group with ``energy``/``theta`` (labels), ``energy_gev``/``theta_deg``
    (nominal values) and ``samples``: per sample (same order as ``samples``, the reference
    usually first) ``n``, ``visible_energy_mev`` and ``axis_theta_deg`` (each ``mean``,
    ``std``, ``sem``). Groups are those of the reference (:func:`energy_groups` x
    :func:`theta_groups`) with at least :data:`MIN_GROUP_SHOWERS` reference showers.
    """
    rows = []
    for egroup in energy_groups(reference.incident_energy_gev):
        ref_e = select(reference, egroup, None)
        for tgroup in theta_groups(ref_e.incident_theta_deg):
            if len(select(ref_e, None, tgroup)) < MIN_GROUP_SHOWERS:
                continue
            entry = {
                "energy": egroup[0],
                "energy_gev": egroup[3],
                "theta": tgroup[0],
                "theta_deg": tgroup[3],
                "samples": [],
            }
            for features in samples:
                sel = select(features, egroup, tgroup)
                entry["samples"].append(
                    {
                        "n": len(sel),
                        "visible_energy_mev": _stats(sel.visible_energy_mev),
                        "axis_theta_deg": _stats(sel.axis_theta_deg),
                    }
                )
            rows.append(entry)
    return rows


def tilt_profile(features: ShowerFeatures) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and its standard error of the per-layer centroid along the tilt, ``[n_layers]`` mm.

    The centroid of each layer (energy weighted, mm from the impact point) is projected on the
    tilt direction ``(cos phi, sin phi)`` of each shower's requested azimuth; layers without
    energy are left out of that layer's mean (NaN where no shower has energy).
    """
    phi = np.radians(features.incident_phi_deg)[:, None]
    along = features.layer_cog_x_mm * np.cos(phi) + features.layer_cog_y_mm * np.sin(phi)
    finite = np.isfinite(along)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, along, 0.0).sum(axis=0) / count
        var = np.where(finite, (along - mean) ** 2, 0.0).sum(axis=0) / count
        sem = np.sqrt(var / count)
    mean = np.where(count > 0, mean, np.nan)
    return mean, np.where(count > 1, sem, np.nan)
