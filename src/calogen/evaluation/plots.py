"""Comparison plots of shower observables (matplotlib Agg backend, mplhep ROOT style).

Every plot draws the reference (grey, filled) and all candidates (coloured lines) in the same
axes, with a ratio panel candidate / reference underneath (bands: statistical uncertainty of
the ratio). Figures are written as PNG and PDF, atomically (temporary name, then rename).

Plots (function -> file stem):

* :func:`plot_cell_energy` -> ``cell_energy``: cells per shower vs cell energy (log bins, MeV),
  the region below 0.1 MeV (half a MIP) shaded;
* :func:`plot_radial_profile` -> ``radial_profile``: mean energy per shower vs distance of the
  cell centre to the shower axis (mm);
* :func:`plot_longitudinal_profile` -> ``longitudinal_profile``: mean energy per layer;
* :func:`plot_cog` -> ``cog``: centre of gravity x, y (mm) and z (layer);
* :func:`plot_energy_and_hits` -> ``visible_energy_hits``: visible energy and number of hits at
  10, 50, 90 GeV (or in the windows 10-20, 45-55, 80-90 GeV for continuous energies);
* :func:`plot_event_display` -> ``event_display``: 3-D points of one shower per sample;
* :func:`plot_layer_map` -> ``layer_map``: cell energies of one layer of that shower with its
  points overlaid and the dead gaps of the geometry drawn (like figure 9 of CaloClouds).

Inclined showers (made when the reference holds showers at a polar angle above 0.1 deg):

* :func:`plot_angle_response` -> ``angle_response``: distribution of the fitted axis angle for
  the groups of requested theta (at 50 GeV when the reference has that energy), reference
  against every candidate in one panel (as the BIB-AE "New Angles" paper), and the mean
  fitted-minus-requested angle per group;
* :func:`plot_visible_energy_at_angle` -> ``visible_energy_60deg``: visible energy at
  theta = 60 deg for 20, 50 and 90 GeV (those present);
* :func:`plot_cog_along_tilt` -> ``cog_along_tilt``: mean centroid of each layer along the
  tilt direction against layer, per inclined theta group, with the incident axis dotted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mplhep
import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from calogen.evaluation import angles as A
from calogen.evaluation.observables import SampleObservables, ShowerFeatures
from calogen.geometry import THRESHOLD_MEV, Calorimeter

REFERENCE_COLOR = "0.55"
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")
FORMATS = ("png", "pdf")
#: Energies (GeV) at which visible energy and number of hits are compared.
FIXED_ENERGIES_GEV = (10.0, 50.0, 90.0)
#: Energy windows used instead when the reference has a continuous energy spectrum.
ENERGY_WINDOWS_GEV = ((10.0, 20.0), (45.0, 55.0), (80.0, 90.0))
#: Fewest showers of every sample in every energy selection for a ratio panel under the
#: visible-energy and hits histograms (with fewer the ratio is noise).
MIN_RATIO_SHOWERS = 500
#: Colours of the energy selections and line styles of the samples in that figure.
SELECTION_COLORS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown")
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)))


#: mplhep's neutral ROOT style with font sizes suited to multi-panel figures.
STYLE_OVERRIDES = {
    "font.size": 14,
    "axes.labelsize": 16,
    "axes.titlesize": 14,
    "xtick.labelsize": 13,
    "ytick.labelsize": 13,
    "legend.fontsize": 12,
    "figure.titlesize": 16,
}


def _style() -> AbstractContextManager[None]:
    return plt.style.context([mplhep.style.ROOT, STYLE_OVERRIDES])


def color(index: int) -> str:
    """Colour of candidate ``index`` (0-based)."""
    return COLORS[index % len(COLORS)]


def save_figure(fig: plt.Figure, out_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    """Save ``fig`` as ``out_dir/stem.png`` and ``.pdf`` atomically; close it; return the paths."""
    out_dir = Path(out_dir)
    paths = []
    try:
        for fmt in FORMATS:
            path = out_dir / f"{stem}.{fmt}"
            tmp = out_dir / f".{stem}.{fmt}.{os.getpid()}.partial"
            try:
                fig.savefig(tmp, format=fmt, dpi=110 if fmt == "png" else None, bbox_inches="tight")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def _ratio_axes(
    ncols: int = 1, width: float = 7.0, height: float = 6.5
) -> tuple[plt.Figure, NDArray[np.object_]]:
    fig, axes = plt.subplots(
        2,
        ncols,
        figsize=(width * ncols, height),
        sharex="col",
        gridspec_kw={"height_ratios": [3, 1], "hspace": 0.06},
        squeeze=False,
    )
    return fig, axes


def _draw(
    ax: plt.Axes,
    rax: plt.Axes,
    edges: NDArray[np.floating],
    values: Sequence[NDArray[np.floating]],
    errors: Sequence[NDArray[np.floating]],
    labels: Sequence[str],
    *,
    ratio_range: tuple[float, float] = (0.5, 1.5),
    legend: bool = True,
) -> None:
    """Reference (index 0, filled) and candidates (lines) plus the ratio panel "model /
    reference" (arrows at the panel's edge for ratios off its scale); the legend outside the
    axes, to the right."""
    ref, ref_err = np.asarray(values[0], float), np.asarray(errors[0], float)
    ax.stairs(ref, edges, fill=True, color=REFERENCE_COLOR, alpha=0.55, label=labels[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_rel = np.where(ref > 0, ref_err / ref, np.nan)
        rax.stairs(
            1 + ref_rel, edges, baseline=1 - ref_rel, fill=True, color=REFERENCE_COLOR, alpha=0.4
        )
        for i, (val, err, label) in enumerate(zip(values[1:], errors[1:], labels[1:], strict=True)):
            val, err = np.asarray(val, float), np.asarray(err, float)
            c = color(i)
            ax.stairs(val, edges, color=c, lw=1.8, label=label)
            ratio = np.where(ref > 0, val / ref, np.nan)
            ratio_err = np.where(val > 0, ratio * err / val, np.nan)
            rax.stairs(ratio, edges, color=c, lw=1.5)
            rax.stairs(
                ratio + ratio_err, edges, baseline=ratio - ratio_err, fill=True, color=c, alpha=0.2
            )
            _off_scale_arrows(rax, edges, ratio, ratio_range, c)
    rax.axhline(1.0, color="k", lw=0.8, ls="--")
    rax.set_ylim(*ratio_range)
    rax.set_ylabel(ratio_label(labels[0]), fontsize=13)
    if legend:
        outside_legend(ax)


def ratio_label(reference_label: str) -> str:
    """Label of a ratio panel: ``model / Geant4`` (the reference's name without remarks in
    parentheses)."""
    name = reference_label.split(" (")[0].strip() or "reference"
    return f"model / {name if len(name) <= 12 else 'reference'}"


def _off_scale_arrows(
    rax: plt.Axes,
    edges: NDArray[np.floating],
    ratio: NDArray[np.floating],
    ratio_range: tuple[float, float],
    c: str,
) -> None:
    """Triangles at the top (bottom) edge of a ratio panel for bins whose ratio lies above
    (below) the panel's range, so that no curve leaves the panel unnoticed."""
    lo, hi = ratio_range
    centres = 0.5 * (np.asarray(edges[:-1], float) + np.asarray(edges[1:], float))
    if rax.get_xscale() == "log" or (edges[0] > 0 and edges[-1] / max(edges[0], 1e-300) > 100):
        centres = np.sqrt(np.asarray(edges[:-1], float) * np.asarray(edges[1:], float))
    pad = 0.06 * (hi - lo)
    with np.errstate(invalid="ignore"):
        above = np.isfinite(ratio) & (ratio > hi)
        below = np.isfinite(ratio) & (ratio < lo)
    kw = {"color": c, "ms": 6, "ls": "none", "clip_on": False, "zorder": 5}
    if above.any():
        rax.plot(centres[above], np.full(above.sum(), hi - pad), marker="^", **kw)
    if below.any():
        rax.plot(centres[below], np.full(below.sum(), lo + pad), marker="v", **kw)


