"""``calogen train caloclouds2-cm``: teacher, distillation and corrections in one resumable
command, and the corrections at the end of every CaloClouds training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from calogen.calibration import OccupancyCorrection
from calogen.cli import main
from calogen.models import caloclouds2 as cc2
from calogen.models import pipeline
from calogen.models.registry import load_generator
from calogen.models.training import latest_checkpoint, load_tensors, read_json

REPO = Path(__file__).resolve().parents[1]

#: a tiny recipe: 12 teacher and 8 distillation iterations, a checkpoint every 4
TINY = {
    "base": "small",
    "teacher": {
        "widths": [8, 16, 8],
        "time_features": 4,
        "shower_flow": {
            "feature_set": "caloclouds2_core",
            "blocks": 1,
            "affine_per_block": 1,
            "spline_per_block": 0,
            "hidden": [8, 8],
        },
        "iterations": 12,
        "batch_size": 4,
        "points_per_shower": 32,
        "checkpoint_every": 4,
        "shower_flow_iterations": 12,
        "shower_flow_batch": 16,
        "lr_warmup": 0,
        "max_points": 600,
    },
    "distill": {
        "iterations": 8,
        "batch_size": 4,
        "points_per_shower": 32,
        "checkpoint_every": 4,
        "lr_warmup": 0,
    },
}
N_TRAIN = 60  # of the 80 committed showers


def _argv(config: Path, data: Path, out: Path) -> list[str]:
    return ["train", "caloclouds2-cm", "--config", str(config), "--data", str(data), "-o", str(out),
            "-n", str(N_TRAIN), "--seed", "5", "--threads", "1", "--quiet"]  # fmt: skip


def _same_model(a: Path, b: Path, student: bool = True) -> None:
    """Bit-identical weights and the same corrections, configs and normalisation."""
    ta, tb = load_tensors(a / "model.safetensors"), load_tensors(b / "model.safetensors")
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], rtol=0, atol=0, msg=key)
    ia, ib = read_json(a / "model.json"), read_json(b / "model.json")
    for key in ("occupancy", "radial_correction", "config", "normalisation", "cm_sigmas"):
        assert ia.get(key) == ib.get(key), key
    if student:
        assert ia["distillation"]["config"] == ib["distillation"]["config"]
        assert read_json(a / "occupancy.json") == read_json(b / "occupancy.json")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fixtures) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """An uninterrupted tiny run on the command line."""
    root = tmp_path_factory.mktemp("pipeline")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = root / "reference"
    assert main(_argv(config, fixtures / "g4_photons_subset.h5", out)) == 0
    return {"root": root, "config": config, "out": out, "data": fixtures / "g4_photons_subset.h5"}


def test_one_command_makes_a_finished_model(reference) -> None:  # type: ignore[no-untyped-def]
    out = reference["out"]
    state = read_json(out / pipeline.PIPELINE_JSON)
    assert list(state["done"]) == list(pipeline.STAGES)
    assert state["settings"]["teacher_config"]["max_showers"] == N_TRAIN
    assert state["done"]["teacher"]["training_showers"] == N_TRAIN
    assert (out / "teacher" / "model.json").is_file()
    info = read_json(out / "model.json")
    assert info["calogen_model"] == "caloclouds2-cm"
    assert info["distillation"]["config"]["n_grid"] == 40  # the small preset's grid
    # the corrections are part of the model: fitted on the training showers
    assert info["occupancy"] != OccupancyCorrection.identity().to_dict()
    assert "radial_correction" in info
    assert state["done"]["corrections"]["showers"] == N_TRAIN
    generator = load_generator(out)
    assert generator.model.radial is not None and generator.evaluations == 1
    showers = generator.sample([20.0, 70.0], seed=1)
    assert len(showers) == 2
    # re-running the finished command does nothing and changes nothing
    before = (out / "model.json").read_text()
    assert main(_argv(reference["config"], reference["data"], out)) == 0
    assert (out / "model.json").read_text() == before


def test_other_settings_are_refused(reference, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = reference["out"]
    argv = _argv(reference["config"], reference["data"], out)
    argv[argv.index("--seed") + 1] = "6"
    before = (out / "model.json").read_text()
    assert main(argv) == 2
    assert "other settings (seed differ)" in capsys.readouterr().err
    assert (out / "model.json").read_text() == before
    # a folder that holds something else is not taken over
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(_argv(reference["config"], reference["data"], other)) == 2
    assert "not a caloclouds2-cm run folder" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_configs_and_several_files(reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    teacher, distill = pipeline.pipeline_configs("small")
    assert teacher == cc2.get_config("small") and distill == cc2.get_distill_config("small")
    teacher, distill = pipeline.pipeline_configs("small-angles")  # a variant of a preset
    assert teacher.directions and distill == cc2.get_distill_config("small")
    # several --data files (concatenated): the corrections use the first showers of each
    out = tmp_path / "two"
    argv = _argv(reference["config"], reference["data"], out)
    argv[argv.index("-n") + 1] = "30"
    argv.insert(argv.index("--data") + 2, str(reference["data"]))
    assert main(argv) == 0
    state = read_json(out / pipeline.PIPELINE_JSON)
    assert len(state["settings"]["data"]) == 2
    assert state["done"]["distillation"]["training_showers"] == 60
    assert state["done"]["corrections"]["showers"] == 60  # 30 of each file


def test_no_corrections(reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bare"
    assert main([*_argv(reference["config"], reference["data"], out), "--no-corrections"]) == 0
    info = read_json(out / "model.json")
    assert info["occupancy"] == OccupancyCorrection.identity().to_dict()
    assert "radial_correction" not in info
    # the networks are those of the corrected run: only the corrections differ
    a, b = (
        load_tensors(reference["out"] / "model.safetensors"),
        load_tensors(out / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distill_resume_keeps_its_corrections(reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A distillation resumed after an interruption (or after it finished) ends with the
    corrections of an uninterrupted one (it used to re-export model.json without them)."""
    teacher, data = reference["out"] / "teacher", reference["data"]
    config = dict(TINY["distill"], max_showers=N_TRAIN)
    kwargs = {"teacher": teacher, "config": config, "data": data, "seed": 5, "progress": False}
    full, part = tmp_path / "full", tmp_path / "part"
    summary = cc2.distill(out=full, **kwargs)
    assert summary["corrections"]["radial_correction"] is True
    cc2.distill(out=part, stop_after=4, **kwargs)
    assert "radial_correction" not in read_json(part / "model.json")  # not finished yet
    cc2.distill(out=part, resume=True, **kwargs)
    _same_model(full, part)
    cc2.distill(out=part, resume=True, **kwargs)  # resuming a finished run changes nothing
    _same_model(full, part)
    # the pipeline's student is this distillation with the same seed
    _same_model(reference["out"], full)


