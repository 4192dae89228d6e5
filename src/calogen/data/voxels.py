"""Fixed-grid (voxel) representation of showers for the image models (BIB-AE, L2LFlows).

A :class:`VoxelGrid` is a regular grid of ``n_layers x nx x ny`` cells around the impact
point: one grid plane per calorimeter layer, square cells of ``cell_size_mm`` (the 5.0883 mm
ILD cell by default). With an even number of cells and ``centre_mm = (0, 0)`` the cell edges
lie at integer multiples of the cell size, exactly like the cells of the slab calorimeter of
the shared Geant4 data (impact point on a cell corner), so voxelising and projecting with
:func:`calogen.geometry.project` on the slab agree cell by cell.

Presets: :data:`BIBAE_GRID` (30 x 30 x 30, about +-76 mm, 99.95 % of the visible energy of
the Geant4 photons) and :data:`L2LFLOWS_GRID` (30 x 10 x 10, about +-25 mm, 98.2 %).

Functions:

* :func:`voxelise` — point clouds → dense voxels ``[N, n_layers, nx, ny]`` (GeV); energy of
  points outside the grid is dropped (:func:`containment` says how much);
* :class:`SparseVoxels` — the same, stored sparse (flat voxel index + energy per non-empty
  voxel), for training sets that would be too large dense (10k showers at 30^3 = 1 GB);
* :func:`voxels_to_points` — voxels → point clouds: one point per voxel above a cut, at the
  cell centre or (``jitter=True``) uniformly inside the cell, layer index as z. The result is
  an ordinary :class:`showerdata.Showers`, so projection and ``calogen evaluate`` treat grid
  models like every other generator.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import showerdata
from numpy.typing import NDArray

from calogen.data.io import ShowerFile
from calogen.data.packed import PackedPoints, pack, unpack
from calogen.errors import UsageError
from calogen.geometry import CELL_SIZE_MM, N_LAYERS

__all__ = [
    "BIBAE_GRID",
    "L2LFLOWS_GRID",
    "SparseVoxels",
    "VoxelGrid",
    "containment",
    "voxelise",
    "voxels_to_points",
]


@dataclass(frozen=True)
class VoxelGrid:
    """A regular ``n_layers x nx x ny`` grid around the impact point.

    Attributes:
        n_layers: grid planes, one per calorimeter layer (layer index = plane index).
        nx, ny: cells along x and y.
        cell_size_mm: cell pitch (square cells), mm.
        centre_mm: position of the grid centre relative to the impact point, mm.
    """

    n_layers: int = N_LAYERS
    nx: int = 30
    ny: int = 30
    cell_size_mm: float = CELL_SIZE_MM
    centre_mm: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("n_layers", "nx", "ny"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"voxel grid: {name} must be > 0, got {getattr(self, name)}")
        if not np.isfinite(self.cell_size_mm) or self.cell_size_mm <= 0:
            raise UsageError(f"voxel grid: cell size must be > 0, got {self.cell_size_mm}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.n_layers), int(self.nx), int(self.ny))

    @property
    def n_voxels(self) -> int:
        return int(self.n_layers * self.nx * self.ny)

    @property
    def origin_mm(self) -> tuple[float, float]:
        """Lower x and y edges of the grid, mm relative to the impact point."""
        return (
            self.centre_mm[0] - self.nx * self.cell_size_mm / 2,
            self.centre_mm[1] - self.ny * self.cell_size_mm / 2,
        )

    def x_centres(self) -> NDArray[np.float64]:
        return self.origin_mm[0] + (np.arange(self.nx) + 0.5) * self.cell_size_mm

    def y_centres(self) -> NDArray[np.float64]:
        return self.origin_mm[1] + (np.arange(self.ny) + 0.5) * self.cell_size_mm

    def flat_index(
        self, x_mm: NDArray[np.floating], y_mm: NDArray[np.floating], layer: NDArray[np.floating]
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Flat voxel index ``(layer * nx + ix) * ny + iy`` of points and an inside-grid mask."""
        x0, y0 = self.origin_mm
        ix = np.floor((np.asarray(x_mm, np.float64) - x0) / self.cell_size_mm).astype(np.int64)
        iy = np.floor((np.asarray(y_mm, np.float64) - y0) / self.cell_size_mm).astype(np.int64)
        lay = np.rint(np.asarray(layer, np.float64)).astype(np.int64)
        inside = (
            (ix >= 0)
            & (ix < self.nx)
            & (iy >= 0)
            & (iy < self.ny)
            & (lay >= 0)
            & (lay < self.n_layers)
        )
        flat = (lay * self.nx + ix) * self.ny + iy
        return np.where(inside, flat, 0), inside

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["centre_mm"] = list(self.centre_mm)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VoxelGrid:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "centre_mm" in known:
            known["centre_mm"] = tuple(float(v) for v in known["centre_mm"])
        return cls(**known)


