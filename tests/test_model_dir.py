"""Model-folder validation: every broken folder is one clear line and exit code 2.

Cases go through ``calogen generate --model DIR`` (and ``calogen train --resume``): missing
``model.json`` or ``model.safetensors``, corrupt JSON, a format version newer than this
calogen, a config of another model type, malformed entries, corrupt weights.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from calogen.cli import main
from calogen.errors import UsageError
from calogen.models.training import (
    FORMAT_VERSION,
    check_format_version,
    latest_checkpoint,
    read_model_info,
)

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
    "iterations": 2,
    "batch_size": 4,
    "points_per_shower": 32,
    "checkpoint_every": 2,
    "shower_flow_iterations": 2,
    "shower_flow_batch": 16,
    "lr_warmup": 0,
    "max_showers": 40,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fixtures) -> Path:  # type: ignore[no-untyped-def]
    from calogen.models import caloclouds2 as cc2

    out = tmp_path_factory.mktemp("model_dir") / "model"
    cc2.train(config=dict(TINY), data=fixtures / "g4_photons_subset.h5", out=out, progress=False)
    return out


def _edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        info = json.loads((folder / "model.json").read_text())
        change(info)
        (folder / "model.json").write_text(json.dumps(info))

    return apply


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda info: info.__setitem__(key, value)


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing model.json": (lambda d: (d / "model.json").unlink(), "no model.json"),
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "corrupt JSON": (
        lambda d: (d / "model.json").write_text('{"calogen_model": "caloclouds2", "con'),
        "model.json: not valid JSON",
    ),
    "not a model description": (
        lambda d: (d / "model.json").write_text("[1, 2]"),
        "not a calogen model description",
    ),
    "newer format version": (
        _edit_json(_set("format_version", FORMAT_VERSION + 1)),
        f"format version {FORMAT_VERSION + 1} is newer than this calogen reads",
    ),
    "format version not an integer": (
        _edit_json(_set("format_version", "2")),
        "'format_version' must be a positive integer",
    ),
    "config of another model type": (
        _edit_json(_set("calogen_model", "caloclouds")),
        "cannot load model type 'caloclouds': unknown CaloClouds config keys",
    ),
    "unknown model type": (
        _edit_json(_set("calogen_model", "nonsense")),
        "model type 'nonsense' is not known",
    ),
    "config not a mapping": (_edit_json(_set("config", [1])), "'config' must be a mapping"),
    "malformed config value": (
        _edit_json(lambda info: info["config"].__setitem__("widths", "abc")),
        "invalid 'caloclouds2' model description (ValueError",
    ),
    "missing normalisation": (
        _edit_json(lambda info: info.pop("normalisation")),
        "missing entry 'normalisation'",
    ),
    "truncated weights": (_truncate, "model.safetensors: cannot read safetensors file"),
    "pickle instead of safetensors": (
        lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 32),
        "pickle",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_model_folder_is_one_line_exit_2(
    case: str, model_dir: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("checkpoints"))
    breaks, message = CASES[case]
    breaks(folder)
    out = tmp_path / "out.h5"
    argv = ["generate", "--model", str(folder), "--energy", "50", "--num", "2", "--seed", "1"]
    code = main([*argv, "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calogen: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err and not out.exists()


def test_intact_folder_loads_and_records_its_version(model_dir: Path) -> None:
    info = read_model_info(model_dir)
    assert info["format_version"] == FORMAT_VERSION and isinstance(FORMAT_VERSION, int)
    check_format_version(FORMAT_VERSION, "x")
    with pytest.raises(UsageError, match="newer"):
        check_format_version(FORMAT_VERSION + 1, "x")
    # folders written before the field existed count as version 1
    legacy = json.loads((model_dir / "model.json").read_text())
    legacy.pop("format_version")
    assert check_format_version(legacy.get("format_version", 1), "x") == 1


def test_resume_of_another_model_type_or_newer_checkpoint(
    model_dir: Path, tmp_path: Path, fixtures: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(model_dir, run)
    data = str(fixtures / "g4_photons_subset.h5")
    argv = ["--data", data, "--out", str(run), "--resume", "--threads", "1", "--no-progress"]
    assert main(["train", "caloclouds", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a 'caloclouds2' run, not 'caloclouds'" in err

    ckpt = latest_checkpoint(run / "checkpoints")
    meta = json.loads(ckpt.read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    ckpt.write_text(json.dumps(meta))
    assert main(["train", "caloclouds2", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is newer than this calogen reads" in err
