"""``calogen evaluate`` end to end on the small Geant4 fixture and a modified copy."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import showerdata

from calogen.cli import main
from calogen.data.io import make_showers, read_showers, write_showers
from calogen.data.voxels import L2LFLOWS_GRID, voxelise, voxels_to_points
from calogen.directions import directions_from_angles
from calogen.errors import UsageError
from calogen.evaluation.metrics import W1_ROWS
from calogen.evaluation.observables import shower_features
from calogen.evaluation.report import (
    GRID_MIN_ENERGY_GEV,
    EvaluationConfig,
    _shuffle,
    collect,
    compute_metrics,
    evaluate,
    through_grid,
)
from calogen.geometry import project, slab

FIGURES = (
    "cell_energy",
    "radial_profile",
    "longitudinal_profile",
    "cog",
    "visible_energy_hits",
    "event_display",
    "layer_map",
)


@pytest.fixture(scope="module")
def candidate(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture showers with every point energy scaled by 1.1 (showerdata layout)."""
    showers = read_showers(fixtures / "g4_photons_subset.h5")
    points = showers.points.copy()
    points[:, :, 3] *= 1.1
    scaled = showerdata.Showers(
        points=points, energies=showers.energies, pdg=22, num_points=showers._num_points
    )
    path = tmp_path_factory.mktemp("cand") / "scaled.h5"
    write_showers(path, scaled)
    return path


