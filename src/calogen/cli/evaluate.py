"""The ``evaluate`` sub-command: compare generated showers with a reference and write a report."""

from __future__ import annotations

import argparse
from typing import Any

from calogen.cli import add_num, add_output, add_quiet, finite_float, positive_int


def _non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _folds(text: str) -> int:
    value = positive_int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"must be >= 3 (test, validation, training), got {value}")
    return value


def register(subparsers: Any) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="compare generated showers with a reference (Geant4) sample: metrics, plots, report",
        description=(
            "Project the showers of a reference file and of one or more candidate files into "
            "the calorimeter cells (threshold in MeV) and compare them: the CaloClouds II table "
            "of 1-D Wasserstein distances x100 (with the reference-vs-reference floor), a "
            "classifier test (ROC AUC), FPD and KPD, and plots of the cell-energy spectrum, "
            "radial and longitudinal profiles, centre of gravity, visible energy and number of "
            "hits, and event displays. Inclined showers (directions stored in the files) are "
            "measured from their axis and get the fitted-axis rows and the angle figures. "
            "Writes DIR/metrics.json, DIR/report.md, DIR/report.html and the figures (PNG and "
            "PDF)."
        ),
    )
    evaluate.add_argument(
        "--reference",
        required=True,
        nargs="+",
        metavar="REF.h5",
        help="reference shower file (Geant4); several files are concatenated into one "
        "reference (e.g. Geant4 at 50 GeV and theta 0 15 30 45 60)",
    )
    evaluate.add_argument(
        "--candidate",
        required=True,
        action="append",
        nargs="+",
        metavar="GEN.h5",
        help="generated shower file(s) of one candidate (several files are concatenated); "
        "repeat --candidate for several candidates",
    )
    evaluate.add_argument(
        "--theta",
        type=finite_float,
        default=None,
        metavar="DEG",
        help="polar angle (deg, [0, 90)) of every shower of the candidate files that store no "
        "directions (or only normal incidence); default: the files' own directions",
    )
    evaluate.add_argument(
        "--phi",
        type=finite_float,
        default=None,
        metavar="DEG",
        help="azimuth (deg) that goes with --theta (default 0)",
    )
    evaluate.add_argument(
        "--reference-grid",
        metavar="bibae|l2lflows|MODEL_DIR",
        default=None,
        help="also compare every candidate with the reference put through a grid model's voxel "
        "grid (voxelised, back to one point per voxel): bibae (30x30x30), l2lflows (30x10x10) or "
        "a trained grid-model folder (a BIB-AE with axis_frame: voxelised in each shower's "
        "axis frame and inclined back); the report then holds both comparisons (default: none)",
    )
    evaluate.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        default=None,
        help="name of a candidate, one per --candidate in the same order (default: file name)",
    )
    evaluate.add_argument(
        "--reference-label",
        metavar="NAME",
        default=None,
        help="name of the reference (default: 'Geant4' if the file says so, else its file name)",
    )
    evaluate.add_argument(
        "--geometry", choices=["slab", "ild"], default="slab", help="calorimeter (default: slab)"
    )
    evaluate.add_argument(
        "--impact",
        type=finite_float,
        nargs=2,
        metavar=("X", "Y"),
        default=(0.0, 0.0),
        help="impact point in the detector frame, mm (default: 0 0)",
    )
    evaluate.add_argument(
        "--threshold",
        type=_non_negative_float,
        default=None,
        metavar="MEV",
        help="cell threshold in MeV (default: 0.1, half a MIP)",
    )
    add_num(
        evaluate,
        old=("--max-showers",),
        help="use at most the first N showers of each file (default: all)",
    )
    add_output(
        evaluate,
        metavar="DIR",
        help="report folder (metrics.json, report.md, report.html, figures)",
    )
    evaluate.add_argument(
        "--batches",
        type=positive_int,
        default=5,
        metavar="K",
        help="disjoint batches for the W1 mean and spread (default: 5)",
    )
    evaluate.add_argument(
        "--folds",
        type=_folds,
        default=5,
        metavar="K",
        help="classifier cross-validation folds, >= 3 (default: 5)",
    )
    evaluate.add_argument(
        "--layer",
        type=int,
        default=None,
        metavar="L",
        help="layer index 0-29 of the cell map (default: the shower maximum)",
    )
    evaluate.add_argument(
        "--no-fpd-kpd", action="store_true", help="skip FPD and KPD (they take a while)"
    )
    evaluate.add_argument(
        "--feature-groups",
        action="store_true",
        help="also train the classifier on each feature group alone (occupancy and sampling "
        "fraction, longitudinal, radial, centre of gravity, fitted axis): shows which group "
        "separates most, spreads and correlations included (five more classifiers per candidate)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    evaluate.add_argument(
        "--chunk-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="showers read and projected per chunk (bounds the memory)",
    )
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace a report already in the output folder"
    )
    add_quiet(evaluate, help="no progress bars")
    evaluate.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from calogen.evaluation.report import EvaluationConfig, evaluate

    config = EvaluationConfig(
        geometry=args.geometry,
        impact_mm=(float(args.impact[0]), float(args.impact[1])),
        threshold_mev=args.threshold,
        max_showers=args.num,
        chunk_size=args.chunk_size,
        n_batches=args.batches,
        k_folds=args.folds,
        fpd_kpd=not args.no_fpd_kpd,
        seed=args.seed,
        layer=args.layer,
        progress=not args.quiet,
        candidate_theta_deg=args.theta,
        candidate_phi_deg=args.phi,
        reference_grid=args.reference_grid,
        feature_groups=args.feature_groups,
    )
    metrics = evaluate(
        args.reference,
        args.candidate,
        args.output,
        labels=args.label,
        reference_label=args.reference_label,
        config=config,
        overwrite=args.overwrite,
    )
    _print_summary(metrics, args.output)
    return 0


def _print_summary(metrics: dict, out: str) -> None:
    """The report's main table on stdout (every row of report.md: W1 rows, classifier AUC,
    FPD, KPD; one column per candidate and the reference floor), the features that separate
    each candidate most, then the warnings."""
    import sys
    from pathlib import Path

    from calogen.evaluation.report import _table_rows

    _print_table(*_table_rows(metrics))
    _print_ranking(metrics)
    within = metrics.get("within_grid")
    if within:
        print(f"against {within['reference']['label']}:")
        _print_table(*_table_rows(within))
        _print_ranking(within, " on the grid")
    for warning in metrics.get("warnings", []):
        print(f"calogen: warning: {warning}", file=sys.stderr)
    print(f"report: {Path(out) / 'report.html'}")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """A table on stdout: the metric and 'better' columns left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def _print_ranking(metrics: dict, where: str = "") -> None:
    """The five single features that separate each candidate most."""
    from calogen.evaluation.report import feature_label

    for name, entry in metrics["candidates"].items():
        ranking = entry.get("feature_ranking", [])[:5]
        groups = entry.get("feature_groups")
        if isinstance(groups, list) and groups:
            print(f"feature groups that separate {name}{where} (classifier AUC, group alone):")
            for g in groups:
                print(f"  {g['group']:<36} {g['auc_mean']:.3f} ± {g['auc_std']:.3f}")
        if ranking:
            print(f"features that separate {name} most{where} (single-feature AUC):")
            for r in ranking:
                rel = r["relative_difference"]
                shift = f", mean {100 * rel:+.1f} %" if rel == rel else ""
                print(f"  {feature_label(r['name']):<36} {r['auc']:.3f}{shift}")