def _wait(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before {what}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"no {what} within 180 s"
        time.sleep(0.005)


@pytest.mark.slow
def test_kill_in_each_stage_then_rerun_equals_uninterrupted(reference) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL during the teacher, during the distillation and during the correction fit;
    re-running the same command after each kill ends with the uninterrupted run's model."""
    out = reference["root"] / "killed"
    argv = _argv(reference["config"], reference["data"], out)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO / "src")

    def done() -> dict:
        path = out / pipeline.PIPELINE_JSON
        return read_json(path)["done"] if path.is_file() else {}

    stages = {
        "teacher": lambda: latest_checkpoint(out / "teacher" / "checkpoints") is not None,
        "distillation": lambda: latest_checkpoint(out / "checkpoints") is not None,
        "corrections": lambda: "distillation" in done(),
    }
    for stage, ready in stages.items():
        proc = subprocess.Popen(
            [sys.executable, "-m", "calogen", *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait(proc, ready, f"the {stage} stage")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stderr.close()  # type: ignore[union-attr]
        assert proc.returncode == -signal.SIGKILL
        assert stage not in done(), f"{stage} finished before the kill"
    assert main(argv) == 0  # the same command once more completes the run
    assert list(done()) == list(pipeline.STAGES)
    _same_model(reference["out"], out)
    _same_model(reference["out"] / "teacher", out / "teacher", student=False)
