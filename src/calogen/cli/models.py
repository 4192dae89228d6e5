"""``calogen train`` and ``calogen fit-occupancy``."""

from __future__ import annotations

import argparse
import json

from calogen.cli import add_model, add_num, add_output, add_quiet, add_threads, positive_int
from calogen.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    from calogen.models.registry import MODELS

    names = sorted(MODELS)
    models_help = "; ".join(f"{n}: {MODELS[n].description}" for n in names)
    p = subparsers.add_parser(
        "train",
        help="train a generative model on a shower file",
        description=(
            "Train a generative shower model. Progress is shown with the running loss; a "
            "checkpoint (weights in safetensors, configuration and data normalisation in JSON) "
            "is written to OUT periodically and at the end, and OUT always holds a usable "
            "model (model.json + model.safetensors) for 'calogen generate --model OUT'. "
            "A killed run continues exactly where its last checkpoint stopped with --resume. "
            "Started by torchrun (e.g. 'torchrun --nproc-per-node 4 -m calogen train ...') "
            "the same command trains data parallel: each rank draws batches from its shard of "
            "the showers with its own seed, gradients are averaged across ranks (gloo on "
            "CPU, NCCL on GPU), and only rank 0 writes checkpoints, the model and the log. "
            "The CaloClouds models end with their corrections fitted on (up to 1,000 of) the "
            "training showers (occupancy; CaloClouds II also the radial map): the finished "
            "model needs no 'calogen fit-occupancy'. 'caloclouds2-cm' runs the whole recipe "
            "of the shipped default in one command: the teacher (OUT/teacher), its "
            "distillation into a one-step model (OUT) and the corrections, with progress that "
            "names the stage and stage markers in OUT/pipeline.json; after a kill at any "
            "stage, re-running the same command continues (the result is the same as an "
            "uninterrupted run). A model is specific to the calorimeter and particle of its "
            f"training data. Models: {models_help}."
        ),
    )
    p.add_argument(
        "model", choices=names, metavar="MODEL", help=f"model to train ({', '.join(names)})"
    )
    p.add_argument(
        "--config",
        default="small",
        metavar="small|paper|FILE",
        help="'small' (reduced widths/iterations, < 1 h on a CPU), 'paper' (published "
        "hyperparameters) or a YAML/JSON file with overrides and optional 'base: small|paper' "
        "(caloclouds2-cm: 'base', and 'teacher' and 'distill' mappings of overrides) "
        "(default: small)",
    )
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="FILE",
        help="training showers (showerdata or legacy CaloClouds HDF5; x, y in mm, "
        "layer index, e in GeV; incident energies in GeV); CaloClouds, CaloClouds II and "
        "BIB-AE take several files, concatenated (showers without directions count as normal "
        "incidence)",
    )
    add_output(p, metavar="DIR", help="output folder (model + checkpoints)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from its newest complete checkpoint",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed (default 0); same seed, same run"
    )
    p.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        metavar="N",
        help="total training iterations (caloclouds2-cm: of the teacher and of the "
        "distillation each) (default: from the config)",
    )
    add_num(
        p,
        help="train on the first N showers of --data (e.g. to keep the rest as a test split; "
        "default: the config's max_showers, else all)",
    )
    _add_no_corrections(p)
    _add_device(p)
    add_threads(p)
    add_quiet(p, help="no progress bar (running loss)")
    p.set_defaults(func=_train)

    q = subparsers.add_parser(
        "fit-occupancy",
        help="fit a model's occupancy correction from data and generated showers",
        description=(
            "Fit the occupancy correction c_N(N) = p_gen(p_data(N)) / N of CaloClouds "
            "(section 3.3): p_data is a cubic fit of the number of cell hits (>= 0.1 MeV) of "
            "the Geant4 showers in FILE against their number of points, p_gen a cubic fit of "
            "the generated number of points against the generated number of hits, then refined "
            "in closed loop. For CaloClouds II models a radial quantile correction (energy-"
            "weighted radius distribution per incident-energy bin and group of layers mapped "
            "onto the data's) is fitted first. Generated showers use the incident energies of "
            "the data showers. The result is stored in the model folder (model.json and "
            "occupancy.json)."
        ),
    )
    add_model(
        q,
        default=None,
        required=True,
        metavar="DIR",
        help="trained model folder, updated in place (the shipped 'default' model is "
        "read-only: copy it first)",
    )
    q.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="FILE",
        help="Geant4 showers (showerdata or legacy CaloClouds HDF5); several files: the first "
        "N showers of each",
    )
    add_num(
        q,
        default=1000,
        old=("--showers",),
        help="showers used from the data and generated (default: 1000)",
    )
    q.add_argument("--seed", type=int, default=0, help="random seed for generation (default 0)")
    q.add_argument(
        "--geometry",
        default="slab",
        choices=("slab", "ild"),
        help="cell geometry for counting hits (default slab)",
    )
    add_threads(q)
    add_quiet(q, help="no progress line on stderr")
    q.add_argument(
        "--no-radial",
        dest="radial",
        action="store_false",
        help="CaloClouds II: do not fit the radial quantile correction",
    )
    q.add_argument(
        "--no-axis-shift",
        dest="axis",
        action="store_false",
        help="angle-aware CaloClouds II: do not fit the per-layer shift along the "
        "inclination (fitted from the inclined showers in --data)",
    )
    q.add_argument(
        "--no-angle-bins",
        dest="by_angle",
        action="store_false",
        help="angle-aware CaloClouds II: one occupancy correction and radial map for all "
        "angles (default: one for normal incidence and one for inclined showers, each "
        "fitted on the --data showers of its kind)",
    )
    q.add_argument(
        "--angle-edges",
        nargs="+",
        metavar="DEG|auto",
        default=None,
        help="angle-aware CaloClouds II: edges (deg) of the polar-angle classes that get "
        "their own occupancy correction and radial map, or 'auto': up to four inclined "
        "classes of equal steps in tan theta, 500 inclined fit showers each at least (what "
        "training ends with; 0.5 23.4 40.9 52.4 for showers up to 60 deg) (default: 0.5, "
        "i.e. normal incidence and inclined showers)",
    )
    q.add_argument(
        "--radial-energy",
        choices=("bins", "interpolate"),
        default="interpolate",
        help="CaloClouds II: how the radial map's incident-energy bins apply: 'bins', each "
        "shower the map of its bin; 'interpolate', linearly in E between the bins' centres "
        "(extrapolated to the outer edges: better at energies near the bin edges, "
        "docs/default_model.md); stored in the model (default: interpolate)",
    )
    q.add_argument(
        "--radial-layers",
        choices=("absolute", "relative"),
        default="absolute",
        help="CaloClouds II: group the radial map's layers by layer index ('absolute') or "
        "relative to each shower's depth, its energy-weighted mean layer ('relative': a deep "
        "shower is not widened like the average shower at its layers; docs/default_model.md)",
    )
    q.add_argument(
        "--radial-classes",
        nargs="+",
        choices=("depth", "visible"),
        default=None,
        metavar="KIND",
        help="CaloClouds II: radial maps of their own for three classes of showers by the "
        "residual of the shower depth ('depth') and/or of the visible fraction E_vis/E "
        "('visible') from their trend in ln E (Geant4's core share rises with depth and "
        "falls with E_vis; docs/default_model.md). (default: one class)",
    )
    q.add_argument(
        "--core-azimuth",
        type=float,
        default=None,
        metavar="MM",
        help="CaloClouds II: spread the azimuths of each layer's points within MM mm of the "
        "axis evenly in energy (Geant4's core is thousands of steps spread evenly around the "
        "axis, a model's a few dozen points: without it the hottest cell of early layers "
        "carries 40 %% too much; docs/default_model.md); 0: off; stored in the model "
        "(default: 3)",
    )
    q.add_argument(
        "--halo-clump",
        default=None,
        metavar="K[,L:K2...]",
        help="CaloClouds II: groups of K points of a layer's halo (beyond 3 mm) share one "
        "azimuth (a fractional K mixes groups of the two whole sizes around it, 2.5: 3 and 2 "
        "in turn); 'K,L:K2' takes K2 from layer L on (Geant4's halo comes from a few "
        "particles, each depositing in a clump, fewer and more energetic in the shower's "
        "tail: with independent points each layer's halo centre fluctuates 20 %% less and "
        "the fitted shower axis is too straight; docs/default_model.md); 0 or 1: off; "
        "stored in the model (default: 2)",
    )
    q.add_argument(
        "--no-axis-tilt",
        dest="axis_tilt",
        action="store_false",
        help="CaloClouds II: do not fit the random tilt of each shower's axis (Geant4's "
        "showers drift sideways more the deeper they go, so their centre of gravity and the "
        "slope of their layer centroids are correlated; the tilt, slope = k(E) * cog + "
        "sigma(E) * normal draw, is fitted on the normal-incidence showers of --data so that "
        "the cell-level relation matches; docs/default_model.md)",
    )
    q.add_argument(
        "--no-depth-stretch",
        dest="depth_stretch",
        action="store_false",
        help="CaloClouds II: do not fit the depth stretch (the Shower Flow's shower depth, the "
        "energy-weighted mean layer depth in mm, fluctuates 4-27 %% less than Geant4's "
        "depending on the polar angle; the stretch moves each shower's longitudinal profile "
        "by (s(theta) - 1) * (its depth - the flow's mean depth), s fitted on --data so that "
        "the spreads match; docs/default_model.md)",
    )
    q.add_argument(
        "--only-axis-tilt",
        action="store_true",
        help="CaloClouds II: fit the axis tilt alone on the first N normal-incidence showers "
        "of --data, keeping the model's other corrections",
    )
    q.set_defaults(func=_fit_occupancy)

    _register_distill(subparsers)


