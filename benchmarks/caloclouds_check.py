"""Acceptance checks of a trained CaloClouds model (issue 3).

1. Visible energy: mean E_vis / E_inc of generated vs Geant4 showers at ~10, 50, 90 GeV
   (Geant4 showers of the training file within a window; generated showers at the same
   incident energies), E_vis = sum of cell hits >= 0.1 MeV in the slab geometry.
2. Timing: ms per shower, incident energy uniform in 10-90 GeV, batch 1, one thread.

    python benchmarks/caloclouds_check.py --model /work/runs/caloclouds_small \
        --data ../shared/data/g4_photons_10-90GeV_train.h5 [--showers 100] [--timing 10]
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


def visible_fraction(showers) -> np.ndarray:  # type: ignore[no-untyped-def]
    hits = project(showers, slab())
    e_vis_mev = np.bincount(hits.shower, weights=hits.energy_mev, minlength=hits.n_showers)
    return e_vis_mev / 1000.0 / showers.energies.reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--showers", type=int, default=100, help="showers per energy point")
    parser.add_argument("--window", type=float, default=2.0, help="GeV half width of the window")
    parser.add_argument("--timing", type=int, default=10, help="showers timed at batch 1")
    parser.add_argument("--threads", type=int, default=2, help="threads for the energy check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = load_generator(args.model)
    result: dict[str, object] = {"model": args.model, "points": []}
    torch.set_num_threads(args.threads)
    with ShowerFile(args.data) as f:
        e_all = f.incident_energies()
        for target in (10.0, 50.0, 90.0):
            lo = max(target - args.window, e_all.min())
            hi = min(target + args.window, e_all.max())
            idx = np.flatnonzero((e_all >= lo) & (e_all <= hi))[: args.showers]
            real = f.read(int(idx[0]), int(idx[-1]) + 1)
            keep = np.isin(np.arange(idx[0], idx[-1] + 1), idx)
            r_frac = visible_fraction(real)[keep]
            energies = real.energies.reshape(-1)[keep].astype(np.float64)
            fake = gen.sample(energies, seed=args.seed)
            g_frac = visible_fraction(fake)
            n_real = np.asarray(real._num_points)[keep]
            entry = {
                "energy_gev": target,
                "window_gev": [float(lo), float(hi)],
                "showers": len(energies),
                "geant4_evis_over_einc": float(r_frac.mean()),
                "generated_evis_over_einc": float(g_frac.mean()),
                "relative_difference": float(g_frac.mean() / r_frac.mean() - 1.0),
                "geant4_points_mean": float(n_real.mean()),
                "generated_points_mean": float(pack(fake).counts.mean()),
            }
            entry["pass_5pct"] = abs(entry["relative_difference"]) < 0.05
            result["points"].append(entry)  # type: ignore[union-attr]
            print(json.dumps(entry), flush=True)

    if args.timing:
        torch.set_num_threads(1)
        rng = np.random.default_rng(args.seed)
        energies = rng.uniform(10.0, 90.0, size=args.timing)
        gen.sample(np.array([50.0]), seed=0)  # warm-up
        times = []
        for i, e in enumerate(energies):
            t0 = time.perf_counter()
            gen.sample(np.array([e]), seed=i)
            times.append((time.perf_counter() - t0) * 1000.0)
        result["timing_ms_per_shower"] = {
            "mean": float(np.mean(times)),
            "std": float(np.std(times)),
            "n": len(times),
            "threads": 1,
            "batch": 1,
            "energies_gev": "uniform 10-90",
        }
        print(json.dumps(result["timing_ms_per_shower"]), flush=True)
    print(json.dumps({"all_pass": all(p["pass_5pct"] for p in result["points"])}))  # type: ignore[union-attr,index]


if __name__ == "__main__":
    main()
