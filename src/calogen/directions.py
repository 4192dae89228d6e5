"""Incident directions: angles <-> unit vectors, the shower axis per layer, the fitted axis.

Conventions (the frame of the shared Geant4 data and of DD4hep's DDML plug-in):

* the direction of the incident particle is the unit vector
  ``(sin theta cos phi, sin theta sin phi, cos theta)`` in the calorimeter's own axes, with
  ``z`` along the layer normal into the calorimeter; ``theta`` (deg) is the polar angle to
  the normal, ``phi`` (deg) the azimuth ``atan2(y, x)``, reported in ``[0, 360)``;
* x, y of a shower are mm relative to the impact point on the front face and are NOT rotated
  with the particle: the axis of an inclined shower crosses layer ``l`` at
  ``depth_l * tan(theta) * (cos phi, sin phi)``, where ``depth_l`` is the depth of the layer's
  silicon mid-plane behind the front face (:attr:`calogen.geometry.Calorimeter.layer_z_mm`:
  ``2.6 l + 2.35`` mm for ``l < 20``, ``52 + 4.7 (l - 20) + 4.45`` mm for ``l >= 20``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calogen.errors import UsageError

#: Incident polar angles must lie in [0, MAX_THETA_DEG) (90 deg would never reach the face).
MAX_THETA_DEG = 90.0


def check_angles(
    theta_deg: ArrayLike, phi_deg: ArrayLike | None = None, what: str = "--theta"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate polar angles in [0, 90) deg and finite azimuths; return float64 arrays.

    ``phi_deg`` defaults to 0 and broadcasts against ``theta_deg``; it is wrapped to [0, 360).
    """
    theta = np.asarray(theta_deg, dtype=np.float64).reshape(-1)
    phi = np.zeros_like(theta) if phi_deg is None else np.asarray(phi_deg, np.float64).reshape(-1)
    if not np.all(np.isfinite(theta)):
        raise UsageError(f"{what}: NaN or infinite angles are not allowed")
    if np.any((theta < 0) | (theta >= MAX_THETA_DEG)):
        bad = theta[(theta < 0) | (theta >= MAX_THETA_DEG)][0]
        raise UsageError(
            f"{what}: the polar angle to the calorimeter normal must lie in [0, 90) deg, "
            f"got {bad:g}"
        )
    if not np.all(np.isfinite(phi)):
        raise UsageError("--phi: NaN or infinite angles are not allowed")
    try:
        theta, phi = np.broadcast_arrays(theta, phi)
    except ValueError:
        raise UsageError(
            f"--theta and --phi: {theta.size} and {phi.size} values do not match"
        ) from None
    return theta.copy(), np.mod(phi, 360.0)


