"""``calogen bench``: how fast a generator makes showers on this machine."""

from __future__ import annotations

import argparse
import json
from typing import Any

from calogen.cli import add_model, add_num, add_threads, model_dir, positive_int
from calogen.errors import UsageError


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="time shower generation (ms per shower, showers/s, memory, FLOP rate)",
        description="Generate showers with incident energies uniform in 10-90 GeV and report "
        "ms per shower (median of repeats, with min and max), showers and points per second, "
        "peak memory, and the networks' FLOP rate against this machine's measured dense-matmul "
        "peak on the same threads.",
    )
    add_model(
        bench,
        metavar="DIR|default|gflash",
        help="trained model folder, 'default' (the shipped model) or 'gflash' (the "
        "parameterised reference simulator)",
    )
    add_num(bench, default=100, help="showers per timed repeat")
    bench.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        metavar="B",
        help="showers per sample() call (1: one shower at a time, as in full simulation)",
    )
    add_threads(bench)
    bench.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        metavar="R",
        help="timed repeats (after one untimed warm-up)",
    )
    bench.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where the generator runs"
    )
    bench.add_argument(
        "--seed", type=int, default=0, help="random seed of the energies and the showers"
    )
    bench.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="compute dtype of the network's hidden layers (CaloClouds II on CPU; the peak is "
        "measured in the same dtype)",
    )
    bench.add_argument(
        "--theta",
        type=float,
        nargs="+",
        metavar="DEG",
        default=None,
        help="polar angle of the incident photon in deg: one value, or MIN MAX drawn uniformly "
        "(default: normal incidence)",
    )
    bench.add_argument(
        "--phi",
        type=float,
        nargs="+",
        metavar="DEG",
        default=None,
        help="azimuth in deg: one value, or MIN MAX drawn uniformly (default 0; needs --theta)",
    )
    bench.add_argument(
        "--against",
        metavar="DIR|default|gflash",
        default=None,
        help="time a second model in alternation with --model, round by round (--repeats "
        "rounds of --num showers each, the same energies and seeds), and report the ratio of "
        "their times: on a shared machine the ratio is far steadier than either time. A model "
        "that takes no directions runs at normal incidence",
    )
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.set_defaults(func=run_bench)


def load_for_bench(model: str, device: str) -> Any:
    """The generator named by ``--model``."""
    if model == "gflash":
        from calogen.reference.gflash import GFlash

        return GFlash()
    from calogen.models.registry import load_generator

    generator = load_generator(model_dir(model))
    if device != "cpu":
        to = getattr(generator, "to", None)
        if to is None:
            raise UsageError(f"model '{generator.name}' cannot run on {device}")
        generator = to(device) or generator
    return generator


def run_bench(args: argparse.Namespace) -> int:

    from calogen.benchmark import benchmark
    from calogen.models.registry import check_device

    check_device(args.device)
    from calogen.generation import directions_for_model, draw_directions

    directions = draw_directions(args.theta, args.phi, args.num, args.seed)
    generator = load_for_bench(args.model, args.device)
    directions = directions_for_model(generator, directions)
    if args.against is not None:
        return _run_compare(args, generator, directions)
    result = benchmark(
        generator,
        num=args.num,
        batch=args.batch,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        seed=args.seed,
        precision=args.precision,
        directions=directions,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(result.lines()))
    return 0


def _run_compare(args: argparse.Namespace, generator: Any, directions: Any) -> int:
    """``--against``: the two models in alternation (:func:`calogen.benchmark.compare`)."""
    from calogen.benchmark import compare

    if args.device != "cpu":
        raise UsageError("--against times models on the CPU only (drop --device)")
    if args.precision != "float32":
        raise UsageError("--against times models in float32 only (drop --precision)")
    other = load_for_bench(args.against, args.device)
    other_directions = directions if getattr(other, "supports_direction", False) else None
    result = compare(
        (generator, other),
        labels=(f"{args.model} ({generator.name})", f"{args.against} ({other.name})"),
        num=args.num,
        batch=args.batch,
        rounds=args.repeats,
        threads=args.threads,
        seed=args.seed,
        directions=(directions, other_directions),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(result.lines()))
    return 0
