"""Acceptance checks of trained CaloClouds II models (issue 4): teacher and/or CM student.

1. Visible energy at ~10, 50, 90 GeV: mean E_vis / E_inc of generated vs Geant4 showers
   (Geant4 showers of the training file within +-window GeV; generated showers at the same
   incident energies). Two definitions, both reported:
   ``cells``  sum of cell hits >= 0.1 MeV after projection into the slab geometry;
   ``points`` plain sum of point energies.
   A model passes when |generated / Geant4 - 1| < 5 % with the cell definition at all three.
2. Timing: ms per shower with incident energies uniform in 10-90 GeV, batch 1, one thread;
   wall time and the process's CPU time (less sensitive to other jobs on a shared machine).

    python benchmarks/caloclouds2_check.py --model /work/runs/cc2_student_small \
        [--model /work/runs/cc2_teacher_small] \
        --data ../shared/data/g4_photons_10-90GeV_train.h5 [--showers 100] [--timing 20]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from calogen.data.io import ShowerFile
from calogen.data.packed import pack
from calogen.geometry import project, slab
from calogen.models.registry import load_generator


def visible_fractions(showers) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Per shower ``(E_vis(cells >= 0.1 MeV), E_vis(points)) / E_inc``."""
    e_inc = showers.energies.reshape(-1).astype(np.float64)
    hits = project(showers, slab())
    cells = np.bincount(hits.shower, weights=hits.energy_mev, minlength=hits.n_showers) / 1000.0
    packed = pack(showers)
    points = np.bincount(packed.shower, weights=packed.points[:, 3], minlength=len(e_inc))
    return cells / e_inc, points / e_inc


def energy_check(gen, data: str, showers: int, window: float, seed: int) -> list[dict]:  # type: ignore[no-untyped-def]
    out = []
    with ShowerFile(data) as f:
        e_all = f.incident_energies()
        for target in (10.0, 50.0, 90.0):
            lo = max(target - window, float(e_all.min()))
            hi = min(target + window, float(e_all.max()))
            idx = np.flatnonzero((e_all >= lo) & (e_all <= hi))[:showers]
            real = f.read(int(idx[0]), int(idx[-1]) + 1)
            keep = np.isin(np.arange(idx[0], idx[-1] + 1), idx)
            r_cells, r_points = (v[keep] for v in visible_fractions(real))
            energies = real.energies.reshape(-1)[keep].astype(np.float64)
            fake = gen.sample(energies, seed=seed)
            g_cells, g_points = visible_fractions(fake)
            entry = {
                "energy_gev": target,
                "window_gev": [round(lo, 2), round(hi, 2)],
                "showers": len(energies),
                "geant4_cells": float(r_cells.mean()),
                "generated_cells": float(g_cells.mean()),
                "rel_diff_cells": float(g_cells.mean() / r_cells.mean() - 1.0),
                "geant4_points": float(r_points.mean()),
                "generated_points": float(g_points.mean()),
                "rel_diff_points": float(g_points.mean() / r_points.mean() - 1.0),
                "geant4_n_points": float(np.asarray(real._num_points)[keep].mean()),
                "generated_n_points": float(pack(fake).counts.mean()),
            }
            entry["pass_5pct"] = abs(entry["rel_diff_cells"]) < 0.05
            out.append(entry)
    return out


def timing(gen, n: int, seed: int) -> dict:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    energies = np.random.default_rng(seed).uniform(10.0, 90.0, size=n)
    for i in range(3):  # warm-up
        gen.sample(np.array([50.0]), seed=10_000 + i)
    wall, cpu = [], []
    for i, e in enumerate(energies):
        t0, c0 = time.perf_counter(), time.process_time()
        gen.sample(np.array([e]), seed=i)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {
        "wall_ms_mean": float(np.mean(wall)),
        "wall_ms_median": float(np.median(wall)),
        "cpu_ms_mean": float(np.mean(cpu)),
        "cpu_ms_std": float(np.std(cpu)),
        "n": n,
        "threads": 1,
        "batch": 1,
        "energies": "uniform 10-90 GeV",
        "evaluations": int(getattr(gen, "evaluations", -1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, action="append", help="model folder(s)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--showers", type=int, default=100, help="showers per energy point")
    parser.add_argument("--window", type=float, default=2.0, help="GeV half width of the window")
    parser.add_argument("--timing", type=int, default=20, help="showers timed at batch 1")
    parser.add_argument("--threads", type=int, default=1, help="threads for the energy check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = []
    for model in args.model:
        gen = load_generator(model)
        torch.set_num_threads(args.threads)
        result: dict[str, object] = {"model": model, "name": gen.name}
        result["energy"] = energy_check(gen, args.data, args.showers, args.window, args.seed)
        for entry in result["energy"]:  # type: ignore[attr-defined]
            print(json.dumps({"model": gen.name, **entry}), flush=True)
        if args.timing:
            result["timing"] = timing(gen, args.timing, args.seed)
            print(json.dumps({"model": gen.name, **result["timing"]}), flush=True)  # type: ignore[dict-item]
        result["all_pass"] = all(e["pass_5pct"] for e in result["energy"])  # type: ignore[attr-defined]
        summary.append(result)
    print(json.dumps({r["name"]: r["all_pass"] for r in summary}))  # type: ignore[index,misc]


if __name__ == "__main__":
    main()