@pytest.fixture(scope="module")
def report(fixtures: Path, candidate: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    code = main(
        [
            "evaluate",
            "--reference",
            str(fixtures / "g4_photons_subset.h5"),
            "--candidate",
            str(candidate),
            "--label",
            "scaled x1.1",
            "--out",
            str(out),
            "--quiet",
            "--folds",
            "3",
            "--batches",
            "2",
        ]
    )
    assert code == 0
    return out


def test_report_files(report: Path) -> None:
    for stem in FIGURES:
        for ext in ("png", "pdf"):
            path = report / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    for name in ("metrics.json", "report.md", "report.html"):
        assert (report / name).stat().st_size > 0
    assert not list(report.glob(".*partial"))  # no temporary files left
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    for stem in FIGURES:
        assert f"{stem}.png" in md and f"{stem}.png" in html
    assert "W1×100 sampling fraction" in md and "classifier AUC" in html


def test_metrics_json(report: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    assert m["reference"]["label"] == "Geant4" and m["reference"]["n_showers"] == 80
    cand = m["candidates"]["scaled x1.1"]
    assert set(W1_ROWS) <= set(cand["w1"]["rows"])
    # energies scaled by 1.1: the sampling fraction moves by ~10 % of its mean, far more than
    # its spread; the cell energies move by one part in ~30 of log10 range
    assert cand["w1"]["rows"]["sampling fraction"]["mean"] > 50
    assert cand["mean_sampling_fraction"] == pytest.approx(
        1.1 * m["reference"]["mean_sampling_fraction"], rel=0.01
    )
    assert 0.0 <= cand["classifier"]["auc_mean"] <= 1.0
    assert "value" in cand["fpd"] and "value" in cand["kpd"]
    assert m["floor"] is None and m["warnings"]  # 80 showers: too few for the floor
    assert m["settings"]["n_batches"] == 2


def test_floor_from_reference_halves(fixtures: Path) -> None:
    config = EvaluationConfig(
        progress=False, min_floor_showers=40, k_folds=3, classifier_epochs=5, n_batches=2
    )
    ref = collect(fixtures / "g4_photons_subset.h5", slab(), config)
    rng = np.random.default_rng(0)
    ref = _shuffle(ref, rng)
    same = _shuffle(ref, rng)
    m = compute_metrics(ref, [same], config)
    floor = m["floor"]
    assert floor is not None and floor["n_showers_per_half"] == 40
    # batch size shared by the floor and the candidates: 40 // 2 batches
    assert m["settings"]["shower_batch_size"] == 20
    assert floor["w1"]["shower_batch_size"] == 20
    assert 0.2 < floor["classifier"]["auc_mean"] < 0.8
    for row in W1_ROWS:
        assert floor["w1"]["rows"][row]["mean"] >= 0


def test_identical_candidate_w1_zero(fixtures: Path) -> None:
    """The reference against itself in the same order gives exactly zero W1."""
    config = EvaluationConfig(progress=False, fpd_kpd=False, k_folds=3, classifier_epochs=2)
    ref = collect(fixtures / "g4_photons_subset.h5", slab(), config)
    m = compute_metrics(ref, [ref], config)
    rows = m["candidates"][ref.label]["w1"]["rows"]
    assert all(rows[r]["mean"] == 0.0 for r in W1_ROWS)


def test_missing_file_is_one_line_error(tmp_path: Path, fixtures: Path, capsys) -> None:
    code = main(
        [
            "evaluate",
            "--reference",
            str(tmp_path / "nope.h5"),
            "--candidate",
            str(fixtures / "g4_photons_subset.h5"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "nope.h5" in err and "no such file" in err
    assert not (tmp_path / "o").exists()  # nothing written for bad input


def test_bad_inputs(tmp_path: Path, fixtures: Path, capsys) -> None:
    ref = str(fixtures / "g4_photons_subset.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    code = main(
        ["evaluate", "--reference", ref, "--candidate", str(text), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not an HDF5 file" in err and err.count("\n") == 0
    code = main(
        [
            "evaluate",
            "--reference",
            ref,
            "--candidate",
            ref,
            "--label",
            "a",
            "--label",
            "b",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "labels" in err and err.count("\n") == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["evaluate", "--reference", ref, "--candidate", ref, "--out", str(blocker)])
    assert code == 2 and "not a directory" in capsys.readouterr().err
    with pytest.raises(UsageError):
        evaluate(ref, [], tmp_path / "o")
    with pytest.raises(UsageError):
        evaluate(ref, [ref], tmp_path / "o", config=EvaluationConfig(layer=30))


# ---------------------------------------------------------------------------------------------
# inclined showers
# ---------------------------------------------------------------------------------------------


def _sheared(
    fixtures: Path, out: Path, theta: float, energy: float, store_direction: bool = True
) -> Path:
    """The fixture showers tilted to (theta, phi = 0) by shifting each layer along the axis
    ``depth_l tan(theta)``, all labelled with one incident energy (a test-only relabelling)."""
    showers = read_showers(fixtures / "g4_photons_subset.h5")
    points = showers.points.copy()
    layer = np.clip(np.rint(points[:, :, 2]).astype(int), 0, 29)
    real = points[:, :, 3] > 0
    points[:, :, 0] += np.where(real, slab().layer_z_mm[layer] * np.tan(np.radians(theta)), 0.0)
    n = len(showers)
    directions = directions_from_angles(np.full(n, theta)) if store_direction else None
    path = out / f"t{theta:g}_e{energy:g}{'' if store_direction else '_nodir'}.h5"
    write_showers(
        path,
        make_showers(points, showers._num_points, np.full(n, energy), directions=directions),
    )
    return path


@pytest.fixture(scope="module")
def inclined(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("inclined")
    return {
        "t30": _sheared(fixtures, out, 30.0, 50.0),
        "t60": _sheared(fixtures, out, 60.0, 50.0),
        "t60_20": _sheared(fixtures, out, 60.0, 20.0),
        "t30_nodir": _sheared(fixtures, out, 30.0, 50.0, store_direction=False),
    }


def test_inclined_report(inclined: dict[str, Path], tmp_path: Path, capsys) -> None:
    files = [str(inclined[k]) for k in ("t30", "t60", "t60_20")]
    out = tmp_path / "rep"
    code = main(
        [
            "evaluate",
            "--reference",
            *files,
            "--candidate",
            *files,
            "--label",
            "same",
            "--out",
            str(out),
            "--quiet",
            "--folds",
            "3",
            "--batches",
            "2",
            "--no-fpd-kpd",
            "--feature-groups",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "axis theta" in printed and "features that separate same most" in printed
    assert "feature groups that separate same" in printed
    for stem in ("angle_response", "cog_along_tilt", "visible_energy_60deg"):
        assert (out / f"{stem}.png").stat().st_size > 1000
    m = json.loads((out / "metrics.json").read_text())
    assert m["reference"]["n_showers"] == 240 and m["candidates"]["same"]["n_showers"] == 240
    groups = m["conditions"]["groups"]
    assert [(g["energy"], g["theta"]) for g in groups] == [
        ("20 GeV", "60 deg"),
        ("50 GeV", "30 deg"),
        ("50 GeV", "60 deg"),
    ]
    for g in groups:  # the sheared showers keep the angle they were tilted to (within 4 deg)
        ref = g["samples"][0]
        assert ref["n"] == 80 and abs(ref["axis_theta_deg"]["mean"] - g["theta_deg"]) < 4
        assert g["samples"][1]["axis_theta_deg"]["mean"] == pytest.approx(
            ref["axis_theta_deg"]["mean"]
        )
    rows = m["candidates"]["same"]["w1"]["rows"]
    assert {"axis theta", "axis slope x", "axis slope y"} <= set(rows)
    ranking = m["candidates"]["same"]["feature_ranking"]
    assert len(ranking) == 28 and all(r["auc"] == 0.5 for r in ranking)  # identical samples
    assert "32 -> 64 -> 32 -> 1" in m["settings"]["classifier"]["network"]
    groups = m["candidates"]["same"]["feature_groups"]  # identical samples: all at 0.5
    assert len(groups) == 5 and all(g["auc_mean"] == pytest.approx(0.5, abs=0.1) for g in groups)
    md = (out / "report.md").read_text()
    assert "W1×100 axis theta" in md and "Per condition" in md and "angle_response.png" in md
    assert "Feature groups that separate same" in md and "radial profile" in md


def test_theta_for_a_candidate_without_directions(inclined: dict[str, Path]) -> None:
    """--theta gives the stored-normal copy exactly the observables of the inclined file."""
    config = EvaluationConfig(progress=False)
    with_dirs = collect(inclined["t30"], slab(), config)
    direction = directions_from_angles([30.0])[0]
    given = collect(inclined["t30_nodir"], slab(), config, direction=direction)
    as_normal = collect(inclined["t30_nodir"], slab(), config)
    for name in ("radial_mev", "axis_theta_deg", "directions", "radial_profile_mev"):
        # the stored directions are float32: equal to 1e-7
        np.testing.assert_allclose(
            getattr(with_dirs.features, name), getattr(given.features, name), rtol=1e-6
        )
    # measured from the z axis the tilted showers look wider
    assert as_normal.features.radial_mev[:, 0].mean() < 0.8 * given.features.radial_mev[:, 0].mean()
    with pytest.raises(UsageError, match="stores inclined"):
        collect(inclined["t30"], slab(), config, direction=direction)


def test_inclined_bad_inputs(
    inclined: dict[str, Path], fixtures: Path, tmp_path: Path, capsys
) -> None:
    ref = str(inclined["t30"])
    out = tmp_path / "o"
    cases = [
        (["--candidate", str(inclined["t30_nodir"]), "--theta", "95"], "[0, 90)"),
        (["--candidate", str(inclined["t30_nodir"]), "--theta", "nan"], "--theta"),
        (["--candidate", str(inclined["t30_nodir"]), "--phi", "10"], "--phi needs --theta"),
        (["--candidate", str(inclined["t60"]), "--theta", "30"], "stores inclined"),
    ]
    legacy = tmp_path / "bad_directions.h5"
    with h5py.File(fixtures / "g4_photons_subset.h5") as src, h5py.File(legacy, "w") as dst:
        for key in src:
            src.copy(key, dst)
        dst["directions"] = np.zeros((80, 2), np.float32)
    cases.append((["--candidate", str(legacy)], "directions"))
    for extra, message in cases:
        try:
            code = main(["evaluate", "--reference", ref, *extra, "--out", str(out), "--quiet"])
        except SystemExit as exc:  # argparse's own errors (one line, exit code 2)
            code = exc.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and err.count("\n") == 0, (extra, err)
        assert not out.exists()


# ---------------------------------------------------------------------------------------------
# the reference through a grid model's voxel grid
# ---------------------------------------------------------------------------------------------


def test_through_grid_is_voxelise_then_points(fixtures: Path) -> None:
    """collect(..., grid=) sees exactly the showers voxelised and turned back into points."""
    showers = read_showers(fixtures / "g4_photons_subset.h5")
    on_grid = through_grid(showers, L2LFLOWS_GRID)
    expected = voxels_to_points(
        voxelise(showers, L2LFLOWS_GRID),
        L2LFLOWS_GRID,
        showers.energies.reshape(-1),
        min_energy_gev=GRID_MIN_ENERGY_GEV,
    )
    np.testing.assert_array_equal(on_grid.points, expected.points)
    # energy outside +-25 mm is gone, every point sits at a voxel centre inside the grid
    real = on_grid.points[:, :, 3] > 0
    assert np.abs(on_grid.points[:, :, :2][real]).max() < 5 * 5.0883
    assert on_grid.points[:, :, 3].sum() < showers.points[:, :, 3].sum()
    config = EvaluationConfig(progress=False)
    a = collect(fixtures / "g4_photons_subset.h5", slab(), config, grid=L2LFLOWS_GRID)
    b = shower_features(project(on_grid, slab()), slab())
    np.testing.assert_allclose(a.features.radial_mev, b.radial_mev, rtol=1e-12)
    np.testing.assert_allclose(a.features.visible_energy_mev, b.visible_energy_mev, rtol=1e-12)
    # the grid reaches 25.4 mm along x and y (36 mm along the diagonal): no energy beyond
    assert np.all(a.features.radial_mev[:, 7:] == 0)  # bins from 40.1 mm on


def test_reference_grid_report(fixtures: Path, tmp_path: Path, capsys) -> None:
    """A candidate that is the reference on the L2LFlows grid: far from the full reference,
    close to the reference within the grid; both comparisons in the report."""
    showers = read_showers(fixtures / "g4_photons_subset.h5")
    cand = tmp_path / "on_grid.h5"
    write_showers(cand, through_grid(showers, L2LFLOWS_GRID))
    out = tmp_path / "rep"
    code = main(
        [
            "evaluate",
            "--reference",
            str(fixtures / "g4_photons_subset.h5"),
            "--candidate",
            str(cand),
            "--label",
            "grid copy",
            "--reference-grid",
            "l2lflows",
            "-o",
            str(out),
            "--quiet",
            "--folds",
            "3",
            "--batches",
            "2",
            "--no-fpd-kpd",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "against Geant4 on l2lflows grid 30x10x10" in printed
    m = json.loads((out / "metrics.json").read_text())
    grid_label = "Geant4 on l2lflows grid 30x10x10"
    assert set(m["candidates"]) == {grid_label, "grid copy"}
    within = m["within_grid"]
    assert within["grid"]["name"] == "l2lflows" and within["grid"]["nx"] == 10
    assert within["reference"]["label"] == grid_label
    full = m["candidates"]["grid copy"]["w1"]["rows"]
    inside = within["candidates"]["grid copy"]["w1"]["rows"]
    # the same showers: the grid copy matches the reference on the grid ...
    assert within["candidates"]["grid copy"]["mean_n_hits"] == pytest.approx(
        within["reference"]["mean_n_hits"]
    )
    # ... and the grid alone costs the radial bins against full Geant4
    assert inside["radial (10 bins)"]["mean"] < 0.5 * full["radial (10 bins)"]["mean"]
    md = (out / "report.md").read_text()
    assert "## Against Geant4 on l2lflows grid 30x10x10" in md
    bad = ["--reference-grid", "hexagons", "-o", str(tmp_path / "bad"), "--quiet"]
    code = main(["evaluate", "--reference", str(cand), "--candidate", str(cand), *bad])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--reference-grid" in err and err.count("\n") == 0
    assert not (tmp_path / "bad").exists()
