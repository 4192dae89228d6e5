"""The data sub-commands of ``calogen``: info, cluster, simulate; one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from calogen.cli import main
from calogen.data.io import ShowerFile


def run(*argv: str) -> int:
    return main(list(argv))


def test_info_prints_summary(fixtures: Path, capsys) -> None:
    assert run("info", str(fixtures / "g4_photons_subset.h5")) == 0
    out = capsys.readouterr().out
    assert "showers:     80" in out
    assert "legacy" in out
    assert "GeV" in out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file"),
        ("text", "not an HDF5 file"),
        ("foreign", "not a shower file"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, capsys, setup: str, message: str) -> None:
    path = tmp_path / "in.h5"
    if setup == "text":
        path.write_text("hello")
    elif setup == "foreign":
        with h5py.File(path, "w") as f:
            f["jets"] = np.zeros(4)
    assert run("info", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cluster_command(tmp_path: Path, fixtures: Path, capsys) -> None:
    out = tmp_path / "clustered.h5"
    assert run("cluster", str(fixtures / "g4_steps_subset.h5"), "-o", str(out)) == 0
    assert "dropped 0 steps" in capsys.readouterr().out
    with ShowerFile(out) as f:
        assert len(f) == 4
        assert f.num_points().tolist() == [737, 772, 2288, 3511]
    # a second run refuses to overwrite
    assert run("cluster", str(fixtures / "g4_steps_subset.h5"), "-o", str(out)) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--energy", "nan", "--num", "3"],
        ["--energy", "-10", "--num", "3"],
        ["--energy", "10", "--num", "-3"],
        ["--energy", "10", "--num", "0"],
        ["--energy", "10", "20", "30", "--num", "3"],
        ["--energy", "10", "--num", "3", "--direction", "0", "0", "2"],
    ],
)
def test_bad_numbers_exit_2_without_output(tmp_path: Path, argv: list[str]) -> None:
    out = tmp_path / "out.h5"
    result = subprocess.run(
        [sys.executable, "-m", "calogen", "simulate", "gflash", *argv, "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_simulate_then_info(tmp_path: Path, capsys) -> None:
    pytest.importorskip("calogen.reference.gflash")
    out = tmp_path / "g.h5"
    assert (
        run(
            "simulate",
            "gflash",
            "--energy",
            "10",
            "90",
            "--num",
            "20",
            "--seed",
            "1",
            "-o",
            str(out),
            "--quiet",
        )
        == 0
    )
    with ShowerFile(out) as f:
        energies = f.incident_energies()
        assert len(f) == 20 and f.format == "showerdata"
        assert energies.min() >= 10 and energies.max() <= 90
        assert f.attrs["generator"] == "gflash" and f.attrs["seed"] == "1"
    capsys.readouterr()
    assert run("info", str(out)) == 0
    assert "showers:     20" in capsys.readouterr().out
    # same seed, same file content
    again = tmp_path / "g2.h5"
    run(
        "simulate",
        "gflash",
        "--energy",
        "10",
        "90",
        "--num",
        "20",
        "--seed",
        "1",
        "-o",
        str(again),
        "--quiet",
    )
    with ShowerFile(out) as a, ShowerFile(again) as b:
        np.testing.assert_array_equal(a.read().points, b.read().points)


def test_help_names_units(capsys) -> None:
    with pytest.raises(SystemExit):
        run("simulate", "--help")
    text = capsys.readouterr().out
    assert "GeV" in text and "mm" in text


def test_merge_joins_files_in_order(tmp_path: Path, fixtures: Path) -> None:
    from calogen.data.io import read_showers, write_showers

    whole = read_showers(fixtures / "g4_photons_subset.h5", 0, 9)
    parts = []
    for i, (a, b) in enumerate([(0, 4), (4, 5), (5, 9)]):
        parts.append(str(write_showers(tmp_path / f"p{i}.h5", whole[a:b])))
    out = tmp_path / "merged.h5"
    assert run("merge", *parts, "-o", str(out), "--chunk-size", "2", "--quiet") == 0
    merged = read_showers(out)
    np.testing.assert_array_equal(merged.energies, whole.energies)
    np.testing.assert_array_equal(merged.points, whole.points)
    assert run("merge", *parts, str(tmp_path / "missing.h5"), "-o", str(tmp_path / "m2.h5")) == 2
    assert not (tmp_path / "m2.h5").exists()
