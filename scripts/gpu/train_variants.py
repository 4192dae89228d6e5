"""One GPU lease, prepared: angle-aware CaloClouds II (CM) variants trained side by side.

Runs on a machine with one CUDA GPU and a CPU per training process, from a training cache
(``calogen.models.training_cache``; the shared HDF5 files are too large to carry):

1. the CUDA test of the training path (tests/test_training_cache.py -k cuda);
2. ``calogen bench`` of the shipped default model on the GPU (showers/s at batch 1, 100, 1000);
3. a short probe of every variant (teacher and distillation, all at once, so that the rates
   include the sharing of the GPU) to size the runs to ``--budget-s`` seconds;
4. every variant's teacher, then its distillation, in parallel processes
   (``calogen train caloclouds2 --device cuda``, ``calogen distill --device cuda``, both
   ``--no-corrections``: the corrections are fitted afterwards on the CPU with
   ``calogen fit-occupancy`` on the shower files the cache was made from);
5. the model folders (no checkpoints) and logs in ``OUT/models.tar.gz``.

    python scripts/gpu/train_variants.py --cache .gpu/angles_cache.npz --budget-s 400 --out OUT

``--dry-run`` does the same on the CPU with tiny lengths (to test this script before a lease).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tarfile
import time
from pathlib import Path

#: teacher overrides of the 'small-angles' preset; the distillation uses the same batch
VARIANTS: dict[str, dict] = {
    "a_recipe_batch": {},  # the recipe's batch (32 showers x 128 points), longer
    "b_batch128": {"batch_size": 128},
    "c_batch64_pts256": {"batch_size": 64, "points_per_shower": 256},
    "d_batch128_sf40k": {"batch_size": 128, "shower_flow_iterations": 40_000},
}


#: the CLI without an installed entry point (the GPU machine runs from src/ on PYTHONPATH)
CALOGEN = [sys.executable, "-m", "calogen"]


def sh(cmd: list[str], log: Path, timeout: float | None = None) -> int:
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        try:
            return subprocess.run(
                cmd, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            handle.write("TIMEOUT\n")
            return 124


def write_configs(work: Path, name: str, dry: bool) -> tuple[Path, Path]:
    over = dict(VARIANTS[name])
    teacher = {"base": "small-angles", "checkpoint_every": 5000, **over}
    distill = {
        "base": "small-angles",
        "checkpoint_every": 5000,
        "batch_size": over.get("batch_size", 32),
        "points_per_shower": over.get("points_per_shower", 128),
    }
    if dry:
        teacher.update(widths=[16, 32, 16], shower_flow_iterations=20, checkpoint_every=10)
        distill.update(checkpoint_every=10)
    t, d = work / f"{name}.teacher.json", work / f"{name}.distill.json"
    t.write_text(json.dumps(teacher))
    d.write_text(json.dumps(distill))
    return t, d


def stage_cmds(
    name: str, work: Path, cache: str, device: str, t_its: int, d_its: int, tag: str
) -> list[list[str]]:
    t_cfg, d_cfg = work / f"{name}.teacher.json", work / f"{name}.distill.json"
    teacher, student = work / f"{tag}{name}_teacher", work / f"{tag}{name}_student"
    common = ["--device", device, "--no-corrections", "--quiet", "--seed", "7", "--threads", "1"]
    return [
        [*CALOGEN, "train", "caloclouds2", "--config", str(t_cfg), "--data", cache,
         "-o", str(teacher), "--iterations", str(t_its), *common],
        [*CALOGEN, "distill", "--teacher", str(teacher), "--config", str(d_cfg),
         "--data", cache, "-o", str(student), "--iterations", str(d_its), *common],
    ]  # fmt: skip


def run_parallel(chains: dict[str, list[list[str]]], work: Path, deadline: float) -> dict:
    """Each variant's commands one after the other, the variants in parallel."""
    procs = {}
    for name, cmds in chains.items():
        script = " && ".join(" ".join(f"'{c}'" for c in cmd) for cmd in cmds)
        log = open(work / f"{name}.log", "a")
        procs[name] = (subprocess.Popen(["bash", "-c", script], stdout=log, stderr=log), log)
    codes = {}
    for name, (proc, log) in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = "killed at the deadline"
        log.close()
    return codes