def outside_legend(ax: plt.Axes, extra: Sequence[object] = ()) -> None:
    """The axes' legend to the right of it, outside the plotted fills; ``extra``: more
    handles (with their own labels)."""
    handles, labels = ax.get_legend_handles_labels()
    handles = [*handles, *extra]
    labels = [*labels, *(h.get_label() for h in extra)]  # type: ignore[attr-defined]
    ax.legend(
        handles,
        labels,
        fontsize=12,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )


def _hist(
    values: NDArray[np.floating], edges: NDArray[np.floating]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unit-area density histogram and its Poisson uncertainty."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    counts, _ = np.histogram(values, bins=edges)
    widths = np.diff(edges)
    norm = max(counts.sum(), 1) * widths
    return counts / norm, np.sqrt(counts) / norm


def _edges(values: Sequence[NDArray[np.floating]], bins: int = 50, q: float = 0.002) -> NDArray:
    """Common bin edges covering the central ``1 - 2q`` of the reference (first) sample."""
    ref = np.asarray(values[0], float)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = np.quantile(ref, [q, 1 - q])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.1 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, bins + 1)


def _labels(samples: Sequence[SampleObservables]) -> list[str]:
    return [s.label for s in samples]


# ---------------------------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------------------------


def plot_cell_energy(
    samples: Sequence[SampleObservables],
    out_dir: str | os.PathLike[str],
    threshold_mev: float = THRESHOLD_MEV,
) -> list[Path]:
    """Cell-energy spectrum: cells per shower per log bin vs cell energy (MeV)."""
    edges = samples[0].cell_edges_mev
    values = [s.cell_counts / max(s.n_showers, 1) for s in samples]
    errors = [np.sqrt(s.cell_counts) / max(s.n_showers, 1) for s in samples]
    occupied = np.flatnonzero(np.sum([s.cell_counts for s in samples], axis=0))
    with _style():
        fig, axes = _ratio_axes()
        ax, rax = axes[0, 0], axes[1, 0]
        _draw(ax, rax, edges, values, errors, _labels(samples))
        ax.set_xscale("log")
        ax.set_yscale("log")
        if occupied.size:
            lo = min(edges[occupied[0]], threshold_mev / 10)
            ax.set_xlim(lo, edges[occupied[-1] + 1] * 1.5)
        ax.axvspan(1e-6, threshold_mev, color="0.85", zorder=0)
        rax.axvspan(1e-6, threshold_mev, color="0.85", zorder=0)
        ax.set_ylabel("cells per shower")
        rax.set_xlabel("cell energy [MeV]")
        mip = " (half a MIP)" if threshold_mev == THRESHOLD_MEV else ""
        below = Patch(color="0.85", label=f"below threshold:\n< {threshold_mev:g} MeV{mip}")
        outside_legend(ax, [below])
        return save_figure(fig, out_dir, "cell_energy")