#: The BIB-AE grid: 30 layers x 30 x 30 cells of 5.0883 mm around the impact point.
BIBAE_GRID = VoxelGrid(N_LAYERS, 30, 30)
#: The L2LFlows grid: 30 layers x 10 x 10 cells.
L2LFLOWS_GRID = VoxelGrid(N_LAYERS, 10, 10)


def _packed(showers: showerdata.Showers | PackedPoints) -> PackedPoints:
    return showers if isinstance(showers, PackedPoints) else pack(showers)


def _keys(packed: PackedPoints, grid: VoxelGrid) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Global voxel key ``shower * n_voxels + flat`` and energy of every point inside the grid."""
    pts = packed.points
    flat, inside = grid.flat_index(pts[:, 0], pts[:, 1], pts[:, 2])
    keep = inside & (pts[:, 3] != 0)
    key = packed.shower[keep] * grid.n_voxels + flat[keep]
    return key, pts[keep, 3].astype(np.float64)


def voxelise(
    showers: showerdata.Showers | PackedPoints, grid: VoxelGrid, dtype: Any = np.float32
) -> NDArray:
    """Dense voxels ``[N, n_layers, nx, ny]`` (GeV): point energies summed per voxel.

    Points outside the grid (laterally or in depth) are dropped.
    """
    packed = _packed(showers)
    n = packed.n_showers
    key, energy = _keys(packed, grid)
    dense = np.bincount(key, weights=energy, minlength=n * grid.n_voxels)
    return dense.astype(dtype, copy=False).reshape((n, *grid.shape))


def containment(showers: showerdata.Showers | PackedPoints, grid: VoxelGrid) -> NDArray[np.float64]:
    """Fraction of each shower's energy that falls inside the grid, ``[N]``."""
    packed = _packed(showers)
    n = packed.n_showers
    total = np.bincount(packed.shower, weights=packed.points[:, 3].astype(np.float64), minlength=n)
    key, energy = _keys(packed, grid)
    inside = np.bincount(key // grid.n_voxels, weights=energy, minlength=n)
    return np.divide(inside, total, out=np.ones(n), where=total != 0)


@dataclass
class SparseVoxels:
    """Voxelised showers stored sparse: non-empty voxels of shower ``i`` are
    ``index[offsets[i]:offsets[i+1]]`` (flat voxel index, int32) with ``energy`` (GeV).

    Attributes:
        grid: the voxel grid.
        index, energy, offsets: the sparse voxels.
        incident: incident energies, GeV ``[N]``.
        directions: incident directions ``[N, 3]`` or ``None`` (normal incidence).
        containment: fraction of each shower's energy inside the grid ``[N]``.
    """

    grid: VoxelGrid
    index: NDArray[np.int32]
    energy: NDArray[np.float32]
    offsets: NDArray[np.int64]
    incident: NDArray[np.float64]
    directions: NDArray[np.float64] | None
    containment: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.incident.shape[0])

    @classmethod
    def from_showers(
        cls, showers: showerdata.Showers, grid: VoxelGrid, *, straighten: bool = False
    ) -> SparseVoxels:
        """Voxelise showers (``straighten``: in their axis frame, see :meth:`from_file`)."""
        return cls.concatenate([_sparse_chunk(showers, grid, straighten)], grid)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        grid: VoxelGrid,
        max_showers: int | None = None,
        chunk_size: int = 500,
        *,
        straighten: bool = False,
        start: int = 0,
    ) -> SparseVoxels:
        """Voxelise a shower file chunk by chunk (memory: one chunk of points at a time):
        showers ``start`` (default the first) up to ``max_showers`` (an index, exclusive;
        default the end of the file).

        With ``straighten`` inclined showers are voxelised in their axis frame
        (:func:`calogen.directions.straighten_points`: the axis along z through x = y = 0,
        the inclination in the x-z plane); ``containment`` is then that of the axis frame.
        """
        parts = []
        with ShowerFile(path) as f:
            stop = len(f) if max_showers is None else min(len(f), int(max_showers))
            for chunk in f.iter_chunks(chunk_size, int(start), stop):
                parts.append(_sparse_chunk(chunk, grid, straighten))
        if not parts:
            raise UsageError(f"{path}: no showers")
        return cls.concatenate(parts, grid)

    @classmethod
    def concatenate(cls, parts: Iterable[SparseVoxels], grid: VoxelGrid) -> SparseVoxels:
        parts = list(parts)
        counts = np.concatenate([np.diff(p.offsets) for p in parts])
        dirs = [p.directions for p in parts]
        if any(d is None for d in dirs):
            directions = None
            if not all(d is None for d in dirs):
                n_each = [len(p) for p in parts]
                directions = np.concatenate(
                    [
                        np.tile([0.0, 0.0, 1.0], (n, 1)) if d is None else d
                        for d, n in zip(dirs, n_each, strict=True)
                    ]
                )
        else:
            directions = np.concatenate(dirs)  # type: ignore[arg-type]
        return cls(
            grid=grid,
            index=np.concatenate([p.index for p in parts]).astype(np.int32),
            energy=np.concatenate([p.energy for p in parts]).astype(np.float32),
            offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
            incident=np.concatenate([p.incident for p in parts]),
            directions=directions,
            containment=np.concatenate([p.containment for p in parts]),
        )

    def dense(self, rows: NDArray[np.integer] | None = None) -> NDArray[np.float32]:
        """Dense voxels ``[B, n_layers, nx, ny]`` (GeV) of showers ``rows`` (default: all)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, np.int64).reshape(-1)
        lo, hi = self.offsets[rows], self.offsets[rows + 1]
        counts = hi - lo
        starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        take = np.arange(int(counts.sum())) + starts
        owner = np.repeat(np.arange(rows.shape[0]), counts)
        out = np.zeros((rows.shape[0], self.grid.n_voxels), np.float32)
        out[owner, self.index[take]] = self.energy[take]
        return out.reshape((rows.shape[0], *self.grid.shape))

    def layer_energies(self) -> NDArray[np.float64]:
        """Energy per layer ``[N, n_layers]`` (GeV) of all showers."""
        n = len(self)
        owner = np.repeat(np.arange(n), np.diff(self.offsets))
        layer = self.index.astype(np.int64) // (self.grid.nx * self.grid.ny)
        flat = owner * self.grid.n_layers + layer
        return np.bincount(flat, weights=self.energy, minlength=n * self.grid.n_layers).reshape(
            n, self.grid.n_layers
        )

    def select(self, rows: NDArray[np.integer]) -> SparseVoxels:
        """A subset of showers (in the order of ``rows``)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        lo, hi = self.offsets[rows], self.offsets[rows + 1]
        take = (
            np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
            if rows.size
            else []
        )
        take = np.asarray(take, np.int64)
        return SparseVoxels(
            grid=self.grid,
            index=self.index[take],
            energy=self.energy[take],
            offsets=np.concatenate(([0], np.cumsum(hi - lo))).astype(np.int64),
            incident=self.incident[rows],
            directions=None if self.directions is None else self.directions[rows],
            containment=self.containment[rows],
        )


