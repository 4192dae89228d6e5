"""What the commands tell the user (issue 17): the evaluate summary shows every row of the
report, generate/simulate warn when showers reach the point cap, bench prints no FLOP line
for generators without a network, and merge can cut out a held-out range of showers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from calogen.cli import main
from calogen.data.io import ShowerFile, make_showers, read_showers, write_showers


@pytest.fixture(scope="module")
def report(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("summary") / "out"
    ref = str(fixtures / "g4_photons_subset.h5")
    argv = ["evaluate", "--reference", ref, "--candidate", ref, "--label", "copy", "-o", str(out)]
    assert main([*argv, "--quiet", "--folds", "3", "--batches", "2"]) == 0
    return out


def test_evaluate_summary_shows_every_report_row(report: Path, capsys) -> None:
    from calogen.cli.evaluate import _print_summary
    from calogen.evaluation.report import _table_rows

    metrics = json.loads((report / "metrics.json").read_text())
    capsys.readouterr()
    _print_summary(metrics, f"{report}/")  # a trailing slash as users type it
    out, err = capsys.readouterr()
    lines = out.splitlines()
    _, rows = _table_rows(metrics)
    labels = [row[0] for row in rows]
    assert {"FPD ×10³", "KPD ×10³", "W1×100 cell energy (log10)", "classifier AUC"} <= set(labels)
    for row in rows:  # every row of report.md, with every value
        line = next(line for line in lines if line.startswith(row[0]))
        assert line.split()[-1] == row[-1].split()[-1], row
    assert lines[-1] == f"report: {report / 'report.html'}" and "//" not in lines[-1]
    assert all(w in err for w in metrics["warnings"])  # e.g. too few showers for a floor


def test_point_cap_warning(tmp_path: Path, capsys) -> None:
    from calogen.cli.data import _warn_point_cap

    points = np.zeros((4, 5, 4), np.float32)
    points[..., 3] = 0.001
    path = tmp_path / "capped.h5"
    write_showers(path, make_showers(points, [5, 3, 5, 2], [50.0] * 4))
    _warn_point_cap(path, SimpleNamespace(max_points=5, name="toy"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("calogen: warning: 2 of 4 showers (50 %)")
    assert "cap of 5 points" in err
    _warn_point_cap(path, SimpleNamespace(max_points=6, name="toy"))
    assert capsys.readouterr().err == ""


def test_bench_without_network_prints_no_flop_line() -> None:
    from calogen.benchmark import benchmark
    from calogen.reference.gflash import GFlash

    result = benchmark(GFlash(), num=2, batch=1, repeats=1)
    text = "\n".join(result.lines())
    assert result.network_gflop_per_shower == 0
    assert "FLOP" not in text and "network" not in text
    assert "time per shower" in text


def test_merge_range_cuts_a_split(fixtures: Path, tmp_path: Path, capsys) -> None:
    src = fixtures / "g4_photons_subset.h5"
    out = tmp_path / "split.h5"
    assert main(["merge", str(src), "--range", "60", "80", "-o", str(out), "--quiet"]) == 0
    want, got = read_showers(src, 60, 80), read_showers(out)
    assert len(got) == 20
    np.testing.assert_array_equal(got.energies, want.energies)
    np.testing.assert_array_equal(got._num_points, want._num_points)
    with ShowerFile(out) as f:
        assert "60-79" in f.attrs["merged_range"]
    # two inputs joined: the range spans the boundary
    both = tmp_path / "both.h5"
    assert main(["merge", str(src), str(src), "--range", "70", "90", "-o", str(both)]) == 0
    np.testing.assert_array_equal(
        read_showers(both).energies,
        np.concatenate([read_showers(src, 70, 80).energies, read_showers(src, 0, 10).energies]),
    )
    capsys.readouterr()
    bad = tmp_path / "bad.h5"
    assert main(["merge", str(src), "--range", "50", "81", "-o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the inputs hold 80 showers" in err and not bad.exists()


def test_phase_lines_never_add_to_an_error(capsys) -> None:
    """A long phase shows one line with its time when it ends (in a log), and nothing when it
    fails, so that the error stays the only line on stderr."""
    from calogen.errors import UsageError
    from calogen.progress import Phase

    with Phase("evaluate: figures"):
        pass
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and err.startswith("evaluate: figures ... ") and err.endswith(" s\n")
    )
    with pytest.raises(UsageError), Phase("fit-occupancy: rounds"):
        raise UsageError("bad")
    assert capsys.readouterr().err == ""
    with Phase("quiet", show=False):
        pass
    assert capsys.readouterr().err == ""
