"""The evaluation report: read shower files, project, accumulate, compare, plot, write.

:func:`evaluate` is what ``calogen evaluate`` runs:

1. every file (reference first) is read in chunks (:meth:`ShowerFile.iter_chunks`), projected
   into the chosen geometry at the impact point with the cell threshold, and accumulated
   (:class:`~calogen.evaluation.observables.ObservableAccumulator`: all per-shower features,
   a cell-energy histogram, exact cell-energy moments and a bounded random subsample of cell
   energies);
2. the per-shower features are shuffled (fixed seed) so that consecutive batches are random;
3. for every candidate: the CaloClouds II W1 table, the classifier AUC, FPD and KPD; and the
   same for the reference against itself (two random halves of the reference showers; cells
   split by shower) when the reference has at least ``min_floor_showers`` showers: the floor.
   The W1 batch size is common to all comparisons (so floor and candidates are comparable):
   ``min(n_ref // 2, n_cand) // n_batches`` showers (capped at 50,000), and likewise for cells;
4. figures (PNG + PDF), ``metrics.json``, ``report.md`` and ``report.html`` are written into the
   output folder, each atomically.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import showerdata
from numpy.typing import NDArray
from tqdm import tqdm

from calogen import __version__
from calogen.data.io import ShowerFile, check_folder_writable
from calogen.data.packed import pack
from calogen.data.voxels import BIBAE_GRID, L2LFLOWS_GRID, VoxelGrid, voxelise, voxels_to_points
from calogen.directions import directions_from_angles, straighten_points
from calogen.errors import CalogenError, UsageError
from calogen.evaluation import metrics as M
from calogen.evaluation.angles import condition_table
from calogen.evaluation.observables import (
    CONDITION_NAMES,
    ObservableAccumulator,
    SampleObservables,
    ShowerFeatures,
    longitudinal_bin_labels,
    radial_bin_labels,
)
from calogen.evaluation.plots import make_all_plots
from calogen.geometry import THRESHOLD_MEV, Calorimeter, get_calorimeter, project
from calogen.progress import Phase

#: Largest W1 batch (showers), as in CaloClouds II.
MAX_W1_BATCH = 50_000


@dataclass
class EvaluationConfig:
    """Settings of :func:`evaluate` (units: mm, MeV, GeV).

    Attributes:
        geometry: calorimeter preset (``slab`` or ``ild``).
        impact_mm: impact point (x, y) in the detector frame, mm.
        threshold_mev: cell threshold, MeV (default: the geometry's, 0.1 MeV).
        max_showers: read at most this many showers of each file.
        chunk_size: showers per chunk.
        n_batches: disjoint W1 batches.
        k_folds: classifier folds.
        classifier_epochs: maximum classifier epochs per fold (early stopping ends most
            folds after 40-80).
        max_cells: size of the cell-energy subsample kept per file.
        min_floor_showers: compute the reference-vs-reference floor from this many showers on.
        fpd_kpd: compute FPD and KPD.
        seed: seed of shuffling, subsampling, classifier, FPD/KPD.
        display_energy_gev: incident energy of the displayed shower.
        layer: layer of the cell map (default: the layer of maximum energy).
        progress: show tqdm progress bars (stderr).
        candidate_theta_deg, candidate_phi_deg: incident direction (deg) given to every shower
            of the candidate files that store none (no directions, or normal incidence only);
            None keeps the files' own.
        reference_grid: also compare with the reference put through a grid model's voxel
            grid (voxelised, then back to one point per voxel above 1e-5 GeV at the voxel
            centre): ``bibae`` (30 x 30 x 30), ``l2lflows`` (30 x 10 x 10) or a trained grid
            model folder (its ``model.json`` grid). None: no grid comparison.
        feature_groups: also train the classifier on each feature group alone
            (:func:`~calogen.evaluation.metrics.group_classifier`; five more classifiers per
            candidate).
    """

    geometry: str = "slab"
    impact_mm: tuple[float, float] = (0.0, 0.0)
    threshold_mev: float | None = None
    max_showers: int | None = None
    chunk_size: int = 1000
    n_batches: int = 5
    k_folds: int = 5
    classifier_epochs: int = 200
    max_cells: int = 1_000_000
    min_floor_showers: int = 200
    fpd_kpd: bool = True
    seed: int = 0
    display_energy_gev: float = 90.0
    layer: int | None = None
    progress: bool = True
    candidate_theta_deg: float | None = None
    candidate_phi_deg: float | None = None
    reference_grid: str | None = None
    feature_groups: bool = False


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _Phase(config: EvaluationConfig, what: str) -> Phase:
    """A long silent phase on stderr (only with ``config.progress``; see
    :class:`calogen.progress.Phase`)."""
    return Phase(f"evaluate: {what}", show=config.progress)


def default_label(path: str | os.PathLike[str], attrs: dict[str, str] | None = None) -> str:
    """Label of a file: ``Geant4`` if its ``generator`` attribute says so, else the file stem."""
    generator = (attrs or {}).get("generator", "")
    if generator.lower().startswith("geant4"):
        return "Geant4"
    return Path(path).stem


#: Voxels at or below this energy (GeV) make no point when the reference is put on a grid
#: (the grid models' own generation cut, a tenth of the 0.1 MeV cell threshold).
GRID_MIN_ENERGY_GEV = 1e-5


def resolve_grid(spec: str) -> tuple[str, VoxelGrid, bool]:
    """The voxel grid named by ``--reference-grid``: ``bibae``, ``l2lflows`` or a trained
    grid-model folder (the ``grid`` of its ``model.json``). Returns (name, grid, axis_frame):
    ``axis_frame`` for a model that learns inclined showers in their axis frame."""
    presets = {"bibae": BIBAE_GRID, "l2lflows": L2LFLOWS_GRID}
    if spec.lower() in presets:
        return spec.lower(), presets[spec.lower()], False
    from calogen.models.training import read_model_info

    path = Path(spec)
    if not path.exists():
        raise UsageError(
            f"--reference-grid: '{spec}' is neither a grid preset (bibae, l2lflows) nor a "
            "model folder"
        )
    info = read_model_info(path)
    grid = info.get("grid")
    if not isinstance(grid, dict):
        raise UsageError(f"{path}: model '{info['calogen_model']}' has no voxel grid")
    axis_frame = bool(info.get("config", {}).get("axis_frame", False))
    try:
        return f"{info['calogen_model']} ({path.name})", VoxelGrid.from_dict(grid), axis_frame
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: invalid voxel grid in model.json: {exc}") from None


def through_grid(
    showers: showerdata.Showers, grid: VoxelGrid, axis_frame: bool = False
) -> showerdata.Showers:
    """Showers as a grid model could at best give them back: voxelised on ``grid``, then one
    point per voxel above :data:`GRID_MIN_ENERGY_GEV` at the voxel centre (energy outside
    the grid is lost); incident energies and directions are kept. With ``axis_frame`` the
    showers are voxelised in their axis frame and inclined back, as such a model does."""
    packed = pack(showers)
    if axis_frame and showers.directions is not None:
        packed.points = straighten_points(packed.points, packed.counts, showers.directions)
    return voxels_to_points(
        voxelise(packed, grid),
        grid,
        showers.energies.reshape(-1),
        showers.directions,
        min_energy_gev=GRID_MIN_ENERGY_GEV,
        incline=axis_frame,
    )


def grid_label(name: str, grid: VoxelGrid, axis_frame: bool = False) -> str:
    """Label of the reference put through a grid, e.g. ``on bibae grid 30x30x30`` (``... in
    the axis frame`` with ``axis_frame``)."""
    frame = " in the axis frame" if axis_frame else ""
    return f"on {name} grid {'x'.join(str(v) for v in grid.shape)}{frame}"


def stored_directions(f: ShowerFile) -> NDArray[np.float64] | None:
    """The incident directions ``[N, 3]`` stored in an open shower file, or None (the file
    stores none: normal incidence). Validated by :meth:`ShowerFile.check_columns`."""
    if not f.has_directions:
        return None
    return np.asarray(f.incident_directions(), dtype=np.float64)


def _is_normal(directions: NDArray[np.floating] | None) -> bool:
    return directions is None or bool(np.all(np.hypot(directions[:, 0], directions[:, 1]) == 0))


def collect(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    calorimeter: Calorimeter,
    config: EvaluationConfig,
    label: str | None = None,
    seed: int = 0,
    direction: NDArray[np.floating] | None = None,
    grid: VoxelGrid | None = None,
    axis_frame: bool = False,
) -> SampleObservables:
    """Read, project and accumulate the observables of one sample (one or more files).

    Several files are one sample (concatenated in order; ``config.max_showers`` applies to
    each file). The incident directions are those stored in the files; ``direction`` (a unit
    vector) replaces them in files that store none or only normal incidence, and is refused
    for a file with inclined showers of its own. With ``grid`` every chunk is first put
    through that voxel grid (:func:`through_grid`, in the axis frame with ``axis_frame``).
    """
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if not paths:
        raise UsageError("no shower files given for a sample")
    acc: ObservableAccumulator | None = None
    for file_path in paths:
        with ShowerFile(file_path) as f:
            n = len(f) if config.max_showers is None else min(len(f), config.max_showers)
            if n == 0:
                raise UsageError(f"{file_path}: file holds no showers")
            if acc is None:
                label = label or default_label(file_path, f.attrs)
                acc = ObservableAccumulator(
                    label,
                    calorimeter,
                    max_cells=config.max_cells,
                    seed=seed,
                    display_energy_gev=config.display_energy_gev,
                )
            directions = None  # the chunks carry the file's own
            if direction is not None:
                if not _is_normal(stored_directions(f)):
                    raise UsageError(
                        f"{file_path}: the file stores inclined incident directions; --theta/"
                        "--phi only set them for candidate files without directions"
                    )
                directions = np.repeat(np.asarray(direction, np.float64).reshape(1, 3), len(f), 0)
            with tqdm(
                total=n,
                desc=str(label)[:24],
                unit="shower",
                disable=not config.progress,
                leave=False,
            ) as bar:
                first = 0
                for chunk in f.iter_chunks(config.chunk_size, stop=n):
                    if grid is not None:
                        chunk = through_grid(chunk, grid, axis_frame)
                    hits = project(
                        chunk,
                        calorimeter,
                        impact_mm=config.impact_mm,
                        threshold_mev=config.threshold_mev,
                    )
                    last = first + len(chunk)
                    acc.add(
                        hits,
                        chunk,
                        directions=None if directions is None else directions[first:last],
                    )
                    first = last
                    bar.update(len(chunk))
    assert acc is not None
    return acc.result()


def _shuffle(sample: SampleObservables, rng: np.random.Generator) -> SampleObservables:
    """Random order of the showers (features and the shower index of subsampled cells)."""
    n = sample.n_showers
    order = rng.permutation(n)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return SampleObservables(
        label=sample.label,
        features=sample.features.select(order),
        cell_edges_mev=sample.cell_edges_mev,
        cell_counts=sample.cell_counts,
        cell_sample_mev=sample.cell_sample_mev,
        cell_sample_shower=inverse[sample.cell_sample_shower],
        n_cells=sample.n_cells,
        cell_moments=sample.cell_moments,
        display=sample.display,
    )


def _halves(sample: SampleObservables) -> tuple[tuple[ShowerFeatures, np.ndarray], ...]:
    """Two halves of an already shuffled sample: (features, cell energies) each."""
    n = sample.n_showers
    half = n // 2
    first = sample.cell_sample_shower < half
    second = (sample.cell_sample_shower >= half) & (sample.cell_sample_shower < 2 * half)
    return (
        (sample.features.select(np.arange(half)), sample.cell_sample_mev[first]),
        (sample.features.select(np.arange(half, 2 * half)), sample.cell_sample_mev[second]),
    )


def _summary(sample: SampleObservables) -> dict:
    f = sample.features
    e = f.incident_energy_gev
    return {
        "label": sample.label,
        "n_showers": sample.n_showers,
        "n_cells": sample.n_cells,
        "incident_energy_gev": {
            "min": float(e.min()),
            "max": float(e.max()),
            "mean": float(e.mean()),
        },
        "mean_visible_energy_mev": float(f.visible_energy_mev.mean()),
        "mean_n_hits": float(f.n_hits.mean()),
        "mean_sampling_fraction": float(np.mean(f.sampling_fraction)),
        "cell_energy_moments_mev": sample.cell_moments,
    }


def _compare(
    reference: tuple[ShowerFeatures, np.ndarray],
    candidate: tuple[ShowerFeatures, np.ndarray],
    standardisation: M.Standardisation,
    config: EvaluationConfig,
    batch_size: int,
    cell_batch_size: int,
) -> dict:
    """All metrics of one comparison (features and cell energies of both samples)."""
    table = M.w1_table(
        reference[0],
        candidate[0],
        reference[1],
        candidate[1],
        standardisation=standardisation,
        n_batches=config.n_batches,
        batch_size=batch_size,
        cell_batch_size=cell_batch_size,
    )
    ref_matrix, _ = reference[0].matrix()
    cand_matrix, _ = candidate[0].matrix()
    out: dict = {"w1": table.to_dict()}
    try:
        out["classifier"] = M.classifier_test(
            classifier_inputs(reference[0])[0],
            classifier_inputs(candidate[0])[0],
            k_folds=config.k_folds,
            epochs=config.classifier_epochs,
            seed=config.seed,
        ).to_dict()
    except ValueError as exc:
        out["classifier"] = {"skipped": str(exc)}
    ref_obs, names = reference[0].matrix(np.nan, axis=True)
    cand_obs, _ = candidate[0].matrix(np.nan, axis=True)
    out["feature_ranking"] = M.feature_ranking(ref_obs, cand_obs, names)
    if config.feature_groups:
        ref_in, in_names = classifier_inputs(reference[0])
        try:
            out["feature_groups"] = M.group_classifier(
                ref_in,
                classifier_inputs(candidate[0])[0],
                in_names,
                conditions=CONDITION_NAMES,
                k_folds=config.k_folds,
                epochs=config.classifier_epochs,
                seed=config.seed,
            )
        except ValueError as exc:
            out["feature_groups"] = {"skipped": str(exc)}
    if config.fpd_kpd:
        fpd_value, fpd_error = M.fpd(ref_matrix, cand_matrix, seed=config.seed + 42)
        kpd_value, kpd_error = M.kpd(ref_matrix, cand_matrix, seed=config.seed + 42)
        out["fpd"] = {"value": fpd_value, "error": fpd_error}
        out["kpd"] = {"value": kpd_value, "error": kpd_error}
    return out


def classifier_inputs(features: ShowerFeatures) -> tuple[NDArray[np.float64], list[str]]:
    """What the classifier sees per shower: the 25 features, the 3 fitted-axis observables
    and the 4 conditions (log E, cos theta, slopes of the incident direction), ``[N, 32]``."""
    observables, names = features.matrix(axis=True)
    conditions, condition_names = features.conditions()
    return np.concatenate([observables, conditions], axis=1), names + condition_names


def _direction_warning(reference: ShowerFeatures, candidate: ShowerFeatures, label: str) -> str:
    """A warning when the incident directions of two samples differ on average, else ''."""
    ref_c, _ = reference.conditions()
    cand_c, _ = candidate.conditions()
    d_theta = abs(candidate.incident_theta_deg.mean() - reference.incident_theta_deg.mean())
    d_slope = np.abs(cand_c[:, 2:].mean(axis=0) - ref_c[:, 2:].mean(axis=0)).max()
    if d_theta > 1.0 or d_slope > 0.02:
        return (
            f"{label}: mean incident polar angle {candidate.incident_theta_deg.mean():.1f} deg "
            f"(slopes {cand_c[:, 2].mean():.3f}, {cand_c[:, 3].mean():.3f}) differs from the "
            f"reference's {reference.incident_theta_deg.mean():.1f} deg (slopes "
            f"{ref_c[:, 2].mean():.3f}, {ref_c[:, 3].mean():.3f}): the comparison mixes "
            "directions (give a candidate without directions --theta/--phi)"
        )
    return ""


def compute_metrics(
    reference: SampleObservables,
    candidates: Sequence[SampleObservables],
    config: EvaluationConfig,
) -> dict:
    """Metrics of every candidate against the reference, and the reference floor.

    The samples must already be shuffled (see :func:`evaluate`).
    """
    ref_features = reference.features
    standardisation = M.Standardisation.from_reference(
        ref_features, cell_moments=reference.cell_moments
    )
    n_ref = reference.n_showers
    floor = n_ref >= config.min_floor_showers
    ref_pool = n_ref // 2 if floor else n_ref
    n_min = min([ref_pool, *[c.n_showers for c in candidates]])
    batch_size = max(1, min(MAX_W1_BATCH, n_min // config.n_batches))
    if floor:
        halves = _halves(reference)
        cell_pool = min(len(halves[0][1]), len(halves[1][1]))
    else:
        cell_pool = len(reference.cell_sample_mev)
    cell_min = min([cell_pool, *[len(c.cell_sample_mev) for c in candidates]])
    cell_batch_size = max(1, cell_min // config.n_batches)

    result: dict = {
        "settings": {
            "n_batches": config.n_batches,
            "shower_batch_size": batch_size,
            "cell_batch_size": cell_batch_size,
            "w1_scale": 100,
            "standardisation": "features standardised with the reference mean and std "
            "(ddof 0); cell energies with the mean and std of all reference cells (linear, MeV) "
            "and, for the extra log10 row, of log10(E/MeV)",
            "binned_rows": "mean of the 10 per-bin W1; std over batches of the per-batch mean "
            "over the bins (not the CaloClouds II quadrature sum of the per-bin stds)",
            "classifier": {
                "features": classifier_inputs(reference.features)[1],
                "k_folds": config.k_folds,
                "max_epochs": config.classifier_epochs,
                "network": M.describe_classifier(len(classifier_inputs(reference.features)[1])),
            },
            "fpd_kpd": "after jetnet: features / max|reference|; FPD 1/N-extrapolated; KPD "
            "polynomial kernel degree 4, median and half the 16-84 % range",
        },
        "reference": _summary(reference),
        "candidates": {},
        "floor": None,
        "warnings": [],
    }
    what = "W1, classifier" + (", FPD, KPD" if config.fpd_kpd else "")
    if floor:
        with _Phase(config, f"{reference.label} floor (half vs half: {what})"):
            result["floor"] = _compare(
                halves[0], halves[1], standardisation, config, batch_size, cell_batch_size
            )
        result["floor"]["n_showers_per_half"] = n_ref // 2
    else:
        result["warnings"].append(
            f"reference has {n_ref} showers (< {config.min_floor_showers}): no floor computed"
        )
    ref_pair = (reference.features, reference.cell_sample_mev)
    for cand in candidates:
        entry = _summary(cand)
        with _Phase(config, f"{cand.label} vs {reference.label} ({what})"):
            entry.update(
                _compare(
                    ref_pair,
                    (cand.features, cand.cell_sample_mev),
                    standardisation,
                    config,
                    batch_size,
                    cell_batch_size,
                )
            )
        result["candidates"][cand.label] = entry
        ref_e = reference.features.incident_energy_gev
        cand_e = cand.features.incident_energy_gev
        if abs(cand_e.mean() - ref_e.mean()) > 0.05 * ref_e.mean():
            result["warnings"].append(
                f"{cand.label}: mean incident energy {cand_e.mean():.1f} GeV differs from the "
                f"reference's {ref_e.mean():.1f} GeV by more than 5 %: the comparison mixes "
                "energy spectra"
            )
        warning = _direction_warning(reference.features, cand.features, cand.label)
        if warning:
            result["warnings"].append(warning)
    result["conditions"] = {
        "labels": [reference.label, *[c.label for c in candidates]],
        "groups": condition_table(
            reference.features, [reference.features, *[c.features for c in candidates]]
        ),
    }
    return result


# ---------------------------------------------------------------------------------------------
# report text
# ---------------------------------------------------------------------------------------------

FIGURE_CAPTIONS = {
    "cell_energy": "Cell-energy spectrum (cells per shower); shaded: below the 0.1 MeV "
    "threshold (half a MIP).",
    "radial_profile": "Radial profile: mean energy per shower vs distance of the cell centre "
    "to the shower axis.",
    "longitudinal_profile": "Longitudinal profile: mean energy per shower in each layer.",
    "cog": "Centre of gravity x, y (mm) and z (layer index).",
    "visible_energy_hits": "Visible energy and number of hits in incident-energy selections.",
    "event_display": "3-D display of one shower per sample.",
    "layer_map": "Cell energies of one layer of the displayed shower; dots: its points; "
    "black: dead gaps of the geometry.",
    "angle_response": "Angle response: polar angle of the fitted shower axis (straight line "
    "through the energy-weighted centroids of the layers against depth) for each group of "
    "requested theta; right: mean fitted minus requested angle (bars: spread of the showers).",
    "cog_along_tilt": "Mean energy-weighted centroid of each layer along the tilt direction "
    "(cos phi, sin phi) per inclined theta group; dotted: the incident axis "
    "depth × tan(theta); below: candidate minus reference.",
    "visible_energy_60deg": "Visible energy at theta = 60 deg for the incident energies "
    "20, 50 and 90 GeV present in the reference.",
}


#: Said once above the figures of the report.
FIGURES_NOTE = (
    "Ratio panels: model / reference, bands the statistical uncertainty (grey: the "
    "reference's own); triangles at a panel's edge mark bins whose ratio lies off its scale."
)


def figure_caption(stem: str, metrics: dict) -> str:
    """The caption of figure ``stem``, true for the run's geometry and threshold."""
    from calogen.evaluation.plots import MIN_RATIO_SHOWERS

    run = metrics.get("run", {})
    threshold = run.get("threshold_mev")
    if stem == "cell_energy" and threshold is not None:
        mip = " (half a MIP)" if threshold == THRESHOLD_MEV else ""
        return (
            f"Cell-energy spectrum (cells per shower); shaded: below the {threshold:g} MeV "
            f"threshold{mip}."
        )
    if stem == "layer_map":
        try:
            cal = get_calorimeter(run.get("geometry", ""))
            gaps = cal.wafer_cells > 0 and (cal.gap_x_mm > 0 or cal.gap_y_mm > 0)
        except ValueError:
            gaps = False
        return (
            "Cell energies of one layer of the displayed shower; dots: its points"
            + ("; black: dead gaps between the wafers of the geometry" if gaps else "")
            + "; one colour scale for all panels."
        )
    if stem == "event_display":
        energy = run.get("config", {}).get("display_energy_gev")
        which = f" (the one closest to {energy:g} GeV)" if energy is not None else ""
        return (
            f"3-D display of one shower per sample{which}; all panels share the axes (the window holding 99 % of the reference "
            "shower's energy; points outside it are counted in the title) and the colour scale."
        )
    if stem == "visible_energy_hits":
        return (
            "Visible energy and number of hits in incident-energy selections: one colour per "
            "selection, the reference filled, one line style per model. Ratio panels only when "
            f"every sample has at least {MIN_RATIO_SHOWERS} showers in every selection."
        )
    return FIGURE_CAPTIONS.get(stem, stem)


def feature_label(name: str) -> str:
    """Readable name of a per-shower feature (e.g. ``radial_2`` -> ``radial 9.849-12.96 mm``)."""
    kind, _, index = name.rpartition("_")
    if kind == "radial" and index.isdigit():
        return f"radial {radial_bin_labels()[int(index)]}"
    if kind == "longitudinal" and index.isdigit():
        return f"longitudinal {longitudinal_bin_labels()[int(index)]}"
    return name.replace("_", " ")


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _pm(entry: dict | None, digits: int = 1, scale: float = 1.0) -> str:
    if not entry:
        return "-"
    return f"{_fmt(entry['mean'] * scale, digits)} ± {_fmt(entry['std'] * scale, digits)}"


#: How each row of the main table is read: lower is better, or closer to 0.5.
LOWER, HALF = "lower", "closer to 0.5"


def _table_values(metrics: dict) -> list[tuple[str, str, list[tuple[float, float] | None], str]]:
    """Rows of the main table as numbers: (label, better, per column (value, error) or None,
    format); columns are the candidates, then the reference floor where there is one."""
    entries = [metrics["candidates"][c] for c in metrics["candidates"]]
    if metrics["floor"] is not None:
        entries.append(metrics["floor"])
    rows: list[tuple[str, str, list[tuple[float, float] | None], str]] = []
    for name in (*M.W1_ROWS, *M.W1_AXIS_ROWS, *M.W1_EXTRA_ROWS):
        cells = [(e["w1"]["rows"][name]["mean"], e["w1"]["rows"][name]["std"]) for e in entries]
        rows.append((f"W1×100 {name}", LOWER, list(cells), "{:.1f} ± {:.1f}"))
    aucs = []
    for e in entries:
        c = e.get("classifier", {})
        aucs.append((c["auc_mean"], c["auc_std"]) if "auc_mean" in c else None)
    rows.append(("classifier AUC", HALF, aucs, "{:.3f} ± {:.3f}"))
    if all("fpd" in e for e in entries):
        fpd = [(e["fpd"]["value"] * 1e3, e["fpd"]["error"] * 1e3) for e in entries]
        kpd = [(e["kpd"]["value"] * 1e3, e["kpd"]["error"] * 1e3) for e in entries]
        rows.append(("FPD ×10³", LOWER, list(fpd), "{:.2f} ± {:.2f}"))
        rows.append(("KPD ×10³", LOWER, list(kpd), "{:.3f} ± {:.3f}"))
    return rows


def _badness(value: float, better: str) -> float:
    return abs(value - 0.5) if better == HALF else value


def _table_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table (W1 rows, AUC, FPD, KPD) as plain text: metric, which
    way is better, one column per candidate, the reference floor."""
    columns = list(metrics["candidates"])
    has_floor = metrics["floor"] is not None
    header = ["metric", "better", *columns] + (["reference floor"] if has_floor else [])
    rows = []
    for label, better, cells, fmt in _table_values(metrics):
        texts = [fmt.format(*c) if c is not None else "-" for c in cells]
        rows.append([label, better, *texts])
    return header, rows


def _table_marks(metrics: dict) -> list[list[set[str]]]:
    """Per row of :func:`_table_rows`, per candidate column: ``best`` (the best candidate of
    the row, with two or more candidates) and ``ns`` (not significant: the candidate is no
    further from the reference than the floor plus the floor's spread)."""
    n_cand = len(metrics["candidates"])
    has_floor = metrics["floor"] is not None
    marks = []
    for _, better, cells, _ in _table_values(metrics):
        row: list[set[str]] = [set() for _ in range(n_cand)]
        cand = [(i, c) for i, c in enumerate(cells[:n_cand]) if c is not None]
        if n_cand >= 2 and cand:
            best = min(_badness(c[0], better) for _, c in cand)
            for i, c in cand:
                if _badness(c[0], better) == best:
                    row[i].add("best")
        floor = cells[-1] if has_floor else None
        if floor is not None:
            limit = _badness(floor[0], better) + floor[1]
            for i, c in cand:
                if _badness(c[0], better) <= limit:
                    row[i].add("ns")
        marks.append(row)
    return marks


def _marked_md(metrics: dict) -> str:
    """The main table in Markdown: best values in bold, not significant ones marked."""
    header, rows = _table_rows(metrics)
    marks = _table_marks(metrics)
    for row, flags in zip(rows, marks, strict=True):
        for i, f in enumerate(flags):
            text = row[2 + i]
            if "ns" in f:
                text += " (n.s.)"
            if "best" in f:
                text = f"**{text}**"
            row[2 + i] = text
    return _md_table(header, rows)


def _marked_html(metrics: dict) -> str:
    """The main table in HTML: best values in bold, not significant ones in grey italics."""
    header, rows = _table_rows(metrics)
    marks = _table_marks(metrics)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row, flags in zip(rows, marks, strict=True):
        cells = [
            f"<td>{html.escape(row[0])}</td>",
            f"<td class='better'>{html.escape(row[1])}</td>",
        ]
        for i, text in enumerate(row[2:]):
            f = flags[i] if i < len(flags) else set()  # the floor column has no marks
            cls = f" class='{' '.join(sorted(f))}'" if f else ""
            title = " title='within the reference floor: not significant'" if "ns" in f else ""
            cells.append(f"<td{cls}{title}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


#: What the marks in the main table mean (Markdown and HTML).
MARKS_NOTE = (
    "Column 'better': lower is better for W1, FPD and KPD; an AUC closer to 0.5 is better "
    "(0.5: the classifier cannot tell the samples apart). Bold: the best candidate in the row. "
    "(n.s.) / grey: not significant, the candidate is no further from the reference than the "
    "reference floor plus its spread (two halves of the reference compared with each other)."
)


def _bin_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    columns = list(metrics["candidates"])
    has_floor = metrics["floor"] is not None
    header = ["bin", *columns] + (["reference floor"] if has_floor else [])
    entries = [metrics["candidates"][c] for c in columns] + (
        [metrics["floor"]] if has_floor else []
    )
    rows = []
    for k, label in enumerate(longitudinal_bin_labels()):
        rows.append(
            [f"longitudinal {label}"]
            + [_pm(e["w1"]["per_feature"][f"longitudinal_{k}"]) for e in entries]
        )
    for k, label in enumerate(radial_bin_labels()):
        rows.append(
            [f"radial {label}"] + [_pm(e["w1"]["per_feature"][f"radial_{k}"]) for e in entries]
        )
    return header, rows


#: Features listed in the ranking tables of the report (the JSON holds all).
RANKING_ROWS = 10


def _ranking_tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per candidate: title, header and rows of its single-feature ranking."""
    floor = metrics.get("floor") or {}
    floor_sep = {r["name"]: r["separation"] for r in floor.get("feature_ranking", [])}
    tables = []
    for label, entry in metrics["candidates"].items():
        header = ["rank", "feature", "AUC", "reference mean", "candidate mean", "cand/ref - 1"]
        if floor_sep:
            header.append("floor separation")
        rows = []
        for k, r in enumerate(entry.get("feature_ranking", [])[:RANKING_ROWS]):
            rel = r["relative_difference"]
            row = [
                str(k + 1),
                feature_label(r["name"]),
                f"{r['auc']:.3f}",
                f"{r['reference_mean']:.4g}",
                f"{r['candidate_mean']:.4g}",
                f"{100 * rel:+.1f} %" if math.isfinite(rel) else "-",
            ]
            if floor_sep:
                row.append(f"{floor_sep.get(r['name'], float('nan')):.3f}")
            rows.append(row)
        tables.append((label, header, rows))
    return tables


def _group_tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per candidate with ``feature_groups``: title, header and rows of the group AUCs."""
    tables = []
    for label, entry in metrics["candidates"].items():
        groups = entry.get("feature_groups")
        if not isinstance(groups, list) or not groups:
            continue
        rows = [
            [g["group"], str(len(g["features"])), f"{g['auc_mean']:.3f} ± {g['auc_std']:.3f}"]
            for g in groups
        ]
        tables.append((label, ["feature group", "features", "classifier AUC"], rows))
    return tables


#: What the group table shows (report text).
GROUPS_NOTE = (
    "The classifier trained on one group of features at a time (with the incident energy and "
    "direction): unlike a single feature's AUC it also sees spreads that are too wide or too "
    "narrow and correlations within the group."
)


def _condition_rows(metrics: dict) -> tuple[list[str], list[list[str]]] | None:
    """Per condition group: visible energy and fitted axis angle of every sample."""
    cond = metrics.get("conditions") or {}
    groups = cond.get("groups") or []
    if not groups:
        return None
    labels = cond["labels"]
    header = ["E_inc", "theta", f"n {labels[0]}", f"<E_vis> {labels[0]} [MeV]"]
    header += [f"<E_vis> {c}/ref - 1" for c in labels[1:]]
    header += [f"<theta_axis> {labels[0]} [deg]"]
    header += [f"<theta_axis> {c} - ref [deg]" for c in labels[1:]]
    rows = []
    for g in groups:
        ref = g["samples"][0]
        e_ref = ref["visible_energy_mev"]["mean"]
        t_ref = ref["axis_theta_deg"]["mean"]
        row = [g["energy"], g["theta"], str(ref["n"]), f"{e_ref:.1f}"]
        for c in g["samples"][1:]:
            e = c["visible_energy_mev"]["mean"]
            row.append(f"{100 * (e / e_ref - 1):+.2f} %" if c["n"] and e_ref else "-")
        row.append(f"{t_ref:.2f} ± {ref['axis_theta_deg']['std']:.2f}")
        for c in g["samples"][1:]:
            t = c["axis_theta_deg"]["mean"]
            row.append(f"{t - t_ref:+.2f}" if c["n"] else "-")
        rows.append(row)
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _samples_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    header = [
        "sample",
        "file",
        "showers",
        "E_inc [GeV]",
        "<E_vis> [MeV]",
        "<hits>",
        "<E_vis/E_inc>",
    ]
    rows = []
    for entry in [metrics["reference"], *metrics["candidates"].values()]:
        e = entry["incident_energy_gev"]
        rows.append(
            [
                entry["label"],
                entry.get("path", ""),
                str(entry["n_showers"]),
                f"{e['min']:.1f}-{e['max']:.1f} (mean {e['mean']:.1f})",
                f"{entry['mean_visible_energy_mev']:.1f}",
                f"{entry['mean_n_hits']:.1f}",
                f"{entry['mean_sampling_fraction']:.4f}",
            ]
        )
    return header, rows


def _intro(metrics: dict) -> list[str]:
    s = metrics["settings"]
    run = metrics["run"]
    return [
        f"Geometry `{run['geometry']}`, impact point ({run['impact_mm'][0]:g}, "
        f"{run['impact_mm'][1]:g}) mm, cell threshold {run['threshold_mev']:g} MeV. "
        f"Generated {run['created']} by calogen {run['calogen_version']} "
        f"in {run['seconds']:.0f} s.",
        f"W1×100: 1-D Wasserstein distance of features standardised with the reference mean "
        f"and std, over {s['n_batches']} disjoint batches of {s['shower_batch_size']} showers "
        f"({s['cell_batch_size']} cells for the cell energy); mean ± std over batches. Binned "
        "rows: mean of the 10 bins; their ± is the spread over batches of that mean (the "
        "CaloClouds II quadrature sum of the per-bin spreads would be about three times "
        "larger). 'cell energy' standardises "
        "linear cell energies (as CaloClouds II); 'cell energy (log10)' uses log10(E/MeV). "
        "The reference floor compares two random halves of the reference with the same "
        "batch size: differences below it are not significant.",
        "Radial observables are measured from the shower axis in each layer (the line of the "
        "incident direction through the impact point; the z axis at normal incidence). The "
        "fitted axis is a straight line through the energy-weighted centroids of the layers "
        "against depth (weights: layer energies); its polar angle and slopes dx/dz, dy/dz "
        "have W1 rows of their own.",
        "Classifier: on the 25 standardised per-shower features (occupancy, sampling "
        "fraction, 10 longitudinal bins, 10 radial bins, CoG x, y, z), the fitted-axis angle "
        "and slopes, and the conditions log E, cos theta and the slopes of the incident "
        f"direction; {s['classifier']['k_folds']}-fold, {s['classifier']['network']}. "
        "AUC 0.5 = indistinguishable. FPD and KPD (Fréchet and kernel physics distances, "
        "Kansal et al. 2211.10295, computed as in the jetnet package) on the 25 features. Feature "
        "ranking: AUC of each single feature (Mann-Whitney U / (n_ref n_cand); above 0.5 the "
        "candidate's values are larger), ranked by |AUC - 0.5|.",
    ]


def _within_title(within: dict) -> str:
    return f"Against {within['reference']['label']}"


def _within_text(within: dict) -> str:
    g = within["grid"]
    return (
        f"The reference put through the {g['name']} grid ({g['n_layers']} layers x {g['nx']} x "
        f"{g['ny']} cells of {g['cell_size_mm']:g} mm around the impact point): voxelised, "
        f"then one point per voxel above {GRID_MIN_ENERGY_GEV:g} GeV at the voxel centre; "
        "energy outside the grid is lost. This is the best a model on that grid can do, and "
        "the comparison judges a grid model on what its grid can hold; the floor compares two "
        "halves of the reference on the grid. The main table above carries the reference on "
        "the grid as a column of its own: what the grid alone costs against the full reference."
    )


def render_markdown(metrics: dict, figures: dict[str, list[Path]]) -> str:
    """The report as Markdown (figures referenced by relative PNG paths)."""
    lines = ["# calogen evaluation report", ""]
    lines += [p + "\n" for p in _intro(metrics)]
    lines += ["## Samples", "", _md_table(*_samples_rows(metrics)), ""]
    lines += ["## Metrics", "", MARKS_NOTE, "", _marked_md(metrics), ""]
    lines += ["### W1×100 per bin", "", _md_table(*_bin_rows(metrics)), ""]
    for label, header, rows in _ranking_tables(metrics):
        lines += [f"### Features that separate {label} from the reference", ""]
        lines += [_md_table(header, rows), ""]
    for label, header, rows in _group_tables(metrics):
        lines += [f"### Feature groups that separate {label} from the reference", ""]
        lines += [GROUPS_NOTE, "", _md_table(header, rows), ""]
    conditions = _condition_rows(metrics)
    if conditions is not None:
        lines += ["### Per condition", "", _md_table(*conditions), ""]
    within = metrics.get("within_grid")
    if within:
        lines += [f"## {_within_title(within)}", "", _within_text(within), ""]
        lines += [_marked_md(within), ""]
        for label, header, rows in _ranking_tables(within):
            lines += [f"### Features that separate {label} from the reference on the grid", ""]
            lines += [_md_table(header, rows), ""]
    if metrics["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in metrics["warnings"]] + [""]
    lines += ["## Figures", "", FIGURES_NOTE, ""]
    for stem, paths in figures.items():
        png = next((p for p in paths if p.suffix == ".png"), paths[0])
        pdf = next((p for p in paths if p.suffix == ".pdf"), None)
        lines += [
            f"![{stem}]({png.name})",
            "",
            figure_caption(stem, metrics) + (f" ([PDF]({pdf.name}))" if pdf else ""),
            "",
        ]
    return "\n".join(lines) + "\n"


def render_html(metrics: dict, figures: dict[str, list[Path]]) -> str:
    """The report as a self-contained HTML page (figures linked by relative paths)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>calogen evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}"
        "td.best{font-weight:bold}td.ns{color:#888;font-style:italic}"
        "td.better{text-align:left;color:#555}</style></head><body>",
        "<h1>calogen evaluation report</h1>",
    ]
    parts += [f"<p>{html.escape(p).replace('`', '')}</p>" for p in _intro(metrics)]
    parts += ["<h2>Samples</h2>", _html_table(*_samples_rows(metrics))]
    parts += ["<h2>Metrics</h2>", f"<p>{html.escape(MARKS_NOTE)}</p>", _marked_html(metrics)]
    parts += ["<h3>W1×100 per bin</h3>", _html_table(*_bin_rows(metrics))]
    for label, header, rows in _ranking_tables(metrics):
        parts += [f"<h3>Features that separate {html.escape(label)} from the reference</h3>"]
        parts += [_html_table(header, rows)]
    for label, header, rows in _group_tables(metrics):
        parts += [
            f"<h3>Feature groups that separate {html.escape(label)} from the reference</h3>",
            f"<p>{html.escape(GROUPS_NOTE)}</p>",
            _html_table(header, rows),
        ]
    conditions = _condition_rows(metrics)
    if conditions is not None:
        parts += ["<h3>Per condition</h3>", _html_table(*conditions)]
    within = metrics.get("within_grid")
    if within:
        parts += [f"<h2>{html.escape(_within_title(within))}</h2>"]
        parts += [f"<p>{html.escape(_within_text(within))}</p>", _marked_html(within)]
        for label, header, rows in _ranking_tables(within):
            parts += [
                f"<h3>Features that separate {html.escape(label)} from the reference on the "
                "grid</h3>",
                _html_table(header, rows),
            ]
    if metrics["warnings"]:
        parts += ["<h2>Warnings</h2><ul>"]
        parts += [f"<li>{html.escape(w)}</li>" for w in metrics["warnings"]] + ["</ul>"]
    parts += ["<h2>Figures</h2>", f"<p>{html.escape(FIGURES_NOTE)}</p>"]
    for stem, paths in figures.items():
        png = next((p for p in paths if p.suffix == ".png"), paths[0])
        pdf = next((p for p in paths if p.suffix == ".pdf"), None)
        link = f" (<a href='{html.escape(pdf.name)}'>PDF</a>)" if pdf else ""
        parts.append(
            f"<figure><img src='{html.escape(png.name)}' alt='{html.escape(stem)}'>"
            f"<figcaption>{html.escape(figure_caption(stem, metrics))}{link}</figcaption>"
            "</figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: Files of a finished report; a folder holding one is not overwritten without ``overwrite``.
REPORT_FILES = ("metrics.json", "report.md", "report.html")


def _check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool = True) -> Path:
    """Check that the report can be written to ``out_dir`` without creating anything."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    if out.is_dir() and not overwrite and any((out / name).exists() for name in REPORT_FILES):
        raise UsageError(f"{out}: holds a report already (use --overwrite to replace it)")
    check_folder_writable(out)
    return out


def _prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create output folder: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"{out}: output folder is not writable")
    return out


PathLike = str | os.PathLike[str]


def _as_paths(item: PathLike | Sequence[PathLike]) -> list[Path]:
    """One file or several (one sample made of concatenated files) as a list of paths."""
    if isinstance(item, (str, os.PathLike)):
        return [Path(item)]
    return [Path(p) for p in item]


def _joined(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def evaluate(
    reference: PathLike | Sequence[PathLike],
    candidates: Sequence[PathLike | Sequence[PathLike]],
    out_dir: PathLike,
    *,
    labels: Sequence[str] | None = None,
    reference_label: str | None = None,
    config: EvaluationConfig | None = None,
    overwrite: bool = True,
) -> dict:
    """Compare candidate shower files with a reference file and write the report.

    Args:
        reference: reference (Geant4) shower file, either layout, or a list of files that are
            concatenated into one reference (e.g. Geant4 at 50 GeV and theta 0, 15, ... 60).
        candidates: generated samples (at least one); each a file or a list of files that
            make one candidate (concatenated).
        out_dir: output folder (created if needed): ``metrics.json``, ``report.md``,
            ``report.html`` and the figures (PNG + PDF).
        labels: one label per candidate (default: file stems).
        reference_label: label of the reference (default ``Geant4`` if the file says so, else
            its stem).
        config: settings (:class:`EvaluationConfig`).
        overwrite: replace the report of an earlier run in ``out_dir`` (the command line
            refuses that without ``--overwrite``). The folder is created only after every
            input has been read and the metrics computed, so bad input leaves nothing.

    Returns:
        The metrics dictionary written to ``metrics.json``.

    Raises:
        UsageError: bad input (missing/foreign files, wrong label count, bad settings).
    """
    config = config or EvaluationConfig()
    start = time.perf_counter()
    if not candidates:
        raise UsageError("give at least one --candidate file")
    if labels is not None and len(labels) not in (0, len(candidates)):
        raise UsageError(
            f"{len(labels)} labels for {len(candidates)} candidate files (give one --label per "
            "--candidate)"
        )
    try:
        calorimeter = get_calorimeter(config.geometry)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    threshold = calorimeter.threshold_mev if config.threshold_mev is None else config.threshold_mev
    if threshold < 0 or not math.isfinite(threshold):
        raise UsageError(f"threshold must be a finite number >= 0 MeV, got {threshold}")
    if config.n_batches < 1:
        raise UsageError(f"number of batches must be >= 1, got {config.n_batches}")
    if config.k_folds < 3:
        raise UsageError(f"number of folds must be >= 3, got {config.k_folds}")
    if config.layer is not None and not 0 <= config.layer < calorimeter.n_layers:
        raise UsageError(f"layer must be in 0-{calorimeter.n_layers - 1}, got {config.layer}")
    direction = None
    if config.candidate_theta_deg is not None or config.candidate_phi_deg is not None:
        if config.candidate_theta_deg is None:
            raise UsageError("--phi needs --theta (the polar angle of the candidate showers)")
        direction = directions_from_angles(
            [config.candidate_theta_deg], [config.candidate_phi_deg or 0.0]
        )[0]
    ref_paths = _as_paths(reference)
    cand_paths = [_as_paths(c) for c in candidates]
    if not ref_paths or any(not c for c in cand_paths):
        raise UsageError("every --reference and --candidate needs at least one file")
    # open every file once up front so that a bad one fails before the long part
    every = [(p, False) for p in ref_paths] + [(p, True) for c in cand_paths for p in c]
    for path, is_candidate in every:
        with ShowerFile(path) as f:
            if len(f) == 0:
                raise UsageError(f"{path}: file holds no showers")
            f.check_columns()
            stored = stored_directions(f)
            if direction is not None and is_candidate and not _is_normal(stored):
                raise UsageError(
                    f"{path}: the file stores inclined incident directions; --theta/--phi "
                    "only set them for candidate files without directions"
                )
    grid = resolve_grid(config.reference_grid) if config.reference_grid is not None else None
    out = _check_out_dir(out_dir, overwrite)  # created only once the metrics are computed
    config = EvaluationConfig(**{**asdict(config), "threshold_mev": threshold})

    ref_sample = collect(ref_paths, calorimeter, config, reference_label, seed=config.seed)
    grid_sample = None
    if grid is not None:
        grid_sample = collect(
            ref_paths,
            calorimeter,
            config,
            ref_sample.label,
            seed=config.seed,
            grid=grid[1],
            axis_frame=grid[2],
        )
        grid_sample.label = f"{ref_sample.label} {grid_label(grid[0], grid[1], grid[2])}"
    cand_samples = []
    for i, paths in enumerate(cand_paths):
        label = labels[i] if labels else None
        cand_samples.append(
            collect(
                paths, calorimeter, config, label, seed=config.seed + i + 1, direction=direction
            )
        )
    extra = [grid_sample] if grid_sample is not None else []
    names = [ref_sample.label] + [c.label for c in [*extra, *cand_samples]]
    if len(set(names)) != len(names):  # make labels unique for tables and JSON keys
        seen: dict[str, int] = {}
        for sample in [ref_sample, *extra, *cand_samples]:
            count = seen.get(sample.label, 0)
            seen[sample.label] = count + 1
            if count:
                sample.label = f"{sample.label} ({count + 1})"

    rng = np.random.default_rng(config.seed)
    ref_shuffled = _shuffle(ref_sample, rng)
    cand_shuffled = [_shuffle(c, rng) for c in cand_samples]
    grid_shuffled = _shuffle(grid_sample, rng) if grid_sample is not None else None
    try:
        result = compute_metrics(
            ref_shuffled, [*([grid_shuffled] if grid_shuffled else []), *cand_shuffled], config
        )
        if grid is not None and grid_shuffled is not None:
            within = compute_metrics(grid_shuffled, cand_shuffled, config)
            within["grid"] = {"name": grid[0], **grid[1].to_dict()}
            result["within_grid"] = within
    except ValueError as exc:
        raise CalogenError(f"cannot compute metrics: {exc}") from None
    result["reference"]["path"] = _joined(ref_paths)
    for paths, cand in zip(cand_paths, cand_samples, strict=True):
        result["candidates"][cand.label]["path"] = _joined(paths)
        if "within_grid" in result:
            result["within_grid"]["candidates"][cand.label]["path"] = _joined(paths)
    if grid_sample is not None:
        result["candidates"][grid_sample.label]["path"] = (
            f"{_joined(ref_paths)} through the {grid[0]} grid"  # type: ignore[index]
        )
        result["within_grid"]["reference"]["path"] = result["candidates"][grid_sample.label]["path"]

    out = _prepare_out_dir(out)
    with _Phase(config, "figures"):
        figures = make_all_plots(
            [ref_sample, *extra, *cand_samples],
            out,
            calorimeter,
            threshold_mev=threshold,
            impact_mm=config.impact_mm,
            layer=config.layer,
        )
    result["figures"] = {stem: [p.name for p in ps] for stem, ps in figures.items()}
    result["run"] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "calogen_version": __version__,
        "geometry": calorimeter.name,
        "impact_mm": list(config.impact_mm),
        "threshold_mev": threshold,
        "config": asdict(config),
        "seconds": time.perf_counter() - start,
    }
    _atomic_write_text(
        out / "metrics.json", json.dumps(result, indent=2, default=_json_default) + "\n"
    )
    _atomic_write_text(out / "report.md", render_markdown(result, figures))
    _atomic_write_text(out / "report.html", render_html(result, figures))
    return result
