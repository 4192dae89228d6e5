"""Post-diffusion calibration and occupancy correction (CaloClouds, 2305.04847 section 3.3).

All functions work on packed points (see :mod:`calogen.data.packed`): ``points [P, 4]``
``(x mm, y mm, layer, e GeV)`` and ``shower [P]`` (shower index of every point, sorted or
not), vectorised over all showers (no Python loop over showers).

Calibration steps, in the paper's order (:func:`calibrate` runs them all):

1. :func:`clip_negative_energies` — negative point energies → 0;
2. :func:`rescale_energy` — scale each shower's energies so their sum equals a target
   (CaloClouds: the Shower Flow's visible energy), or :func:`rescale_layer_energies` —
   each layer's energy to its own target (CaloClouds II);
3. :func:`assign_layers` — sort each shower's points by depth and give the first ``N_0``
   points layer 0, the next ``N_1`` layer 1, … (per-layer counts from the Shower Flow);
4. :func:`shift_cog` — shift x and y so the energy-weighted centre of gravity of each
   shower (or of its core, ``core_radius_mm``) equals a target (the training data's mean, or a
   per-shower prediction).

:class:`OccupancyCorrection` implements ``c_N(N) = p_gen(p_data(N)) / N`` from two cubic fits:
``p_data`` maps the number of points of Geant4 showers to their number of cell hits
(occupancy), ``p_gen`` maps the occupancy of generated showers to their number of points.
Multiplying the requested points (and points per layer) by ``c_N`` makes generated showers
reach the Geant4 occupancy. It is stored as JSON next to the model.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calogen.errors import CalogenError, UsageError

N_LAYERS = 30


def _segment_sum(values: NDArray, shower: NDArray, n_showers: int) -> NDArray[np.float64]:
    return np.bincount(shower, weights=values, minlength=n_showers)


def radius_mm(points: NDArray[np.floating]) -> NDArray[np.float64]:
    """Distance ``[P]`` (mm, float64) of every point ``[P, >=2]`` from the axis x = y = 0.

    ``sqrt(x^2 + y^2)`` rather than ``np.hypot``: several times faster, and as exact for the
    float32 coordinates of generated points (their squares are exact in float64)."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    return np.sqrt(x * x + y * y)


def clip_negative_energies(points: NDArray[np.floating]) -> NDArray[np.floating]:
    """Set negative point energies (channel 3) to zero, in place; returns ``points``."""
    np.maximum(points[:, 3], 0.0, out=points[:, 3])
    return points


def rescale_energy(
    points: NDArray[np.floating],
    shower: NDArray[np.integer],
    target: NDArray[np.floating],
) -> NDArray[np.floating]:
    """Scale point energies so each shower's total equals ``target [S]`` (GeV), in place.

    Showers whose points carry no energy get the target shared equally among their points.
    """
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    n = target.shape[0]
    energy = points[:, 3].astype(np.float64)
    total = _segment_sum(energy, shower, n)
    counts = np.bincount(shower, minlength=n)
    empty = total <= 0
    factor = np.where(empty, 0.0, target / np.where(empty, 1.0, total))
    new = energy * factor[shower]
    if np.any(empty):
        share = np.where(counts > 0, target / np.maximum(counts, 1), 0.0)
        new = np.where(empty[shower], share[shower], new)
    points[:, 3] = new
    return points


def rescale_layer_energies(
    points: NDArray[np.floating],
    shower: NDArray[np.integer],
    target: NDArray[np.floating],
) -> NDArray[np.floating]:
    """Scale energies so each (shower, layer) total equals ``target [S, L]`` (GeV), in place.

    The layer of a point is ``rint(points[:, 2])``; layers with points but zero energy get the
    target shared equally; targets of layers without points cannot be met and are dropped.
    """
    target = np.asarray(target, dtype=np.float64)
    n, n_layers = target.shape
    layer = np.clip(np.rint(points[:, 2]), 0, n_layers - 1).astype(np.int64)
    key = shower.astype(np.int64) * n_layers + layer
    energy = points[:, 3].astype(np.float64)
    total = _segment_sum(energy, key, n * n_layers)
    counts = np.bincount(key, minlength=n * n_layers)
    flat_target = target.reshape(-1)
    empty = total <= 0
    factor = np.where(empty, 0.0, flat_target / np.where(empty, 1.0, total))
    share = np.where(counts > 0, flat_target / np.maximum(counts, 1), 0.0)
    points[:, 3] = np.where(empty[key], share[key], energy * factor[key])
    return points


def _stable_argsort(values: NDArray[np.floating]) -> NDArray[np.int64]:
    """``np.argsort(values, kind="stable")``, computed with the default sort (SIMD
    introsort, about 2x faster) and each run of equal values then put back in index order
    (generated depths tie mostly at the network's output clip)."""
    local = np.argsort(values)
    ordered = values[local]
    ties = np.flatnonzero(ordered[1:] == ordered[:-1])
    if ties.size:
        breaks = np.flatnonzero(np.diff(ties) > 1)
        starts = np.concatenate(([ties[0]], ties[breaks + 1]))
        stops = np.concatenate((ties[breaks], [ties[-1]])) + 2
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            local[a:b].sort()
    return local


def assign_layers(
    points: NDArray[np.floating],
    shower: NDArray[np.integer],
    counts_per_layer: NDArray[np.integer],
    depth: NDArray[np.floating] | None = None,
) -> NDArray[np.floating]:
    """Depth-sorted layer assignment, in place.

    Within each shower the points are ordered by ``depth`` (default: ``points[:, 2]``); the
    first ``counts_per_layer[s, 0]`` get layer 0, the next ``counts_per_layer[s, 1]`` layer 1,
    and so on. Each shower's counts must add up to its number of points.

    Args:
        points: ``[P, 4]``; channel 2 is overwritten with integer layer indices.
        shower: ``[P]`` shower index.
        counts_per_layer: ``[S, L]`` non-negative integers.
        depth: ``[P]`` continuous depth used for sorting (e.g. the normalised z before
            flooring); ties are broken by the original point order.
    """
    counts_per_layer = np.asarray(counts_per_layer, dtype=np.int64)
    n, n_layers = counts_per_layer.shape
    shower = np.asarray(shower, dtype=np.int64)
    points_per_shower = np.bincount(shower, minlength=n)
    if np.any(counts_per_layer < 0):
        raise CalogenError("assign_layers: negative points per layer")
    if not np.array_equal(counts_per_layer.sum(1), points_per_shower):
        raise CalogenError("assign_layers: points per layer do not add up to the points per shower")
    depth = points[:, 2] if depth is None else np.asarray(depth)
    offsets = np.concatenate(([0], np.cumsum(points_per_shower)))[:-1]
    if shower.size and np.all(shower[1:] >= shower[:-1]):
        # showers in contiguous blocks (as generated): one sort per shower, the same order
        # as the lexsort below and 2-3x faster
        order = np.empty(shower.size, np.int64)
        for first, n_points in zip(offsets, points_per_shower, strict=True):
            if n_points:
                order[first : first + n_points] = _stable_argsort(depth[first : first + n_points])
                order[first : first + n_points] += first
    else:
        order = np.lexsort((depth, shower))  # by shower, then depth
    # global position of every sorted point and the global upper edge of every (shower, layer)
    edges = (offsets[:, None] + np.cumsum(counts_per_layer, axis=1)).reshape(-1)
    position = np.arange(order.shape[0])
    slot = np.searchsorted(edges, position, side="right")
    layer = slot - shower[order] * n_layers
    points[order, 2] = layer.astype(points.dtype)
    return points


def shift_cog(
    points: NDArray[np.floating],
    shower: NDArray[np.integer],
    target_xy: NDArray[np.floating],
    n_showers: int | None = None,
    core_radius_mm: float = 0.0,
) -> NDArray[np.floating]:
    """Shift x and y of each shower so its energy-weighted centre of gravity is ``target_xy``.

    Args:
        target_xy: ``[2]`` (same for all showers) or ``[S, 2]`` in mm.
        n_showers: number of showers (needed with a ``[2]`` target when trailing showers are
            empty).
        core_radius_mm: if > 0, the centre of gravity of the points within this radius of the
            axis ``x = y = 0`` (before the shift) is moved to the target (all points where a
            shower has no energy inside); see ``caloclouds2_core`` in
            :mod:`calogen.models.shower_flow`.
    """
    target_xy = np.asarray(target_xy, dtype=np.float64)
    if n_showers is None:
        n_showers = target_xy.shape[0] if target_xy.ndim == 2 else int(shower.max(initial=-1)) + 1
    target = np.broadcast_to(target_xy, (n_showers, 2))
    e = points[:, 3].astype(np.float64)
    if core_radius_mm > 0:
        inside = radius_mm(points) < core_radius_mm
        e_core = _segment_sum(e * inside, shower, n_showers)
        e = np.where((e_core > 0)[shower] & ~inside, 0.0, e)
    total = _segment_sum(e, shower, n_showers)
    safe = np.where(total > 0, total, 1.0)
    cogs = [_segment_sum(points[:, axis] * e, shower, n_showers) / safe for axis in (0, 1)]
    for axis in (0, 1):
        shift = np.where(total > 0, target[:, axis] - cogs[axis], 0.0)
        points[:, axis] = points[:, axis] + shift[shower]
    return points


#: radius (mm) of the core whose azimuths :func:`equalise_core_azimuth` spreads evenly in
#: energy (what fits end with): 2, 3, 4, 5 mm on the README default at 10 / 50 / 90 GeV gave
#: hottest-cell shares of 0.325 / 0.305 / 0.289 / 0.277 at 10 GeV against Geant4's 0.311, and
#: 3 mm the closest at 50 and 90 GeV too (docs/default_model.md "The core's azimuth")
CORE_AZIMUTH_RADIUS_MM = 3.0


#: the core's points are ordered by azimuth in this many steps of the full turn (ties: by
#: row), so that two 16-bit radix sorts order them (:func:`equalise_core_azimuth`)
AZIMUTH_STEPS = 1 << 16


