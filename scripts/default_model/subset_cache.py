"""A random subset of a training cache (issue 16: fidelity against the number of training
showers). Keeps the mix of the input (normal incidence and angled showers alike).

    python scripts/default_model/subset_cache.py runs/merged_gt40.npz -n 4290 --seed 1 \\
        -o runs/subset_4290.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from calogen.models.caloclouds import TrainingData
from calogen.models.training_cache import _save, read_training_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache")
    ap.add_argument("-n", type=int, required=True, help="showers to keep")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    data, meta = read_training_cache(args.cache)
    n_all = len(data.energies)
    keep = np.sort(np.random.default_rng(args.seed).choice(n_all, args.n, replace=False))
    stored = np.diff(data.offsets)
    rows = np.concatenate([np.arange(data.offsets[i], data.offsets[i + 1]) for i in keep])
    subset = TrainingData(
        points=data.points[rows],
        offsets=np.concatenate(([0], np.cumsum(stored[keep]))).astype(np.int64),
        energies=data.energies[keep],
        features={k: np.asarray(v)[keep] for k, v in data.features.items()},
        n_points=data.counts[keep],
    )
    selection = f"random {args.n} of {n_all} (seed {args.seed})"
    _save(subset, {**meta, "selection": selection}, args.out)
    print(f"{args.out}: {selection}")


if __name__ == "__main__":
    main()
