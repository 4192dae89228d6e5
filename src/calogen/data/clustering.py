"""Pre-clustering of Geant4 steps onto a regular sub-cell grid (CaloClouds paper, section 2).

Per layer, step energies are summed on a grid ``granularity`` times finer than the cell
(default 6 → pitch 5.0883/6 = 0.848 mm) with grid edges at integer multiples of the pitch
(the impact point sits on a grid corner); each cluster sits at its sub-cell centre. Points
outside the bounding box ``|x|, |y| < half_width`` are dropped and counted.

Written by hand rather than with ``showerdata.cluster`` because that works one shower at a
time in its own detector frame, has no bounding box and no count of what was dropped; this
one is vectorised over all steps of all showers (one argsort of an integer key).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import showerdata
from numpy.typing import NDArray

from calogen.data.packed import PackedPoints, pack, unpack
from calogen.geometry import CELL_SIZE_MM, Calorimeter, project


@dataclass
class ClusteringResult:
    """Clustered showers and what the bounding box removed."""

    showers: showerdata.Showers
    dropped_points: int
    dropped_energy_gev: float
    input_points: int


def cluster_steps(
    steps: showerdata.Showers,
    granularity: int = 6,
    cell_size_mm: float = CELL_SIZE_MM,
    half_width_mm: float = 200.0,
) -> ClusteringResult:
    """Cluster raw steps ``(x, y, layer, e)`` of many showers onto the sub-cell grid.

    Args:
        steps: raw steps as showers (positions in mm relative to the impact point).
        granularity: sub-cells per cell side (6 → 36 sub-cells per cell).
        cell_size_mm: cell pitch.
        half_width_mm: bounding box half width; steps with ``|x|`` or ``|y|`` >= it are dropped.

    Returns:
        :class:`ClusteringResult` with the clustered showers (points sorted by layer, then
        x, then y) and the number and energy of dropped steps.
    """
    if granularity < 1:
        raise ValueError(f"granularity must be >= 1, got {granularity}")
    packed = pack(steps)
    pts = packed.points
    pitch = cell_size_mm / granularity
    inside = (np.abs(pts[:, 0]) < half_width_mm) & (np.abs(pts[:, 1]) < half_width_mm)
    positive = pts[:, 3] > 0
    dropped = (~inside) & positive
    keep = inside & positive
    pts_kept = pts[keep]
    shower = packed.shower[keep]

    half_cells = int(np.ceil(half_width_mm / pitch)) + 1
    ix = np.floor(pts_kept[:, 0].astype(np.float64) / pitch).astype(np.int64) + half_cells
    iy = np.floor(pts_kept[:, 1].astype(np.float64) / pitch).astype(np.int64) + half_cells
    layer = np.rint(pts_kept[:, 2]).astype(np.int64)
    span = 2 * half_cells + 1
    n_layers = int(layer.max()) + 1 if layer.size else 1
    key = ((shower * n_layers + layer) * span + ix) * span + iy
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    if key_sorted.size:
        starts = np.flatnonzero(np.concatenate(([True], key_sorted[1:] != key_sorted[:-1])))
        energy = np.add.reduceat(pts_kept[order, 3].astype(np.float64), starts)
    else:
        starts = np.zeros(0, dtype=np.int64)
        energy = np.zeros(0)
    first = order[starts]
    out = np.empty((starts.size, 4), dtype=np.float32)
    out[:, 0] = (ix[first] - half_cells + 0.5) * pitch
    out[:, 1] = (iy[first] - half_cells + 0.5) * pitch
    out[:, 2] = layer[first]
    out[:, 3] = energy
    out_shower = shower[first]
    counts = np.bincount(out_shower, minlength=packed.n_showers).astype(np.int64)
    clustered = unpack(
        PackedPoints(points=out, shower=out_shower, counts=counts),
        energies=steps.energies,
        directions=steps.directions,
    )
    return ClusteringResult(
        showers=clustered,
        dropped_points=int(dropped.sum()),
        dropped_energy_gev=float(pts[dropped, 3].sum()),
        input_points=int(positive.sum()),
    )


@dataclass
class ClosureResult:
    """Cell-by-cell comparison of raw steps and their clusters, summed over all showers.

    ``steps_mev`` and ``clusters_mev`` are the summed cell energies (no threshold) of the
    cells listed in ``layer, ix, iy``; ``relative`` is ``|clusters - steps| / steps``.
    """

    layer: NDArray[np.int64]
    ix: NDArray[np.int64]
    iy: NDArray[np.int64]
    steps_mev: NDArray[np.float64]
    clusters_mev: NDArray[np.float64]

    @property
    def relative(self) -> NDArray[np.float64]:
        return np.abs(self.clusters_mev - self.steps_mev) / np.maximum(self.steps_mev, 1e-12)

    def core_cells(self, energy_fraction: float = 0.9) -> NDArray[np.bool_]:
        """Mask of the highest-energy cells that together hold ``energy_fraction`` of the energy."""
        order = np.argsort(-self.steps_mev)
        cumulative = np.cumsum(self.steps_mev[order]) / self.steps_mev.sum()
        mask = np.zeros(self.steps_mev.size, dtype=bool)
        mask[order[: int(np.searchsorted(cumulative, energy_fraction)) + 1]] = True
        return mask

    def summary(self, energy_fraction: float = 0.9) -> dict[str, float]:
        core = self.core_cells(energy_fraction)
        rel = self.relative[core]
        weights = self.steps_mev / self.steps_mev.sum()
        return {
            "cells": float(self.steps_mev.size),
            "core_cells": float(core.sum()),
            "core_median_relative": float(np.median(rel)),
            "core_fraction_below_2pc": float((rel < 0.02).mean()),
            "core_fraction_below_10pc": float((rel < 0.10).mean()),
            "energy_weighted_mean_relative": float((weights * self.relative).sum()),
            "total_ratio": float(self.clusters_mev.sum() / self.steps_mev.sum()),
        }


def clustering_closure(
    steps: showerdata.Showers,
    calorimeter: Calorimeter,
    impact_mm: tuple[float, float] = (0.0, 0.0),
    granularity: int = 6,
) -> ClosureResult:
    """Closure test of the CaloClouds paper's appendix A.

    Clusters the raw steps, projects steps and clusters into the same cells (no threshold)
    and sums each cell over all showers, as in the paper's overlay of many showers.
    """
    clusters = cluster_steps(steps, granularity=granularity).showers
    tables = []
    for showers in (steps, clusters):
        hits = project(showers, calorimeter, impact_mm, threshold_mev=0.0)
        key = (hits.layer << 40) | ((hits.ix + (1 << 19)) << 20) | (hits.iy + (1 << 19))
        tables.append((key, hits.energy_mev.astype(np.float64)))
    keys = np.union1d(tables[0][0], tables[1][0])
    sums = []
    for key, energy in tables:
        sums.append(np.bincount(np.searchsorted(keys, key), weights=energy, minlength=keys.size))
    return ClosureResult(
        layer=keys >> 40,
        ix=((keys >> 20) & 0xFFFFF) - (1 << 19),
        iy=(keys & 0xFFFFF) - (1 << 19),
        steps_mev=sums[0],
        clusters_mev=sums[1],
    )
