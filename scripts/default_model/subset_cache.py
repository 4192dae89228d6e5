"""A random subset of a training cache (issue 16: fidelity against the number of training
showers). Keeps the mix of the input (normal incidence and angled showers alike).

    python scripts/default_model/subset_cache.py runs/merged_gt40.npz -n 4290 --seed 1 \\
        -o runs/subset_4290.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from calogen.models.training_cache import read_training_cache, select_training_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache")
    ap.add_argument("-n", type=int, required=True, help="showers to keep")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    n_all = read_training_cache(args.cache)[0].n_showers
    keep = np.sort(np.random.default_rng(args.seed).choice(n_all, args.n, replace=False))
    selection = f"random {args.n} of {n_all} (seed {args.seed})"
    select_training_cache(args.cache, keep, selection, args.out)
    print(f"{args.out}: {selection}")


if __name__ == "__main__":
    main()