def _register_distill(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser(
        "distill",
        help="distil a CaloClouds II teacher into a one-step consistency model (CM)",
        description=(
            "Consistency distillation (Song et al. 2303.01469) of a trained 'caloclouds2' "
            "teacher into 'caloclouds2-cm': student and target start from the teacher's EMA "
            "weights; each update takes one Heun step of the teacher on a Karras grid (40 "
            "points in both presets, the paper's 18 are too coarse for a small teacher; sigma "
            "0.002-80, rho 7), the target follows the student as an EMA (0.95). "
            "Progress, checkpoints (safetensors + JSON), --resume and --seed behave as in "
            "'calogen train'; OUT always holds a usable model for 'calogen generate --model "
            "OUT' (one network evaluation per shower; the teacher's shower flow and "
            "calibration), and the finished one its own corrections (radial map, occupancy) "
            "fitted on the training showers. 'calogen train caloclouds2-cm' runs teacher, "
            "distillation and corrections in one command."
        ),
    )
    d.add_argument("--teacher", required=True, metavar="DIR", help="trained caloclouds2 folder")
    d.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="FILE",
        help="training showers (the teacher's training files, showerdata or legacy HDF5; "
        "several files are concatenated)",
    )
    add_output(d, metavar="DIR", help="output folder (model + checkpoints)")
    d.add_argument(
        "--config",
        default="small",
        metavar="small|paper|FILE",
        help="'small' (< 1 h on a CPU), 'paper' or a YAML/JSON file with overrides and optional "
        "'base: small|paper' (default: small)",
    )
    d.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from its newest checkpoint"
    )
    d.add_argument(
        "--seed", type=int, default=0, help="random seed (default 0); same seed, same run"
    )
    d.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        metavar="N",
        help="total distillation iterations (default: from the config)",
    )
    _add_no_corrections(d)
    _add_device(d)
    add_threads(d)
    add_quiet(d, help="no progress bar (running loss)")
    d.set_defaults(func=_distill)


