"""The training data of the shipped default (angle-aware CaloClouds II (CM), issue 15).

One training cache (``calogen.models.training_cache``: axis frame, 256 points per shower) of

* showers 0-8,999 of ``g4_photons_10-90GeV_train.h5`` (normal incidence; 9,000-9,999 stay the
  held-out test split) and all 6,000 of ``g4_photons_angles_train.h5`` (theta 0-60 deg),
* the showers with theta > 40 deg (2,161) of 6,600 more made with the Geant4 tool
  (``../shared/tools/geant4/make_dataset.py``: 66 files of 100 photon showers, E uniform
  10-90 GeV, theta uniform 0-60 deg, phi 0-360 deg, the seeds in ``SEEDS``; they were made on
  the GPU machine's CPU cores by scripts/gpu/make_angled_data.py, about 26 core-minutes),

merged as they were for the shipped model: the angled files in three groups (sorted names,
``files[i::3]``, cache seed ``i``), the theta > 40 deg showers of each group, then one merged
file. With ``--angled-caches`` the three group caches already made are used (the step after
the Geant4 runs; from the files of /work/runs/s3/data this reproduces the merged cache of the
shipped model byte for byte in its arrays).

    python scripts/default_model/make_training_cache.py --g4 /work/g4venv/bin/python \\
        --work runs/g4_angled -o runs/merged_gt40.npz
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import numpy as np

from calogen.models.caloclouds import TrainingData
from calogen.models.training_cache import (
    merge_training_caches,
    select_training_cache,
    write_training_cache,
)

#: seeds of the 66 complete files of the GPU machine's run (15 cores, seed 5001 + 1000 * core + k)
SEEDS = [
    *range(5001, 5005), *range(6001, 6005), *range(7001, 7006), *range(8001, 8005),
    *range(9001, 9006), *range(10001, 10006), *range(11001, 11005), *range(12001, 12005),
    *range(13001, 13005), *range(14001, 14006), *range(15001, 15006), *range(16001, 16006),
    *range(17001, 17005), *range(18001, 18005), *range(19001, 19005),
]  # fmt: skip
THETA_CUT_DEG = 40.0


def select_inclined(cache: Path, out: Path) -> dict:
    """The showers of ``cache`` with theta > THETA_CUT_DEG, as a cache of their own."""

    def inclined(data: TrainingData) -> np.ndarray:
        return np.flatnonzero(np.asarray(data.features["theta_deg"]) > THETA_CUT_DEG)

    return select_training_cache(cache, inclined, f"theta_deg > {THETA_CUT_DEG:g}", out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("CALOGEN_SHARED_DATA", "../shared/data"))
    ap.add_argument("--tool", default="../shared/tools/geant4/make_dataset.py")
    ap.add_argument("--g4", default="python", help="the Python that runs the Geant4 tool")
    ap.add_argument("--work", default="runs/g4_angled", help="folder of the Geant4 files")
    ap.add_argument("--angled-caches", nargs=3, help="the three group caches, if made already")
    ap.add_argument("-o", "--out", required=True, help="the merged cache (.npz)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shared = Path(args.shared)
    caches = args.angled_caches
    if not caches:
        files = []
        for seed in SEEDS:  # resumable: a finished file is kept
            f = work / f"angled_s{seed}.h5"
            if not f.exists():
                tmp = work / f"angled_s{seed}.tmp.h5"
                subprocess.run(
                    [args.g4, args.tool, "-n", "100", "--emin", "10", "--emax", "90",
                     "--theta-min", "0", "--theta-max", "60", "--phi-min", "0",
                     "--phi-max", "360", "--seed", str(seed), "-o", str(tmp)],
                    check=True,
                )  # fmt: skip
                tmp.rename(f)
            files.append(f)
        files.sort(key=lambda p: p.name)
        caches = []
        for i in range(3):
            c = work / f"angled_cache_{i}.npz"
            write_training_cache(
                [str(f) for f in files[i::3]], c, straighten=True, points_per_shower=256, seed=i
            )
            caches.append(c)
    shared_cache = work / "shared_9k_6k.npz"
    if not shared_cache.exists():
        write_training_cache(
            [str(shared / "g4_photons_10-90GeV_train.h5"), str(shared / "g4_photons_angles_train.h5")],
            shared_cache, max_showers=9000, straighten=True, points_per_shower=256, seed=0,
        )  # fmt: skip
    selected = [
        select_inclined(Path(c), work / f"angled_gt40_{i}.npz") for i, c in enumerate(caches)
    ]
    print("theta > 40 deg:", sum(s["showers"] for s in selected), "showers")
    print(merge_training_caches([shared_cache, *(s["cache"] for s in selected)], args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
