"""A/B timing of the CaloClouds II inference paths on the same showers (issue 7).

Variants, interleaved round by round so that every variant sees the same machine load:

* ``reference``: the ConcatSquash layers as in training (gate and bias per point gathered
  from per-shower projections) and the Shower Flow inverse through zuko;
* ``fast``: gates and biases merged into each shower's weights, one ``addmm`` + in-place
  LeakyReLU per layer on chunks of ≤ 2048 points, and the Shower Flow inverse with cached
  masked weights (the default since issue 7);
* ``fast+inference_mode``: the same under ``torch.inference_mode`` instead of ``no_grad``;
* ``fast+bf16``: hidden layers in bfloat16.

Reports per variant the best and median wall time per shower and the median process CPU time
per shower (on a machine shared with other jobs the CPU time is the steadier number).

    python benchmarks/inference_speed.py --batch 100 --num 300 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import numpy as np
import torch

from calogen.models import caloclouds2 as cc2
from calogen.models.registry import load_generator
from calogen.models.shower_flow import ShowerFlow


@contextlib.contextmanager
def reference_paths():
    """The pre-issue-7 inference: no merged gates, zuko's flow inverse."""
    net_forward = cc2.CaloClouds2Net.forward
    flow_inverse = ShowerFlow.inverse

    def forward(self, x_in, c_noise, cond):
        return net_forward(self, x_in, c_noise, cc2.Conditioning(cond.values, cond.index))

    def inverse(self, c, z):
        return self.flow(c).transform.inv(z)

    cc2.CaloClouds2Net.forward = forward
    ShowerFlow.inverse = inverse
    try:
        yield
    finally:
        cc2.CaloClouds2Net.forward = net_forward
        ShowerFlow.inverse = flow_inverse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = load_generator(None)
    net = generator.model.net
    energies = np.random.default_rng(0).uniform(10.0, 90.0, args.num)

    def run(seed: int) -> None:
        for first in range(0, args.num, args.batch):
            generator.sample(energies[first : first + args.batch], seed=seed + first)

    variants = {
        "reference": (reference_paths, None, contextlib.nullcontext),
        "fast": (contextlib.nullcontext, None, contextlib.nullcontext),
        "fast+inference_mode": (contextlib.nullcontext, None, torch.inference_mode),
        "fast+bf16": (contextlib.nullcontext, torch.bfloat16, contextlib.nullcontext),
    }
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for paths, dtype, mode in variants.values():  # warm-up
        net.compute_dtype = dtype
        with paths(), mode():
            generator.sample(energies[: args.batch], seed=0)
    for r in range(args.rounds):
        for name, (paths, dtype, mode) in variants.items():
            net.compute_dtype = dtype
            with paths(), mode():
                c0, t0 = time.process_time(), time.perf_counter()
                run(seed=r)
                wall[name].append((time.perf_counter() - t0) / args.num * 1e3)
                cpu[name].append((time.process_time() - c0) / args.num * 1e3)
    net.compute_dtype = None
    result = {
        name: {
            "wall_ms_best": round(min(wall[name]), 3),
            "wall_ms_median": round(statistics.median(wall[name]), 3),
            "cpu_ms_median": round(statistics.median(cpu[name]), 3),
        }
        for name in variants
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"batch {args.batch}, {args.num} showers, {args.rounds} rounds, {args.threads} thread(s)")
    print(f"{'variant':<22}{'wall best':>10}{'wall median':>13}{'CPU median':>12}  ms/shower")
    for name, row in result.items():
        print(
            f"{name:<22}{row['wall_ms_best']:>10.3f}{row['wall_ms_median']:>13.3f}"
            f"{row['cpu_ms_median']:>12.3f}"
        )


if __name__ == "__main__":
    main()
