"""A training run killed with SIGKILL and resumed with ``--resume`` equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from calogen.cli import main
from calogen.models import caloclouds2 as cc2
from calogen.models.training import latest_checkpoint, load_tensors, read_json, read_model_info

REPO = Path(__file__).resolve().parents[1]

#: tiny CaloClouds II run: 40 iterations, a checkpoint every 4 (about 25 ms per iteration)
TINY = {
    "base": "small",
    "widths": [8, 16, 8],
    "time_features": 4,
    "shower_flow": {
        "feature_set": "caloclouds2",
        "blocks": 1,
        "affine_per_block": 1,
        "spline_per_block": 0,
        "hidden": [8, 8],
    },
    "iterations": 40,
    "batch_size": 4,
    "points_per_shower": 32,
    "checkpoint_every": 4,
    "shower_flow_iterations": 40,
    "shower_flow_batch": 16,
    "lr_warmup": 0,
    "max_showers": 40,
}


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, fixtures: Path) -> None:
    data = fixtures / "g4_photons_subset.h5"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "calogen", "train", "caloclouds2", "--config", str(config)]
    cmd += ["--data", str(data), "--out", str(run), "--seed", "4", "--threads", "1"]
    proc = subprocess.Popen(
        [*cmd, "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(run / "checkpoints") is None:
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_json(latest_checkpoint(run / "checkpoints"))["iteration"]
    assert 0 < killed_at < TINY["iterations"], "the run was not killed mid-way"
    print(f"killed after the checkpoint of iteration {killed_at}")
    read_model_info(run)  # the folder holds a usable model after the kill

    # resume on the command line; config and seed come from the checkpoint
    argv = ["train", "caloclouds2", "--data", str(data), "--out", str(run), "--resume"]
    assert main([*argv, "--threads", "1", "--no-progress"]) == 0
    assert json.loads((run / "train_log.json").read_text())["iteration"] == TINY["iterations"]

    reference = tmp_path / "reference"
    cc2.train(config=dict(TINY), data=data, out=reference, seed=4, progress=False)
    for name in ("model.safetensors", f"checkpoints/ckpt-{TINY['iterations']:08d}.safetensors"):
        a, b = load_tensors(reference / name), load_tensors(run / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{name}: {key}")