def seconds_of(folder: Path) -> float | None:
    log = folder / "train_log.json"
    if not log.exists():
        return None
    return float(json.loads(log.read_text()).get("seconds", math.nan))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--budget-s", type=float, default=400.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/calogen_gpu")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    t_start = time.time()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    report: dict = {"variants": VARIANTS, "budget_s": args.budget_s}
    env = work / "env.log"
    sh([sys.executable, "-c", "import torch;print(torch.__version__, torch.cuda.is_available(),"
        " torch.cuda.get_device_name() if torch.cuda.is_available() else '')"], env)  # fmt: skip
    if not args.dry_run:
        sh(["nvidia-smi"], env)
        report["cuda_test"] = sh(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_training_cache.py", "-k", "cuda"], work / "pytest.log", 120,
        )  # fmt: skip
        bench = {}
        for batch, n in ((1, 200), (100, 1000), (1000, 2000)):
            log = work / f"bench_cuda_b{batch}.json"
            sh([*CALOGEN, "bench", "--device", "cuda", "--batch", str(batch), "-n", str(n),
                "--repeats", "3", "--json"], log, 90)  # fmt: skip
            bench[batch] = log.read_text()[-3000:]
        report["bench_cuda"] = bench
    print(f"[{time.time() - t_start:.0f} s] checks done", flush=True)

    # probe: short runs of every variant at once (rates under the shared GPU)
    probe_t, probe_d = (8, 4) if args.dry_run else (200, 100)
    for name in VARIANTS:
        write_configs(work, name, args.dry_run)
    chains = {
        n: stage_cmds(n, work, args.cache, device, probe_t, probe_d, "probe_") for n in VARIANTS
    }
    report["probe_codes"] = run_parallel(chains, work, time.time() + 150)
    rates = {}
    for name in VARIANTS:
        ts = seconds_of(work / f"probe_{name}_teacher")
        ds = seconds_of(work / f"probe_{name}_student")
        if ts and ds:
            rates[name] = (ts / probe_t, ds / probe_d)
    report["probe_s_per_iteration"] = rates
    print(f"[{time.time() - t_start:.0f} s] probe: {json.dumps(rates)}", flush=True)

    # the runs, sized to the budget left (teacher 55 %, distillation 45 %; margin 12 %)
    left = args.budget_s - (time.time() - t_start)
    plan, chains = {}, {}
    for name, (t_rate, d_rate) in rates.items():
        t_its = max(int(0.88 * 0.55 * left / t_rate) // 500 * 500, 500)
        d_its = max(int(0.88 * 0.45 * left / d_rate) // 500 * 500, 500)
        if args.dry_run:
            t_its, d_its = 12, 8
        plan[name] = {"teacher_iterations": t_its, "distill_iterations": d_its}
        chains[name] = stage_cmds(name, work, args.cache, device, t_its, d_its, "")
    report["plan"] = plan
    print(f"[{time.time() - t_start:.0f} s] plan: {json.dumps(plan)}", flush=True)
    report["codes"] = run_parallel(chains, work, t_start + args.budget_s + 60)
    report["seconds"] = {
        name: {
            "teacher": seconds_of(work / f"{name}_teacher"),
            "distill": seconds_of(work / f"{name}_student"),
        }
        for name in chains
    }
    report["wall_s"] = round(time.time() - t_start, 1)
    (work / "report.json").write_text(json.dumps(report, indent=2))

    with tarfile.open(out / "models.tar.gz", "w:gz") as tar:
        for path in sorted(work.iterdir()):
            if path.is_dir() and not path.name.startswith("probe_"):
                for f in sorted(path.iterdir()):
                    if f.is_file():
                        tar.add(f, arcname=f"{path.name}/{f.name}")
            elif path.is_file():
                tar.add(path, arcname=path.name)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("codes", "plan", "seconds", "wall_s")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