def _mean_sem(per_shower: NDArray[np.floating]) -> tuple[NDArray, NDArray]:
    per_shower = np.asarray(per_shower, float)
    n = max(len(per_shower), 1)
    mean = per_shower.mean(axis=0) if len(per_shower) else np.zeros(per_shower.shape[1])
    sem = per_shower.std(axis=0) / np.sqrt(n) if len(per_shower) else mean
    return mean, sem


def plot_radial_profile(
    samples: Sequence[SampleObservables], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Mean energy per shower (MeV) vs distance of the cell centre to the shower axis (mm)."""
    edges = samples[0].features.radial_profile_edges_mm
    stats = [_mean_sem(s.features.radial_profile_mev) for s in samples]
    with _style():
        fig, axes = _ratio_axes()
        ax, rax = axes[0, 0], axes[1, 0]
        _draw(ax, rax, edges, [m for m, _ in stats], [e for _, e in stats], _labels(samples))
        ax.set_yscale("log")
        nonzero = np.flatnonzero(stats[0][0] > 0)
        ax.set_xlim(0, edges[nonzero[-1] + 1] if nonzero.size else edges[-1])
        ax.set_ylabel("mean energy per shower [MeV]")
        rax.set_xlabel("radius (cell centre to shower axis) [mm]")
        return save_figure(fig, out_dir, "radial_profile")


def plot_longitudinal_profile(
    samples: Sequence[SampleObservables], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Mean energy per shower (MeV) in each layer."""
    n_layers = samples[0].features.energy_per_layer_mev.shape[1]
    edges = np.arange(n_layers + 1) - 0.5
    stats = [_mean_sem(s.features.energy_per_layer_mev) for s in samples]
    with _style():
        fig, axes = _ratio_axes()
        ax, rax = axes[0, 0], axes[1, 0]
        _draw(ax, rax, edges, [m for m, _ in stats], [e for _, e in stats], _labels(samples))
        ax.set_yscale("log")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylabel("mean energy per shower [MeV]")
        rax.set_xlabel("layer")
        return save_figure(fig, out_dir, "longitudinal_profile")


def plot_cog(samples: Sequence[SampleObservables], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Centre of gravity x, y (mm) and z (energy-weighted layer index), unit-area densities."""
    columns = [
        ("cog_x_mm", "CoG x [mm]"),
        ("cog_y_mm", "CoG y [mm]"),
        ("cog_z_layer", "CoG z [layer]"),
    ]
    with _style():
        fig, axes = _ratio_axes(ncols=3, width=6.0)
        for col, (name, xlabel) in enumerate(columns):
            data = [getattr(s.features, name) for s in samples]
            fewest = min(np.isfinite(np.asarray(d, float)).sum() for d in data)
            edges = _edges(data, bins=int(np.clip(np.sqrt(fewest), 10, 50)))  # ~sqrt(N) bins
            hists = [_hist(d, edges) for d in data]
            _draw(
                axes[0, col],
                axes[1, col],
                edges,
                [h for h, _ in hists],
                [e for _, e in hists],
                _labels(samples),
                legend=col == len(columns) - 1,
            )
            axes[0, col].set_ylabel("normalised")
            axes[1, col].set_xlabel(xlabel)
            axes[0, col].set_ylim(bottom=0)
        fig.subplots_adjust(wspace=0.3)
        return save_figure(fig, out_dir, "cog")


def energy_selections(
    reference_energies_gev: NDArray[np.floating],
) -> list[tuple[str, float, float]]:
    """Incident-energy selections ``(label, low, high)`` (GeV, inclusive) for the 10/50/90 plots.

    If at least 20 % of the reference showers lie within 0.5 % of 10, 50 or 90 GeV the sample
    holds fixed energies and the selections are those points; otherwise the windows
    10-20, 45-55 and 80-90 GeV are used. Selections without any reference shower are dropped.
    """
    energies = np.asarray(reference_energies_gev, float)
    near = np.zeros(energies.shape, bool)
    for e in FIXED_ENERGIES_GEV:
        near |= np.abs(energies - e) <= 0.005 * e
    if energies.size and near.mean() >= 0.2:
        selections = [(f"{e:g} GeV", e * 0.995, e * 1.005) for e in FIXED_ENERGIES_GEV]
    else:
        selections = [(f"{lo:g}-{hi:g} GeV", lo, hi) for lo, hi in ENERGY_WINDOWS_GEV]
    return [s for s in selections if np.any((energies >= s[1]) & (energies <= s[2]))]


def _select(features: ShowerFeatures, lo: float, hi: float) -> ShowerFeatures:
    e = features.incident_energy_gev
    return features.select((e >= lo) & (e <= hi))


def plot_energy_and_hits(
    samples: Sequence[SampleObservables], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Visible energy (MeV) and number of hits in the incident-energy selections.

    One colour per energy selection, one line style per sample (the reference filled). A
    ratio panel (model / reference, per selection) only when every sample has at least
    :data:`MIN_RATIO_SHOWERS` showers in every selection; the binning is coarser for fewer.
    """
    selections = energy_selections(samples[0].features.incident_energy_gev)
    quantities = [("visible_energy_mev", "visible energy [MeV]"), ("n_hits", "number of hits")]
    per_quantity = {
        name: [
            [np.asarray(getattr(_select(s.features, lo, hi), name), float) for s in samples]
            for _, lo, hi in selections
        ]
        for name, _ in quantities
    }
    counts_min = min(
        (len(v) for sel in per_quantity["n_hits"] for v in sel), default=0
    )  # fewest showers of any sample in any selection
    with_ratio = counts_min >= MIN_RATIO_SHOWERS
    n_bins = int(np.clip(4 * np.sqrt(max(counts_min, 1)), 30, 90))
    with _style():
        if with_ratio:
            fig, axes = _ratio_axes(ncols=2, width=7.5)
        else:
            fig, top = plt.subplots(1, 2, figsize=(15.0, 5.0), squeeze=False)
            axes = np.array([top[0], [None, None]], dtype=object)
        for col, (name, xlabel) in enumerate(quantities):
            ax, rax = axes[0, col], axes[1, col]
            per_sel = per_quantity[name]
            ref_all = np.concatenate([p[0] for p in per_sel]) if per_sel else np.zeros(0)
            if ref_all.size == 0:
                ax.text(
                    0.5,
                    0.5,
                    "no showers in the energy selections",
                    ha="center",
                    transform=ax.transAxes,
                )
                continue
            lo_q, hi_q = np.quantile(ref_all, [0.0, 1.0])
            span = max(hi_q - lo_q, 1.0)
            edges = np.linspace(max(lo_q - 0.1 * span, 0.0), hi_q + 0.1 * span, n_bins + 1)
            for j, data in enumerate(per_sel):
                c = SELECTION_COLORS[j % len(SELECTION_COLORS)]
                hists = []
                for k, values in enumerate(data):
                    counts, _ = np.histogram(values, bins=edges)
                    norm = max(counts.sum(), 1)
                    hists.append((counts / norm, np.sqrt(counts) / norm))
                    if k == 0:
                        ax.stairs(counts / norm, edges, fill=True, color=c, alpha=0.3)
                    else:
                        ls = LINE_STYLES[(k - 1) % len(LINE_STYLES)]
                        ax.stairs(counts / norm, edges, color=c, lw=1.6, ls=ls)
                if rax is not None:
                    ref, ref_err = hists[0]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        rel = np.where(ref > 0, ref_err / ref, np.nan)
                        rax.stairs(1 + rel, edges, baseline=1 - rel, fill=True, color=c, alpha=0.2)
                        for k, (val, _) in enumerate(hists[1:]):
                            ratio = np.where(ref > 0, val / ref, np.nan)
                            ls = LINE_STYLES[k % len(LINE_STYLES)]
                            rax.stairs(ratio, edges, color=c, lw=1.3, ls=ls)
                            _off_scale_arrows(rax, edges, ratio, (0.5, 1.5), c)
            ax.set_ylabel("fraction of showers (per selection)")
            ax.set_ylim(bottom=0)
            if rax is not None:
                rax.axhline(1.0, color="k", lw=0.8, ls="--")
                rax.set_ylim(0.5, 1.5)
                rax.set_ylabel(ratio_label(samples[0].label), fontsize=13)
                rax.set_xlabel(xlabel)
            else:
                ax.set_xlabel(xlabel)
        handles: list[object] = [
            Patch(color=SELECTION_COLORS[j % len(SELECTION_COLORS)], alpha=0.5, label=label)
            for j, (label, _, _) in enumerate(selections)
        ]
        handles.append(Patch(color="0.6", alpha=0.3, label=f"{samples[0].label} (filled)"))
        handles += [
            Line2D([], [], color="0.2", lw=1.6, ls=LINE_STYLES[k % len(LINE_STYLES)], label=s.label)
            for k, s in enumerate(samples[1:])
        ]
        axes[0, -1].legend(
            handles=handles,
            fontsize=12,
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
        )
        if not with_ratio:
            axes[0, 0].set_title(
                f"no ratio panel: {counts_min} showers in the smallest selection "
                f"(< {MIN_RATIO_SHOWERS})",
                fontsize=12,
                loc="left",
            )
        fig.subplots_adjust(wspace=0.25)
        return save_figure(fig, out_dir, "visible_energy_hits")


# ---------------------------------------------------------------------------------------------
# event displays
# ---------------------------------------------------------------------------------------------


def plot_event_display(
    samples: Sequence[SampleObservables], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """3-D display of one shower per sample: points (x, layer, y), colour = log10 energy.

    All panels share the axes (x, y within the window that holds 99 % of the reference
    shower's energy, at least 40 mm) and one colour scale.
    """
    n = len(samples)
    shown = []
    for sample in samples:
        display = sample.display
        if display is None:
            shown.append(None)
            continue
        pts = display.points
        if pts.shape[0]:
            x, y, z, e = pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3] * 1000.0
            what = "points"
        else:  # no point cloud kept: show the cell hits
            h = display.hits
            x, y, z, e = h.x_mm, h.y_mm, h.layer.astype(float), h.energy_mev
            what = "cells"
        e = np.clip(np.asarray(e, float), 1e-4, None)
        shown.append((np.asarray(x, float), np.asarray(y, float), np.asarray(z, float), e, what))
    half = 40.0
    ref = next((v for v in shown if v is not None), None)
    if ref is not None and ref[3].size:
        r = np.maximum(np.abs(ref[0]), np.abs(ref[1]))
        order = np.argsort(r)
        cum = np.cumsum(ref[3][order]) / ref[3].sum()
        half = max(half, float(r[order][min(np.searchsorted(cum, 0.99), r.size - 1)]))
        half = float(np.ceil(half / 10.0) * 10.0)
    log_e = [np.log10(v[3]) for v in shown if v is not None and v[3].size]
    all_log = np.concatenate(log_e) if log_e else np.zeros(1)
    norm = Normalize(vmin=float(np.quantile(all_log, 0.01)), vmax=float(all_log.max()))
    n_layers = max((int(v[2].max()) + 1 for v in shown if v is not None and v[2].size), default=30)
    with _style():
        fig = plt.figure(figsize=(5.6 * n + 1.2, 6.0))
        axes = []
        mappable = None
        for i, sample in enumerate(samples):
            ax = fig.add_subplot(1, n, i + 1, projection="3d")
            axes.append(ax)
            ax.set_xlim(-half, half)
            ax.set_ylim(0, n_layers)
            ax.set_zlim(-half, half)
            for axis in (ax.xaxis, ax.zaxis):
                axis.set_major_locator(MaxNLocator(4, symmetric=True))
            ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
            ax.set_box_aspect((1.0, 1.8, 1.0))
            ax.set_xlabel("x [mm]", fontsize=11, labelpad=6)
            ax.set_ylabel("layer", fontsize=11, labelpad=6)
            ax.set_zlabel("y [mm]", fontsize=11, labelpad=6)
            ax.tick_params(labelsize=9)
            if shown[i] is None:
                ax.set_title(f"{sample.label}: no shower", fontsize=13)
                continue
            x, y, z, e, what = shown[i]
            inside = (np.abs(x) <= half) & (np.abs(y) <= half)
            mappable = ax.scatter(
                x[inside],
                z[inside],
                y[inside],
                c=np.log10(e[inside]),
                s=2 + 6 * (e[inside] / e.max()) ** 0.5,
                cmap="viridis",
                norm=norm,
                alpha=0.7,
                linewidths=0,
                rasterized=True,
            )
            outside = int((~inside).sum())
            note = f" ({outside} outside)" if outside else ""
            energy = sample.display.incident_energy_gev if sample.display is not None else 0.0
            ax.set_title(f"{sample.label}\n{energy:.1f} GeV, {len(x)} {what}{note}", fontsize=12)
        if mappable is not None:
            bar = fig.colorbar(mappable, ax=axes, shrink=0.55, pad=0.04)
            bar.set_label("log10(E / MeV)", fontsize=12)
        return save_figure(fig, out_dir, "event_display")


def _gap_intervals(
    start: float, stop: float, wafer_cells: int, cell_mm: float, gap_mm: float, offset: float
) -> list[tuple[float, float]]:
    """Dead intervals ``[a, b)`` of one axis in the detector frame within ``[start, stop]``."""
    if wafer_cells <= 0 or gap_mm <= 0:
        return []
    wafer = wafer_cells * cell_mm
    period = wafer + gap_mm
    first = int(np.floor((start - offset) / period)) - 1
    last = int(np.ceil((stop - offset) / period)) + 1
    return [(offset + w * period + wafer, offset + (w + 1) * period) for w in range(first, last)]


def plot_layer_map(
    samples: Sequence[SampleObservables],
    out_dir: str | os.PathLike[str],
    calorimeter: Calorimeter,
    *,
    layer: int | None = None,
    impact_mm: tuple[float, float] = (0.0, 0.0),
    half_width_mm: float | None = None,
) -> list[Path]:
    """Cell energies of one layer of each display shower, points overlaid, gaps in black.

    Args:
        layer: the layer; default the layer with the most energy in the reference shower.
        impact_mm: impact point in the detector frame (gaps are fixed in that frame).
        half_width_mm: half size of the window around the impact point; default from the
            extent of the reference hits in that layer (at least 8 cells).
    """
    ref_display = samples[0].display
    if layer is None:
        if ref_display is not None and len(ref_display.hits):
            per_layer = np.bincount(
                ref_display.hits.layer,
                weights=ref_display.hits.energy_mev,
                minlength=calorimeter.n_layers,
            )
            layer = int(np.argmax(per_layer))
        else:
            layer = calorimeter.n_layers // 2
    size = calorimeter.cell_size_mm
    if half_width_mm is None:
        half_width_mm = 8 * size
        if ref_display is not None:
            sel = ref_display.hits.layer == layer
            if sel.any():  # square containing 98 % of the layer energy
                e = ref_display.hits.energy_mev[sel].astype(float)
                r = np.maximum(
                    np.abs(ref_display.hits.x_mm[sel]), np.abs(ref_display.hits.y_mm[sel])
                ).astype(float)
                order = np.argsort(r)
                cum = np.cumsum(e[order]) / e.sum()
                extent = r[order][min(np.searchsorted(cum, 0.98), len(r) - 1)]
                half_width_mm = float(np.clip(extent + 2 * size, 8 * size, 30 * size))
    energies = [
        s.display.hits.energy_mev[s.display.hits.layer == layer]
        for s in samples
        if s.display is not None
    ]
    all_e = np.concatenate(energies) if energies else np.zeros(0)
    all_e = all_e[all_e > 0]
    norm = (
        LogNorm(vmin=max(all_e.min(), 1e-3), vmax=max(all_e.max(), 2e-3))
        if all_e.size
        else LogNorm(1e-1, 1e2)
    )
    n = len(samples)
    with _style():
        fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 6.0), squeeze=False)
        mappable = None
        for i, sample in enumerate(samples):
            ax = axes[0, i]
            ax.set_xlim(-half_width_mm, half_width_mm)
            ax.set_ylim(-half_width_mm, half_width_mm)
            ax.set_aspect("equal")
            ax.set_xlabel("x [mm]")
            if i == 0:
                ax.set_ylabel("y [mm]")
            display = sample.display
            if display is None:
                ax.set_title(f"{sample.label}: no shower", fontsize=13)
                continue
            hits = display.hits
            sel = hits.layer == layer
            rects = [
                Rectangle((x - size / 2, y - size / 2), size, size)
                for x, y in zip(hits.x_mm[sel], hits.y_mm[sel], strict=True)
            ]
            coll = PatchCollection(rects, cmap="viridis", norm=norm, edgecolor="none")
            coll.set_array(np.asarray(hits.energy_mev[sel], float))
            ax.add_collection(coll)
            mappable = coll
            # dead gaps (detector frame -> frame of the impact point)
            stagger = calorimeter.stagger_x_mm[layer]
            for a, b in _gap_intervals(
                impact_mm[0] - half_width_mm,
                impact_mm[0] + half_width_mm,
                calorimeter.wafer_cells,
                size,
                calorimeter.gap_x_mm,
                stagger,
            ):
                ax.axvspan(a - impact_mm[0], b - impact_mm[0], color="k", zorder=3)
            for a, b in _gap_intervals(
                impact_mm[1] - half_width_mm,
                impact_mm[1] + half_width_mm,
                calorimeter.wafer_cells,
                size,
                calorimeter.gap_y_mm,
                0.0,
            ):
                ax.axhspan(a - impact_mm[1], b - impact_mm[1], color="k", zorder=3)
            pts = display.points
            if pts.shape[0]:
                on_layer = np.rint(pts[:, 2]).astype(int) == layer
                ax.scatter(
                    pts[on_layer, 0],
                    pts[on_layer, 1],
                    s=1.5,
                    color="0.1" if i == 0 else color(i - 1),
                    alpha=0.6,
                    zorder=4,
                )
            ax.set_title(
                f"{sample.label}: {display.incident_energy_gev:.1f} GeV, layer {layer}", fontsize=13
            )
        if mappable is not None:
            fig.colorbar(mappable, ax=list(axes[0]), shrink=0.85, label="cell energy [MeV]")
        return save_figure(fig, out_dir, "layer_map")


