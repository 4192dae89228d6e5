"""Audit of every ``calogen`` command with bad input (issue 9).

Each case runs the command in-process and checks what a user on a batch farm sees: exactly
one line on stderr starting with ``calogen: error:``, exit code 2 for usage errors (1 for
runtime failures), no traceback, and no output file or folder left behind (an existing
output is left untouched). ``export`` is audited by its own tests.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from calogen.cli import main
from calogen.data.io import make_showers, read_showers, write_showers
from calogen.models.training import FORMAT_VERSION
from conftest import run_calogen

# -- fixtures ----------------------------------------------------------------------------------

#: Bad shower files: name -> (how to make it, message expected on stderr).
BAD_FILES: dict[str, str] = {
    "missing": "no such file",
    "directory": "is a directory",
    "text": "not an HDF5 file",
    "empty": "file is empty",
    "foreign HDF5": "not a shower file",
    "legacy wrong shape": "legacy 'events' must have shape [N, 4, max_points]",
    "truncated legacy": "corrupt or truncated",
    "truncated showerdata": "corrupt or truncated",
    "NaN energy": "incident energy of shower 3 is nan GeV",
    "inf energy": "incident energy of shower 3 is inf GeV",
    "negative energy": "incident energy of shower 3 is -5 GeV",
    "zero energy": "incident energy of shower 3 is 0 GeV",
    "NaN energy (showerdata)": "incident energy of shower 1 is nan GeV",
    "NaN points": "shower 2 has NaN or infinite point values",
    "inf points": "shower 4 has NaN or infinite point values",
    "non-unit direction": "direction of shower 2 is (0, 0, 2)",
    "sideways direction": "direction of shower 2 is (1, 0, 0)",
    "NaN direction": "direction of shower 0 is (nan, 0, 1)",
    "legacy NaN direction": "direction of shower 4 is (nan, 0, 1)",
    "legacy direction away": "direction of shower 4 is (0, 0.6, -0.8)",
    "legacy directions wrong shape": "'directions' must have shape [N, 3] = [10, 3]",
    "directions wrong shape (showerdata)": "'directions' must have shape [N, 3] = [6, 3]",
}


def _legacy_copy(src: Path, dst: Path, change) -> None:  # type: ignore[no-untyped-def]
    with h5py.File(src) as f:
        events, energy, n_points = f["events"][:10], f["energy"][:10], f["n_points"][:10]
    change(events, energy)
    with h5py.File(dst, "w") as f:
        f["events"], f["energy"], f["n_points"] = events, energy, n_points


def _showerdata_copy(src: Path, dst: Path, **datasets: np.ndarray) -> None:
    write_showers(dst, read_showers(src, 0, 6))
    with h5py.File(dst, "a") as f:
        for key, value in datasets.items():
            f[key][...] = value


def _set(array: np.ndarray, index: tuple, value: float):  # type: ignore[no-untyped-def]
    def change(events: np.ndarray, energy: np.ndarray) -> None:
        {"events": events, "energy": energy}[array][index] = value  # type: ignore[index]

    return change


def _directions(row: list[float]) -> np.ndarray:
    d = np.tile([0.0, 0.0, 1.0], (6, 1))
    d[2 if row[2] != 1.0 else 0] = row
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, fixtures: Path) -> dict[str, Path]:
    """A good showerdata file, a file without showers and every file of ``BAD_FILES``."""
    root = tmp_path_factory.mktemp("audit_files")
    legacy = fixtures / "g4_photons_subset.h5"
    good = write_showers(root / "good.h5", read_showers(legacy, 0, 12))
    made: dict[str, Path] = {"good": good}
    made["missing"] = root / "missing.h5"
    (root / "folder.h5").mkdir()
    made["directory"] = root / "folder.h5"
    made["text"] = root / "text.h5"
    made["text"].write_text("x y layer e\n1 2 3 4\n")
    made["empty"] = root / "empty.h5"
    made["empty"].write_bytes(b"")
    made["foreign HDF5"] = root / "foreign.h5"
    with h5py.File(made["foreign HDF5"], "w") as f:
        f["jets"] = np.zeros(3)
    made["legacy wrong shape"] = root / "shape.h5"
    with h5py.File(made["legacy wrong shape"], "w") as f:
        f["events"] = np.zeros((3, 3, 5), np.float32)
        f["energy"] = np.ones((3, 1), np.float32)
    for name, src in (("truncated legacy", legacy), ("truncated showerdata", good)):
        data = src.read_bytes()
        made[name] = root / f"{name.replace(' ', '_')}.h5"
        made[name].write_bytes(data[: len(data) // 2])
    for name, change in (
        ("NaN energy", _set("energy", (3, 0), np.nan)),
        ("inf energy", _set("energy", (3, 0), np.inf)),
        ("negative energy", _set("energy", (3, 0), -5.0)),
        ("zero energy", _set("energy", (3, 0), 0.0)),
        ("NaN points", _set("events", (2, 0, -1), np.nan)),
        ("inf points", _set("events", (4, 3, -1), np.inf)),
    ):
        made[name] = root / f"{name.replace(' ', '_')}.h5"
        _legacy_copy(legacy, made[name], change)
    energies = np.full((6, 1), 50.0)
    energies[1] = np.nan
    for name, datasets in (
        ("NaN energy (showerdata)", {"energies": energies}),
        ("non-unit direction", {"directions": _directions([0.0, 0.0, 2.0])}),
        ("sideways direction", {"directions": _directions([1.0, 0.0, 0.0])}),
        ("NaN direction", {"directions": _directions([np.nan, 0.0, 1.0])}),
    ):
        made[name] = root / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.h5"
        _showerdata_copy(legacy, made[name], **datasets)
    normal = np.tile([0.0, 0.0, 1.0], (10, 1))
    nan_direction, away = normal.copy(), normal.copy()
    nan_direction[4, 0] = np.nan
    away[4] = [0.0, 0.6, -0.8]
    for name, directions in (
        ("legacy NaN direction", nan_direction),
        ("legacy direction away", away),
        ("legacy directions wrong shape", normal[:, :2]),
        ("directions wrong shape (showerdata)", normal[:6, :2]),
    ):
        made[name] = root / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.h5"
        if name.startswith("legacy"):
            _legacy_copy(legacy, made[name], lambda events, energy: None)
        else:
            write_showers(made[name], read_showers(legacy, 0, 6))
        with h5py.File(made[name], "a") as f:
            if "directions" in f:
                del f["directions"]
            f["directions"] = directions
    made["no showers"] = write_showers(
        root / "no_showers.h5", make_showers(np.zeros((0, 1, 4), np.float32), [], [])
    )
    return made


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, fixtures: Path) -> Path:
    """A tiny trained caloclouds2 folder (with checkpoints)."""
    from calogen.models import caloclouds2 as cc2
    from test_model_dir import TINY

    out = tmp_path_factory.mktemp("audit_model") / "model"
    cc2.train(config=dict(TINY), data=fixtures / "g4_photons_subset.h5", out=out, progress=False)
    return out


def _edit(folder: Path, **changes: object) -> None:
    info = json.loads((folder / "model.json").read_text())
    info.update(changes)
    (folder / "model.json").write_text(json.dumps(info))


#: Broken model folders: name -> (how to break a copy, message).
BAD_MODELS = {
    "no folder": (lambda d: shutil.rmtree(d), "no such model folder"),
    "a file": (
        lambda d: (shutil.rmtree(d), d.write_text("{}")),
        "not a folder (expected a model folder with model.json)",
    ),
    "no model.json": (lambda d: (d / "model.json").unlink(), "no model.json"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "truncated model.json": (
        lambda d: (d / "model.json").write_text('{"calogen_model": "calo'),
        "model.json: not valid JSON",
    ),
    "newer format": (
        lambda d: _edit(d, format_version=FORMAT_VERSION + 1),
        f"format version {FORMAT_VERSION + 1} is newer than this calogen reads",
    ),
    "another model's config": (
        lambda d: _edit(d, calogen_model="caloclouds"),
        "cannot load model type 'caloclouds'",
    ),
    "unknown model type": (
        lambda d: _edit(d, calogen_model="gan"),
        "model type 'gan' is not known",
    ),
}


@pytest.fixture(scope="module")
def models(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of ``model`` per entry of ``BAD_MODELS``, broken as described, plus ``good``."""
    root = tmp_path_factory.mktemp("audit_models")
    made = {}
    for i, (name, (breaks, _)) in enumerate({"good": (lambda d: None, ""), **BAD_MODELS}.items()):
        folder = root / f"m{i}"
        shutil.copytree(model, folder, ignore=shutil.ignore_patterns("checkpoints"))
        breaks(folder)
        made[name] = folder
    return made


