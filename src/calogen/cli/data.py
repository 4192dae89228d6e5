"""Sub-commands that make and inspect shower files: ``info``, ``simulate``, ``generate``, ``cluster``."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calogen.cli import (
    add_model,
    add_num,
    add_output,
    add_quiet,
    add_threads,
    finite_float,
    model_dir,
    positive_float,
    positive_int,
)
from calogen.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

ENERGY_HELP = (
    "incident energy in GeV: one value fixes it, two values (MIN MAX) draw it uniformly "
    "in that range"
)
THETA_HELP = (
    "polar angle of the incident photon to the calorimeter normal in deg, in [0, 90): one "
    "value fixes it, two values (MIN MAX) draw it uniformly in that range (default: normal "
    "incidence, theta = 0). Models that support only normal incidence accept only 0"
)
PHI_HELP = (
    "azimuth of the incident direction in deg, any finite value (wrapped to [0, 360)): one "
    "value fixes it, two values (MIN MAX) draw it uniformly in that range (default 0; needs "
    "--theta)"
)


def register(subparsers: Any) -> None:
    info = subparsers.add_parser(
        "info",
        help="print what a shower file holds",
        description="Print the number of showers, the incident-energy range (GeV), the points "
        "per shower, the range of the incident angles theta and phi (deg) when the file stores "
        "directions, and the layout (showerdata or legacy CaloClouds) of shower files.",
    )
    info.add_argument("files", nargs="+", metavar="FILE", help="HDF5 shower file(s)")
    info.set_defaults(func=run_info)

    simulate = subparsers.add_parser(
        "simulate",
        help="simulate showers with a reference (non-learned) simulator such as GFlash",
        description="Simulate photon showers with the GFlash parameterisation tuned to the "
        "project's Geant4 data and write them as point clouds (x, y in mm relative to the "
        "impact point, layer index, energy in GeV).",
    )
    simulate.add_argument("simulator", choices=["gflash"], help="reference simulator")
    _add_sampling_arguments(simulate)
    add_threads(
        simulate,
        help="CPU threads (default: {default}; GFlash runs on one thread, accepted for the same "
        "command line as generate)",
    )
    simulate.set_defaults(func=run_simulate)

    generate = subparsers.add_parser(
        "generate",
        help="generate showers with a trained model (the shipped default if --model is absent)",
        description="Generate calibrated photon showers as point clouds (x, y in mm relative "
        "to the impact point, layer index, energy in GeV) with a trained model. Without "
        "--model the default model shipped with calogen is used.",
    )
    add_model(generate)
    _add_sampling_arguments(generate)
    add_threads(generate)
    generate.add_argument(
        "--strict",
        action="store_true",
        help="refuse energies outside the model's training range instead of warning",
    )
    generate.add_argument(
        "--shards",
        type=positive_int,
        default=1,
        metavar="K",
        help="split the job into K shards of whole chunks (batch farms: HTCondor/SLURM arrays); "
        "all shards use the same --seed and their files joined in order by 'calogen merge' equal "
        "a single run. Under torchrun each rank makes one shard, written to OUT.rankNNN.h5",
    )
    generate.add_argument(
        "--shard-index",
        type=int,
        default=0,
        metavar="I",
        help="which shard (0..K-1) this process makes",
    )
    generate.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="K",
        help="CaloClouds II teacher: Heun steps (2K-1 network evaluations; default the model's, "
        "13)",
    )
    generate.add_argument(
        "--cm-sigmas",
        type=float,
        nargs="+",
        default=None,
        metavar="SIGMA",
        help="CaloClouds II (CM): noise levels of multi-step consistency sampling, strictly "
        "decreasing, e.g. 80 1.0 (default the model's: one step at 80)",
    )
    generate.set_defaults(func=run_generate)

    cluster = subparsers.add_parser(
        "cluster",
        help="cluster raw Geant4 steps onto the sub-cell grid (CaloClouds pre-clustering)",
        description="Sum raw Geant4 steps per layer on a grid GRANULARITY times finer than the "
        "5.0883 mm cell, keep |x|, |y| < HALF_WIDTH mm, and write the clustered point clouds.",
    )
    cluster.add_argument(
        "input",
        metavar="STEPS.h5",
        help="raw Geant4 steps (showerdata or legacy CaloClouds layout; x, y in mm relative to "
        "the impact point, layer index, energy in GeV)",
    )
    add_output(cluster, help="clustered showers (showerdata HDF5)")
    cluster.add_argument(
        "--granularity",
        type=positive_int,
        default=6,
        metavar="G",
        help="sub-cells per cell side (6: 0.848 mm sub-cells)",
    )
    cluster.add_argument(
        "--half-width",
        type=positive_float,
        default=200.0,
        metavar="MM",
        help="half width of the kept box in x and y, mm",
    )
    cluster.add_argument("--overwrite", action="store_true", help="replace an existing output")
    cluster.set_defaults(func=run_cluster)

    merge = subparsers.add_parser(
        "merge",
        help="join shower files (e.g. generation shards) into one file, or cut a range of "
        "showers out of them",
        description="Concatenate shower files in the given order into one showerdata file, "
        "chunk by chunk (bounded memory). The output appears only when complete.",
    )
    merge.add_argument("inputs", nargs="+", metavar="IN.h5", help="files to join, in order")
    add_output(merge, help="joined showers (showerdata HDF5)")
    merge.add_argument(
        "--chunk-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="showers copied per chunk (bounds the memory)",
    )
    merge.add_argument(
        "--range",
        type=int,
        nargs=2,
        metavar=("START", "STOP"),
        default=None,
        help="keep only showers START..STOP-1 (0-based) of the inputs joined in order, e.g. "
        "'--range 9000 10000' for a held-out split (default: all showers)",
    )
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_quiet(merge)
    merge.set_defaults(func=run_merge)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--energy", type=positive_float, nargs="+", required=True, metavar="GEV", help=ENERGY_HELP
    )
    add_num(parser, required=True, help="number of showers to make")
    angles = parser.add_mutually_exclusive_group()
    angles.add_argument(
        "--theta", type=finite_float, nargs="+", metavar="DEG", default=None, help=THETA_HELP
    )
    parser.add_argument(
        "--phi", type=finite_float, nargs="+", metavar="DEG", default=None, help=PHI_HELP
    )
    angles.add_argument(
        "--direction",
        type=finite_float,
        nargs=3,
        metavar=("DX", "DY", "DZ"),
        default=None,
        help="incident direction as a unit vector in the calorimeter frame, z along the depth, "
        "DZ > 0: the alternative to --theta/--phi (default: (0, 0, 1), perpendicular to the "
        "front face)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed (default: random, printed)"
    )
    add_output(parser, help="output shower file (showerdata HDF5)")
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="showers generated and written per chunk",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_quiet(parser)


def run_info(args: argparse.Namespace) -> int:
    from calogen.data.io import ShowerFile

    for i, path in enumerate(args.files):
        with ShowerFile(path) as f:
            if i:
                print()
            print("\n".join(f.summary().lines()), flush=True)
            f.check_columns()  # describe the file first, then refuse bad energies/directions
    return 0


def _seed(args: argparse.Namespace) -> int:
    return int(args.seed) if args.seed is not None else secrets.randbits(31)


def _directions(args: argparse.Namespace, num: int, seed: int) -> np.ndarray | None:
    """``[num, 3]`` incident directions from --direction or --theta/--phi (None: normal)."""
    import numpy as np

    from calogen.generation import draw_directions
    from calogen.generator import check_directions

    if args.direction is None:
        return draw_directions(args.theta, args.phi, num, seed)
    if args.phi is not None:
        raise UsageError("--phi goes with --theta, not with --direction")
    return check_directions(np.asarray(args.direction, dtype=np.float64), num)


def _warn_point_cap(path: Path, generator: Any) -> None:
    """Warn on stderr when showers in the written file reached the generator's point cap
    (their number of points, and so of cell hits, is cut off there)."""
    import sys

    from calogen.data.io import ShowerFile

    cap = int(getattr(generator, "max_points", 0) or 0)
    if cap <= 0:
        return
    with ShowerFile(path) as f:
        counts = f.num_points()
    hit = int((counts >= cap).sum())
    if hit:
        print(
            f"calogen: warning: {hit} of {counts.size} showers ({100 * hit / counts.size:.0f} %) "
            f"reached the cap of {cap} points per shower of '{generator.name}': their number of "
            "points (and of cell hits) is cut off there",
            file=sys.stderr,
        )


def run_simulate(args: argparse.Namespace) -> int:
    from calogen.generation import draw_energies, generate_to_file
    from calogen.reference.gflash import GFlash

    seed = _seed(args)
    energies = draw_energies(args.energy, args.num, seed)
    directions = _directions(args, args.num, seed)
    generator = GFlash()
    path = generate_to_file(
        generator,
        energies,
        args.output,
        seed=seed,
        directions=directions,
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _warn_point_cap(path, generator)
    print(f"wrote {args.num} {generator.name} showers to {path} (seed {seed})")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import sys

    from calogen.generation import (
        check_angle_range,
        check_energy_range,
        directions_for_model,
        draw_energies,
        generate_to_file,
        shard_slice,
    )
    from calogen.models.registry import load_generator

    output = args.output
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.shards == 1:  # started by torchrun: one shard per rank
        args.shards, args.shard_index = world, int(os.environ.get("RANK", "0"))
        stem = Path(args.output)
        output = str(stem.with_name(f"{stem.stem}.rank{args.shard_index:03d}{stem.suffix}"))
    if not 0 <= args.shard_index < args.shards:
        raise UsageError(f"--shard-index must be in 0..{args.shards - 1}, got {args.shard_index}")
    if args.seed is None and args.shards > 1:
        raise UsageError("--seed is required with shards (all shards must share it)")
    import torch

    from calogen.data.io import check_output_path

    check_output_path(output, args.overwrite)  # before the model is loaded or a warning shown
    torch.set_num_threads(args.threads)
    seed = _seed(args)
    energies = draw_energies(args.energy, args.num, seed)
    directions = _directions(args, args.num, seed)
    generator = load_generator(model_dir(args.model))
    if args.steps is not None or args.cm_sigmas is not None:
        set_sampler = getattr(generator, "set_sampler", None)
        if set_sampler is None:
            raise UsageError(
                f"--steps and --cm-sigmas apply to CaloClouds II models, not '{generator.name}'"
            )
        set_sampler(args.steps, args.cm_sigmas)
    directions_for_model(generator, directions)  # refuse inclined showers before any work
    for warning in (
        check_energy_range(generator, energies, strict=args.strict),
        check_angle_range(generator, directions, strict=args.strict),
    ):
        if warning:
            print(f"calogen: warning: {warning} (use --strict to refuse)", file=sys.stderr)
    part = shard_slice(args.num, args.chunk_size, args.shards, args.shard_index)
    path = generate_to_file(
        generator,
        energies[part],
        output,
        seed=seed,
        first_chunk=part.start // args.chunk_size,
        directions=None if directions is None else directions[part],
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
        attrs={"shards": args.shards, "shard_index": args.shard_index, "base_seed": seed},
    )
    _warn_point_cap(path, generator)
    print(f"wrote {part.stop - part.start} {generator.name} showers to {path} (seed {seed})")
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    from calogen.data.clustering import cluster_steps
    from calogen.data.io import ShowerFile, check_output_path, write_showers

    check_output_path(args.output, args.overwrite)
    with ShowerFile(args.input) as f:
        if len(f) == 0:
            raise UsageError(f"{args.input}: file holds no showers")
        steps = f.read()
    result = cluster_steps(steps, granularity=args.granularity, half_width_mm=args.half_width)
    write_showers(
        args.output,
        result.showers,
        overwrite=args.overwrite,
        attrs={"content": f"clustered steps, granularity {args.granularity}"},
    )
    n_out = int(result.showers._num_points.sum())
    print(
        f"clustered {result.input_points} steps into {n_out} points "
        f"(factor {result.input_points / max(n_out, 1):.1f}); dropped {result.dropped_points} "
        f"steps ({result.dropped_energy_gev * 1000:.3f} MeV) outside |x|,|y| < {args.half_width} mm"
    )
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from calogen.data.io import merge_files

    path = merge_files(
        args.inputs,
        args.output,
        overwrite=args.overwrite,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
        showers=None if args.range is None else (args.range[0], args.range[1]),
    )
    kept = "" if args.range is None else f" (showers {args.range[0]}-{args.range[1] - 1})"
    print(f"merged {len(args.inputs)} files{kept} into {path}")
    return 0