def mirror_flips(uniform: NDArray, slopes: NDArray | None, axis_frame: bool) -> NDArray[np.bool_]:
    """``[N, 2]`` whether to mirror each shower in x and in y, from uniform draws
    ``[N, 2]`` (each axis with probability 1/2) where the shower's symmetry allows it: both
    axes at normal incidence (direction slopes ``[N, 2]`` zero, or ``slopes`` ``None``), y
    only for an inclined shower in the axis frame (inclined along x), neither for one
    inclined in the detector frame (any inclination breaks the symmetry of both)."""
    flips = np.asarray(uniform) < 0.5
    if slopes is None:
        return flips
    normal = np.all(np.asarray(slopes, np.float64) == 0.0, axis=1)
    flips[:, 0] &= normal
    if not axis_frame:
        flips[:, 1] &= normal
    return flips


def mirror_voxels(voxels: NDArray | Any, flips: NDArray[np.bool_]) -> None:
    """Mirror showers of ``voxels [N, ..., X, Y]`` (numpy array or torch tensor; the last two
    axes are x and y, centred on the shower axis) in place: shower ``i`` in x where
    ``flips[i, 0]``, in y where ``flips[i, 1]``."""
    fx, fy = flips[:, 0], flips[:, 1]
    if isinstance(voxels, np.ndarray):
        voxels[fx] = voxels[fx][..., ::-1, :]
        voxels[fy] = voxels[fy][..., :, ::-1]
    else:  # torch: no negative strides
        import torch

        fx, fy = torch.as_tensor(fx), torch.as_tensor(fy)
        voxels[fx] = voxels[fx].flip(-2)
        voxels[fy] = voxels[fy].flip(-1)