# -- running a command -------------------------------------------------------------------------


def calogen(*argv: object) -> tuple[int, str]:
    """Run ``calogen ARGV`` in-process; return the exit code and stderr."""
    code, _, err = run_calogen(*argv)
    return code, err


def check_one_line(code: int, err: str, expected_code: int, message: str) -> None:
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("calogen: error: "), lines[0]
    assert "Traceback" not in err
    assert message in lines[0], lines[0]


def _snapshot(path: Path) -> object:
    if path.is_dir():
        return sorted((p.name, p.read_bytes()) for p in path.rglob("*") if p.is_file())
    return path.read_bytes() if path.exists() else None


def audit(argv: list[object], code: int, message: str, outputs: list[Path]) -> None:
    """Run; check the one-line error; check outputs are absent or unchanged."""
    before = {p: _snapshot(p) for p in outputs}
    got, err = calogen(*argv)
    check_one_line(got, err, code, message)
    for path, snapshot in before.items():
        assert _snapshot(path) == snapshot, f"{path} was created or changed"
        if snapshot is None:
            assert not path.exists()
    parents = {p.parent for p in outputs}
    for parent in parents:  # nor a hidden temporary file
        if parent.exists():
            assert not list(parent.glob(".*.partial")), list(parent.iterdir())


# -- bad input files, for every command that reads shower files --------------------------------