def pseudo_azimuth(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """A monotone stand-in for the azimuth of ``(x, y)`` in ``[0, 4)``: 0 on the +x axis, 1 on
    +y (and at the origin), 2 on -x, 3 on -y; ``1 - t`` above the x axis and ``3 + t`` below,
    ``t = x / (|x| + |y|)``. Ordering points by it orders them by their azimuth in
    ``[0, 2 pi)``, without ``atan2`` (which the exported ONNX graph cannot run in float64)."""
    s = np.abs(x) + np.abs(y)
    t = x / np.where(s > 0, s, 1.0)
    return np.where(y >= 0, 1.0 - t, 3.0 + t)


def _points_by_radius(
    points: NDArray[np.floating], shower: NDArray[np.integer], radius_mm: float, beyond: bool
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
           NDArray[np.int64]]:  # fmt: skip
    """``(rows, x, y, r, key)`` of the points with energy > 0 within ``radius_mm`` of the axis
    (``beyond``: at ``radius_mm`` or more): x, y, r in mm (float64) and the key ``shower *
    n_layers + layer`` of each (layers assigned). A cheap float32 cut first."""
    x32, y32 = points[:, 0], points[:, 1]
    r2 = x32 * x32 + y32 * y32
    if beyond:
        rows = np.flatnonzero((r2 >= np.float32(0.9 * radius_mm) ** 2) & (points[:, 3] > 0))
    else:
        rows = np.flatnonzero((r2 < np.float32(1.5 * radius_mm) ** 2) & (points[:, 3] > 0))
    x = points[rows, 0].astype(np.float64)
    y = points[rows, 1].astype(np.float64)
    r = np.sqrt(x * x + y * y)
    keep = r >= radius_mm if beyond else r < radius_mm
    rows, x, y, r = rows[keep], x[keep], y[keep], r[keep]
    layer = points[rows, 2].astype(np.int64)  # whole numbers once assigned
    n_layers = int(layer.max()) + 1 if layer.size else 1
    return rows, x, y, r, np.asarray(shower, np.int64)[rows] * n_layers + layer


def equalise_core_azimuth(
    points: NDArray[np.floating],
    shower: NDArray[np.integer],
    radius_mm: float,
) -> NDArray[np.floating]:
    """Spread the azimuths of each layer's core evenly in energy, in place (radii unchanged).

    The points of a shower's layer within ``radius_mm`` of the axis ``x = y = 0`` (and with
    energy > 0) are taken in order of their azimuth from the +x axis (in steps of 2 pi /
    :data:`AZIMUTH_STEPS`; ties: in order of their rows); the ``i``-th is turned to the azimuth ``phi_1 + 2 pi (C_i - e_i / 2) / E``, with
    ``phi_1`` the first one's, ``C_i`` the energy of the points up to and including it and
    ``E`` the core's: the map of the energy-weighted azimuth distribution onto the uniform
    one, as the radial map does for radii. Why: Geant4's core is made of thousands of steps,
    whose energy is spread evenly around the axis; a model's core is a few dozen points of
    about 1 MeV each, whose independent azimuths put 40 % more energy into the hottest cell of
    an early layer than Geant4 has (cells whose corner sits on the axis split the core; the
    cell-energy spectrum's tail, docs/default_model.md "The core's azimuth"). Needs layers
    assigned (``points [P, 4]``: x mm, y mm, layer, e).
    """
    if radius_mm <= 0 or points.shape[0] == 0:
        return points
    core, x, y, r, key = _points_by_radius(points, shower, radius_mm, beyond=False)
    if core.size == 0:
        return points
    # by layer of each shower, then azimuth in steps of 2 pi / 65,536, then row
    # (:data:`AZIMUTH_STEPS`): two radix sorts of 16-bit keys where the keys fit
    step = np.minimum(np.floor(pseudo_azimuth(x, y) * (AZIMUTH_STEPS / 4)), AZIMUTH_STEPS - 1)
    if key.max() < 1 << 16:
        by_step = np.argsort(step.astype(np.uint16), kind="stable")
        order = by_step[np.argsort(key.astype(np.uint16)[by_step], kind="stable")]
    else:
        order = np.argsort(key * float(AZIMUTH_STEPS) + step, kind="stable")
    core, key, r = core[order], key[order], r[order]
    e = points[core, 3].astype(np.float64)
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    size = np.diff(np.append(first, core.size))
    cum = np.cumsum(e)
    before = np.repeat(cum[first] - e[first], size)  # energy of the earlier layers' cores
    total = np.repeat(np.add.reduceat(e, first), size)
    turn = 2.0 * np.pi * (cum - before - 0.5 * e) / total  # from the first point's azimuth
    r_first, at = r[first], order[first]
    has = r_first > 0
    cos_first = np.repeat(np.where(has, x[at] / np.where(has, r_first, 1.0), 1.0), size)
    sin_first = np.repeat(np.where(has, y[at] / np.where(has, r_first, 1.0), 0.0), size)
    cos_turn, sin_turn = np.cos(turn), np.sin(turn)
    points[core, 0] = (r * (cos_first * cos_turn - sin_first * sin_turn)).astype(points.dtype)
    points[core, 1] = (r * (sin_first * cos_turn + cos_first * sin_turn)).astype(points.dtype)
    return points


#: the radius (mm) where the halo of :func:`clump_halo_azimuth` begins (that of the core
#: whose azimuths :func:`equalise_core_azimuth` spreads): docs/default_model.md "Clumps in
#: the halo"
HALO_CLUMP_RADIUS_MM = CORE_AZIMUTH_RADIUS_MM
#: the halo clump sizes fits end with, as :func:`parse_halo_clump` reads them: pairs in every
#: layer. Sizes by layer ("2,18:4": groups of 4 from layer 18 on, the shower's tail) give the
#: fitted shower axis at normal incidence Geant4's spread (2 everywhere: 12-14 % too
#: straight), but cost 3.5 % more points for a classifier AUC no better over two seeds
#: (docs/default_model.md "Clump sizes by layer")
HALO_CLUMP_SPEC = "2"


def parse_halo_clump(spec: Any, n_layers: int = N_LAYERS) -> float | tuple[float, ...]:
    """Clump sizes of :func:`clump_halo_azimuth` from a number (every layer), a list of
    ``n_layers`` numbers (one per layer index) or a text ``"K"`` / ``"K,L:K2[,L2:K3...]"``
    (``K`` from layer 0, ``K2`` from layer ``L`` on, ...). Sizes are numbers >= 0 (0 or 1:
    no clumps in that layer). Returns one number when all layers are equal, else a tuple of
    ``n_layers``; one-line :class:`UsageError` for anything else."""
    bad = UsageError(
        f"halo clump size must be a number >= 0, {n_layers} of them (one per layer) or "
        f"'K,L:K2' (K from layer 0, K2 from layer L on), got {spec!r}"
    )
    if isinstance(spec, str):
        parts = [t.strip() for t in spec.split(",")]
        try:
            sizes = np.full(n_layers, float(parts[0]))
            starts = [0]
            for part in parts[1:]:
                layer_text, size_text = part.split(":")
                layer = int(layer_text)
                if not starts[-1] < layer < n_layers:
                    raise ValueError
                sizes[layer:] = float(size_text)
                starts.append(layer)
        except ValueError:
            raise bad from None
    elif isinstance(spec, bool):
        raise bad
    elif isinstance(spec, int | float | np.integer | np.floating):
        sizes = np.full(n_layers, float(spec))
    elif isinstance(spec, list | tuple | np.ndarray) and len(spec) == n_layers:
        if any(isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating)
               for v in spec):  # fmt: skip
            raise bad
        sizes = np.asarray(spec, np.float64)
    else:
        raise bad
    if not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
        raise bad
    values = tuple(int(v) if float(v).is_integer() else float(v) for v in sizes)
    return values[0] if len(set(values)) == 1 else values


def halo_clumps_on(sizes: float | Sequence[float]) -> bool:
    """Whether clump sizes (:func:`parse_halo_clump`) group any points (a size above 1)."""
    return bool(np.max(np.asarray(sizes, np.float64)) > 1)


def clump_halo_azimuth(
    points: NDArray[np.floating],
    shower: NDArray[np.integer],
    inner_radius_mm: float,
    size: float | Sequence[float],
) -> NDArray[np.floating]:
    """Give groups of ``size`` halo points of a layer one azimuth, in place (radii unchanged).

    ``size``: one number for every layer, or one per layer index (``size[layer]``; a layer
    beyond the list takes the last; :func:`parse_halo_clump`).

    The points of a shower's layer at ``inner_radius_mm`` or more from the axis (with energy
    > 0), in the order of their rows (a generator's rows are in the order of its noise
    draws, independent of position), form consecutive groups of ``size``; every point takes
    the azimuth of its group's first. Why: Geant4's halo comes from a few particles, each
    depositing in a clump; independent points spread the halo too evenly around the axis
    (each layer's centre of the halo fluctuates 20 % less than Geant4's, and the fitted
    shower axis is too straight; docs/default_model.md "Clumps in the halo").
    """
    if not halo_clumps_on(size) or points.shape[0] == 0:
        return points
    halo, x, y, r, key = _points_by_radius(points, shower, inner_radius_mm, beyond=True)
    if halo.size == 0:
        return points
    if key.max() < 1 << 16:  # a radix sort: ~10x faster than the general stable sort
        key = key.astype(np.uint16)
    order = np.argsort(key, kind="stable")  # by layer of each shower, then row
    key = key[order]
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    rank = np.arange(halo.size) - np.repeat(first, np.diff(np.append(first, halo.size)))
    # groups of rank [ceil(g size), ceil((g + 1) size)): all of size K for a whole K,
    # alternating 2 and 3 for 2.5
    sizes = np.maximum(np.asarray(size, np.float64), 1.0)  # 0 or 1: groups of one
    if sizes.ndim:  # one size per layer index
        layer = points[halo[order], 2].astype(np.int64)
        sizes = sizes[np.clip(layer, 0, sizes.size - 1)]
    lead_rank = np.ceil(np.floor(rank / sizes) * sizes).astype(np.int64)
    lead = order[np.arange(halo.size) - rank + lead_rank]  # indices into the halo arrays
    scale = r[order] / r[lead]
    rows = halo[order]
    points[rows, 0] = (x[lead] * scale).astype(points.dtype)
    points[rows, 1] = (y[lead] * scale).astype(points.dtype)
    return points


def calibrate(
    points: NDArray[np.floating],
    shower: NDArray[np.integer],
    *,
    n_showers: int,
    energy_total: NDArray[np.floating] | None = None,
    energy_per_layer: NDArray[np.floating] | None = None,
    counts_per_layer: NDArray[np.integer] | None = None,
    depth: NDArray[np.floating] | None = None,
    cog_xy: NDArray[np.floating] | None = None,
) -> NDArray[np.floating]:
    """Run the calibration steps that have targets, in place (see module docstring).

    Order: clip negative energies; layer assignment (if ``counts_per_layer``); per-layer
    energy rescaling (if ``energy_per_layer``, needs layers assigned) else total energy
    (if ``energy_total``); centre-of-gravity shift (if ``cog_xy``).
    """
    clip_negative_energies(points)
    if counts_per_layer is not None:
        assign_layers(points, shower, counts_per_layer, depth)
    if energy_per_layer is not None:
        rescale_layer_energies(points, shower, energy_per_layer)
    elif energy_total is not None:
        rescale_energy(points, shower, energy_total)
    if cog_xy is not None:
        shift_cog(points, shower, cog_xy, n_showers)
    return points