def _sparse_chunk(
    showers: showerdata.Showers, grid: VoxelGrid, straighten: bool = False
) -> SparseVoxels:
    packed = pack(showers)
    if straighten and showers.directions is not None:
        from calogen.directions import straighten_points

        packed.points = straighten_points(packed.points, packed.counts, showers.directions)
    n = packed.n_showers
    key, energy = _keys(packed, grid)
    order = np.argsort(key, kind="stable")
    key, energy = key[order], energy[order]
    if key.size:
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        summed = np.add.reduceat(energy, starts)
        uniq = key[starts]
    else:
        summed = np.zeros(0)
        uniq = np.zeros(0, np.int64)
    nonzero = summed != 0
    uniq, summed = uniq[nonzero], summed[nonzero]
    owner = uniq // grid.n_voxels
    counts = np.bincount(owner, minlength=n)
    total = np.bincount(packed.shower, weights=packed.points[:, 3].astype(np.float64), minlength=n)
    inside = np.bincount(owner, weights=summed, minlength=n)
    dirs = None if showers.directions is None else np.asarray(showers.directions, np.float64)
    return SparseVoxels(
        grid=grid,
        index=(uniq % grid.n_voxels).astype(np.int32),
        energy=summed.astype(np.float32),
        offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        incident=showers.energies.reshape(-1).astype(np.float64),
        directions=dirs,
        containment=np.divide(inside, total, out=np.ones(n), where=total != 0),
    )


def voxels_to_points(
    voxels: NDArray[np.floating],
    grid: VoxelGrid,
    energies: NDArray[np.floating],
    directions: NDArray[np.floating] | None = None,
    *,
    min_energy_gev: float = 0.0,
    jitter: bool = False,
    rng: np.random.Generator | None = None,
    incline: bool = False,
) -> showerdata.Showers:
    """Point clouds from voxels: one point per voxel with energy above ``min_energy_gev``.

    Args:
        voxels: ``[N, n_layers, nx, ny]`` energies in GeV (``[N, n_voxels]`` also accepted).
        grid: the grid the voxels live on.
        energies: incident energies ``[N]`` GeV (stored with the showers).
        directions: incident directions ``[N, 3]`` to store, or ``None``.
        min_energy_gev: voxels at or below this energy make no point (negative energies never
            do).
        jitter: place each point uniformly inside its cell instead of at the centre
            (``rng`` required); the point stays strictly inside the cell so that projection
            on an aligned grid gives back the same cell.
        rng: numpy Generator for the jitter.
        incline: the voxels are in the axis frame of each shower (a grid model with
            ``axis_frame``, or :meth:`SparseVoxels.from_file` with ``straighten``): incline
            the points along ``directions`` (:func:`calogen.directions.incline_packed`).

    Returns:
        :class:`showerdata.Showers` with points ``(x mm, y mm, layer, e GeV)`` relative to the
        impact point, ordered by (layer, ix, iy) within each shower.
    """
    arr = np.asarray(voxels)
    n = arr.shape[0]
    flat = arr.reshape(n, -1)
    if flat.shape[1] != grid.n_voxels:
        raise UsageError(
            f"voxels: expected {grid.n_voxels} voxels per shower for grid {grid.shape}, "
            f"got {flat.shape[1]}"
        )
    threshold = max(float(min_energy_gev), 0.0)
    shower, index = np.nonzero(flat > threshold)
    energy = flat[shower, index].astype(np.float32)
    layer, rest = np.divmod(index, grid.nx * grid.ny)
    ix, iy = np.divmod(rest, grid.ny)
    x0, y0 = grid.origin_mm
    x = x0 + (ix + 0.5) * grid.cell_size_mm
    y = y0 + (iy + 0.5) * grid.cell_size_mm
    if jitter:
        if rng is None:
            raise UsageError("voxels_to_points: jitter needs an rng")
        half = 0.5 * grid.cell_size_mm * (1.0 - 1e-6)
        x = x + rng.uniform(-half, half, x.shape)
        y = y + rng.uniform(-half, half, y.shape)
    points = np.stack(
        [x.astype(np.float32), y.astype(np.float32), layer.astype(np.float32), energy], axis=1
    )
    packed = PackedPoints(
        points=points.reshape(-1, 4),
        shower=shower.astype(np.int64),
        counts=np.bincount(shower, minlength=n).astype(np.int64),
    )
    if incline and directions is not None:
        from calogen.directions import incline_packed

        packed.points = incline_packed(packed.points, packed.counts, directions)
    return unpack(packed, np.asarray(energies, np.float32).reshape(-1), directions)