#: Commands that read a shower file ``{f}``; ``{out}`` is the output file, ``{dir}`` a folder.
READERS = {
    "info": "info {f}",
    "cluster": "cluster {f} -o {out}",
    "merge": "merge {good} {f} -o {out} --quiet",
    "evaluate --candidate": "evaluate --reference {good} --candidate {f} --out {dir} --quiet "
    "--no-fpd-kpd",
    "evaluate --reference": "evaluate --reference {f} --candidate {good} --out {dir} --quiet "
    "--no-fpd-kpd",
    **{
        f"train {name}": f"train {name} --data {{f}} --out {{dir}} --iterations 1 --threads 1 "
        "--no-progress"
        for name in ("caloclouds2", "caloclouds", "l2lflows", "bibae")
    },
    "fit-occupancy": "fit-occupancy --model {model} --data {f} --showers 5 --threads 1",
    "distill": "distill --teacher {model} --data {f} --out {dir} --iterations 1 --threads 1 "
    "--no-progress",
}

#: What a command that needs showers says about a valid file with none (info and merge
#: accept it: an empty shard is a valid file).
NO_SHOWERS = {
    "cluster": "file holds no showers",
    "evaluate --candidate": "file holds no showers",
    "evaluate --reference": "file holds no showers",
    "train caloclouds2": "no points with positive energy",
    "train caloclouds": "no points with positive energy",
    "train l2lflows": "no showers",
    "train bibae": "no showers",
    "fit-occupancy": "0 showers; the occupancy fit needs at least 4",
    "distill": "no showers to train on",
}


def _fill(template: str, **values: object) -> list[str]:
    return [part.format(**values) for part in template.split()]


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("command", list(READERS))
def test_bad_shower_file(
    command: str, kind: str, files: dict[str, Path], model: Path, tmp_path: Path
) -> None:
    if command == "info" and kind.endswith("points"):
        pytest.skip("info reads the per-shower columns, not the points (fast on any file)")
    out, folder = tmp_path / "out.h5", tmp_path / "out"
    argv = _fill(
        READERS[command], f=files[kind], good=files["good"], out=out, dir=folder, model=model
    )
    audit(argv, 2, BAD_FILES[kind], [out, folder, model / "occupancy.json"])


