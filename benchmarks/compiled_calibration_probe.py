"""How much would compiled calibration code save? One step as a numba kernel, against numpy.

Usage (numba is not a calogen dependency: ``pip install numba`` first)::

    python benchmarks/compiled_calibration_probe.py [--showers 200]

Issue 15's batch-1 bound (3.0 ms per shower) is missed by the non-network part of a
one-shower call: about a thousand small numpy operations (docs: benchmarks/results.md). This
probe ports one of those steps, :func:`calogen.calibration.equalise_core_azimuth`, to a
single numba kernel with the same order of operations, checks that both give the same
points, and times both in CPU time (robust against the other core's jobs) on the inputs the
shipped default hands it: ``--showers`` one-shower calls at E uniform 10-90 GeV, theta 0-60
deg, phi 0-360 deg, and one call of 100 showers. It prints the first call's cost (compiling,
or loading numba's cache) and the per-call times. A probe, not a replacement: nothing in
calogen uses it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

try:
    from numba import njit
except ImportError:
    sys.exit("this probe needs numba (pip install numba); calogen itself does not")

from calogen import calibration
from calogen.cli import model_dir
from calogen.generation import directions_for_model, draw_directions
from calogen.models import caloclouds2
from calogen.models.registry import load_generator


@njit(cache=True)
def equalise_kernel(points, shower, radius, steps):
    """:func:`calogen.calibration.equalise_core_azimuth` in one pass (same selection, same
    order: shower, layer, azimuth step, row; same turn per point)."""
    n = points.shape[0]
    limit = np.float32(1.5 * radius) ** 2
    rows = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        x, y = points[i, 0], points[i, 1]
        if x * x + y * y < limit and points[i, 3] > 0:
            xd, yd = np.float64(x), np.float64(y)
            if np.sqrt(xd * xd + yd * yd) < radius:
                rows[m] = i
                m += 1
    if m == 0:
        return
    rows = rows[:m]
    key = np.empty(m, np.int64)
    for j in range(m):
        i = rows[j]
        xd, yd = np.float64(points[i, 0]), np.float64(points[i, 1])
        s = abs(xd) + abs(yd)
        t = xd / s if s > 0 else xd
        azimuth = 1.0 - t if yd >= 0 else 3.0 + t
        step = min(np.floor(azimuth * (steps / 4)), steps - 1)
        key[j] = (shower[i] * 64 + np.int64(points[i, 2])) * steps + np.int64(step)
    order = np.argsort(key, kind="mergesort")
    j = 0
    while j < m:
        group = key[order[j]] // steps
        k, total = j, 0.0
        while k < m and key[order[k]] // steps == group:
            total += np.float64(points[rows[order[k]], 3])
            k += 1
        first = rows[order[j]]
        x0, y0 = np.float64(points[first, 0]), np.float64(points[first, 1])
        r0 = np.sqrt(x0 * x0 + y0 * y0)
        cos0 = x0 / r0 if r0 > 0 else 1.0
        sin0 = y0 / r0 if r0 > 0 else 0.0
        cumulative = 0.0
        for q in range(j, k):
            i = rows[order[q]]
            e = np.float64(points[i, 3])
            cumulative += e
            turn = 2.0 * np.pi * (cumulative - 0.5 * e) / total
            xd, yd = np.float64(points[i, 0]), np.float64(points[i, 1])
            r = np.sqrt(xd * xd + yd * yd)
            ct, st = np.cos(turn), np.sin(turn)
            points[i, 0] = np.float32(r * (cos0 * ct - sin0 * st))
            points[i, 1] = np.float32(r * (sin0 * ct + cos0 * st))
        j = k


Case = tuple[np.ndarray, np.ndarray, float]


def capture_inputs(n_showers: int) -> tuple[list[Case], list[Case]]:
    """The step's inputs in ``n_showers`` one-shower calls of the default and one call of
    100 showers (points copied before the step)."""
    captured: list[Case] = []
    original = caloclouds2.equalise_core_azimuth

    def spy(points: np.ndarray, shower: np.ndarray, radius: float) -> np.ndarray:
        captured.append((points.copy(), shower.astype(np.int64), float(radius)))
        return original(points, shower, radius)

    caloclouds2.equalise_core_azimuth = spy
    try:
        generator = load_generator(model_dir("default"))
        dirs = directions_for_model(generator, draw_directions([0, 60], [0, 360], n_showers, 0))
        energies = np.random.default_rng(0).uniform(10, 90, n_showers)
        for i in range(n_showers):
            generator.sample(energies[i : i + 1], dirs[i : i + 1], seed=i)
        generator.sample(energies[:100], dirs[:100], seed=1)
    finally:
        caloclouds2.equalise_core_azimuth = original
    return captured[:n_showers], captured[n_showers:]


def cpu_us_per_call(
    step: Callable[[np.ndarray, np.ndarray, float], object], cases: list[Case]
) -> float:
    copies = [(p.copy(), s, r) for p, s, r in cases]
    start = time.process_time()
    for points, shower, radius in copies:
        step(points, shower, radius)
    return (time.process_time() - start) / len(copies) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--showers", type=int, default=200, help="one-shower calls to time")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    single, batch = capture_inputs(args.showers)
    steps = calibration.AZIMUTH_STEPS

    def compiled(p: np.ndarray, s: np.ndarray, r: float) -> None:
        equalise_kernel(p, s, r, steps)

    start = time.perf_counter()
    points, shower, radius = single[0]
    compiled(points.copy(), shower, radius)
    print(f"first numba call (compile or cache load): {time.perf_counter() - start:.2f} s")
    worst = 0.0
    for points, shower, radius in single + batch:
        a, b = points.copy(), points.copy()
        calibration.equalise_core_azimuth(a, shower, radius)
        compiled(b, shower, radius)
        worst = max(worst, float(np.abs(a - b).max()))
    print(f"largest difference numpy - numba: {worst:g} mm")
    for label, cases in (("1 shower per call", single), ("100 showers per call", batch * 10)):
        numpy_us = cpu_us_per_call(calibration.equalise_core_azimuth, cases)
        numba_us = cpu_us_per_call(compiled, cases)
        print(f"{label}: numpy {numpy_us:.0f} us, numba {numba_us:.0f} us CPU per call "
              f"({numpy_us / numba_us:.1f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
