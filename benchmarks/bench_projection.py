"""Projection speed: showers of 3,000 points per second on one core, slab and ILD geometry.

Run: ``python benchmarks/bench_projection.py [--showers 1000] [--points 3000] [--repeats 5]``.
The showers are synthetic (Gaussian core, points in all 30 layers) so the benchmark needs no
data; the target of the foundation issue is >= 2,000 showers/s (slab geometry, one core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from calogen.data.io import make_showers
from calogen.geometry import ild_ecal, project, slab


def synthetic_showers(n: int, points: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pts = np.empty((n, points, 4), dtype=np.float32)
    pts[..., :2] = rng.standard_normal((n, points, 2)) * 15.0
    pts[..., 2] = rng.integers(0, 30, (n, points))
    pts[..., 3] = rng.exponential(2e-4, (n, points)) + 1e-7
    return make_showers(pts, np.full(n, points), rng.uniform(10, 90, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--showers", type=int, default=1000)
    parser.add_argument("--points", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    showers = synthetic_showers(args.showers, args.points)
    results = {}
    for geometry in (slab(), ild_ecal()):
        project(showers[:10], geometry)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            project(showers, geometry, impact_mm=(1.3, -2.1))
            times.append(time.perf_counter() - start)
        best, median = min(times), float(np.median(times))
        results[geometry.name] = {
            "showers_per_s_median": args.showers / median,
            "showers_per_s_best": args.showers / best,
            "points_per_shower": args.points,
        }
    print(json.dumps({"machine": platform.processor() or platform.machine(), **results}, indent=2))


if __name__ == "__main__":
    main()
