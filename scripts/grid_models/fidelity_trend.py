"""Fidelity of a grid model against its training length, from ``calogen evaluate`` reports.

Usage::

    python scripts/grid_models/fidelity_trend.py ITER=EVAL [ITER=EVAL ...] \
        --label NAME [--label NAME ...] [--baseline GFlash] [--out PNG]

Each ``EVAL`` is the ``-o`` folder of one ``calogen evaluate --reference-grid MODEL`` run of
the model trained for ``ITER`` iterations. From its ``metrics.json`` the script reads the
comparison within the model's grid (``within_grid``): for each candidate named by
``--label`` (one line per label, e.g. the model with and without its generation mirror) the
sum of the eight W1 groups of the CaloClouds II table (W1 x 100, the mean over batches of
each group) and the classifier AUC (mean over folds, with its spread as error bar); the ``--baseline`` candidate (GFlash by
default) and the floor (the reference's two halves) are drawn as bands over all the runs'
values. Prints a Markdown table and writes a two-panel figure (``--out``, default
``fidelity_trend.png``).

Why a script of its own: the issue on the grid models asks for fidelity against iterations
where a target is out of reach; ``calogen evaluate`` compares samples at one setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mplhep
import numpy as np

from calogen.evaluation.metrics import W1_ROWS
from calogen.evaluation.plots import STYLE_OVERRIDES


def within_grid(folder: Path) -> dict[str, Any]:
    """The ``within_grid`` part of ``folder/metrics.json`` (exits with one line if absent)."""
    path = folder / "metrics.json"
    if not path.exists():
        sys.exit(f"{path}: not found (is this a 'calogen evaluate' output folder?)")
    metrics = json.loads(path.read_text())
    if "within_grid" not in metrics:
        sys.exit(f"{path}: no within-grid comparison (evaluate with --reference-grid MODEL)")
    return metrics["within_grid"]


def summary(entry: dict[str, Any]) -> tuple[float, float, float]:
    """``(W1 sum, AUC mean, AUC std)`` of one candidate (or floor) entry; the sum runs over
    the rows of the CaloClouds II table (``W1_ROWS``: the report's axis-angle rows and its
    log10 cell-energy row are left out, as in docs/bibae_l2lflows.md)."""
    rows = entry["w1"]["rows"]
    missing = [g for g in W1_ROWS if g not in rows]
    if missing:
        sys.exit(f"W1 rows missing in metrics.json: {', '.join(missing)}")
    w1_sum = float(sum(rows[g]["mean"] for g in W1_ROWS))
    clf = entry.get("classifier") or {}
    return w1_sum, float(clf.get("auc_mean", np.nan)), float(clf.get("auc_std", np.nan))


def parse_run(text: str) -> tuple[int, Path]:
    """``"ITER=FOLDER"`` → ``(ITER, FOLDER)``."""
    head, sep, tail = text.partition("=")
    if not sep or not head.strip().isdigit():
        sys.exit(f"'{text}': expected ITER=EVAL_FOLDER, e.g. 1600=runs/eval_1600")
    return int(head), Path(tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="ITER=EVAL_FOLDER, one per training length")
    parser.add_argument("--label", action="append", required=True, help="candidate label(s)")
    parser.add_argument("--baseline", default="GFlash", help="candidate drawn as a band")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--out", type=Path, default=Path("fidelity_trend.png"))
    args = parser.parse_args(argv)

    runs = sorted(parse_run(r) for r in args.runs)
    table: dict[str, list[tuple[int, float, float, float]]] = {
        name: [] for name in [*args.label, args.baseline, "floor"]
    }
    for iters, folder in runs:
        grid = within_grid(folder)
        candidates = grid["candidates"]
        for name in [*args.label, args.baseline]:
            if name not in candidates:
                sys.exit(f"{folder}: no candidate '{name}' (has: {', '.join(candidates)})")
            table[name].append((iters, *summary(candidates[name])))
        if grid.get("floor"):
            table["floor"].append((iters, *summary(grid["floor"])))

    print("| iterations | " + " | ".join(f"{n}: W1 sum / AUC" for n in table) + " |")
    print("|---" * (len(table) + 1) + "|")
    for i, (iters, _) in enumerate(runs):
        cells = [f"{table[n][i][1]:.1f} / {table[n][i][2]:.3f}" for n in table if table[n]]
        print(f"| {iters:,} | " + " | ".join(cells) + " |")

    with plt.style.context([mplhep.style.ROOT, STYLE_OVERRIDES]):
        fig, axes = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True)
        for ax, col, ylabel in ((axes[0], 1, "sum of W1 groups (x100)"), (axes[1], 2, "AUC")):
            for name, colour in (
                (args.baseline, "tab:green"),
                ("floor", "0.5"),
            ):
                if not table[name]:
                    continue
                values = np.array([row[col] for row in table[name]])
                ax.axhspan(values.min(), values.max(), color=colour, alpha=0.25, lw=0)
                ax.axhline(values.mean(), color=colour, ls="--", lw=1.2, label=name)
            for name in args.label:
                rows = np.array(table[name])
                if col == 2:
                    ax.errorbar(rows[:, 0], rows[:, 2], rows[:, 3], fmt="o-", capsize=3,
                                label=name)  # fmt: skip
                else:
                    ax.plot(rows[:, 0], rows[:, 1], "o-", label=name)
            ax.set_ylabel(ylabel)
            ax.legend(loc="best")
        axes[1].set_xscale("log", base=2)
        axes[1].set_xticks([r[0] for r in runs], [f"{r[0]:,}" for r in runs])
        axes[1].minorticks_off()
        axes[1].set_xlabel("training iterations")
        if args.title:
            fig.suptitle(args.title)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
