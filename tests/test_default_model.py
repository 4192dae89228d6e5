"""The default model that ships inside the package: `calogen generate` with no --model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calogen.cli import main
from calogen.data.io import ShowerFile
from calogen.geometry import project, slab
from calogen.models.registry import DEFAULT_MODEL_DIR, load_generator


def test_default_model_ships_and_is_small() -> None:
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"model.json", "model.safetensors"} <= set(files)
    assert sum(files.values()) < 5 * 2**20


def test_generate_without_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.h5"
    assert (
        main(
            [
                "generate",
                "--energy",
                "10",
                "90",
                "--num",
                "6",
                "--seed",
                "2",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    with ShowerFile(out) as f:
        assert len(f) == 6
        energies = f.incident_energies()
        showers = f.read()
    assert np.all((energies >= 10) & (energies <= 90))
    assert np.all(showers._num_points > 100)
    # calibrated showers: sampling fraction of this calorimeter (~2.5-3.2 %)
    visible = showers.points[..., 3].sum(axis=1) / energies
    assert np.all((visible > 0.02) & (visible < 0.04))
    assert "caloclouds2-cm" in capsys.readouterr().out


def test_default_model_visible_energy_follows_energy() -> None:
    generator = load_generator()
    showers = generator.sample(np.array([10.0] * 10 + [90.0] * 10), seed=5)
    hits = project(showers, slab())
    visible = np.bincount(hits.shower, weights=hits.energy_mev, minlength=20)
    ratio = visible[10:].mean() / visible[:10].mean()
    assert 7.0 < ratio < 10.0  # 9x the energy, slightly less than linear (leakage)


def test_direction_refused_and_range_warning(
    tmp_path: Path, capsys, normal_incidence_model: Path
) -> None:
    out = tmp_path / "d.h5"
    direction = ["--direction", "0", "0.6", "0.8", "--num", "2", "--quiet", "-o", str(out)]
    # the shipped default takes the direction (theta = 36.9 deg) ...
    assert main(["generate", "--energy", "50", *direction]) == 0
    with ShowerFile(out) as f:
        np.testing.assert_allclose(f.read().directions, [[0, 0.6, 0.8]] * 2, atol=1e-6)
    out.unlink()
    # ... a normal-incidence model refuses it in one line, writing nothing
    argv = ["generate", "--model", str(normal_incidence_model), "--energy", "50", *direction]
    assert main(argv) == 2
    assert "supports only normal incidence" in capsys.readouterr().err
    assert not out.exists()
    assert (
        main(
            [
                "generate",
                "--energy",
                "300",
                "--num",
                "2",
                "--seed",
                "1",
                "-o",
                str(out),
                "--quiet",
                "--strict",
            ]
        )
        == 2
    )
    assert "outside the range" in capsys.readouterr().err
    assert not out.exists()
    assert (
        main(
            ["generate", "--energy", "120", "--num", "2", "--seed", "1", "-o", str(out), "--quiet"]
        )
        == 0
    )
    assert "warning" in capsys.readouterr().err and out.exists()


def test_missing_model_dir_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "generate",
            "--model",
            str(tmp_path / "nope"),
            "--energy",
            "50",
            "--num",
            "1",
            "-o",
            str(tmp_path / "x.h5"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    with pytest.raises(SystemExit):
        main(["generate", "--help"])


def test_energy_range_ends_are_not_extrapolations() -> None:
    """The default's range is its training showers' extreme energies (10.005-89.986 GeV for
    showers drawn in 10-90 GeV): 10 and 90 GeV pass without a warning, 80 MeV below the
    range's width's 1 % does not."""
    from calogen.generation import check_energy_range

    gen = load_generator(DEFAULT_MODEL_DIR)
    lo, hi = gen.energy_range_gev
    assert 10.0 < lo < 10.1 and 89.9 < hi < 90.0  # the premise: not the drawn range's ends
    assert check_energy_range(gen, np.array([10.0, 50.0, 90.0]), strict=True) is None
    margin = 0.01 * (hi - lo)
    message = check_energy_range(gen, np.array([lo - 1.1 * margin, 50.0]))
    assert message is not None and message.startswith("1 of 2 energies lie outside")
