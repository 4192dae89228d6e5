"""Clustering closure (CaloClouds appendix A) on the shared Geant4 step showers.

Run: ``python benchmarks/closure.py [--steps ../shared/data/g4_photon_steps_10-50-90GeV.h5]``.
Writes docs/closure.md and docs/figures/closure_layer21.png (relative difference per cell of
the overlay of all showers in layer 21, like figure 10 of the paper).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from calogen.data.clustering import clustering_closure
from calogen.data.io import read_showers
from calogen.geometry import ild_ecal, slab

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--steps", default=str(REPO.parent / "shared/data/g4_photon_steps_10-50-90GeV.h5")
    )
    parser.add_argument("--out", default=str(REPO / "docs"))
    args = parser.parse_args()
    steps = read_showers(args.steps)
    rows = []
    cases = [
        ("slab", slab(), (0.0, 0.0), 6),
        ("ild", ild_ecal(), (0.0, 0.0), 6),
        ("ild", ild_ecal(), (31.7, -12.9), 6),
        ("ild", ild_ecal(), (0.0, 0.0), 2),
    ]
    results = {}
    for name, geometry, impact, granularity in cases:
        result = clustering_closure(steps, geometry, impact, granularity=granularity)
        results[(name, impact, granularity)] = result
        s = result.summary()
        rows.append(
            f"| {name} | {impact[0]:g}, {impact[1]:g} | {granularity}x{granularity} | "
            f"{s['core_cells']:.0f} | {100 * s['core_median_relative']:.2f} | "
            f"{100 * s['core_fraction_below_2pc']:.0f} | {100 * s['core_fraction_below_10pc']:.0f} | "
            f"{100 * s['energy_weighted_mean_relative']:.2f} | {s['total_ratio']:.5f} |"
        )
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    result = results[("ild", (0.0, 0.0), 6)]
    layer = result.layer == 21
    for ax, values, title, cmap in (
        (axes[0], result.steps_mev[layer], "Geant4 steps: summed cell energy [MeV]", "viridis"),
        (axes[1], result.clusters_mev[layer], "clusters projected [MeV]", "viridis"),
        (axes[2], result.relative[layer] * 100, "relative difference [%]", "magma"),
    ):
        grid_x, grid_y = result.ix[layer], result.iy[layer]
        sel = (np.abs(grid_x - np.median(grid_x)) < 12) & (np.abs(grid_y - np.median(grid_y)) < 12)
        norm = matplotlib.colors.LogNorm() if "MeV" in title else None
        kwargs = {"vmin": 0, "vmax": 10} if "%" in title else {}
        sc = ax.scatter(
            grid_x[sel],
            grid_y[sel],
            c=values[sel],
            marker="s",
            s=40,
            cmap=cmap,
            norm=norm,
            **kwargs,
        )
        fig.colorbar(sc, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("cell index x")
        ax.set_ylabel("cell index y")
    fig.suptitle(f"{len(steps)} Geant4 showers (10, 50, 90 GeV), layer 21, ILD-like cells")
    fig.tight_layout()
    fig.savefig(out / "figures/closure_layer21.png", dpi=110)
    text = f"""# Clustering closure (CaloClouds paper, appendix A)

Made by `python benchmarks/closure.py` from `{Path(args.steps).name}` ({len(steps)} raw Geant4
step showers: 30 each at 10, 50 and 90 GeV). Steps and their clusters (per-layer sums on the
sub-cell grid) are projected into the same cells without threshold and summed over all
showers; the table compares the two cell by cell. "Core" cells are the highest-energy cells
that together hold 90 % of the energy.

| geometry | impact (mm) | sub-cells | core cells | median rel. diff. (%) | core cells < 2 % (%) | core cells < 10 % (%) | energy-weighted mean rel. diff. (%) | total ratio |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

![relative difference per cell, layer 21](figures/closure_layer21.png)

Findings:

- In the slab of the shared data the closure is exact: the 0.848 mm grid divides the
  5.0883 mm cells, and the impact point sits on a grid corner and a cell corner.
- In the ILD-like geometry (wafer gaps, staggering by 2.474/0.174/2.974 mm) sub-cells that
  straddle a cell edge move all their energy to one side. The photons of the data hit
  exactly x = y = 0 (a pencil beam), so the dense shower axis always sits at the same spot
  relative to the sub-cell grid, and a staggered cell edge a fraction of a millimetre from
  the axis shifts several per cent of a core cell's energy. Most core cells agree within a
  few per cent; the energy-weighted mean difference is 6-9 %, larger than the paper's
  "below 2 % for most cells", which was measured with 2,000 showers of one energy and a
  sub-cell grid we do not know the alignment of. With 2x2 sub-cells the summary numbers are
  about the same: they are dominated by the one sub-cell column at the axis, which straddles
  a cell edge for any granularity whose grid has a corner on the axis. A grid aligned with
  the real cells (or uniform jitter of each point within its sub-cell at projection, which
  halves the energy-weighted difference in a quick check) would remove most of it.
- Energy is conserved (total ratio 1 to 4e-4; the remainder is energy that moves into or out of
  the dead gaps).
"""
    (out / "closure.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
