"""Packed point clouds: all points of many showers in one array plus a per-point shower index.

The padded ``showerdata.Showers`` layout ``[N, max_points, 4]`` is convenient on disk; the
packed layout ``points [P, 4]`` + ``shower [P]`` is what vectorised projection, calibration
and batched inference work on, without padding to the largest shower.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import showerdata
from numpy.typing import NDArray


@dataclass
class PackedPoints:
    """Points of ``n_showers`` showers; ``points[offsets[i]:offsets[i+1]]`` is shower ``i``."""

    points: NDArray[np.float32]  # [P, 4] (x mm, y mm, layer, e GeV)
    shower: NDArray[np.int64]  # [P] shower index of every point
    counts: NDArray[np.int64]  # [n_showers] points per shower

    @property
    def n_showers(self) -> int:
        return int(self.counts.shape[0])

    @property
    def offsets(self) -> NDArray[np.int64]:
        return np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)

    def select(self, showers: NDArray[np.integer]) -> PackedPoints:
        """The showers ``showers`` (indices, in that order; contiguous blocks of points as
        stored shower after shower), renumbered 0 … len(showers) − 1."""
        showers = np.asarray(showers, np.int64)
        counts = self.counts[showers]
        first = np.cumsum(counts) - counts
        idx = np.repeat(self.offsets[showers] - first, counts) + np.arange(int(counts.sum()))
        return PackedPoints(
            points=self.points[idx],
            shower=np.repeat(np.arange(len(showers), dtype=np.int64), counts),
            counts=counts,
        )


def pack(showers: showerdata.Showers) -> PackedPoints:
    """Pack end-padded showers into one point array (drops padding)."""
    counts = np.asarray(showers._num_points, dtype=np.int64)
    width = showers.points.shape[1]
    valid = np.arange(width)[None, :] < counts[:, None]
    points = showers.points[valid].astype(np.float32, copy=False)
    shower = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return PackedPoints(points=points.reshape(-1, 4), shower=shower, counts=counts)


def unpack(
    packed: PackedPoints,
    energies: NDArray[np.floating],
    directions: NDArray[np.floating] | None = None,
    pdg: int = 22,
) -> showerdata.Showers:
    """Inverse of :func:`pack`: end-padded :class:`showerdata.Showers`."""
    counts = packed.counts
    n = packed.n_showers
    width = int(counts.max()) if n else 0
    points = np.zeros((n, width, 4), dtype=np.float32)
    if n and np.all(packed.shower[1:] >= packed.shower[:-1]):
        # showers in contiguous blocks (as generated): one slice copy per shower, ~15x
        # faster than the scatter below
        for i, (first, last) in enumerate(itertools.pairwise(packed.offsets.tolist())):
            points[i, : last - first] = packed.points[first:last]
    else:
        column = np.arange(packed.points.shape[0]) - np.repeat(packed.offsets[:-1], counts)
        points[packed.shower, column] = packed.points
    return showerdata.Showers(
        points=points,
        energies=np.asarray(energies, dtype=np.float32).reshape(-1, 1),
        pdg=pdg,
        directions=None if directions is None else np.asarray(directions, np.float32),
        num_points=counts.astype(np.int32),
    )
