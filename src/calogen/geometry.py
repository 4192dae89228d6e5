"""Calorimeter descriptions and the projection of point clouds into cell hits.

Two presets:

* :func:`slab` — the calorimeter of ``../shared/data``: 30 Si-W layers, a regular grid of
  5.0883 mm cells with a cell corner at the impact point, no gaps, no staggering.
* :func:`ild_ecal` — an ILD-like ECAL: the same layers and cell pitch, but cells grouped in
  wafers of 18 x 18 cells with dead gaps between wafers (about 1 mm along x) and between
  towers (about 3 mm along y), and the cell grid staggered along x from slab to slab (two
  layers share a slab and its offset).

Projection (:func:`project`) translates each shower to an impact position (mm, in the
detector frame), assigns every point to a cell, drops energy that falls in dead gaps, sums
energies per cell and applies the threshold (MeV). It is vectorised over all points of all
showers: one argsort of an integer cell key, then a segmented sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import showerdata
from numpy.typing import NDArray

from calogen.data.packed import pack

#: Cell pitch of the ILD ECAL in mm.
CELL_SIZE_MM = 5.0883
N_LAYERS = 30
#: Tungsten absorber in front of each silicon layer, mm (layers 0-19: 2.1, 20-29: 4.2).
ABSORBER_MM = tuple([2.1] * 20 + [4.2] * 10)
SILICON_MM = 0.5
#: Half a MIP in 0.5 mm of silicon, MeV.
THRESHOLD_MEV = 0.1

# Cell keys are packed into one int64: shower (24 bits) | layer (6 bits) | ix, iy (16 bits each)
_IX_OFFSET = 1 << 15


@dataclass(frozen=True)
class Calorimeter:
    """A sampling calorimeter of ``n_layers`` planes of square cells.

    Attributes:
        name: preset name.
        cell_size_mm: cell pitch (square cells).
        absorber_mm: absorber thickness in front of each sensitive layer, ``[n_layers]``.
        silicon_mm: sensitive thickness.
        threshold_mev: cell threshold (a hit needs at least this energy).
        wafer_cells: cells per wafer side (0 = one infinite wafer, no gaps).
        gap_x_mm: dead gap between wafers along x.
        gap_y_mm: dead gap between wafers (towers) along y.
        stagger_x_mm: x offset of the cell grid for each layer, ``[n_layers]``.
        grid_origin_mm: detector-frame position of the corner of wafer (0, 0) before
            staggering; the ILD preset puts the frame origin at a wafer centre, away from
            the gaps, as the papers chose their impact point.
    """

    name: str
    cell_size_mm: float = CELL_SIZE_MM
    absorber_mm: tuple[float, ...] = ABSORBER_MM
    silicon_mm: float = SILICON_MM
    threshold_mev: float = THRESHOLD_MEV
    wafer_cells: int = 0
    gap_x_mm: float = 0.0
    gap_y_mm: float = 0.0
    stagger_x_mm: tuple[float, ...] = field(default=(0.0,) * N_LAYERS)
    grid_origin_mm: tuple[float, float] = (0.0, 0.0)

    @property
    def n_layers(self) -> int:
        return len(self.absorber_mm)

    @property
    def layer_z_mm(self) -> NDArray[np.float64]:
        """Depth of the middle of each sensitive layer behind the front face, mm ``[n_layers]``."""
        pitch = np.asarray(self.absorber_mm) + self.silicon_mm
        return np.cumsum(pitch) - self.silicon_mm / 2

    def with_threshold(self, threshold_mev: float) -> Calorimeter:
        return replace(self, threshold_mev=float(threshold_mev))

    # -- cell assignment ---------------------------------------------------------------------
    def _axis_cells(
        self, coord: NDArray[np.float64], gap_mm: float
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Cell index along one axis and whether the coordinate lies in a live cell."""
        size = self.cell_size_mm
        if self.wafer_cells <= 0 or gap_mm <= 0:
            return np.floor(coord / size).astype(np.int64), np.ones(coord.shape, bool)
        wafer = self.wafer_cells * size
        period = wafer + gap_mm
        wafer_index = np.floor(coord / period)
        inside = coord - wafer_index * period
        live = inside < wafer
        cell = np.minimum(np.floor(inside / size), self.wafer_cells - 1)
        return (wafer_index * self.wafer_cells + cell).astype(np.int64), live

    def cell_index(
        self, x_mm: NDArray[np.floating], y_mm: NDArray[np.floating], layer: NDArray[np.integer]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        """Cell indices ``(ix, iy)`` of detector-frame positions and a live-area mask."""
        stagger = np.asarray(self.stagger_x_mm, dtype=np.float64)[layer] + self.grid_origin_mm[0]
        ix, live_x = self._axis_cells(np.asarray(x_mm, np.float64) - stagger, self.gap_x_mm)
        iy, live_y = self._axis_cells(
            np.asarray(y_mm, np.float64) - self.grid_origin_mm[1], self.gap_y_mm
        )
        return ix, iy, live_x & live_y

    def cell_centre(
        self, ix: NDArray[np.integer], iy: NDArray[np.integer], layer: NDArray[np.integer]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Detector-frame centre (mm) of cells ``(ix, iy)`` in ``layer``."""
        size = self.cell_size_mm

        def centre(index: NDArray[np.integer], gap: float) -> NDArray[np.float64]:
            index = np.asarray(index, dtype=np.int64)
            if self.wafer_cells <= 0 or gap <= 0:
                return (index + 0.5) * size
            wafer_index = np.floor_divide(index, self.wafer_cells)
            local = index - wafer_index * self.wafer_cells
            return wafer_index * (self.wafer_cells * size + gap) + (local + 0.5) * size

        stagger = np.asarray(self.stagger_x_mm, dtype=np.float64)[np.asarray(layer)]
        x0, y0 = self.grid_origin_mm
        return centre(ix, self.gap_x_mm) + stagger + x0, centre(iy, self.gap_y_mm) + y0


def slab() -> Calorimeter:
    """The regular Si-W slab of the shared Geant4 data (no gaps, no staggering)."""
    return Calorimeter(name="slab")


def ild_ecal() -> Calorimeter:
    """An ILD-like ECAL: 18 x 18-cell wafers, 1 mm gaps in x, 3 mm in y, staggered slabs."""
    slab_offsets = (2.474, 0.174, 2.974)  # mm, cycled over the 15 slabs
    stagger = tuple(slab_offsets[(layer // 2) % len(slab_offsets)] for layer in range(N_LAYERS))
    half_wafer = 18 * CELL_SIZE_MM / 2
    return Calorimeter(
        name="ild",
        wafer_cells=18,
        gap_x_mm=1.0,
        gap_y_mm=3.0,
        stagger_x_mm=stagger,
        grid_origin_mm=(-half_wafer, -half_wafer),
    )


PRESETS = {"slab": slab, "ild": ild_ecal}


def get_calorimeter(name: str) -> Calorimeter:
    """Preset by name (``slab`` or ``ild``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown geometry '{name}' (choose from {', '.join(PRESETS)})") from None


@dataclass
class CellHits:
    """Cell hits of many showers, one row per cell at or above threshold.

    Positions are relative to the impact point (mm); ``ix, iy`` are detector cell indices.
    Rows are sorted by shower, then layer, then cell.
    """

    shower: NDArray[np.int64]  # [H] shower index 0..n_showers-1
    layer: NDArray[np.int64]  # [H] layer index
    ix: NDArray[np.int64]  # [H]
    iy: NDArray[np.int64]  # [H]
    x_mm: NDArray[np.float32]  # [H] cell centre relative to the impact point
    y_mm: NDArray[np.float32]  # [H]
    energy_mev: NDArray[np.float32]  # [H]
    n_showers: int
    incident_energy_gev: NDArray[np.float32]  # [n_showers]
    n_layers: int = N_LAYERS

    def __len__(self) -> int:
        return int(self.shower.shape[0])

    def hits_per_shower(self) -> NDArray[np.int64]:
        return np.bincount(self.shower, minlength=self.n_showers)

    def select(self, mask: NDArray[np.bool_]) -> CellHits:
        """Sub-selection of showers by a boolean ``[n_showers]`` mask (renumbered)."""
        new_index = np.cumsum(mask) - 1
        keep = mask[self.shower]
        return CellHits(
            shower=new_index[self.shower[keep]],
            layer=self.layer[keep],
            ix=self.ix[keep],
            iy=self.iy[keep],
            x_mm=self.x_mm[keep],
            y_mm=self.y_mm[keep],
            energy_mev=self.energy_mev[keep],
            n_showers=int(mask.sum()),
            incident_energy_gev=self.incident_energy_gev[mask],
            n_layers=self.n_layers,
        )


def project(
    showers: showerdata.Showers,
    calorimeter: Calorimeter,
    impact_mm: tuple[float, float] = (0.0, 0.0),
    threshold_mev: float | None = None,
) -> CellHits:
    """Project point clouds into the cells of ``calorimeter``.

    Args:
        showers: point clouds ``(x, y, layer, e [GeV])`` relative to the impact point.
        calorimeter: the cell geometry.
        impact_mm: impact position ``(X, Y)`` in the detector frame, mm; the cell grid is
            fixed in that frame, so different impact points see different cell boundaries,
            gaps and staggering.
        threshold_mev: cell threshold; defaults to the calorimeter's (0.1 MeV).

    Returns:
        :class:`CellHits` of the cells with energy >= threshold.
    """
    threshold = calorimeter.threshold_mev if threshold_mev is None else float(threshold_mev)
    packed = pack(showers)
    n_showers = len(showers)
    if n_showers >= 1 << 24:
        raise ValueError("project at most 16.7 million showers per call (chunk the input)")
    points = packed.points
    layer = np.clip(np.rint(points[:, 2]), 0, calorimeter.n_layers - 1).astype(np.int64)
    ix, iy, live = calorimeter.cell_index(
        points[:, 0].astype(np.float64) + impact_mm[0],
        points[:, 1].astype(np.float64) + impact_mm[1],
        layer,
    )
    # one int64 key per point: shower (24 bits) | layer (6) | ix (16) | iy (16)
    key = packed.shower << 38
    key |= layer << 32
    key |= (np.clip(ix, -_IX_OFFSET, _IX_OFFSET - 1) + _IX_OFFSET) << 16
    key |= np.clip(iy, -_IX_OFFSET, _IX_OFFSET - 1) + _IX_OFFSET
    energy = points[:, 3]
    keep = live & (energy > 0)
    if not keep.all():
        key, energy = key[keep], energy[keep]
    order = np.argsort(key)
    key = key[order]
    if key.size:
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        cell_energy_mev = np.add.reduceat(energy[order].astype(np.float64), starts) * 1000.0
    else:
        starts = np.zeros(0, dtype=np.int64)
        cell_energy_mev = np.zeros(0)
    above = cell_energy_mev >= threshold
    cell_key = key[starts[above]]
    hit_shower = cell_key >> 38
    hit_layer = (cell_key >> 32) & 0x3F
    hit_ix = ((cell_key >> 16) & 0xFFFF) - _IX_OFFSET
    hit_iy = (cell_key & 0xFFFF) - _IX_OFFSET
    cx, cy = calorimeter.cell_centre(hit_ix, hit_iy, hit_layer)
    return CellHits(
        shower=hit_shower,
        layer=hit_layer,
        ix=hit_ix,
        iy=hit_iy,
        x_mm=(cx - impact_mm[0]).astype(np.float32),
        y_mm=(cy - impact_mm[1]).astype(np.float32),
        energy_mev=cell_energy_mev[above].astype(np.float32),
        n_showers=n_showers,
        incident_energy_gev=showers.energies.reshape(-1).astype(np.float32),
        n_layers=calorimeter.n_layers,
    )
