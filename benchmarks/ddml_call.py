"""Time one call of a DDML export (``calogen export --format ddml``) as DDML makes it.

Torch only (calogen is not imported): the file is loaded with ``torch.jit.load`` and called
with one shower per call, ``[1]`` float32 tensors of energy (GeV), theta and phi (deg), on one
thread under ``torch.inference_mode`` (as DDML's ``TorchInference``). Energies are uniform in
10-90 GeV, theta in 0-60 deg, phi in -180-180 deg (the same draws for every file given).
Reports per file the median and best wall time and the median and mean CPU time of this
thread per call (on a shared machine the CPU time is the steadier number); files given
together are called in turn, call by call, so that they see the same machine load.

    python benchmarks/ddml_call.py model.pt [other.pt ...] --calls 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="TorchScript files in DDML's contract")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per file")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    models = [torch.jit.load(path) for path in args.files]
    n = args.warmup + args.calls
    gen = torch.Generator().manual_seed(args.seed)
    energy = 10.0 + 80.0 * torch.rand(n, generator=gen)
    theta = 60.0 * torch.rand(n, generator=gen)
    phi = 360.0 * torch.rand(n, generator=gen) - 180.0
    wall: list[list[float]] = [[] for _ in models]
    cpu: list[list[float]] = [[] for _ in models]
    points: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for i in range(n):
            inputs = (energy[i : i + 1].clone(), theta[i : i + 1].clone(), phi[i : i + 1].clone())
            for k, model in enumerate(models):
                w0, c0 = time.perf_counter(), time.thread_time()
                out = model(*inputs)
                c1, w1 = time.thread_time(), time.perf_counter()
                if i >= args.warmup:
                    wall[k].append(1e3 * (w1 - w0))
                    cpu[k].append(1e3 * (c1 - c0))
                    points[k].append(float(out[:30].sum()))
    for k, path in enumerate(args.files):
        print(
            json.dumps(
                {
                    "file": path,
                    "calls": args.calls,
                    "wall_ms_median": round(statistics.median(wall[k]), 3),
                    "wall_ms_min": round(min(wall[k]), 3),
                    "cpu_ms_median": round(statistics.median(cpu[k]), 3),
                    "cpu_ms_mean": round(statistics.fmean(cpu[k]), 3),
                    "points_mean": round(statistics.fmean(points[k]), 1),
                    "torch": torch.__version__,
                }
            )
        )


if __name__ == "__main__":
    main()