def _add_no_corrections(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-corrections",
        dest="corrections",
        action="store_false",
        help="CaloClouds models: do not fit the corrections (radial map, occupancy) on the "
        "training showers at the end (fit them later with 'calogen fit-occupancy')",
    )


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the networks train (default cpu); 'cuda': CaloClouds II and its "
        "one-step model on a GPU (the Shower Flow stays on the CPU; same checkpoints and "
        "model folder, a run may resume on either)",
    )


def _distill(args: argparse.Namespace) -> int:
    from calogen.models.caloclouds2 import distill
    from calogen.models.registry import check_device
    from calogen.models.training import check_run_folder, set_threads

    check_device(args.device)
    set_threads(args.threads)
    check_run_folder(args.output)
    summary = distill(
        teacher=args.teacher,
        config=args.config,
        data=_data(args.data),
        out=args.output,
        resume=args.resume,
        seed=args.seed,
        iterations=args.iterations,
        progress=not args.quiet,
        corrections=args.corrections,
        device=args.device,
    )
    _print_summary(summary)
    return 0


def _data(files: list[str]) -> str | list[str]:
    """One ``--data`` file as a path, several as a list."""
    return files[0] if len(files) == 1 else files


def _print_summary(summary: dict) -> None:
    """Print the run's summary (under torchrun only on rank 0)."""
    from calogen.models.training import is_main_process

    if is_main_process():
        print(json.dumps(summary, indent=2))


def _train(args: argparse.Namespace) -> int:
    from calogen.models.registry import train_model

    summary = train_model(
        args.model,
        config=args.config,
        data=_data(args.data),
        out=args.output,
        resume=args.resume,
        seed=args.seed,
        iterations=args.iterations,
        threads=args.threads,
        progress=not args.quiet,
        corrections=args.corrections,
        n_showers=args.num,
        device=args.device,
    )
    _print_summary(summary)
    return 0


def _angle_edges(values: list[str] | None) -> list[float] | str | None:
    """``--angle-edges``: numbers (deg) or the single word ``auto``."""
    if values is None:
        return None
    if values == ["auto"]:
        return "auto"
    try:
        return [float(v) for v in values]
    except ValueError:
        raise UsageError(
            f"--angle-edges: angles in deg or 'auto', got {' '.join(values)}"
        ) from None


def _fit_occupancy(args: argparse.Namespace) -> int:
    from calogen.models.registry import fit_occupancy
    from calogen.models.training import set_threads

    if args.model == "default":
        raise UsageError(
            "--model default: the shipped model is read-only; copy its folder "
            "(calogen/default_model) and pass the copy"
        )
    from calogen.progress import Phase

    set_threads(args.threads)
    what = f"fit-occupancy: generating and projecting {args.num} showers per round, several rounds"
    with Phase(what, show=not args.quiet):  # a long silent phase otherwise
        summary = fit_occupancy(
            args.model,
            _data(args.data),
            n_showers=args.num,
            seed=args.seed,
            geometry=args.geometry,
            radial=args.radial,
            axis=args.axis,
            by_angle=args.by_angle,
            theta_edges_deg=_angle_edges(args.angle_edges),
            radial_energy=args.radial_energy,
            radial_layers=args.radial_layers,
            radial_classes=args.radial_classes,
            core_azimuth_mm=args.core_azimuth,
            halo_clump=args.halo_clump,
            axis_tilt=args.axis_tilt,
            depth_stretch=args.depth_stretch,
            only_axis_tilt=args.only_axis_tilt,
        )
    print(json.dumps(summary, indent=2))
    return 0
