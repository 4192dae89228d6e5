"""Shower observables after projection into calorimeter cells.

Everything here works on :class:`calogen.geometry.CellHits` (one row per cell at or above
threshold, energies in MeV, positions in mm relative to the impact point) and is vectorised
over all hits of all showers with :func:`numpy.bincount`; there are no per-shower Python loops.

Per-shower observables (:class:`ShowerFeatures`):

* visible energy ``E_vis`` (MeV): sum of the cell energies;
* number of hits (occupancy): cells at or above threshold;
* centre of gravity x, y (mm, energy weighted cell centres) and z (energy weighted layer
  index; in mm behind the front face too when a :class:`~calogen.geometry.Calorimeter` is
  given, via ``Calorimeter.layer_z_mm``). Showers without any hit have an undefined centre of
  gravity: it is ``NaN`` in :class:`ShowerFeatures` and 0 (the shower axis, layer 0) in
  :meth:`ShowerFeatures.matrix`;
* energy and hits per layer ``[N, n_layers]`` (MeV, counts);
* the radial profile ``[N, n_radial]``: energy (MeV) per bin of the distance of the cell
  centre to the shower axis in its layer, in fine bins for plots. The axis is the line of
  the incident direction through the impact point: it crosses layer ``l`` at
  ``depth_l * tan(theta) * (cos phi, sin phi)`` (:func:`calogen.directions.axis_offset_mm`),
  so for normal incidence it is x = y = 0 and the numbers are those of the z axis;
* the fitted shower axis: a straight line fitted to the energy-weighted centroids of the
  cells of each layer against the layer depth, weighted by the layer energy
  (:func:`calogen.directions.fit_axis`): its polar angle ``axis_theta_deg``, its slopes
  ``axis_slope_x = dx/dz`` and ``axis_slope_y = dy/dz`` and its azimuth ``axis_phi_deg``
  (circular and undefined at theta = 0, so no W1 row); the per-layer centroids are kept too;
* the 25 per-shower features of the CaloClouds II evaluation (arXiv:2309.05704):
  occupancy, sampling fraction ``E_vis / E_inc`` (both in MeV), 10 longitudinal energy bins,
  10 radial energy bins, CoG x, y, z (:meth:`ShowerFeatures.matrix`), and with
  ``axis=True`` the three fitted-axis observables after them (:data:`AXIS_FEATURE_NAMES`);
* the conditions of each shower, as a classifier sees them (:meth:`ShowerFeatures.conditions`):
  log(E_inc / GeV), cos(theta) and the two slopes of the incident direction.

The "26th feature" of CaloClouds II is the cell energy. It is a per-*cell* quantity (a
shower has hundreds to thousands of values), so it is not a column of the per-shower feature
matrix: the Wasserstein table compares the distributions of all cell energies as a row of its
own (:func:`calogen.evaluation.metrics.w1_table`), and the classifier / FPD / KPD use the 25
per-shower features only (as the CaloClouds II classifier does).

Binning conventions (fixed so that all 30 layers and every radius up to 300 mm are counted):

* longitudinal bins, layer edges ``0, 8, 11, 13, 15, 16, 18, 19, 21, 24, 29``: bin ``k`` holds
  layers ``edges[k] <= layer < edges[k+1]``, except the LAST bin, which includes its upper edge
  (layers 24-29), as in the CaloClouds II code. Layers outside ``[0, 29]`` are not counted.
* radial bins, edges in mm ``0, 6.558, ..., 68.808, 300``: half-open ``[lo, hi)`` bins except the
  last, which includes 300 mm; cells further than 300 mm from the axis are not counted (they
  do not exist in the 400 mm x 400 mm slab of the shared data).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import showerdata
from numpy.typing import NDArray

from calogen.data.packed import pack
from calogen.directions import angles_from_directions, axis_slopes, fit_axis
from calogen.geometry import Calorimeter, CellHits, slab

#: Layer edges of the 10 longitudinal energy bins of CaloClouds II (last edge inclusive).
LONGITUDINAL_EDGES: tuple[int, ...] = (0, 8, 11, 13, 15, 16, 18, 19, 21, 24, 29)
#: Radial edges (mm) of the 10 radial energy bins of CaloClouds II (last edge inclusive).
RADIAL_EDGES_MM: tuple[float, ...] = (
    0.0,
    6.558,
    9.849,
    12.96,
    17.028,
    23.434,
    33.609,
    40.119,
    48.491,
    68.808,
    300.0,
)
#: Fine radial bins for the radial-profile plot: one cell pitch (5.0883 mm) wide, 0-300 mm.
RADIAL_PROFILE_EDGES_MM: NDArray[np.float64] = np.append(np.arange(0.0, 300.0, 5.0883), 300.0)
#: Log-spaced cell-energy bins, MeV (20 per decade, 0.01 MeV - 10 GeV).
CELL_ENERGY_EDGES_MEV: NDArray[np.float64] = np.logspace(-2.0, 4.0, 121)

N_LONGITUDINAL = len(LONGITUDINAL_EDGES) - 1
N_RADIAL = len(RADIAL_EDGES_MM) - 1

#: Names of the fitted-axis observables appended by ``ShowerFeatures.matrix(axis=True)``:
#: polar angle of the fitted axis (deg) and its slopes dx/dz, dy/dz.
AXIS_FEATURE_NAMES: tuple[str, ...] = ("axis_theta", "axis_slope_x", "axis_slope_y")
#: Names of the condition columns of :meth:`ShowerFeatures.conditions`.
CONDITION_NAMES: tuple[str, ...] = ("log_energy", "cos_theta", "slope_x", "slope_y")


def feature_names() -> list[str]:
    """Names of the 25 per-shower features, in the column order of :meth:`ShowerFeatures.matrix`."""
    return (
        ["occupancy", "sampling_fraction"]
        + [f"longitudinal_{k}" for k in range(N_LONGITUDINAL)]
        + [f"radial_{k}" for k in range(N_RADIAL)]
        + ["cog_x", "cog_y", "cog_z"]
    )


def observable_names(axis: bool = True) -> list[str]:
    """:func:`feature_names` followed (``axis=True``) by :data:`AXIS_FEATURE_NAMES`."""
    return feature_names() + (list(AXIS_FEATURE_NAMES) if axis else [])


def longitudinal_bin_labels() -> list[str]:
    """Human-readable layer ranges of the 10 longitudinal bins, e.g. ``'layers 0-7'``."""
    edges = LONGITUDINAL_EDGES
    labels = []
    for k in range(N_LONGITUDINAL):
        hi = edges[k + 1] if k == N_LONGITUDINAL - 1 else edges[k + 1] - 1
        labels.append(f"layer {hi}" if hi == edges[k] else f"layers {edges[k]}-{hi}")
    return labels


def radial_bin_labels() -> list[str]:
    """Human-readable radius ranges (mm) of the 10 radial bins."""
    e = RADIAL_EDGES_MM
    return [f"{e[k]:g}-{e[k + 1]:g} mm" for k in range(N_RADIAL)]


def _bin_index(
    values: NDArray[np.floating], edges: NDArray[np.floating] | tuple[float, ...]
) -> NDArray[np.int64]:
    """Bin index of ``values`` for half-open bins with an inclusive last edge; -1 outside."""
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, values, side="right").astype(np.int64) - 1
    n_bins = len(edges) - 1
    index[values == edges[-1]] = n_bins - 1
    index[(values < edges[0]) | (values > edges[-1]) | ~np.isfinite(values)] = -1
    return index


def _binned_sum(
    shower: NDArray[np.int64],
    index: NDArray[np.int64],
    weights: NDArray[np.floating] | None,
    n_showers: int,
    n_bins: int,
) -> NDArray[np.float64]:
    """``[n_showers, n_bins]`` sums of ``weights`` (counts if None) per shower and bin."""
    inside = index >= 0
    flat = shower[inside] * n_bins + index[inside]
    w = None if weights is None else weights[inside]
    return np.bincount(flat, weights=w, minlength=n_showers * n_bins).reshape(n_showers, n_bins)


def _depth_mm(calorimeter: Calorimeter | None, n_layers: int) -> NDArray[np.float64]:
    """Layer depths (mm) of ``calorimeter`` (the slab's when None), ``[n_layers]``."""
    depth = np.asarray((calorimeter or slab()).layer_z_mm, dtype=np.float64)
    if depth.size < n_layers:
        raise ValueError(f"geometry has {depth.size} layers, the hits {n_layers}")
    return depth[:n_layers]


def axis_relative_xy(
    hits: CellHits,
    directions: NDArray[np.floating] | None = None,
    calorimeter: Calorimeter | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Cell centres (mm) relative to the shower axis in their layer, ``[H]`` each.

    ``directions`` ``[n_showers, 3]``: incident unit vectors; None means normal incidence (the
    axis is x = y = 0 and the positions are returned unchanged). The axis crosses layer ``l``
    at ``depth_l * (dx/dz, dy/dz)`` with the depths of ``calorimeter`` (the slab's if None).
    """
    x = np.asarray(hits.x_mm, dtype=np.float64)
    y = np.asarray(hits.y_mm, dtype=np.float64)
    if directions is None:
        return x, y
    slopes = axis_slopes(directions)
    if slopes.shape[0] != hits.n_showers:
        raise ValueError(f"{slopes.shape[0]} directions for {hits.n_showers} showers")
    depth = _depth_mm(calorimeter, hits.n_layers)
    layer = np.clip(np.asarray(hits.layer, dtype=np.int64), 0, hits.n_layers - 1)
    shower = np.asarray(hits.shower, dtype=np.int64)
    return x - slopes[shower, 0] * depth[layer], y - slopes[shower, 1] * depth[layer]


def cell_radius_mm(
    hits: CellHits,
    directions: NDArray[np.floating] | None = None,
    calorimeter: Calorimeter | None = None,
) -> NDArray[np.float64]:
    """Distance (mm) of every hit cell centre to the shower axis in its layer, ``[H]``.

    Normal incidence (``directions`` None): the distance to x = y = 0. See
    :func:`axis_relative_xy`.
    """
    return np.hypot(*axis_relative_xy(hits, directions, calorimeter))


def cell_energies(hits: CellHits) -> NDArray[np.float32]:
    """All cell energies (MeV), ``[H]`` (the cell-energy spectrum before histogramming)."""
    return hits.energy_mev


def cell_energy_histogram(
    hits: CellHits, edges_mev: NDArray[np.floating] = CELL_ENERGY_EDGES_MEV
) -> NDArray[np.int64]:
    """Counts of cell energies (MeV) in ``edges_mev`` (values outside are not counted)."""
    counts, _ = np.histogram(hits.energy_mev, bins=edges_mev)
    return counts.astype(np.int64)


@dataclass
class ShowerFeatures:
    """Per-shower observables of ``N`` showers (arrays of length ``N`` unless noted).

    Attributes:
        incident_energy_gev: incident energy, GeV.
        visible_energy_mev: sum of cell energies above threshold, MeV.
        n_hits: number of cells above threshold (occupancy).
        cog_x_mm, cog_y_mm: energy-weighted centre of gravity, mm from the impact point
            (NaN for showers without hits).
        cog_z_layer: energy-weighted mean layer index (NaN without hits).
        cog_z_mm: energy-weighted depth of the sensitive layers, mm behind the front face
            (NaN without hits; all NaN if no calorimeter was given).
        energy_per_layer_mev: ``[N, n_layers]`` energy per layer, MeV.
        hits_per_layer: ``[N, n_layers]`` hits per layer.
        longitudinal_mev: ``[N, 10]`` energy in the CaloClouds II layer bins, MeV.
        radial_mev: ``[N, 10]`` energy in the CaloClouds II radial bins (radius from the
            shower axis in each layer), MeV.
        radial_profile_mev: ``[N, n_fine]`` energy in the fine radial bins
            :data:`RADIAL_PROFILE_EDGES_MM`, MeV.
        directions: ``[N, 3]`` incident unit vectors (``(0, 0, 1)``: normal incidence).
        layer_cog_x_mm, layer_cog_y_mm: ``[N, n_layers]`` energy-weighted centroid of the
            cells of each layer, mm from the impact point (NaN for empty layers).
        axis_slope_x, axis_slope_y: slopes dx/dz, dy/dz of the fitted shower axis
            (NaN with fewer than two layers hit).
        axis_theta_deg, axis_phi_deg: polar angle and azimuth of the fitted axis, deg.
    """

    incident_energy_gev: NDArray[np.float64]
    visible_energy_mev: NDArray[np.float64]
    n_hits: NDArray[np.int64]
    cog_x_mm: NDArray[np.float64]
    cog_y_mm: NDArray[np.float64]
    cog_z_layer: NDArray[np.float64]
    cog_z_mm: NDArray[np.float64]
    energy_per_layer_mev: NDArray[np.float64]
    hits_per_layer: NDArray[np.int64]
    longitudinal_mev: NDArray[np.float64]
    radial_mev: NDArray[np.float64]
    radial_profile_mev: NDArray[np.float64]
    directions: NDArray[np.float64]
    layer_cog_x_mm: NDArray[np.float64]
    layer_cog_y_mm: NDArray[np.float64]
    axis_slope_x: NDArray[np.float64]
    axis_slope_y: NDArray[np.float64]
    axis_theta_deg: NDArray[np.float64]
    axis_phi_deg: NDArray[np.float64]
    radial_profile_edges_mm: NDArray[np.float64] = field(
        default_factory=lambda: RADIAL_PROFILE_EDGES_MM.copy()
    )

    def __len__(self) -> int:
        return int(self.incident_energy_gev.shape[0])

    @property
    def sampling_fraction(self) -> NDArray[np.float64]:
        """``E_vis / E_inc`` (both in MeV), dimensionless."""
        return self.visible_energy_mev / (self.incident_energy_gev * 1000.0)

    @property
    def incident_theta_deg(self) -> NDArray[np.float64]:
        """Polar angle of the incident direction to the calorimeter normal, deg."""
        return angles_from_directions(self.directions)[0]

    @property
    def incident_phi_deg(self) -> NDArray[np.float64]:
        """Azimuth of the incident direction in [0, 360) deg (0 at normal incidence)."""
        return angles_from_directions(self.directions)[1]

    def matrix(
        self, nan_to: float = 0.0, *, axis: bool = False
    ) -> tuple[NDArray[np.float64], list[str]]:
        """The 25 per-shower features ``[N, 25]`` and their names (:func:`feature_names`).

        Columns: occupancy (hits), sampling fraction (E_vis/E_inc), 10 longitudinal bins (MeV),
        10 radial bins (MeV, radius from the shower axis), CoG x (mm), CoG y (mm), CoG z (layer
        index); with ``axis`` also the fitted-axis polar angle (deg) and slopes dx/dz, dy/dz
        (:data:`AXIS_FEATURE_NAMES`, ``[N, 28]``). Undefined values (the centre of gravity of
        showers without hits, the axis of showers with fewer than two layers hit) are
        replaced by ``nan_to``.
        """
        columns = [
            self.n_hits[:, None].astype(np.float64),
            self.sampling_fraction[:, None],
            self.longitudinal_mev,
            self.radial_mev,
            self.cog_x_mm[:, None],
            self.cog_y_mm[:, None],
            self.cog_z_layer[:, None],
        ]
        if axis:
            columns += [
                self.axis_theta_deg[:, None],
                self.axis_slope_x[:, None],
                self.axis_slope_y[:, None],
            ]
        matrix = np.concatenate(columns, axis=1).astype(np.float64)
        matrix[~np.isfinite(matrix)] = nan_to
        return matrix, observable_names(axis)

    def conditions(self) -> tuple[NDArray[np.float64], list[str]]:
        """What each shower was asked for, ``[N, 4]``: log(E_inc / GeV), cos(theta) and the
        slopes dx/dz, dy/dz of the incident direction (:data:`CONDITION_NAMES`)."""
        d = np.asarray(self.directions, dtype=np.float64)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        slopes = axis_slopes(d)
        columns = [
            np.log(np.asarray(self.incident_energy_gev, np.float64))[:, None],
            d[:, 2:3],
            slopes,
        ]
        return np.concatenate(columns, axis=1), list(CONDITION_NAMES)

    def select(self, mask_or_index: NDArray[np.bool_] | NDArray[np.integer]) -> ShowerFeatures:
        """Subset of showers by a boolean mask or an index array."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value if f.name == "radial_profile_edges_mm" else value[mask_or_index]
        return ShowerFeatures(**values)

    @classmethod
    def concatenate(cls, parts: list[ShowerFeatures]) -> ShowerFeatures:
        """Join the features of several chunks (same binning) into one object."""
        if not parts:
            raise ValueError("nothing to concatenate")
        values = {}
        for f in fields(cls):
            if f.name == "radial_profile_edges_mm":
                values[f.name] = parts[0].radial_profile_edges_mm
            else:
                values[f.name] = np.concatenate([getattr(p, f.name) for p in parts], axis=0)
        return cls(**values)


def shower_features(
    hits: CellHits,
    calorimeter: Calorimeter | None = None,
    radial_profile_edges_mm: NDArray[np.floating] = RADIAL_PROFILE_EDGES_MM,
    directions: NDArray[np.floating] | None = None,
) -> ShowerFeatures:
    """Per-shower observables of all showers in ``hits`` (vectorised, no per-shower loops).

    Args:
        hits: projected cell hits (energies in MeV, positions in mm from the impact point).
        calorimeter: used for ``cog_z_mm`` and the layer depths of the shower axis
            (``Calorimeter.layer_z_mm``; the slab's depths when None, and ``cog_z_mm`` NaN).
        radial_profile_edges_mm: fine radial bins for :attr:`ShowerFeatures.radial_profile_mev`.
        directions: ``[n_showers, 3]`` incident unit vectors; None = normal incidence. Radii
            are measured from the shower axis in each layer (:func:`axis_relative_xy`).

    Returns:
        :class:`ShowerFeatures` of ``hits.n_showers`` showers.
    """
    n = int(hits.n_showers)
    n_layers = int(hits.n_layers)
    shower = np.asarray(hits.shower, dtype=np.int64)
    layer = np.asarray(hits.layer, dtype=np.int64)
    energy = np.asarray(hits.energy_mev, dtype=np.float64)
    x = np.asarray(hits.x_mm, dtype=np.float64)
    y = np.asarray(hits.y_mm, dtype=np.float64)

    e_vis = np.bincount(shower, weights=energy, minlength=n)
    n_hits = np.bincount(shower, minlength=n).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(e_vis > 0, e_vis, np.nan)
        cog_x = np.bincount(shower, weights=energy * x, minlength=n) / norm
        cog_y = np.bincount(shower, weights=energy * y, minlength=n) / norm
        cog_z = np.bincount(shower, weights=energy * layer, minlength=n) / norm
        if calorimeter is not None:
            z_mm = np.asarray(calorimeter.layer_z_mm, dtype=np.float64)[layer]
            cog_z_mm = np.bincount(shower, weights=energy * z_mm, minlength=n) / norm
        else:
            cog_z_mm = np.full(n, np.nan)

    in_layers = (layer >= 0) & (layer < n_layers)
    layer_index = np.where(in_layers, layer, -1)
    e_layer = _binned_sum(shower, layer_index, energy, n, n_layers)
    h_layer = _binned_sum(shower, layer_index, None, n, n_layers).astype(np.int64)

    long_index = _bin_index(layer.astype(np.float64), np.asarray(LONGITUDINAL_EDGES, np.float64))
    e_long = _binned_sum(shower, long_index, energy, n, N_LONGITUDINAL)

    radius = np.hypot(*axis_relative_xy(hits, directions, calorimeter))
    e_radial = _binned_sum(shower, _bin_index(radius, RADIAL_EDGES_MM), energy, n, N_RADIAL)
    fine = np.asarray(radial_profile_edges_mm, dtype=np.float64)
    e_profile = _binned_sum(shower, _bin_index(radius, fine), energy, n, len(fine) - 1)

    with np.errstate(invalid="ignore", divide="ignore"):
        layer_norm = np.where(e_layer > 0, e_layer, np.nan)
        layer_cog_x = _binned_sum(shower, layer_index, energy * x, n, n_layers) / layer_norm
        layer_cog_y = _binned_sum(shower, layer_index, energy * y, n, n_layers) / layer_norm
    axis = fit_axis(layer_cog_x, layer_cog_y, e_layer, _depth_mm(calorimeter, n_layers))
    if directions is None:
        dirs = np.zeros((n, 3))
        dirs[:, 2] = 1.0
    else:
        dirs = np.asarray(directions, dtype=np.float64).reshape(n, 3)

    return ShowerFeatures(
        incident_energy_gev=np.asarray(hits.incident_energy_gev, dtype=np.float64).reshape(-1),
        visible_energy_mev=e_vis,
        n_hits=n_hits,
        cog_x_mm=cog_x,
        cog_y_mm=cog_y,
        cog_z_layer=cog_z,
        cog_z_mm=cog_z_mm,
        energy_per_layer_mev=e_layer,
        hits_per_layer=h_layer,
        longitudinal_mev=e_long,
        radial_mev=e_radial,
        radial_profile_mev=e_profile,
        directions=dirs,
        layer_cog_x_mm=layer_cog_x,
        layer_cog_y_mm=layer_cog_y,
        axis_slope_x=axis["slope_x"],
        axis_slope_y=axis["slope_y"],
        axis_theta_deg=axis["theta_deg"],
        axis_phi_deg=axis["phi_deg"],
        radial_profile_edges_mm=fine.copy(),
    )


def radial_profile(
    hits: CellHits,
    edges_mm: NDArray[np.floating] = RADIAL_PROFILE_EDGES_MM,
    directions: NDArray[np.floating] | None = None,
    calorimeter: Calorimeter | None = None,
) -> NDArray[np.float64]:
    """Total energy (MeV, summed over all showers) per radial bin of ``edges_mm``; radius from
    the shower axis in each layer (``directions`` None: normal incidence)."""
    radius = cell_radius_mm(hits, directions, calorimeter)
    index = _bin_index(radius, np.asarray(edges_mm, np.float64))
    inside = index >= 0
    return np.bincount(
        index[inside],
        weights=hits.energy_mev[inside].astype(np.float64),
        minlength=len(edges_mm) - 1,
    )


def longitudinal_profile(hits: CellHits) -> NDArray[np.float64]:
    """Total energy (MeV, summed over all showers) per layer, ``[n_layers]``."""
    inside = (hits.layer >= 0) & (hits.layer < hits.n_layers)
    return np.bincount(
        hits.layer[inside],
        weights=hits.energy_mev[inside].astype(np.float64),
        minlength=hits.n_layers,
    )


# ---------------------------------------------------------------------------------------------
# accumulation over the chunks of a file
# ---------------------------------------------------------------------------------------------


@dataclass
class DisplayShower:
    """One shower kept for event displays.

    Attributes:
        incident_energy_gev: incident energy, GeV.
        points: ``[P, 4]`` point cloud ``(x mm, y mm, layer, e GeV)`` relative to the impact point.
        hits: its cell hits (a :class:`CellHits` of one shower).
    """

    incident_energy_gev: float
    points: NDArray[np.float32]
    hits: CellHits


@dataclass
class SampleObservables:
    """Everything the report needs about one shower file.

    Attributes:
        label: name shown in tables and legends.
        features: per-shower observables of all showers.
        cell_edges_mev: cell-energy histogram bin edges, MeV.
        cell_counts: cell-energy histogram counts (all cells of all showers).
        cell_sample_mev: bounded uniform random subsample of all cell energies, MeV.
        cell_sample_shower: shower index of each subsampled cell.
        n_cells: number of cells of all showers.
        cell_moments: ``{"mean", "std", "log10_mean", "log10_std"}`` of all cell energies (MeV).
        display: a shower for event displays (None if the file had no showers).
    """

    label: str
    features: ShowerFeatures
    cell_edges_mev: NDArray[np.float64]
    cell_counts: NDArray[np.int64]
    cell_sample_mev: NDArray[np.float64]
    cell_sample_shower: NDArray[np.int64]
    n_cells: int
    cell_moments: dict[str, float]
    display: DisplayShower | None = None

    @property
    def n_showers(self) -> int:
        return len(self.features)


class ObservableAccumulator:
    """Accumulate observables chunk by chunk with bounded memory.

    Per-shower features are kept for every shower (about 1 kB per shower). Cell energies are
    kept as a histogram (all cells), running moments (all cells) and a uniform random
    subsample of at most ``max_cells`` values (bottom-k sampling on random keys), so that
    files of 100k showers (10^8 cells) fit in memory.

    Args:
        label: name of the sample.
        calorimeter: geometry (for ``cog_z_mm``).
        max_cells: size of the cell-energy subsample.
        seed: seed of the subsampling.
        display_energy_gev: the display shower is the one closest to this incident energy
            within the first chunk.
        cell_edges_mev: cell-energy histogram edges, MeV.
    """

    def __init__(
        self,
        label: str,
        calorimeter: Calorimeter | None = None,
        *,
        max_cells: int = 1_000_000,
        seed: int = 0,
        display_energy_gev: float = 90.0,
        cell_edges_mev: NDArray[np.floating] = CELL_ENERGY_EDGES_MEV,
    ) -> None:
        if max_cells <= 0:
            raise ValueError(f"max_cells must be positive, got {max_cells}")
        self.label = label
        self.calorimeter = calorimeter
        self.max_cells = int(max_cells)
        self.display_energy_gev = float(display_energy_gev)
        self.cell_edges_mev = np.asarray(cell_edges_mev, dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self._parts: list[ShowerFeatures] = []
        self._counts = np.zeros(len(self.cell_edges_mev) - 1, dtype=np.int64)
        self._sample = np.zeros(0, dtype=np.float64)
        self._sample_shower = np.zeros(0, dtype=np.int64)
        self._keys = np.zeros(0, dtype=np.float64)
        self._n_cells = 0
        self._sums = np.zeros(4, dtype=np.float64)  # sum e, sum e^2, sum log e, sum (log e)^2
        self._n_positive = 0
        self._n_showers = 0
        self.display: DisplayShower | None = None

    def add(
        self,
        hits: CellHits,
        showers: showerdata.Showers | None = None,
        directions: NDArray[np.floating] | None = None,
    ) -> None:
        """Add the cell hits of one chunk (and its point clouds, for the event display).

        ``directions`` ``[n, 3]``: incident directions of the chunk's showers; default those of
        ``showers`` (normal incidence without either).
        """
        if directions is None and showers is not None and showers.directions is not None:
            directions = showers.directions
        self._parts.append(shower_features(hits, self.calorimeter, directions=directions))
        energy = np.asarray(hits.energy_mev, dtype=np.float64)
        self._counts += np.histogram(energy, bins=self.cell_edges_mev)[0]
        self._n_cells += energy.size
        positive = energy[energy > 0]
        log_e = np.log10(positive)
        self._n_positive += positive.size
        self._sums += (energy.sum(), (energy**2).sum(), log_e.sum(), (log_e**2).sum())
        self._subsample(energy, np.asarray(hits.shower, np.int64) + self._n_showers)
        if self.display is None and hits.n_showers > 0:
            self._keep_display(hits, showers)
        self._n_showers += hits.n_showers

    def _subsample(self, energy: NDArray[np.float64], shower: NDArray[np.int64]) -> None:
        keys = self._rng.random(energy.size)
        values = np.concatenate([self._sample, energy])
        owners = np.concatenate([self._sample_shower, shower])
        keys = np.concatenate([self._keys, keys])
        if keys.size > self.max_cells:
            keep = np.argpartition(keys, self.max_cells - 1)[: self.max_cells]
            values, owners, keys = values[keep], owners[keep], keys[keep]
        self._sample, self._sample_shower, self._keys = values, owners, keys

    def _keep_display(self, hits: CellHits, showers: showerdata.Showers | None) -> None:
        energies = np.asarray(hits.incident_energy_gev, dtype=np.float64)
        index = int(np.argmin(np.abs(energies - self.display_energy_gev)))
        mask = np.zeros(hits.n_showers, dtype=bool)
        mask[index] = True
        if showers is not None:
            packed = pack(showers[index : index + 1])
            points = packed.points.copy()
        else:
            points = np.zeros((0, 4), dtype=np.float32)
        self.display = DisplayShower(float(energies[index]), points, hits.select(mask))

    def result(self) -> SampleObservables:
        """The accumulated observables (the subsample is returned in random order)."""
        if not self._parts:
            raise ValueError(f"{self.label}: no showers were added")
        n = max(self._n_cells, 1)
        n_pos = max(self._n_positive, 1)
        mean = self._sums[0] / n
        var = max(self._sums[1] / n - mean**2, 0.0)
        log_mean = self._sums[2] / n_pos
        log_var = max(self._sums[3] / n_pos - log_mean**2, 0.0)
        order = self._rng.permutation(self._sample.size)
        return SampleObservables(
            label=self.label,
            features=ShowerFeatures.concatenate(self._parts),
            cell_edges_mev=self.cell_edges_mev.copy(),
            cell_counts=self._counts.copy(),
            cell_sample_mev=self._sample[order],
            cell_sample_shower=self._sample_shower[order],
            n_cells=int(self._n_cells),
            cell_moments={
                "mean": float(mean),
                "std": float(np.sqrt(var)),
                "log10_mean": float(log_mean),
                "log10_std": float(np.sqrt(log_var)),
            },
            display=self.display,
        )