def directions_from_angles(
    theta_deg: ArrayLike, phi_deg: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Unit vectors ``[N, 3]`` from polar angles ``theta`` and azimuths ``phi`` (deg)."""
    theta, phi = check_angles(theta_deg, phi_deg)
    t, p = np.radians(theta), np.radians(phi)
    return np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=1)


def angles_from_directions(
    directions: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Polar angle ``theta`` in [0, 90) and azimuth ``phi`` in [0, 360), deg, of ``[N, 3]``."""
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    theta = np.degrees(np.arccos(np.clip(d[:, 2], -1.0, 1.0)))
    phi = np.mod(np.degrees(np.arctan2(d[:, 1], d[:, 0])), 360.0)
    phi[np.hypot(d[:, 0], d[:, 1]) < 1e-12] = 0.0
    return theta, phi


def axis_slopes(directions: ArrayLike | None, n: int | None = None) -> NDArray[np.float64]:
    """Transverse slopes ``(dx/dz, dy/dz)`` = ``tan(theta) (cos phi, sin phi)``, ``[N, 2]``.

    ``None`` means normal incidence (zeros; ``n`` gives the number of showers).
    """
    if directions is None:
        return np.zeros((0 if n is None else int(n), 2))
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    return d[:, :2] / d[:, 2:3]


def axis_offset_mm(
    directions: ArrayLike | None, layer_depth_mm: ArrayLike, n: int | None = None
) -> NDArray[np.float64]:
    """Where the shower axis crosses each layer, ``[N, n_layers, 2]`` (x, y in mm).

    ``layer_depth_mm`` ``[n_layers]``: depth of each layer behind the front face
    (:attr:`calogen.geometry.Calorimeter.layer_z_mm`). Zeros for normal incidence.
    """
    slopes = axis_slopes(directions, n)
    depth = np.asarray(layer_depth_mm, dtype=np.float64).reshape(1, -1, 1)
    return depth * slopes[:, None, :]


def incline_points(
    x_mm: ArrayLike,
    y_mm: ArrayLike,
    layer: ArrayLike,
    theta_deg: ArrayLike,
    phi_deg: ArrayLike,
    layer_depth_mm: ArrayLike,
    shower: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Points generated around the shower axis -> the calorimeter frame of an inclined shower.

    The points ``(x, y)`` (mm, ``[P]``) of layer ``layer`` (index, ``[P]``) are relative to
    where the axis crosses their layer, in the frame whose x axis is the axis' azimuth (the
    shower inclined in the x-z plane). Each point is shifted by ``depth_l * tan(theta)`` along
    x, then ``(x, y)`` is rotated by ``phi``: the axis then crosses layer ``l`` at
    ``depth_l * tan(theta) * (cos phi, sin phi)`` (:func:`axis_offset_mm`). ``theta_deg`` and
    ``phi_deg`` broadcast against the points (one value, or one per point). At
    ``theta = phi = 0`` the points are unchanged. With ``shower [P]`` (index of each point's
    shower) ``theta_deg`` and ``phi_deg`` are per shower (``[S]``): the same result, the
    trigonometry done once per shower.

    The exported models apply the same transform in torch
    (:func:`calogen.export.incline_points_torch`; tests/test_export.py checks they agree).
    """
    depth = np.asarray(layer_depth_mm, dtype=np.float64)[np.asarray(layer).astype(np.int64)]
    theta = np.radians(np.asarray(theta_deg, dtype=np.float64))
    phi = np.radians(np.asarray(phi_deg, dtype=np.float64))
    tan, cos, sin = np.tan(theta), np.cos(phi), np.sin(phi)
    if shower is not None:
        index = np.asarray(shower, np.int64)
        tan, cos, sin = tan[index], cos[index], sin[index]
    x = np.asarray(x_mm, dtype=np.float64) + depth * tan
    y = np.asarray(y_mm, dtype=np.float64)
    return cos * x - sin * y, sin * x + cos * y


def fit_axis(
    centroid_x_mm: NDArray[np.floating],
    centroid_y_mm: NDArray[np.floating],
    weight: NDArray[np.floating],
    layer_depth_mm: ArrayLike,
) -> dict[str, NDArray[np.float64]]:
    """Straight shower axis fitted to per-layer centroids against layer depth.

    A weighted least-squares line ``x_l = x0 + sx * depth_l`` (and the same in y) per shower,
    weighted by ``weight`` (e.g. the energy in each layer; layers with weight 0 are ignored).

    Args:
        centroid_x_mm, centroid_y_mm: ``[N, n_layers]`` energy-weighted centroids per layer, mm
            (values where the weight is 0 are ignored).
        weight: ``[N, n_layers]`` non-negative weights.
        layer_depth_mm: ``[n_layers]`` layer depths behind the front face, mm.

    Returns:
        ``slope_x``, ``slope_y`` (dx/dz, dy/dz), ``x0_mm``, ``y0_mm`` (axis at the front face),
        ``theta_deg`` (polar angle of the fitted axis to the normal) and ``phi_deg`` (its
        azimuth in [0, 360)), each ``[N]``; NaN for showers with fewer than two layers of
        positive weight.
    """
    w = np.where(np.asarray(weight, np.float64) > 0, np.asarray(weight, np.float64), 0.0)
    z = np.asarray(layer_depth_mm, dtype=np.float64)[None, :]
    cx = np.where(w > 0, np.asarray(centroid_x_mm, np.float64), 0.0)
    cy = np.where(w > 0, np.asarray(centroid_y_mm, np.float64), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sw = w.sum(axis=1)
        zm = (w * z).sum(axis=1) / sw
        dz = z - zm[:, None]
        szz = (w * dz * dz).sum(axis=1)
        enough = ((w > 0).sum(axis=1) >= 2) & (szz > 0)
        szz = np.where(enough, szz, np.nan)
        xm = (w * cx).sum(axis=1) / sw
        ym = (w * cy).sum(axis=1) / sw
        slope_x = (w * dz * (cx - xm[:, None])).sum(axis=1) / szz
        slope_y = (w * dz * (cy - ym[:, None])).sum(axis=1) / szz
    x0 = xm - slope_x * zm
    y0 = ym - slope_y * zm
    theta = np.degrees(np.arctan(np.hypot(slope_x, slope_y)))
    phi = np.mod(np.degrees(np.arctan2(slope_y, slope_x)), 360.0)
    phi = np.where(np.isfinite(slope_x), phi, np.nan)
    return {
        "slope_x": slope_x,
        "slope_y": slope_y,
        "x0_mm": x0,
        "y0_mm": y0,
        "theta_deg": theta,
        "phi_deg": phi,
    }


#: Front face of the slab in the frame of :func:`slab_detector_geometry`, mm: showerdata
#: uses ``layer_bottom_pos - calo_surface`` (float32: depths good to 0.1 um here).
_SLAB_SURFACE_MM = 1804.0


def slab_detector_geometry(layer_depth_mm: ArrayLike | None = None) -> Any:
    """The slab as a :class:`showerdata.detector.DetectorGeometry` for
    :func:`showerdata.shift_showers.shift_layers`: ``layer_bottom_pos - calo_surface`` is the
    depth of each layer's silicon mid-plane (:attr:`calogen.geometry.Calorimeter.layer_z_mm`,
    or ``layer_depth_mm``)."""
    from showerdata.detector import DetectorGeometry

    from calogen.geometry import CELL_SIZE_MM, slab

    depth = np.asarray(slab().layer_z_mm if layer_depth_mm is None else layer_depth_mm, float)
    return DetectorGeometry(
        calo_surface=_SLAB_SURFACE_MM,
        num_layers=depth.size,
        num_layers_ecal=depth.size,
        num_layers_hcal=0,
        layer_thickness_ecal=0.5,
        layer_thickness_hcal=0.0,
        ecal_cell_size=CELL_SIZE_MM,
        hcal_cell_size=0.0,
        layer_bottom_pos=tuple(float(v) for v in _SLAB_SURFACE_MM + depth),
        name="calogen slab",
    )


def straighten_points(
    points: NDArray[np.floating],
    counts: ArrayLike,
    directions: ArrayLike | None,
    geometry: Any = None,
) -> NDArray[np.float32]:
    """Inverse of :func:`incline_points`: packed points of inclined showers -> the axis frame.

    ``points [P, 4]`` (x mm, y mm, layer, e), shower after shower with ``counts [S]`` points;
    ``directions [S, 3]`` (``None``: normal incidence, a copy of the points). Each shower's
    layers are shifted by minus the axis offset (``showerdata.shift_showers.shift_layers``
    with the slab's :func:`slab_detector_geometry`, or ``geometry``; its inverse shift along
    the mirrored direction, which keeps every point, where the forward one drops points far
    from the axis), then ``(x, y)`` is
    rotated by ``-phi``, so that the axis runs along z through x = y = 0 and the shower's
    inclination lies in the x-z plane. Returns float32 ``[P, 4]``.
    """
    from showerdata.shift_showers import shift_layers

    out = np.array(points, dtype=np.float32, copy=True)
    if directions is None:
        return out
    geometry = slab_detector_geometry() if geometry is None else geometry
    dirs = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    bottom = np.asarray(geometry.layer_bottom_pos, np.float32)
    back = dirs * np.array([-1.0, -1.0, 1.0])  # the shift towards the axis, never cropped
    for i in np.flatnonzero(np.hypot(dirs[:, 0], dirs[:, 1]) > 0):
        lo, hi = offsets[i], offsets[i + 1]
        out[lo:hi] = shift_layers(out[lo:hi], back[i], bottom, geometry.calo_surface, True)
    _, phi = angles_from_directions(dirs)
    phi_point = np.radians(np.repeat(phi, counts))
    cos, sin = np.cos(phi_point), np.sin(phi_point)
    x, y = out[:, 0].astype(np.float64), out[:, 1].astype(np.float64)
    out[:, 0] = cos * x + sin * y
    out[:, 1] = -sin * x + cos * y
    return out


def incline_packed(
    points: NDArray[np.floating],
    counts: ArrayLike,
    directions: ArrayLike,
    layer_depth_mm: ArrayLike | None = None,
) -> NDArray[np.float32]:
    """Inverse of :func:`straighten_points`: packed axis-frame points -> inclined showers.

    ``points [P, 4]`` (x mm, y mm, layer, e), shower after shower with ``counts [S]`` points,
    each shower inclined along its ``directions [S, 3]`` by :func:`incline_points` (layer
    depths: the slab's, or ``layer_depth_mm``). Returns float32 ``[P, 4]``.
    """
    from calogen.geometry import slab

    depth = slab().layer_z_mm if layer_depth_mm is None else layer_depth_mm
    counts = np.asarray(counts, dtype=np.int64)
    theta, phi = angles_from_directions(directions)
    out = np.array(points, dtype=np.float32, copy=True)
    shower = np.repeat(np.arange(counts.size), counts)
    out[:, 0], out[:, 1] = incline_points(
        out[:, 0], out[:, 1], out[:, 2], theta, phi, depth, shower=shower
    )
    return out