# ---------------------------------------------------------------------------------------------
# inclined showers
# ---------------------------------------------------------------------------------------------


def _sample_color(index: int) -> str:
    """Colour of sample ``index`` (0 = reference)."""
    return "0.25" if index == 0 else color(index - 1)


def _label_group(ax: plt.Axes, text: str, x: float) -> None:
    """Write a group's name (e.g. "30 deg") at the top of ``ax`` above data coordinate ``x``."""
    ax.annotate(
        text,
        (x, 1.0),
        xytext=(0, -6),
        textcoords="offset points",
        ha="center",
        va="top",
        fontsize=11,
        color="0.3",
        xycoords=("data", "axes fraction"),
    )


def plot_angle_response(
    samples: Sequence[SampleObservables], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Fitted axis angle per group of requested theta, reference against every candidate.

    Left: unit-area distributions of the fitted axis polar angle (deg) for each theta group of
    the reference (at 50 GeV when the reference has that energy, else all energies). Right:
    mean fitted minus requested angle per group (error bars: standard deviation of the
    showers; the mean's own error is far smaller).
    """
    ref = samples[0].features
    egroup = A.response_energy(ref)
    groups = A.theta_groups(A.select(ref, egroup, None).incident_theta_deg)
    top = max((g[2] for g in groups), default=60.0) + 12.0
    edges = np.arange(0.0, top + 0.5, 0.5)
    with _style():
        fig, (ax, rax) = plt.subplots(
            1, 2, figsize=(16, 6.5), gridspec_kw={"width_ratios": [2.2, 1], "wspace": 0.25}
        )
        for gi, group in enumerate(groups):
            medians = []
            for k, sample in enumerate(samples):
                sel = A.select(sample.features, egroup, group)
                values = sel.axis_theta_deg[np.isfinite(sel.axis_theta_deg)]
                label = sample.label if gi == 0 else None
                if values.size:
                    density, _ = _hist(values, edges)
                    if k == 0:
                        ax.stairs(
                            density,
                            edges,
                            fill=True,
                            color=REFERENCE_COLOR,
                            alpha=0.55,
                            label=label,
                        )
                        medians.append(float(np.median(values)))
                    else:
                        ax.stairs(density, edges, color=color(k - 1), lw=1.8, label=label)
                    diff = sel.axis_theta_deg - sel.incident_theta_deg
                    diff = diff[np.isfinite(diff)]
                    rax.errorbar(
                        group[3] + (k - (len(samples) - 1) / 2) * 0.8,
                        diff.mean(),
                        yerr=diff.std(),
                        fmt="o" if k == 0 else "s",
                        color=_sample_color(k),
                        ms=6,
                        capsize=3,
                        label=label,
                    )
            if medians:
                _label_group(ax, group[0], max(medians[0], 0.03 * top))
        energy = egroup[0] if egroup is not None else "all energies"
        ax.set_xlim(0.0, top)
        ax.set_xlabel("fitted shower axis angle theta [deg]")
        ax.set_ylabel("fraction of showers per deg (per group)")
        ax.set_title(f"angle response, {energy}", fontsize=14)
        ax.legend(fontsize=12, frameon=False, loc="center right")
        rax.axhline(0.0, color="k", lw=0.8, ls="--")
        if groups:
            rax.set_xlim(min(g[3] for g in groups) - 7.5, max(g[3] for g in groups) + 7.5)
        rax.set_xlabel("requested theta [deg]")
        rax.set_ylabel("fitted - requested theta [deg]")
        return save_figure(fig, out_dir, "angle_response")


def steep_groups(
    reference: ShowerFeatures,
) -> tuple[A.Group | None, list[A.Group]]:
    """The theta group at 60 deg and the energy groups at 20, 50, 90 GeV of the reference that
    hold at least :data:`~calogen.evaluation.angles.MIN_GROUP_SHOWERS` showers at 60 deg."""
    tgroup = next(
        (
            g
            for g in A.theta_groups(reference.incident_theta_deg)
            if g[1] <= A.STEEP_THETA_DEG <= g[2]
        ),
        None,
    )
    if tgroup is None:
        return None, []
    steep = A.select(reference, None, tgroup)
    egroups = [
        g
        for g in A.energy_groups(steep.incident_energy_gev)
        if any(g[1] <= e <= g[2] for e in A.ANGLE_ENERGIES_GEV)
    ]
    return tgroup, egroups


def plot_visible_energy_at_angle(
    samples: Sequence[SampleObservables], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Visible energy (MeV) at theta = 60 deg for 20, 50 and 90 GeV (those in the reference)."""
    tgroup, egroups = steep_groups(samples[0].features)
    with _style():
        fig, axes = _ratio_axes(width=9.0)
        ax, rax = axes[0, 0], axes[1, 0]
        per_group = [
            [A.select(s.features, g, tgroup).visible_energy_mev for s in samples] for g in egroups
        ]
        ref_all = np.concatenate([p[0] for p in per_group]) if per_group else np.zeros(1)
        lo, hi = float(ref_all.min()), float(ref_all.max())
        span = max(hi - lo, 1.0)
        edges = np.linspace(max(lo - 0.15 * span, 0.0), hi + 0.15 * span, 120)
        totals = [np.zeros(len(edges) - 1) for _ in samples]
        errs2 = [np.zeros(len(edges) - 1) for _ in samples]
        for group, data in zip(egroups, per_group, strict=True):
            for k, values in enumerate(data):
                counts, _ = np.histogram(values, bins=edges)
                norm = max(counts.sum(), 1)
                totals[k] += counts / norm
                errs2[k] += counts / norm**2
            _label_group(ax, group[0], float(np.median(data[0])))
        _draw(ax, rax, edges, totals, [np.sqrt(e) for e in errs2], _labels(samples))
        title = tgroup[0] if tgroup is not None else ""
        ax.set_title(f"visible energy at theta = {title}", fontsize=14)
        ax.set_ylabel("fraction of showers (per energy)")
        rax.set_xlabel("visible energy [MeV]")
        return save_figure(fig, out_dir, "visible_energy_60deg")


def plot_cog_along_tilt(
    samples: Sequence[SampleObservables],
    out_dir: str | os.PathLike[str],
    calorimeter: Calorimeter,
) -> list[Path]:
    """Mean centroid of each layer along the tilt direction (mm) against layer.

    One curve per inclined theta group of the reference (at 50 GeV when the reference has that
    energy): reference as markers, candidates as lines, the incident axis
    ``depth_l tan(theta)`` dotted; below, candidate minus reference (mm).
    """
    ref = samples[0].features
    egroup = A.response_energy(ref)
    groups = [
        g
        for g in A.theta_groups(A.select(ref, egroup, None).incident_theta_deg)
        if g[3] > A.NORMAL_THETA_DEG
    ]
    n_layers = ref.layer_cog_x_mm.shape[1]
    layers = np.arange(n_layers)
    depth = np.asarray(calorimeter.layer_z_mm, dtype=np.float64)[:n_layers]
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    with _style():
        fig, axes = _ratio_axes(width=9.0)
        ax, rax = axes[0, 0], axes[1, 0]
        for gi, group in enumerate(groups):
            profiles = [A.tilt_profile(A.select(s.features, egroup, group)) for s in samples]
            ref_mean, ref_sem = profiles[0]
            ax.plot(
                layers,
                depth * np.tan(np.radians(group[3])),
                color="0.6",
                ls=":",
                lw=1.2,
                label="incident axis" if gi == 0 else None,
            )
            ax.errorbar(
                layers,
                ref_mean,
                yerr=ref_sem,
                fmt=markers[gi % len(markers)],
                color="0.25",
                ms=4,
                label=f"{samples[0].label}, {group[0]}",
            )
            for k, (mean, _sem) in enumerate(profiles[1:]):
                c = color(k)
                ax.plot(
                    layers, mean, color=c, lw=1.6, label=samples[k + 1].label if gi == 0 else None
                )
                rax.plot(
                    layers,
                    mean - ref_mean,
                    color=c,
                    lw=1.4,
                    marker=markers[gi % len(markers)],
                    ms=3,
                )
        rax.axhline(0.0, color="k", lw=0.8, ls="--")
        energy = egroup[0] if egroup is not None else "all energies"
        ax.set_title(f"centre of gravity along the tilt per layer, {energy}", fontsize=14)
        ax.set_ylabel("mean layer centroid along tilt [mm]")
        ax.legend(fontsize=10, frameon=False, loc="upper left")
        rax.set_ylabel("cand. - ref. [mm]", fontsize=13)
        rax.set_xlabel("layer")
        ax.set_xlim(-0.5, n_layers - 0.5)
        return save_figure(fig, out_dir, "cog_along_tilt")


def make_all_plots(
    samples: Sequence[SampleObservables],
    out_dir: str | os.PathLike[str],
    calorimeter: Calorimeter,
    *,
    threshold_mev: float = THRESHOLD_MEV,
    impact_mm: tuple[float, float] = (0.0, 0.0),
    layer: int | None = None,
) -> dict[str, list[Path]]:
    """All comparison plots; ``samples[0]`` is the reference. Returns stem -> [png, pdf].

    The figures of inclined showers are added when the reference holds any.
    """
    figures = {
        "cell_energy": plot_cell_energy(samples, out_dir, threshold_mev),
        "radial_profile": plot_radial_profile(samples, out_dir),
        "longitudinal_profile": plot_longitudinal_profile(samples, out_dir),
        "cog": plot_cog(samples, out_dir),
        "visible_energy_hits": plot_energy_and_hits(samples, out_dir),
        "event_display": plot_event_display(samples, out_dir),
        "layer_map": plot_layer_map(
            samples, out_dir, calorimeter, layer=layer, impact_mm=impact_mm
        ),
    }
    reference = samples[0].features
    if A.is_inclined(reference):
        figures["angle_response"] = plot_angle_response(samples, out_dir)
        figures["cog_along_tilt"] = plot_cog_along_tilt(samples, out_dir, calorimeter)
        if steep_groups(reference)[1]:
            figures["visible_energy_60deg"] = plot_visible_energy_at_angle(samples, out_dir)
    return figures