# ---------------------------------------------------------------------------------------------
# occupancy correction
# ---------------------------------------------------------------------------------------------


def distribute_counts(counts_per_layer: NDArray[np.integer], totals: NDArray) -> NDArray[np.int64]:
    """Rescale per-layer counts ``[S, L]`` to new totals ``[S]`` keeping proportions.

    Uses largest-remainder rounding, so each row sums exactly to ``round(totals)``.
    """
    counts = np.asarray(counts_per_layer, dtype=np.float64)
    totals = np.maximum(np.rint(np.asarray(totals, dtype=np.float64)), 0).astype(np.int64)
    current = counts.sum(1)
    safe = np.where(current > 0, current, 1.0)
    ideal = counts * (totals / safe)[:, None]
    base = np.floor(ideal).astype(np.int64)
    missing = totals - base.sum(1)
    remainder = ideal - base
    # rank the remainders within each row (largest first) and add one to the top `missing`
    rank = np.argsort(np.argsort(-remainder, axis=1, kind="stable"), axis=1, kind="stable")
    base += rank < missing[:, None]
    # rows that had no points: put everything in the first layer
    empty = current <= 0
    if np.any(empty):
        base[empty] = 0
        base[empty, 0] = totals[empty]
    return base


@dataclass
class OccupancyCorrection:
    """``c_N(N) = p_gen(p_data(N)) / N`` from two cubic polynomial fits.

    Attributes:
        p_data: coefficients (highest power first, ``numpy.polyval`` order) of the fit of
            Geant4 occupancy (cell hits) as a function of the number of points.
        p_gen: coefficients of the fit of the generated number of points as a function of the
            generated occupancy.
        n_range: range of numbers of points seen in the fit; N is clipped to it before
            evaluating (cubics extrapolate badly).
        factor_range: clip of ``c_N``.
        p_refine: coefficients of a closed-loop refinement: ``c_N`` is multiplied by
            ``exp(polyval(p_refine, N / 1000))`` (``[0.0]``: none). The open-loop
            ``p_gen`` is measured on showers generated with their own N; a network
            conditioned on fewer points spreads them differently, so the hits do not fall in
            proportion. :meth:`refine` fits the remaining log ratio of target to achieved hits.
    """

    p_data: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0, 0.0])
    p_gen: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0, 0.0])
    n_range: tuple[float, float] = (1.0, 1e9)
    factor_range: tuple[float, float] = (0.2, 2.0)
    p_refine: list[float] = field(default_factory=lambda: [0.0])
    #: the two fits in ``ln``: ``ln hits = p_data(ln N)`` and ``ln N = p_gen(ln hits)``
    #: (quadratics; hits grow as a power of the points, so these stay monotone where cubics
    #: in N swung at the ends of the range and moved the hits at 10 and 90 GeV by up to 20 %
    #: from one fit seed to the next: docs/default_model.md)
    log_space: bool = False

    @classmethod
    def identity(cls) -> OccupancyCorrection:
        """No correction (``c_N = 1``)."""
        return cls()

    @classmethod
    def fit(
        cls,
        n_data: NDArray,
        occupancy_data: NDArray,
        n_gen: NDArray,
        occupancy_gen: NDArray,
        degree: int = 3,
        *,
        log_space: bool = False,
        n_cap: float | None = None,
    ) -> OccupancyCorrection:
        """Fit from per-shower (points, hits) of Geant4 and of generated showers.

        ``log_space``: quadratic fits of the logarithms (:attr:`log_space`; ``degree`` is then
        2); ``n_cap``: the generator's largest number of points: generated showers that hit it
        are left out of the fit (their points are the cap, not the model's relation).
        """
        n_data = np.asarray(n_data, np.float64)
        n_gen = np.asarray(n_gen, np.float64)
        occ_data = np.maximum(np.asarray(occupancy_data, np.float64), 1.0)
        occ_gen = np.maximum(np.asarray(occupancy_gen, np.float64), 1.0)
        if n_cap is not None:
            free = n_gen < n_cap
            if free.sum() > degree:
                n_gen, occ_gen = n_gen[free], occ_gen[free]
        degree = 2 if log_space else degree
        if n_data.size < degree + 1 or n_gen.size < degree + 1:
            raise UsageError(f"occupancy fit needs at least {degree + 1} showers of each kind")
        if log_space:
            n_data, n_gen = np.maximum(n_data, 1.0), np.maximum(n_gen, 1.0)
            p_data = np.polyfit(np.log(n_data), np.log(occ_data), degree)
            p_gen = np.polyfit(np.log(occ_gen), np.log(n_gen), degree)
        else:
            p_data = np.polyfit(n_data, occ_data, degree)
            p_gen = np.polyfit(occ_gen, n_gen, degree)
        lo = float(min(n_data.min(), n_gen.min()))
        hi = float(max(n_data.max(), n_gen.max()))
        return cls(
            p_data=p_data.tolist(), p_gen=p_gen.tolist(), n_range=(lo, hi), log_space=log_space
        )

    def factor(self, n_points: NDArray) -> NDArray[np.float64]:
        """``c_N`` for numbers of points ``N``."""
        n = np.clip(np.asarray(n_points, np.float64), *self.n_range)
        n = np.maximum(n, 1.0)
        if self.log_space:
            corrected = np.exp(np.polyval(self.p_gen, np.polyval(self.p_data, np.log(n))))
        else:
            corrected = np.polyval(self.p_gen, np.polyval(self.p_data, n))
        # clipped before exp: beyond +-50 the factor is clipped to factor_range anyway
        refine = np.exp(np.clip(np.polyval(self.p_refine, n / 1000.0), -50.0, 50.0))
        return np.clip(corrected / n * refine, *self.factor_range)

    def target_hits(self, n_points: NDArray) -> NDArray[np.float64]:
        """Geant4 occupancy ``p_data(N)`` expected for showers of ``N`` points."""
        n = np.clip(np.asarray(n_points, np.float64), *self.n_range)
        if self.log_space:
            return np.exp(np.polyval(self.p_data, np.log(np.maximum(n, 1.0))))
        return np.polyval(self.p_data, n)

    def refine(
        self,
        n_flow: NDArray,
        hits_achieved: NDArray,
        elasticity: float,
        degree: int = 2,
    ) -> OccupancyCorrection:
        """One closed-loop step: a new correction whose factor is this one times
        ``(target / achieved) ** (1 / elasticity)``, smoothed by a polynomial in N.

        Args:
            n_flow: numbers of points the Shower Flow asked for (before correction) ``[S]``.
            hits_achieved: cell hits of the showers generated with this correction ``[S]``.
            elasticity: d ln(hits) / d ln(points) of the generator (0 < e <= 1).
        """
        n_flow = np.asarray(n_flow, np.float64)
        achieved = np.maximum(np.asarray(hits_achieved, np.float64), 1.0)
        target = np.maximum(self.target_hits(n_flow), 1.0)
        step = np.log(target / achieved) / float(np.clip(elasticity, 0.1, 1.0))
        x = n_flow / 1000.0
        if self.log_space and x.size >= 10 * (degree + 1):
            # robust: the median step in ten bins of N with equal numbers of showers (a few
            # showers far off, e.g. at the point cap, moved the least-squares quadratic at
            # the ends of the range)
            order = np.argsort(x, kind="stable")
            bins = np.array_split(order, 10)
            x = np.array([np.median(x[b]) for b in bins])
            step = np.array([np.median(step[b]) for b in bins])
        fit = np.polyfit(x, step, degree)
        width = max(len(self.p_refine), len(fit))
        old = np.pad(np.asarray(self.p_refine, np.float64), (width - len(self.p_refine), 0))
        new = old + np.pad(fit, (width - len(fit), 0))
        return OccupancyCorrection(
            p_data=list(self.p_data),
            p_gen=list(self.p_gen),
            n_range=self.n_range,
            factor_range=self.factor_range,
            p_refine=[float(v) for v in new],
            log_space=self.log_space,
        )

    def apply(self, counts_per_layer: NDArray[np.integer]) -> NDArray[np.int64]:
        """Calibrated points per layer ``c_N(N) · N_i`` (integers, total ``round(c_N · N)``)."""
        counts = np.asarray(counts_per_layer, dtype=np.int64)
        total = counts.sum(1)
        return distribute_counts(counts, total * self.factor(total))

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "occupancy_correction",
            "p_data": [float(v) for v in self.p_data],
            "p_gen": [float(v) for v in self.p_gen],
            "n_range": [float(v) for v in self.n_range],
            "factor_range": [float(v) for v in self.factor_range],
            "p_refine": [float(v) for v in self.p_refine],
            **({"log_space": True} if self.log_space else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OccupancyCorrection:
        try:
            return cls(
                p_data=[float(v) for v in data["p_data"]],
                p_gen=[float(v) for v in data["p_gen"]],
                n_range=tuple(float(v) for v in data["n_range"]),  # type: ignore[arg-type]
                factor_range=tuple(float(v) for v in data.get("factor_range", (0.5, 2.0))),  # type: ignore[arg-type]
                p_refine=[float(v) for v in data.get("p_refine", [0.0])],
                log_space=bool(data.get("log_space", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"invalid occupancy correction: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OccupancyCorrection:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_dict(data)


# ---------------------------------------------------------------------------------------------
# radial correction
# ---------------------------------------------------------------------------------------------

#: Energy-weighted cumulative levels of the radial quantile map: dense in the core, then
#: towards the far tail (0.9995).
RADIAL_LEVELS: tuple[float, ...] = tuple(
    float(v)
    for v in np.concatenate([np.linspace(0.02, 0.9, 45), 1.0 - np.logspace(-1.05, -3.3, 12)])
)


def weighted_quantiles(
    values: NDArray[np.floating], weights: NDArray[np.floating], levels: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Quantiles of ``values`` weighted by ``weights`` at cumulative ``levels`` in (0, 1)."""
    order = np.argsort(values, kind="stable")
    v = np.asarray(values, np.float64)[order]
    cw = np.cumsum(np.asarray(weights, np.float64)[order])
    cw = (cw - 0.5 * np.asarray(weights, np.float64)[order]) / cw[-1]
    return np.interp(levels, cw, v)


#: per-shower quantities that :class:`ShowerClasses` can split showers by
SHOWER_CLASS_KINDS = ("depth", "visible")


@dataclass
class ShowerClasses:
    """Classes of showers for :class:`RadialCorrection`: by the residual of the shower depth
    (:func:`shower_depth`, in layers) and/or of the visible fraction ``E_vis / E`` from their
    linear trend ``a + b ln E + c (1 / cos theta - 1)`` (theta: the polar angle of incidence;
    an inclined shower crosses its layers at a slant, so it reaches its depth in fewer
    layers and leaves more of its energy in the silicon), in units of its typical size at
    that energy (the mean absolute residual, ``d + f ln E``: fluctuations shrink with E, and
    every energy should fill every class), each cut at quantiles of the Geant4 fit showers.

    Geant4's share of energy near the axis rises with the depth of a shower and falls with
    its visible energy, and a one-step model gets these correlations wrong
    (docs/default_model.md); a radial map per class restores each class's radial profile.
    One set of classes serves every polar-angle bin of a model (their maps are blended).

    Attributes:
        kinds: the quantities, in the order of :data:`SHOWER_CLASS_KINDS` (the last varies
            fastest in the class index).
        trends: ``(a, b, c)`` per kind.
        edges: inner edges of the scaled residual per kind (increasing).
        spreads: ``(d, f)`` of the mean absolute residual ``d + f ln E`` per kind.
    """

    kinds: tuple[str, ...]
    trends: list[tuple[float, float, float]]
    edges: list[list[float]]
    spreads: list[tuple[float, float]] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return int(np.prod([len(e) + 1 for e in self.edges]))

    @property
    def key(self) -> tuple[Any, ...]:
        return (
            self.kinds,
            tuple(map(tuple, self.trends)),
            tuple(map(tuple, self.edges)),
            tuple(map(tuple, self.spreads)),
        )

    @staticmethod
    def scale(spread: tuple[float, float], energies: NDArray[np.floating]) -> NDArray[np.float64]:
        """The typical residual ``[S]`` at incident energies (GeV): ``d + f ln E``, kept
        above ``1e-3 |d|`` (never zero)."""
        log_e = np.log(np.asarray(energies, np.float64).reshape(-1))
        return np.maximum(spread[0] + spread[1] * log_e, abs(spread[0]) * 1e-3 + 1e-12)

    @staticmethod
    def values(
        points: NDArray[np.floating], shower: NDArray[np.integer], n_showers: int, kind: str
    ) -> NDArray[np.float64]:
        """Per shower ``[S]``: its depth (mean layer) or its visible energy (GeV)."""
        shower = np.asarray(shower, np.int64)
        e = np.clip(np.asarray(points[:, 3], np.float64), 0.0, None)
        if kind == "visible":
            return np.bincount(shower, weights=e, minlength=n_showers)
        layer = np.clip(np.rint(np.asarray(points[:, 2], np.float64)), 0, N_LAYERS - 1)
        return _points_depth(layer, e, shower, n_showers, N_LAYERS)

    @staticmethod
    def _regressors(
        energies: NDArray[np.floating], theta_deg: NDArray[np.floating] | None
    ) -> NDArray[np.float64]:
        """``[S, 3]``: 1, ln E, 1 / cos theta - 1."""
        energies = np.asarray(energies, np.float64).reshape(-1)
        slant = (
            np.zeros_like(energies)
            if theta_deg is None
            else 1.0 / np.cos(np.radians(np.asarray(theta_deg, np.float64).reshape(-1))) - 1.0
        )
        return np.stack([np.ones_like(energies), np.log(energies), slant], 1)

    @classmethod
    def residuals(
        cls,
        points: NDArray[np.floating],
        shower: NDArray[np.integer],
        energies: NDArray[np.floating],
        kind: str,
        trend: tuple[float, float, float] | None = None,
        theta_deg: NDArray[np.floating] | None = None,
    ) -> tuple[NDArray[np.float64], tuple[float, float, float]]:
        """Residual ``[S]`` of ``kind`` from its trend (fitted by least squares when
        ``trend`` is None; the visible energy as the fraction ``E_vis / E``) and the trend."""
        energies = np.asarray(energies, np.float64).reshape(-1)
        value = cls.values(points, shower, energies.size, kind)
        if kind == "visible":
            value = value / energies
        design = cls._regressors(energies, theta_deg)
        if trend is None:
            used = np.ptp(design, axis=0) > 0  # a constant column (one energy, one angle)
            used[0] = True
            coef = np.zeros(3)
            coef[used] = np.linalg.lstsq(design[:, used], value, rcond=None)[0]
            trend = (float(coef[0]), float(coef[1]), float(coef[2]))
        return value - design @ np.asarray(trend, np.float64), trend

    @classmethod
    def fit(
        cls,
        points: NDArray[np.floating],
        shower: NDArray[np.integer],
        energies: NDArray[np.floating],
        *,
        kinds: Sequence[str] = ("depth",),
        n_bins: int = 3,
        theta_deg: NDArray[np.floating] | None = None,
    ) -> ShowerClasses:
        """Trends and quantile edges from (Geant4) showers, ``n_bins`` classes per kind."""
        unknown = set(kinds) - set(SHOWER_CLASS_KINDS)
        if unknown or not kinds or len(set(kinds)) != len(kinds):
            raise UsageError(
                f"shower classes must be some of {', '.join(SHOWER_CLASS_KINDS)}, got "
                f"{tuple(kinds)}"
            )
        if n_bins < 2:
            raise UsageError(f"shower classes need at least 2 bins per kind, got {n_bins}")
        kinds = tuple(k for k in SHOWER_CLASS_KINDS if k in kinds)  # one order (the export's)
        trends, edges, spreads = [], [], []
        levels = np.arange(1, n_bins) / n_bins
        log_e = np.log(np.asarray(energies, np.float64).reshape(-1))
        for kind in kinds:
            residual, trend = cls.residuals(points, shower, energies, kind, None, theta_deg)
            size = np.abs(residual)
            if np.ptp(log_e) > 0:
                f, d = np.polyfit(log_e, size, 1)
            else:
                f, d = 0.0, float(size.mean())
            spread = (float(d), float(f))
            scaled = residual / cls.scale(spread, energies)
            trends.append(trend)
            spreads.append(spread)
            edges.append([float(v) for v in np.quantile(scaled, levels)])
        return cls(kinds, trends, edges, spreads)

    def classify(
        self,
        points: NDArray[np.floating],
        shower: NDArray[np.integer],
        energies: NDArray[np.floating],
        theta_deg: NDArray[np.floating] | None = None,
    ) -> NDArray[np.int64]:
        """Class of each shower ``[S]`` of packed ``points`` (layers assigned; polar angles
        ``theta_deg [S]``, ``None``: normal incidence)."""
        index = np.zeros(np.asarray(energies).size, np.int64)
        spreads = self.spreads or [(1.0, 0.0)] * len(self.kinds)
        for kind, trend, edges, spread in zip(
            self.kinds, self.trends, self.edges, spreads, strict=True
        ):
            residual, _ = self.residuals(points, shower, energies, kind, trend, theta_deg)
            scaled = residual / self.scale(spread, energies)
            index = index * (len(edges) + 1) + np.searchsorted(edges, scaled, side="right")
        return index

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "trends": [list(t) for t in self.trends],
            "edges": [list(e) for e in self.edges],
            "spreads": [list(v) for v in self.spreads],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShowerClasses:
        kinds = tuple(str(k) for k in data["kinds"])
        trends = [(float(a), float(b), float(c)) for a, b, c in data["trends"]]
        edges = [[float(v) for v in e] for e in data["edges"]]
        spreads = [(float(d), float(f)) for d, f in data.get("spreads", [])]
        if kinds != tuple(k for k in SHOWER_CLASS_KINDS if k in kinds) or not (
            len(kinds) == len(trends) == len(edges)
        ):
            raise ValueError(f"shower classes: unknown kinds, order or lengths ({kinds})")
        if any(np.any(np.diff(e) <= 0) for e in edges):
            raise ValueError("shower classes: edges must increase")
        if spreads and len(spreads) != len(kinds):
            raise ValueError("shower classes: one spread per kind")
        return cls(kinds, trends, edges, spreads)


@dataclass
class RadialCorrection:
    """Quantile map of the transverse radius (mm from the axis) of generated points.

    For each bin of incident energy and group of layers, the energy-weighted radius
    distribution of generated showers is mapped onto that of Geant4 by a monotone map
    ``r -> Q_data(F_gen(r))``, piecewise linear in ``ln r`` between quantiles at
    :data:`RADIAL_LEVELS` (and by the ratio of the outermost quantiles beyond them); the
    azimuth of each point is kept. Like the occupancy correction it is fitted after training
    from Geant4 training showers and showers the model generated for the same energies, and
    it corrects what a short distillation blurs (a too-wide core, docs/default_model.md).

    Attributes:
        energy_edges_gev: edges of the incident-energy bins (showers outside go to the first
            or last bin).
        layer_edges: edges of the layer groups (``[0, 5, …, 30]``).
        log_r_gen, log_r_data: ``ln`` of the quantiles (mm), shape
            ``[n_energy_bins, n_layer_groups, n_levels]``, strictly increasing along the last
            axis.
    """

    energy_edges_gev: list[float]
    layer_edges: list[int]
    log_r_gen: NDArray[np.float64]
    log_r_data: NDArray[np.float64]
    #: group the layers relative to each shower's depth (its energy-weighted mean layer,
    #: rounded, counts as layer :data:`RELATIVE_DEPTH_LAYER`) instead of by layer index: a
    #: map by layer index widens the points of a deep shower as much as the average shower
    #: at those layers, which makes the core's share fall with depth, against Geant4
    #: (docs/default_model.md)
    depth_relative: bool = False
    #: maps of their own for classes of showers (:class:`ShowerClasses`: by the residuals of
    #: the shower depth and of the visible energy from their trend in ln E), so that the
    #: radial shape follows the shower's depth and visible energy as in Geant4; ``None``: one
    #: class
    shower_classes: ShowerClasses | None = None

    @property
    def n_energy_bins(self) -> int:
        return len(self.energy_edges_gev) - 1

    @property
    def n_layer_groups(self) -> int:
        return len(self.layer_edges) - 1

    @property
    def n_groups(self) -> int:
        """Point groups of the tables (their second axis): layer groups x shower classes."""
        classes = self.shower_classes.n_classes if self.shower_classes is not None else 1
        return self.n_layer_groups * classes

    @property
    def binning(self) -> tuple[Any, ...]:
        """What two maps must share to be blended point by point: table shape, energy
        edges, layer edges and how layers are grouped."""
        return (
            self.log_r_gen.shape,
            tuple(self.energy_edges_gev),
            tuple(self.layer_edges),
            self.depth_relative,
            None if self.shower_classes is None else self.shower_classes.key,
        )

    def energy_bin(self, energies: NDArray[np.floating]) -> NDArray[np.int64]:
        """Incident-energy bin of each shower ``[S]``."""
        inner = np.asarray(self.energy_edges_gev[1:-1], np.float64)
        return np.searchsorted(inner, np.asarray(energies, np.float64), side="right")

    def energy_weights(
        self, energies: NDArray[np.floating]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """``(bin e0, bin e1, weight w)`` per shower ``[S]`` for maps interpolated in the
        incident energy: ``(1 - w)`` times the map of ``e0`` plus ``w`` times that of ``e1``,
        linear between the bins' centres (the fit showers are uniform in E within a bin),
        extrapolated linearly to the outer bin edges and constant beyond them."""
        energies = np.asarray(energies, np.float64).reshape(-1)
        n = self.n_energy_bins
        if n < 2:
            zeros = np.zeros(energies.shape, np.int64)
            return zeros, zeros, np.zeros(energies.shape)
        edges = np.asarray(self.energy_edges_gev, np.float64)
        centres = 0.5 * (edges[1:] + edges[:-1])
        j = np.clip(np.searchsorted(centres, energies, side="right") - 1, 0, n - 2)
        w = (energies - centres[j]) / (centres[j + 1] - centres[j])
        lowest = (edges[0] - centres[0]) / (centres[1] - centres[0])
        highest = 1.0 + (edges[-1] - centres[-1]) / (centres[-1] - centres[-2])
        w = np.where(j == 0, np.maximum(w, lowest), np.maximum(w, 0.0))
        w = np.where(j == n - 2, np.minimum(w, highest), np.minimum(w, 1.0))
        return j, j + 1, w

    def layer_group(self, layers: NDArray[np.floating]) -> NDArray[np.int64]:
        """Layer group of each point ``[P]`` (layer index, rounded)."""
        inner = np.asarray(self.layer_edges[1:-1], np.float64)
        layers = np.asarray(layers)
        last = int(self.layer_edges[-1])
        if layers.size > 4 * last and 0 < last <= 1000:  # a lookup table per layer index
            table = np.searchsorted(inner, np.arange(-1, last + 1, dtype=np.float64), side="right")
            index = np.clip(np.rint(layers), -1, last).astype(np.int64) + 1
            return table[index]
        return np.searchsorted(inner, np.rint(layers.astype(np.float64)), side="right")

    def point_groups(
        self,
        points: NDArray[np.floating],
        shower: NDArray[np.integer],
        energies: NDArray[np.floating] | None = None,
        theta_deg: NDArray[np.floating] | None = None,
    ) -> NDArray[np.int64]:
        """Group of each point of packed ``points [P, 4]`` (layers assigned) with ``shower
        [P]``: its layer group, by layer index or with :attr:`depth_relative` by the layer
        relative to the shower's depth (:func:`relative_layers`); with
        :attr:`shower_classes` plus ``n_layer_groups`` times its shower's class (which needs
        the incident ``energies [S]`` in GeV, and the polar angles ``theta_deg [S]`` of
        inclined showers)."""
        if self.depth_relative:
            group = self.layer_group(relative_layers(points, shower))
        else:
            group = self.layer_group(points[:, 2])
        if self.shower_classes is None:
            return group
        if energies is None:
            raise UsageError("a radial map with shower classes needs the incident energies")
        classes = self.shower_classes.classify(points, shower, energies, theta_deg)
        return group + self.n_layer_groups * classes[np.asarray(shower, np.int64)]

    @classmethod
    def fit(
        cls,
        data: tuple[NDArray, NDArray, NDArray],
        generated: tuple[NDArray, NDArray, NDArray],
        *,
        energy_edges_gev: tuple[float, ...] = (10.0, 30.0, 50.0, 70.0, 90.0),
        layer_edges: tuple[int, ...] = (0, 5, 10, 15, 20, 25, 30),
        min_points: int = 200,
        depth_relative: bool = False,
        shower_classes: Sequence[str] | ShowerClasses = (),
        n_class_bins: int = 3,
        theta_deg: NDArray[np.floating] | None = None,
    ) -> RadialCorrection:
        """Fit from ``(points [P, 4], shower [P], incident energy [S])`` of Geant4 and of
        generated showers (packed, physical units; the axis at x = y = 0).

        ``shower_classes``: fitted :class:`ShowerClasses`, or any of ``"depth"``,
        ``"visible"`` (fitted here on ``data``, each split into ``n_class_bins`` classes at
        its quantiles); ``theta_deg [S]``: the polar angles of both samples' showers (the
        same directions; ``None``: normal incidence). A bin with fewer than ``min_points``
        points in either sample is left unchanged.
        """
        levels = np.asarray(RADIAL_LEVELS)
        if isinstance(shower_classes, ShowerClasses):
            classes: ShowerClasses | None = shower_classes
        elif shower_classes:
            classes = ShowerClasses.fit(
                *data, kinds=tuple(shower_classes), n_bins=n_class_bins, theta_deg=theta_deg
            )
        else:
            classes = None
        n_e = len(energy_edges_gev) - 1
        n_l = (len(layer_edges) - 1) * (classes.n_classes if classes is not None else 1)
        shape = (n_e, n_l, len(levels))
        out = cls(
            list(map(float, energy_edges_gev)),
            list(map(int, layer_edges)),
            np.zeros(shape),
            np.zeros(shape),
            depth_relative=bool(depth_relative),
            shower_classes=classes,
        )
        quantiles = []
        for points, shower, energies in (data, generated):
            pts = np.asarray(points, np.float64)
            keep = pts[:, 3] > 0
            pts, sh = pts[keep], np.asarray(shower)[keep]
            energies = np.asarray(energies, np.float64).reshape(-1)
            e_bin = out.energy_bin(energies)[sh]
            group = out.point_groups(pts, sh, energies, theta_deg)
            r = np.maximum(np.hypot(pts[:, 0], pts[:, 1]), 1e-3)
            q = np.full(shape, np.nan)
            for i in range(n_e):
                for j in range(n_l):
                    sel = (e_bin == i) & (group == j)
                    if sel.sum() >= min_points:
                        q[i, j] = np.log(weighted_quantiles(r[sel], pts[sel, 3], levels))
            quantiles.append(q)
        q_data, q_gen = quantiles
        for i in range(n_e):
            for j in range(n_l):
                if np.isnan(q_data[i, j]).any() or np.isnan(q_gen[i, j]).any():
                    q_data[i, j] = q_gen[i, j] = np.log(np.geomspace(0.1, 300.0, len(levels)))
        out.log_r_gen = _strictly_increasing(q_gen)
        out.log_r_data = _strictly_increasing(q_data)
        return out

    def apply(
        self,
        points: NDArray[np.floating],
        shower: NDArray[np.integer],
        energies: NDArray[np.floating],
        theta_deg: NDArray[np.floating] | None = None,
    ) -> NDArray[np.floating]:
        """Map the radius of every point in place; ``points [P, 4]`` with layers assigned
        (``theta_deg [S]``: polar angles, for :attr:`shower_classes`)."""
        if points.shape[0] == 0:
            return points
        return scale_radius(points, *self.mapped_log_radius(points, shower, energies, theta_deg))

    def mapped_log_radius(
        self,
        points: NDArray[np.floating],
        shower: NDArray[np.integer],
        energies: NDArray[np.floating],
        theta_deg: NDArray[np.floating] | None = None,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """``(r, ln r, mapped ln r)`` of every point ``[P]`` (r in mm from x = y = 0; points
        ``[P, 4]`` with layers assigned, ``P > 0``)."""
        energies = np.asarray(energies, np.float64).reshape(-1)
        e_bin = self.energy_bin(energies)[shower]
        cell = e_bin * self.n_groups + self.point_groups(points, shower, energies, theta_deg)
        r = radius_mm(points)
        log_r = np.log(np.maximum(r, 1e-6))
        knots_gen = self.log_r_gen.reshape(-1, self.log_r_gen.shape[-1])
        knots_data = self.log_r_data.reshape(knots_gen.shape)
        new_log_r = map_log_radius(log_r, cell, knots_gen, knots_data)
        return r, log_r, new_log_r

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "radial_correction",
            "energy_edges_gev": list(self.energy_edges_gev),
            "layer_edges": list(self.layer_edges),
            "log_r_gen": np.round(self.log_r_gen, 7).tolist(),
            "log_r_data": np.round(self.log_r_data, 7).tolist(),
            **({"depth_relative": True} if self.depth_relative else {}),
            **(
                {"shower_classes": self.shower_classes.to_dict()}
                if self.shower_classes is not None
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadialCorrection:
        try:
            out = cls(
                energy_edges_gev=[float(v) for v in data["energy_edges_gev"]],
                layer_edges=[int(v) for v in data["layer_edges"]],
                log_r_gen=np.asarray(data["log_r_gen"], np.float64),
                log_r_data=np.asarray(data["log_r_data"], np.float64),
                depth_relative=bool(data.get("depth_relative", False)),
                shower_classes=(
                    ShowerClasses.from_dict(data["shower_classes"])
                    if data.get("shower_classes")
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"invalid radial correction: {exc}") from None
        shape = (out.n_energy_bins, out.n_groups)
        if (
            out.log_r_gen.ndim != 3
            or out.log_r_gen.shape != out.log_r_data.shape
            or out.log_r_gen.shape[:2] != shape
            or np.any(np.diff(out.log_r_gen, axis=-1) <= 0)
            or not np.all(np.isfinite(out.log_r_data))
        ):
            raise UsageError("invalid radial correction: quantile tables of the wrong shape")
        return out


#: the layer that a shower's depth (its energy-weighted mean layer, rounded) counts as in a
#: :class:`RadialCorrection` with ``depth_relative``
RELATIVE_DEPTH_LAYER = 15


def shower_depth(e_per_layer: NDArray[np.floating]) -> NDArray[np.float64]:
    """Energy-weighted mean layer index ``[S]`` of showers with energies per layer
    ``[S, n_layers]`` (negative entries count as 0; :data:`RELATIVE_DEPTH_LAYER`, the middle
    of the slab, for a shower without energy): the depth that the radial map's relative
    layers and the network's depth condition (``CaloClouds2Config.depth_condition``) use."""
    e = np.clip(np.asarray(e_per_layer, np.float64), 0.0, None)
    total = e.sum(1)
    mean = (e * np.arange(e.shape[1])).sum(1) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, mean, float(RELATIVE_DEPTH_LAYER))


def relative_layers(
    points: NDArray[np.floating], shower: NDArray[np.integer]
) -> NDArray[np.float64]:
    """Layer of each point ``[P]`` relative to its shower's depth: ``layer - round(depth) +
    RELATIVE_DEPTH_LAYER``, the depth being :func:`shower_depth` of the shower's points
    (packed ``points [P, 4]`` with layers 0, 1, ... assigned; negative energies count as 0)."""
    shower = np.asarray(shower, np.int64)
    layer = np.rint(np.asarray(points[:, 2], np.float64))
    n = int(shower.max()) + 1 if shower.size else 0
    n_layers = int(layer.max()) + 1 if layer.size else 1
    e = np.clip(np.asarray(points[:, 3], np.float64), 0.0, None)
    depth = np.rint(_points_depth(layer, e, shower, n, n_layers))
    return layer - depth[shower] + RELATIVE_DEPTH_LAYER


def _points_depth(
    layer: NDArray[np.float64],
    e: NDArray[np.float64],
    shower: NDArray[np.int64],
    n_showers: int,
    n_layers: int,
) -> NDArray[np.float64]:
    """:func:`shower_depth` ``[S]`` of packed points: their layer indices ``layer [P]``
    (integers in ``0 .. n_layers - 1``) and energies ``e [P]`` (>= 0) summed per layer."""
    key = shower * n_layers + layer.astype(np.int64)
    e_layer = np.bincount(key, weights=e, minlength=n_showers * n_layers)
    return shower_depth(e_layer.reshape(n_showers, n_layers))


def map_log_radius(
    log_r: NDArray[np.float64],
    cell: NDArray[np.integer],
    knots_gen: NDArray[np.float64],
    knots_data: NDArray[np.float64],
) -> NDArray[np.float64]:
    """``ln r [P]`` of points mapped by the quantile table of their ``cell [P]``
    (``knots_gen``, ``knots_data``: ``[C, Q]``, each row strictly increasing): linear between
    the knots, shifted by the first or last knot's shift outside them."""
    # one np.interp for all cells: every cell's knots moved by its own offset, far enough
    # apart that the concatenated knots increase
    span = float(np.ptp(knots_gen)) + float(log_r.max() - log_r.min()) + 100.0
    offset = np.arange(knots_gen.shape[0]) * span
    inner = (
        np.interp(
            log_r + offset[cell],
            (knots_gen + offset[:, None]).ravel(),
            (knots_data + offset[:, None]).ravel(),
        )
        - offset[cell]
    )
    first_gen, last_gen = knots_gen[cell, 0], knots_gen[cell, -1]
    return np.where(
        log_r < first_gen,
        log_r + (knots_data[cell, 0] - first_gen),
        np.where(log_r > last_gen, log_r + (knots_data[cell, -1] - last_gen), inner),
    )


def scale_radius(
    points: NDArray[np.floating],
    r: NDArray[np.float64],
    log_r: NDArray[np.float64],
    new_log_r: NDArray[np.float64],
) -> NDArray[np.floating]:
    """Move every point of ``points [P, 4]`` radially (about x = y = 0) from ``r`` (mm, with
    ``log_r = ln max(r, 1e-6)``) to ``exp(new_log_r)`` mm, in place (points at r = 0 stay)."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    scale = np.where(r > 0, np.exp(new_log_r - log_r), 1.0)
    points[:, 0] = (x * scale).astype(points.dtype)
    points[:, 1] = (y * scale).astype(points.dtype)
    return points


#: polar-angle bins (deg) of :class:`AxisShiftCorrection`; its nodes are the mean polar
#: angles of the fit showers in each bin. Narrow near 60 deg, where the lean grows fastest
#: (15 deg bins with constant extrapolation beyond the last centre, 52.5 deg, left the fitted
#: axis 2.2 deg too steep at 60 deg; docs/angles.md)
AXIS_SHIFT_THETA_EDGES_DEG = (0.0, 10.0, 20.0, 30.0, 40.0, 45.0, 50.0, 55.0, 57.5, 60.0)


@dataclass
class AxisShiftCorrection:
    """Per-layer shift (mm) along the inclination of an angle-aware model's showers.

    In the axis frame of an inclined shower (:func:`calogen.directions.straighten_points`:
    the axis along z through x = y = 0, the inclination in the x-z plane) the energy-weighted
    mean x of each layer (pooled over the showers of a theta bin) of Geant4 showers and of
    generated showers at the same energies and directions differ by a few tenths of a mm to a few mm, growing with depth and theta:
    the generated showers lean less than Geant4's, so their fitted axis is too steep
    (docs/angles.md). This correction adds the mean difference, per layer, interpolated
    linearly in theta between the mean angles of the fit showers in the bins
    :data:`AXIS_SHIFT_THETA_EDGES_DEG` and normal incidence (node 0: a network trained mostly
    on inclined showers and mirrored shower by shower leans a little at theta = 0 too, which
    the x mirroring would turn into a two-peaked centre of gravity; the shift is applied
    before the mirroring), extrapolated linearly from the last two to the last edge, constant
    beyond. Fitted after training like the occupancy correction, on showers generated without
    mirroring of whole showers.

    Attributes:
        theta_nodes_deg: ``[K]`` increasing, the first 0.
        shift_mm: ``[K, n_layers]``.
    """

    theta_nodes_deg: NDArray[np.float64]
    shift_mm: NDArray[np.float64]

    @classmethod
    def fit(
        cls,
        data: tuple[NDArray, NDArray, NDArray],
        generated: tuple[NDArray, NDArray, NDArray],
        n_layers: int = 30,
        min_showers: int = 5,
    ) -> AxisShiftCorrection:
        """From ``(points [P, 4] in the axis frame, shower [P], theta_deg [S])`` of Geant4
        showers and of showers generated at the same energies and directions (bins with
        fewer than ``min_showers`` inclined showers keep a zero shift)."""
        edges = np.asarray(AXIS_SHIFT_THETA_EDGES_DEG)
        theta = np.asarray(data[2], np.float64)
        means = [_layer_x_means(*side, edges, n_layers, min_showers) for side in (data, generated)]
        ok = np.isfinite(means[0]) & np.isfinite(means[1])
        table = np.where(ok, means[0] - means[1], 0.0)
        # nodes: 0, then the mean polar angle of each bin's showers (bins without enough
        # showers are left out)
        nodes, rows = [0.0], [table[0]]
        for k in range(len(edges) - 1):
            sel = (theta >= max(edges[k], 0.5)) & (theta <= edges[k + 1] + 1e-9)
            if sel.sum() >= min_showers and np.any(ok[k + 1]) and theta[sel].mean() > nodes[-1]:
                nodes.append(float(theta[sel].mean()))
                rows.append(table[k + 1])
        if len(nodes) >= 3 and nodes[-1] < edges[-1] - 1e-6:
            # the lean grows fast with theta (docs/angles.md): extrapolate linearly from the
            # last two nodes to the last edge rather than keep it constant there
            slope = (rows[-1] - rows[-2]) / (nodes[-1] - nodes[-2])
            rows.append(rows[-1] + slope * (edges[-1] - nodes[-1]))
            nodes.append(float(edges[-1]))
        if len(nodes) == 1:  # normal incidence only: a constant table
            nodes.append(float(edges[-1]))
            rows.append(table[0])
        return cls(np.asarray(nodes), np.stack(rows))

    def shift(self, theta_deg: NDArray[np.floating], layer: NDArray[np.floating]) -> NDArray:
        """Shift (mm) of points at ``theta_deg`` and layer index ``layer`` (both ``[P]``)."""
        theta = np.clip(np.asarray(theta_deg, np.float64), 0.0, self.theta_nodes_deg[-1])
        k = np.clip(np.searchsorted(self.theta_nodes_deg, theta, side="right") - 1, 0, None)
        k = np.minimum(k, len(self.theta_nodes_deg) - 2)
        t0, t1 = self.theta_nodes_deg[k], self.theta_nodes_deg[k + 1]
        w = np.clip((theta - t0) / (t1 - t0), 0.0, 1.0)
        n_layers = self.shift_mm.shape[1]
        ell = np.clip(np.rint(np.asarray(layer)).astype(np.int64), 0, n_layers - 1)
        return (1 - w) * self.shift_mm[k, ell] + w * self.shift_mm[k + 1, ell]

    def apply(
        self,
        points: NDArray[np.floating],
        theta_deg: NDArray[np.floating],
        shower: NDArray[np.integer],
    ) -> None:
        """Shift ``points [P, 4]`` (axis frame) in x in place; ``theta_deg [S]`` per shower,
        ``shower [P]`` the shower of each point (one table row per shower and layer)."""
        theta = np.asarray(theta_deg, np.float64).reshape(-1)
        n_layers = self.shift_mm.shape[1]
        table = self.shift(np.repeat(theta, n_layers), np.tile(np.arange(n_layers), theta.size))
        ell = np.clip(np.rint(points[:, 2]).astype(np.int64), 0, n_layers - 1)
        points[:, 0] += table[np.asarray(shower, np.int64) * n_layers + ell].astype(points.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "axis_shift",
            "theta_nodes_deg": self.theta_nodes_deg.tolist(),
            "shift_mm": np.round(self.shift_mm, 4).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AxisShiftCorrection:
        try:
            out = cls(
                np.asarray(data["theta_nodes_deg"], np.float64),
                np.asarray(data["shift_mm"], np.float64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"invalid axis-shift correction: {exc}") from None
        t = out.theta_nodes_deg
        if (
            t.ndim != 1
            or t.size < 2
            or np.any(np.diff(t) <= 0)
            or out.shift_mm.ndim != 2
            or out.shift_mm.shape[0] != t.size
            or not np.all(np.isfinite(out.shift_mm))
        ):
            raise UsageError("invalid axis-shift correction: tables of the wrong shape")
        return out


#: incident-energy bins (GeV) in which :class:`AxisTilt` is fitted; its parameters sit at the
#: bins' centres and are interpolated linearly in between (constant beyond the outer centres)
AXIS_TILT_ENERGY_EDGES_GEV = (10.0, 30.0, 50.0, 70.0, 90.0)


@dataclass
class AxisTilt:
    """Random tilt of each shower's axis, correlated with its centre of gravity.

    A Geant4 photon shower that drifts sideways drifts more the deeper it goes (it starts on
    the incident axis), so its centre of gravity and the slope of its layer centroids against
    depth are correlated: on the normal-incidence training showers the fitted-axis slope
    regresses on the centre of gravity with about 17-24 (1e-3 per mm) and a correlation of
    0.25-0.32 (cell level). Generated points are independent given the conditions and the
    centre-of-gravity calibration (:func:`shift_cog`) moves a shower as a whole, so the
    model had the spread of the centre of gravity but almost none of that correlation (0.02-
    0.06) and a 10-15 % narrower distribution of the fitted axis (docs/default_model.md
    "The axis tilt"). This correction gives each shower the slope (dx/dz, per axis)

        ``s = k(E) * cog + sigma(E) * n``, ``n`` a standard normal per shower and axis,

    applied about the shower's energy-weighted depth ``z_mean``:
    ``x += s_x (z_layer - z_mean)`` (and y), so that the centre of gravity stays where the
    Shower Flow put it. ``cog`` (mm) is the shower's energy-weighted centre of gravity
    after :func:`shift_cog`, in the axis frame (before an inclined shower is tilted by its
    angle), measured from its mean: an inclined shower's centre of gravity in the axis frame
    sits 0.1-0.7 mm down the inclination on average (its halo leans), which ``k`` must not
    turn into a tilt of every shower (that biased the fitted axis at 30 deg: W1 2x its
    floor), so ``cog_offset_mm``, the model's own mean offset along the inclination at the
    polar angles ``theta_nodes_deg``, is subtracted from x for inclined showers (normal
    incidence is symmetric). The same ``k`` and ``sigma`` apply at every angle. ``k`` and
    ``sigma`` are fitted on training showers at normal incidence so that the cell-level
    relation matches Geant4's, the offsets on generated inclined showers
    (:func:`calogen.models.caloclouds2.fit_tilt`).

    Attributes:
        energy_nodes_gev: ``[K]`` increasing incident energies (GeV).
        k_per_mm: ``[K]`` slope added per mm of centre of gravity (1/mm).
        sigma: ``[K]`` standard deviation of the random part of the slope (dimensionless).
        theta_nodes_deg: ``[T]`` increasing polar angles (deg), may be empty (no offset).
        cog_offset_mm: ``[T]`` mean x of the centre of gravity there (mm, axis frame).
    """

    energy_nodes_gev: NDArray[np.float64]
    k_per_mm: NDArray[np.float64]
    sigma: NDArray[np.float64]
    theta_nodes_deg: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    cog_offset_mm: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def parameters(self, energies: NDArray[np.floating]) -> tuple[NDArray, NDArray]:
        """``(k [S], sigma [S])`` at the incident energies ``[S]`` (GeV)."""
        e = np.asarray(energies, np.float64).reshape(-1)
        return (
            np.interp(e, self.energy_nodes_gev, self.k_per_mm),
            np.interp(e, self.energy_nodes_gev, self.sigma),
        )

    def cog_offsets(self, theta_deg: NDArray[np.floating] | None, n_showers: int) -> NDArray:
        """Mean x ``[S]`` (mm) of the centre of gravity at ``theta_deg [S]`` (0 at normal
        incidence, ``None``: all normal; linear between the nodes, constant beyond)."""
        if theta_deg is None or self.theta_nodes_deg.size == 0:
            return np.zeros(n_showers)
        theta = np.asarray(theta_deg, np.float64).reshape(-1)
        return np.where(theta > 0, np.interp(theta, self.theta_nodes_deg, self.cog_offset_mm), 0.0)

    def apply(
        self,
        points: NDArray[np.floating],
        shower: NDArray[np.integer],
        energies: NDArray[np.floating],
        normals: NDArray[np.floating],
        layer_depth_mm: NDArray[np.floating],
        theta_deg: NDArray[np.floating] | None = None,
        counts: NDArray[np.integer] | None = None,
    ) -> None:
        """Tilt ``points [P, 4]`` (x, y in mm, layer index, energy; axis frame) in place;
        ``energies [S]`` (GeV), ``normals [S, 2]`` (standard normal draws) and ``theta_deg
        [S]`` (deg, ``None``: normal incidence) per shower, ``shower [P]`` the shower of each
        point, ``layer_depth_mm [n_layers]`` the depth of each layer. ``counts [S]``: the
        points stored shower after shower, ``counts[s]`` of shower ``s`` (as generated):
        segment sums and per-shower values then need no scatter or gather (2.9 against
        15.5 ms per 100 showers of 2,000 points, measured on a shared core)."""
        n_showers = int(np.asarray(energies).size)
        k, sigma = self.parameters(energies)
        if counts is not None:
            counts = np.asarray(counts, np.int64)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            filled = counts > 0

            def segment_sum(values: NDArray) -> NDArray[np.float64]:
                out = np.zeros(n_showers)
                if values.size:
                    out[filled] = np.add.reduceat(values, starts[filled], dtype=np.float64)
                return out

            def per_point(values: NDArray) -> NDArray:
                return np.repeat(values, counts)
        else:

            def segment_sum(values: NDArray) -> NDArray[np.float64]:
                return _segment_sum(values, shower, n_showers)

            def per_point(values: NDArray) -> NDArray:
                return values[shower]

        # float32 where it is exact enough (the shift is at most a few mm; the exports
        # compute it in float64 and their parity tests agree to 1e-3 mm)
        e = points[:, 3]
        total = segment_sum(e)
        safe = np.where(total > 0, total, 1.0)
        cog = np.stack([segment_sum(e * points[:, a]) for a in (0, 1)], 1) / safe[:, None]
        cog[:, 0] -= self.cog_offsets(theta_deg, n_showers)
        slopes = k[:, None] * cog + sigma[:, None] * (
            np.asarray(normals, np.float64).reshape(n_showers, 2)
        )
        table = np.asarray(layer_depth_mm, np.float32)
        spacing = _equal_spacing(tuple(table.tolist()))
        if spacing is not None:  # depth = first + step * layer: no gather
            depth = points[:, 2].astype(np.float32) * np.float32(spacing[1]) + spacing[0]
        else:
            depth = table[np.clip(points[:, 2].astype(np.intp), 0, table.size - 1)]
        mean = segment_sum(e * depth) / safe
        lever = depth - per_point(mean.astype(np.float32))
        for a in (0, 1):
            points[:, a] += per_point(slopes[:, a].astype(np.float32)) * lever

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "axis_tilt",
            "energy_nodes_gev": np.round(self.energy_nodes_gev, 4).tolist(),
            "k_per_mm": np.round(self.k_per_mm, 6).tolist(),
            "sigma": np.round(self.sigma, 6).tolist(),
            "theta_nodes_deg": np.round(self.theta_nodes_deg, 4).tolist(),
            "cog_offset_mm": np.round(self.cog_offset_mm, 4).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AxisTilt:
        try:
            out = cls(
                np.asarray(data["energy_nodes_gev"], np.float64).reshape(-1),
                np.asarray(data["k_per_mm"], np.float64).reshape(-1),
                np.asarray(data["sigma"], np.float64).reshape(-1),
                np.asarray(data.get("theta_nodes_deg", []), np.float64).reshape(-1),
                np.asarray(data.get("cog_offset_mm", []), np.float64).reshape(-1),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"invalid axis tilt: {exc}") from None
        t = out.theta_nodes_deg
        if (
            t.size != out.cog_offset_mm.size
            or np.any(np.diff(t) <= 0)
            or not np.all(np.isfinite(out.cog_offset_mm))
        ):
            raise UsageError("invalid axis tilt: theta nodes must increase, one offset each")
        n = out.energy_nodes_gev.size
        if (
            n < 1
            or out.k_per_mm.size != n
            or out.sigma.size != n
            or np.any(np.diff(out.energy_nodes_gev) <= 0)
            or not np.all(np.isfinite(out.k_per_mm))
            or not np.all(np.isfinite(out.sigma))
            or np.any(out.sigma < 0)
        ):
            raise UsageError(
                "invalid axis tilt: energy nodes must increase, one k and one sigma >= 0 each"
            )
        return out


#: the longitudinal-density tail beyond the last layer (:meth:`DepthStretch.sample`): this many
#: knots one layer spacing apart, each the previous one times the last two layers' ratio
DEPTH_STRETCH_TAIL_KNOTS = 3


def depth_stretch_features(
    energies: NDArray[np.floating], theta_deg: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Regressors ``[S, 6]`` of :attr:`DepthStretch.trend`: 1, ln E, (ln E)^2, theta,
    theta^2, theta ln E (E in GeV, theta in deg)."""
    log_e = np.log(np.asarray(energies, np.float64).reshape(-1))
    t = np.asarray(theta_deg, np.float64).reshape(-1)
    return np.stack([np.ones_like(log_e), log_e, log_e * log_e, t, t * t, t * log_e], 1)


def depth_mm(e_per_layer: NDArray[np.floating], layer_z_mm: NDArray[np.floating]) -> NDArray:
    """Energy-weighted depth ``[S]`` (mm) of per-layer energies ``[S, L]`` whose layers sit
    at ``layer_z_mm [L]`` (the first layer's depth for a shower without energy); in mm, where
    :func:`shower_depth` gives a layer index."""
    e = np.asarray(e_per_layer, np.float64)
    z = np.asarray(layer_z_mm, np.float64)
    total = e.sum(1)
    mean = (e * z).sum(1) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, mean, z[0])


@dataclass
class DepthStretch:
    """Widen (or narrow) the spread of the Shower Flow's shower depth, about its mean.

    On its own training showers the Shower Flow's energy-weighted depth fluctuates 4-8 %
    less than Geant4's at normal incidence and 13-27 % less at 20-60 deg (standard deviation
    about the trend in E and theta; docs/default_model.md "The depth stretch"): a flow
    samples the 30 layer energies with fluctuations that partly average out, where a Geant4
    shower moves as a whole with the depth at which it starts. This correction moves each
    shower's longitudinal profile as a whole, by

        ``dz = (s(theta) - 1) * (z_mean - mu(E, theta))``  (mm, along the layers),

    ``z_mean`` its energy-weighted depth, ``mu`` the flow's mean depth and ``s`` the ratio of
    spreads at the polar angle. The per-layer energies and numbers of points are read as a
    density sampled at the layers' depths ``layer_z_mm`` and resampled at ``z - dz``
    (linear between the layers, 0 at the front face, an exponential tail beyond the last
    layer): a shower moved deeper puts more of its energy where the thick back layers sample
    it more sparsely and behind the calorimeter, as a Geant4 shower that starts late does.

    Attributes:
        layer_z_mm: ``[L]`` increasing depth of each layer's sensor (mm).
        theta_nodes_deg: ``[T]`` increasing polar angles (deg; 0: normal incidence).
        stretch: ``[T]`` the factor ``s`` there (linear in theta between, constant beyond).
        trend: ``[6]`` coefficients of ``mu`` (mm) on :func:`depth_stretch_features`.
    """

    layer_z_mm: NDArray[np.float64]
    theta_nodes_deg: NDArray[np.float64]
    stretch: NDArray[np.float64]
    trend: NDArray[np.float64]

    def depth(self, e_per_layer: NDArray[np.floating]) -> NDArray[np.float64]:
        """:func:`depth_mm` of per-layer energies ``[S, L]`` at this stretch's layers."""
        return depth_mm(e_per_layer, self.layer_z_mm)

    @property
    def knots(self) -> NDArray[np.float64]:
        """Depths (mm) at which :meth:`sample` knows the density: one layer spacing before
        the first layer (value 0), the layers, then :data:`DEPTH_STRETCH_TAIL_KNOTS` spacings
        of the last two layers beyond the last."""
        z = self.layer_z_mm
        beyond = np.arange(1, DEPTH_STRETCH_TAIL_KNOTS + 1)
        return np.concatenate([[z[0] - (z[1] - z[0])], z, z[-1] + (z[-1] - z[-2]) * beyond])

    def shifts(
        self,
        e_per_layer: NDArray[np.floating],
        energies: NDArray[np.floating],
        theta_deg: NDArray[np.floating] | None,
    ) -> NDArray[np.float64]:
        """``dz [S]`` (mm) of each shower (``theta_deg None``: normal incidence)."""
        n = np.asarray(energies).size
        theta = np.zeros(n) if theta_deg is None else np.asarray(theta_deg, np.float64)
        s = np.interp(theta.reshape(-1), self.theta_nodes_deg, self.stretch)
        mu = depth_stretch_features(energies, theta) @ self.trend
        return (s - 1.0) * (self.depth(e_per_layer) - mu)

    def sample(self, values: NDArray[np.floating], shift_mm: NDArray[np.floating]) -> NDArray:
        """Per-layer ``values [S, L]`` (a density sampled at :attr:`layer_z_mm`) moved deeper
        by ``shift_mm [S]``: float64 ``[S, L]``, non-negative."""
        v = np.asarray(values, np.float64)
        z = self.layer_z_mm
        n_showers = v.shape[0]
        last, prev = v[:, -1], v[:, -2]
        ratio = np.where(prev > 0, np.clip(last / np.where(prev > 0, prev, 1.0), 0.0, 1.0), 0.5)
        tail = [last * ratio**k for k in range(1, DEPTH_STRETCH_TAIL_KNOTS + 1)]
        knots = self.knots
        table = np.concatenate([np.zeros((n_showers, 1)), v, np.stack(tail, 1)], 1)
        at = z[None, :] - np.asarray(shift_mm, np.float64).reshape(-1, 1)
        j = np.clip(np.searchsorted(knots, at, side="right") - 1, 0, knots.size - 2)
        w = np.clip((at - knots[j]) / (knots[j + 1] - knots[j]), 0.0, 1.0)
        rows = np.arange(n_showers)[:, None]
        out = table[rows, j] * (1.0 - w) + table[rows, j + 1] * w
        return np.where(at > knots[-1], 0.0, np.maximum(out, 0.0))

    def apply(
        self,
        e_per_layer: NDArray[np.floating],
        n_per_layer: NDArray[np.integer],
        energies: NDArray[np.floating],
        theta_deg: NDArray[np.floating] | None = None,
    ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """``(energies [S, L] GeV, counts [S, L])`` moved by :meth:`shifts`; the counts
        rounded by :func:`distribute_counts` to their moved sum."""
        shift = self.shifts(e_per_layer, energies, theta_deg)
        moved = self.sample(n_per_layer, shift)
        return self.sample(e_per_layer, shift), distribute_counts(moved, moved.sum(1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "depth_stretch",
            "layer_z_mm": np.round(self.layer_z_mm, 4).tolist(),
            "theta_nodes_deg": np.round(self.theta_nodes_deg, 4).tolist(),
            "stretch": np.round(self.stretch, 5).tolist(),
            "trend": [float(c) for c in self.trend],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepthStretch:
        try:
            out = cls(
                *(
                    np.asarray(data[key], np.float64).reshape(-1)
                    for key in ("layer_z_mm", "theta_nodes_deg", "stretch", "trend")
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"invalid depth stretch: {exc}") from None
        arrays = (out.layer_z_mm, out.theta_nodes_deg, out.stretch, out.trend)
        if (
            out.layer_z_mm.size < 2
            or np.any(np.diff(out.layer_z_mm) <= 0)
            or out.theta_nodes_deg.size < 1
            or out.stretch.size != out.theta_nodes_deg.size
            or np.any(np.diff(out.theta_nodes_deg) <= 0)
            or np.any(out.stretch <= 0)
            or out.trend.size != 6
            or not all(np.all(np.isfinite(a)) for a in arrays)
        ):
            raise UsageError(
                "invalid depth stretch: increasing layer depths and theta nodes, one factor "
                "> 0 per node and 6 trend coefficients"
            )
        return out


@functools.lru_cache(maxsize=8)
def _equal_spacing(depth_mm: tuple[float, ...]) -> tuple[np.float32, np.float32] | None:
    """``(first depth, step)`` (float32) of equally spaced layer depths, else ``None``."""
    table = np.asarray(depth_mm, np.float32)
    if table.size < 2:
        return None
    step = table[1] - table[0]
    return (table[0], step) if np.allclose(np.diff(table), step, rtol=0, atol=1e-6) else None


def axis_tilt_cogs(
    points: NDArray[np.floating], shower: NDArray[np.integer], n_showers: int
) -> NDArray[np.float64]:
    """Energy-weighted centre of gravity ``[S, 2]`` (mm, x and y) of every shower's points
    (0 for a shower without energy)."""
    e = np.maximum(points[:, 3].astype(np.float64), 0.0)
    total = _segment_sum(e, shower, n_showers)
    safe = np.where(total > 0, total, 1.0)
    return np.stack(
        [
            _segment_sum(e * points[:, a].astype(np.float64), shower, n_showers) / safe
            for a in (0, 1)
        ],
        axis=1,
    )


def hit_axis_relation(
    cog_mm: NDArray[np.floating],
    slope: NDArray[np.floating],
    energies: NDArray[np.floating],
    edges_gev: Sequence[float] = AXIS_TILT_ENERGY_EDGES_GEV,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per incident-energy bin, x and y pooled: the regression slope ``k`` (1/mm) of the
    fitted-axis slope on the centre of gravity, and the residual variance; each ``[n_bins]``
    (NaN for a bin with fewer than 20 showers). ``cog_mm`` and ``slope`` are ``[S, 2]``."""
    e = np.asarray(energies, np.float64).reshape(-1)
    ks, variances = [], []
    for b in range(len(edges_gev) - 1):
        last = b == len(edges_gev) - 2
        sel = (e >= edges_gev[b]) & ((e <= edges_gev[b + 1]) if last else (e < edges_gev[b + 1]))
        c, q = cog_mm[sel].reshape(-1), slope[sel].reshape(-1)
        ok = np.isfinite(c) & np.isfinite(q)
        c, q = c[ok], q[ok]
        if c.size < 40 or c.var() <= 0:
            ks.append(np.nan)
            variances.append(np.nan)
            continue
        k = float(np.mean((c - c.mean()) * (q - q.mean())) / c.var())
        ks.append(k)
        variances.append(float(np.var(q - k * c)))
    return np.asarray(ks), np.asarray(variances)


def _layer_x_means(
    points: NDArray,
    shower: NDArray,
    theta_deg: NDArray,
    edges: NDArray,
    n_layers: int,
    min_showers: int,
) -> NDArray[np.float64]:
    """``[1 + n_bins, n_layers]``: energy-weighted mean x (mm) of each layer's points, pooled
    over the showers at normal incidence (theta < 0.5 deg; first row) and over those of each
    theta bin (NaN where a class has too few showers or a layer no energy).
    Pooling weights each shower by its energy in the layer, so that sparse layers (the first
    and last ones) do not dominate. (Points within 40 mm of the axis only: no change of the
    fitted axis; per-shower centroids averaged: shifts of 10-26 mm in the sparse layers.)"""
    layer = np.clip(np.rint(points[:, 2]).astype(np.int64), 0, n_layers - 1)
    x = points[:, 0].astype(np.float64)
    e = points[:, 3].astype(np.float64)
    theta = np.asarray(theta_deg, np.float64)
    classes = [theta < 0.5] + [
        (theta >= max(edges[k], 0.5)) & (theta <= edges[k + 1] + 1e-9)
        for k in range(len(edges) - 1)
    ]
    out = np.full((len(classes), n_layers), np.nan)
    for k, sel in enumerate(classes):
        if sel.sum() < min_showers:
            continue
        mine = sel[shower]
        w = np.bincount(layer[mine], e[mine], n_layers)
        wx = np.bincount(layer[mine], e[mine] * x[mine], n_layers)
        out[k] = np.where(w > 0, wx / np.maximum(w, 1e-300), np.nan)
    return out


def _strictly_increasing(q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Make the last axis strictly increasing (ties from empty weight ranges)."""
    q = np.maximum.accumulate(q, axis=-1)
    return q + np.arange(q.shape[-1]) * 1e-5  # ln r: 1e-5 relative per level, kept in JSON


def _map_log_radius(
    log_r: NDArray[np.float64], knots_gen: NDArray[np.float64], knots_data: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Piecewise-linear map of ``ln r`` through the knots; constant shift beyond them."""
    inner = np.interp(log_r, knots_gen, knots_data)
    below = log_r + (knots_data[0] - knots_gen[0])
    above = log_r + (knots_data[-1] - knots_gen[-1])
    return np.where(log_r < knots_gen[0], below, np.where(log_r > knots_gen[-1], above, inner))


__all__ = [
    "RADIAL_LEVELS",
    "OccupancyCorrection",
    "RadialCorrection",
    "assign_layers",
    "calibrate",
    "clip_negative_energies",
    "distribute_counts",
    "rescale_energy",
    "rescale_layer_energies",
    "shift_cog",
]
