"""One lease of the GPU machine's 16 CPU cores, prepared: more angled Geant4 training showers.

Runs the Geant4 tool of ../shared/tools/geant4 (``make_dataset.py``, carried to the machine
with its built ``libg4cal.so`` and the calzone wheel) on ``--cores`` cores until
``--deadline-s``: each core makes files of ``--per-file`` photon showers, E uniform in
10-90 GeV, theta uniform in 0-60 deg, phi uniform in 0-360 deg, seed
``seed0 + 1000 * core + k`` for its k-th file. A file that is not complete at the deadline is
dropped. The complete files become training caches (``calogen.models.training_cache``, axis
frame, 256 points per shower) in ``--groups`` parts of at most 16 MB each (what the machine
can send back) plus ``manifest.json`` (files, seeds, showers, seconds).

    python scripts/gpu/make_angled_data.py --tool .gpu/g4tool --cores 15 --deadline-s 290 --out OUT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", required=True)
    ap.add_argument("--cores", type=int, default=15)
    ap.add_argument("--deadline-s", type=float, default=290)
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--seed0", type=int, default=5001)
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/calogen_g4")
    args = ap.parse_args()
    t0 = time.time()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    tool = Path(args.tool) / "make_dataset.py"
    # one shell loop per core: file after file until killed at the deadline
    procs = []
    for core in range(args.cores):
        cmds = []
        for k in range(200):
            seed = args.seed0 + 1000 * core + k
            f = work / f"angled_s{seed}.h5"
            cmds.append(
                f"taskset -c {core} {sys.executable} {tool} -n {args.per_file} --emin 10 "
                f"--emax 90 --theta-min 0 --theta-max 60 --seed {seed} -o {f} "
                f"> {work}/log_s{seed}.txt 2>&1 && mv {f} {f}.done"
            )
        procs.append(subprocess.Popen(["bash", "-c", " && ".join(cmds)]))
    while time.time() - t0 < args.deadline_s and any(p.poll() is None for p in procs):
        time.sleep(2)
    for p in procs:
        p.kill()
    t_gen = time.time() - t0
    files = []
    for done in sorted(work.glob("angled_s*.h5.done")):
        f = done.with_suffix("")  # .h5
        done.rename(f)
        with h5py.File(f, "r") as h:
            if h["n_points"].shape[0] == args.per_file:
                files.append(f)
    n = len(files) * args.per_file
    print(f"[{t_gen:.0f} s] {len(files)} complete files, {n} showers", flush=True)
    from calogen.models.training_cache import write_training_cache

    manifest: dict = {
        "tool": "shared/tools/geant4/make_dataset.py",
        "per_file": args.per_file,
        "files": [f.name for f in files],
        "showers": n,
        "generation_s": round(t_gen, 1),
        "cores": args.cores,
        "caches": [],
    }
    groups = [[str(f) for f in files[i :: args.groups]] for i in range(args.groups)]
    groups = [g for g in groups if g]
    with ProcessPoolExecutor(len(groups)) as pool:
        futures = [
            pool.submit(
                write_training_cache,
                group,
                out / f"angled_cache_{i}.npz",
                straighten=True,
                points_per_shower=256,
                seed=i,
            )
            for i, group in enumerate(groups)
        ]
        manifest["caches"] = [f.result() for f in futures]
    print(f"[{time.time() - t0:.0f} s] caches: {manifest['caches']}", flush=True)
    manifest["wall_s"] = round(time.time() - t0, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