@pytest.mark.parametrize("command", list(NO_SHOWERS))
def test_file_without_showers(
    command: str, files: dict[str, Path], model: Path, tmp_path: Path
) -> None:
    out, folder = tmp_path / "out.h5", tmp_path / "out"
    argv = _fill(
        READERS[command],
        f=files["no showers"],
        good=files["good"],
        out=out,
        dir=folder,
        model=model,
    )
    audit(argv, 2, NO_SHOWERS[command], [out, folder, model / "occupancy.json"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
@pytest.mark.parametrize("command", ["info", "cluster", "train caloclouds2"])
def test_unreadable_file(command: str, files: dict[str, Path], model: Path, tmp_path: Path) -> None:
    path = tmp_path / "locked.h5"
    shutil.copy(files["good"], path)
    path.chmod(0)
    out, folder = tmp_path / "out.h5", tmp_path / "out"
    argv = _fill(READERS[command], f=path, good=files["good"], out=out, dir=folder, model=model)
    audit(argv, 2, "file is not readable", [out, folder])


# -- bad numbers and options ---------------------------------------------------------------------

SAMPLERS = {"simulate": "simulate gflash", "generate": "generate --model {model}"}

#: (extra arguments, message); every case runs for simulate and generate.
BAD_SAMPLING = {
    "energy nan": (["--energy", "nan", "--num", "3"], "argument --energy: must be finite"),
    "energy inf": (["--energy", "10", "inf", "--num", "3"], "argument --energy: must be finite"),
    "energy negative": (["--energy", "-10", "--num", "3"], "argument --energy: must be > 0"),
    "energy zero": (["--energy", "0", "--num", "3"], "argument --energy: must be > 0"),
    "energy not a number": (["--energy", "ten", "--num", "3"], "expected a number"),
    "three energies": (["--energy", "10", "20", "30", "--num", "3"], "one value or a range of two"),
    "num zero": (["--energy", "10", "--num", "0"], "argument -n/--num: must be > 0"),
    "num negative": (["--energy", "10", "--num", "-2"], "argument -n/--num: must be > 0"),
    "chunk size zero": (["--energy", "10", "--num", "3", "--chunk-size", "0"], "must be > 0"),
    "threads zero": (["--energy", "10", "--num", "3", "--threads", "0"], "must be > 0"),
    "direction not unit": (
        ["--energy", "10", "--num", "3", "--direction", "0", "0", "2"],
        "directions: must be unit vectors",
    ),
    "direction nan": (
        ["--energy", "10", "--num", "3", "--direction", "nan", "0", "1"],
        "argument --direction: must be finite",
    ),
    "direction backwards": (
        ["--energy", "10", "--num", "3", "--direction", "0", "0", "-1"],
        "z component must be positive",
    ),
    "seed not an integer": (["--energy", "10", "--num", "3", "--seed", "x"], "--seed"),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLING))
@pytest.mark.parametrize("command", list(SAMPLERS))
def test_bad_sampling_numbers(command: str, case: str, model: Path, tmp_path: Path) -> None:
    extra, message = BAD_SAMPLING[case]
    out = tmp_path / "out.h5"
    argv = [*_fill(SAMPLERS[command], model=model), *extra, "-o", out, "--quiet"]
    audit(argv, 2, message, [out])


def test_generate_specific_options(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    base = ["generate", "--energy", "50", "--num", "4", "-o", out, "--quiet", "--threads", "1"]
    cases = [
        (["--model", model, "--direction", "0.6", "0", "0.8", "--seed", "1"], "supports only normal incidence"),
        (["--model", model, "--shards", "2", "--shard-index", "2", "--seed", "1"], "--shard-index must be in 0..1"),
        (["--model", model, "--shards", "2", "--shard-index", "-1", "--seed", "1"], "--shard-index must be in 0..1"),
        (["--model", model, "--shards", "2"], "--seed is required with shards"),
        (["--model", model, "--shards", "0"], "argument --shards: must be > 0"),
        (["--model", model, "--strict", "--energy", "500"], "outside the range"),
    ]  # fmt: skip
    for extra, message in cases:
        audit([*base, *extra], 2, message, [out])


# -- outputs ------------------------------------------------------------------------------------


@pytest.fixture
def writers(files: dict[str, Path], model: Path) -> dict[str, list[object]]:
    """Commands that write one output file, without their ``-o``."""
    good = files["good"]
    return {
        "simulate": ["simulate", "gflash", "--energy", "10", "--num", "2", "--quiet"],
        "generate": ["generate", "--model", model, "--energy", "50", "--num", "2", "--quiet"],
        "cluster": ["cluster", good],
        "merge": ["merge", good, good, "--quiet"],
    }


@pytest.mark.parametrize("command", ["simulate", "generate", "cluster", "merge"])
def test_outputs_are_checked_before_work(
    command: str, writers: dict[str, list[object]], tmp_path: Path
) -> None:
    argv = writers[command]
    existing = tmp_path / "existing.h5"
    existing.write_bytes(b"precious")
    audit([*argv, "-o", existing], 2, "file exists (use --overwrite to replace it)", [existing])
    missing_folder = tmp_path / "nowhere" / "out.h5"
    audit([*argv, "-o", missing_folder], 2, "output folder does not exist", [missing_folder])
    folder = tmp_path / "a_folder"
    folder.mkdir()
    audit([*argv, "-o", folder, "--overwrite"], 2, "is a directory", [folder])


def test_merge_and_cluster_options(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    good = files["good"]
    audit(["merge", "-o", out], 2, "the following arguments are required", [out])
    audit(["merge", good, "-o", out, "--chunk-size", "0"], 2, "must be > 0", [out])
    audit(["cluster", good, "-o", out, "--granularity", "0"], 2, "must be > 0", [out])
    audit(["cluster", good, "-o", out, "--half-width", "nan"], 2, "must be finite", [out])
    audit(["cluster", good, "-o", out, "--half-width", "-3"], 2, "must be > 0", [out])
    audit(["info"], 2, "the following arguments are required", [])


# -- model folders -------------------------------------------------------------------------------

MODEL_USERS = {
    "generate": "generate --model {m} --energy 50 --num 2 --seed 1 -o {out} --quiet",
    "bench": "bench --model {m} --num 1 --repeats 1 --threads 1",
    "fit-occupancy": "fit-occupancy --model {m} --data {good} --showers 5 --threads 1",
    "distill": "distill --teacher {m} --data {good} --out {dir} --iterations 1 --threads 1 "
    "--no-progress",
}


@pytest.mark.parametrize("broken", list(BAD_MODELS))
@pytest.mark.parametrize("command", list(MODEL_USERS))
def test_broken_model_folder(
    command: str, broken: str, models: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    out, folder = tmp_path / "out.h5", tmp_path / "out"
    m = models[broken]
    argv = _fill(MODEL_USERS[command], m=m, good=files["good"], out=out, dir=folder)
    watched = [out, folder] + ([m / "occupancy.json", m / "model.json"] if m.is_dir() else [])
    message = BAD_MODELS[broken][1]
    if command == "distill" and broken in ("another model's config", "unknown model type"):
        kind = {"another model's config": "caloclouds", "unknown model type": "gan"}[broken]
        message = f"the teacher must be a 'caloclouds2' model, got '{kind}'"
    audit(argv, 2, message, watched)


def test_model_of_the_wrong_kind(
    models: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    good = files["good"]
    grid = tmp_path / "grid"
    shutil.copytree(models["good"], grid)
    _edit(grid, calogen_model="l2lflows")
    audit(
        ["fit-occupancy", "--model", grid, "--data", good, "--showers", "5"],
        2,
        "model 'l2lflows' has no occupancy correction",
        [grid / "occupancy.json", grid / "model.json"],
    )
    student = tmp_path / "student"
    shutil.copytree(models["good"], student)
    _edit(student, calogen_model="caloclouds2-cm")
    out = tmp_path / "out"
    audit(
        ["distill", "--teacher", student, "--data", good, "--out", out, "--iterations", "1"],
        2,
        "teacher must be a 'caloclouds2' model",
        [out],
    )
    audit(
        ["bench", "--model", models["good"], "--num", "0"], 2, "argument -n/--num: must be > 0", []
    )


# -- training runs -------------------------------------------------------------------------------


def test_train_options(files: dict[str, Path], model: Path, tmp_path: Path) -> None:
    good = files["good"]
    out = tmp_path / "run"
    base = ["train", "caloclouds2", "--data", good, "--threads", "1", "--no-progress"]
    audit(
        [*base, "--out", out, "--iterations", "0"], 2, "argument --iterations: must be > 0", [out]
    )
    audit([*base, "--out", out, "--threads", "0"], 2, "argument --threads: must be > 0", [out])
    audit([*base, "--out", out, "--config", tmp_path / "none.yaml"], 2, "none.yaml", [out])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("widths: [8, 16\n")
    audit([*base, "--out", out, "--config", bad_yaml], 2, "bad.yaml", [out])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("base: small\nwidthz: [8]\n")
    audit([*base, "--out", out, "--config", unknown], 2, "widthz", [out])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    audit([*base, "--out", a_file, "--iterations", "1"], 2, "exists and is not a folder", [a_file])
    distill = ["distill", "--teacher", model, "--data", good, "--out", a_file, "--threads", "1"]
    audit(distill, 2, "exists and is not a folder", [a_file])
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    audit(
        [*base, "--out", empty_run, "--resume"],
        2,
        "no complete checkpoint to resume from",
        [empty_run],
    )
    earlier = tmp_path / "earlier"
    shutil.copytree(model, earlier)
    audit(
        [*base, "--out", earlier, "--iterations", "1"],
        2,
        "holds checkpoints of an earlier run",
        [earlier],
    )
    audit(["train", "gan", "--data", good, "--out", out], 2, "invalid choice: 'gan'", [out])


# -- evaluate --------------------------------------------------------------------------------------


def test_evaluate_options(files: dict[str, Path], tmp_path: Path) -> None:
    good = files["good"]
    out = tmp_path / "report"
    base = ["evaluate", "--reference", good, "--candidate", good, "--quiet", "--no-fpd-kpd"]
    cases = [
        (["--out", out, "--label", "a", "--label", "b"], "2 labels for 1 candidate files"),
        (["--out", out, "--threshold", "-1"], "argument --threshold: must be >= 0"),
        (["--out", out, "--threshold", "nan"], "argument --threshold: must be finite"),
        (["--out", out, "--folds", "2"], "argument --folds: must be >= 3"),
        (["--out", out, "--batches", "0"], "argument --batches: must be > 0"),
        (["--out", out, "--max-showers", "0"], "argument --max-showers: must be > 0"),
        (["--out", out, "--layer", "30"], "layer must be in 0-29"),
        (["--out", out, "--impact", "nan", "0"], "argument --impact: must be finite"),
        (["--out", out, "--geometry", "hex"], "invalid choice: 'hex'"),
    ]
    for extra, message in cases:
        audit([*base, *extra], 2, message, [out])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    audit([*base, "--out", a_file], 2, "exists and is not a directory", [a_file])
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    audit([*base, "--out", earlier], 2, "holds a report already (use --overwrite", [earlier])


def test_bench_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    audit(["bench", "--model", "gflash", "--device", "cuda"], 2, "no CUDA device", [])


def test_debug_shows_the_traceback(files: dict[str, Path]) -> None:
    from calogen.errors import UsageError

    with pytest.raises(UsageError, match="no such file"):
        main(["--debug", "info", str(files["missing"])])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "{nan}"], "incident energy of shower 3 is nan GeV"),
        (["train", "caloclouds2", "--data", "{text}", "--out", "{dir}"], "not an HDF5 file"),
        (
            ["generate", "--model", "{dir}", "--energy", "50", "--num", "2", "-o", "{out}"],
            "no such",
        ),
    ],
    ids=["info", "train", "generate"],
)
def test_real_process_prints_one_line(
    argv: list[str], message: str, files: dict[str, Path], tmp_path: Path
) -> None:
    """The same through ``python -m calogen`` (warnings, logging and exit path included)."""
    import subprocess
    import sys

    out, folder = tmp_path / "out.h5", tmp_path / "run"
    values = {"nan": files["NaN energy"], "text": files["text"], "dir": folder, "out": out}
    command = [sys.executable, "-m", "calogen", *(a.format(**values) for a in argv)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    check_one_line(result.returncode, result.stderr, 2, message)
    assert not out.exists() and not folder.exists()
