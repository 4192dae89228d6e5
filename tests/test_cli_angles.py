"""Incident angles in ``calogen generate`` / ``simulate`` and the Python API (issue 14).

``--theta DEG [DEG]`` and ``--phi DEG [DEG]`` (fixed or drawn uniformly, reproducibly from
``--seed``), ``--direction`` as the alternative, the directions written into the output,
normal-incidence-only models, and one-line errors (exit code 2, no output) for bad angles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import showerdata

from calogen.cli import main
from calogen.data.io import ShowerFile, make_showers
from calogen.directions import angles_from_directions, directions_from_angles
from calogen.errors import UsageError
from calogen.generation import (
    directions_for_model,
    draw_directions,
    draw_energies,
    generate_to_file,
)
from conftest import run_calogen


class FakeGenerator:
    """A tiny generator: one point per layer 0-2 on the shower axis; records what it got."""

    energy_range_gev = (1.0, 100.0)
    max_points = 3

    def __init__(self, supports_direction: bool) -> None:
        self.name = "fake-angles" if supports_direction else "fake-normal"
        self.supports_direction = supports_direction
        self.received: list[np.ndarray | None] = []

    def sample(self, energies, directions=None, *, seed=None) -> showerdata.Showers:  # type: ignore[no-untyped-def]
        if directions is not None and not self.supports_direction:
            raise AssertionError("a normal-incidence model was given directions")
        self.received.append(None if directions is None else np.array(directions))
        n = len(energies)
        points = np.zeros((n, 3, 4), np.float32)
        points[:, :, 2] = np.arange(3)
        points[:, :, 3] = np.asarray(energies, np.float32)[:, None] * 1e-3
        return make_showers(points, np.full(n, 3), energies, directions)


calogen = run_calogen  # calogen(*argv) -> (exit code, stdout, stderr)


def _directions_in(path: Path) -> np.ndarray:
    with ShowerFile(path) as f:
        return f.incident_directions()


# -- drawing directions (Python API) -------------------------------------------------------------


def test_one_value_fixes_the_angles() -> None:
    d = draw_directions([30.0], [90.0], 5, seed=1)
    np.testing.assert_allclose(d, np.tile(directions_from_angles([30.0], [90.0]), (5, 1)))
    # phi is 0 when only theta is given
    np.testing.assert_allclose(
        draw_directions([30.0], None, 2, 1), directions_from_angles([30.0, 30.0], [0.0, 0.0])
    )
    assert draw_directions(None, None, 5, seed=1) is None


def test_two_values_draw_uniformly_and_reproducibly() -> None:
    d = draw_directions([10.0, 50.0], [-30.0, 30.0], 4000, seed=7)
    theta, phi = angles_from_directions(d)
    assert 10.0 <= theta.min() and theta.max() <= 50.0
    assert np.all((phi <= 30.0 + 1e-9) | (phi >= 330.0 - 1e-9))  # wrapped to [0, 360)
    assert abs(theta.mean() - 30.0) < 1.0  # uniform in theta (deg), sd of the mean 0.18
    assert abs(np.mean(np.where(phi > 180, phi - 360, phi))) < 1.0
    np.testing.assert_array_equal(d, draw_directions([10.0, 50.0], [-30.0, 30.0], 4000, 7))
    assert not np.array_equal(d, draw_directions([10.0, 50.0], [-30.0, 30.0], 4000, 8))
    # MAX MIN is the same range; theta and phi are independent streams
    np.testing.assert_array_equal(d, draw_directions([50.0, 10.0], [30.0, -30.0], 4000, 7))
    theta_alone, _ = angles_from_directions(draw_directions([10.0, 50.0], [0.0], 4000, 7))
    np.testing.assert_allclose(theta_alone, theta, atol=1e-9)


def test_angle_draws_do_not_change_the_energy_draws() -> None:
    """A new seed stream: files made without angles stay the same as before angles existed."""
    np.testing.assert_array_equal(
        draw_energies([10.0, 90.0], 50, seed=3),
        np.random.default_rng([3, 0]).uniform(10.0, 90.0, 50),
    )
    theta, _ = angles_from_directions(draw_directions([0.0, 60.0], None, 50, seed=3))
    np.testing.assert_allclose(theta, np.random.default_rng([3, 2, 0]).uniform(0.0, 60.0, 50))


@pytest.mark.parametrize(
    ("theta", "phi", "message"),
    [
        ([95.0], None, "must lie in [0, 90) deg, got 95"),
        ([90.0], None, "must lie in [0, 90) deg, got 90"),
        ([-5.0], None, "must lie in [0, 90) deg, got -5"),
        ([10.0, 90.0], None, "must lie in [0, 90) deg, got 90"),
        ([float("nan")], None, "--theta: NaN or infinite"),
        ([30.0], [float("inf")], "--phi: NaN or infinite"),
        ([1.0, 2.0, 3.0], None, "--theta takes one value or a range of two"),
        ([30.0], [1.0, 2.0, 3.0], "--phi takes one value or a range of two"),
        (None, [30.0], "--phi needs --theta"),
    ],
)
def test_bad_angles_are_refused(theta, phi, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as info:
        draw_directions(theta, phi, 3, seed=0)
    assert message in str(info.value)


def test_normal_incidence_models() -> None:
    normal, aware = FakeGenerator(False), FakeGenerator(True)
    inclined = directions_from_angles([0.0, 30.0], [0.0, 45.0])
    assert directions_for_model(normal, None) is None
    assert directions_for_model(normal, directions_from_angles([0.0, 0.0], [0.0, 90.0])) is None
    with pytest.raises(UsageError, match="'fake-normal' supports only normal incidence"):
        directions_for_model(normal, inclined)
    assert directions_for_model(aware, inclined) is inclined


def test_generate_to_file_writes_the_directions(tmp_path: Path) -> None:
    aware = FakeGenerator(True)
    directions = draw_directions([0.0, 60.0], [0.0, 360.0], 7, seed=2)
    out = generate_to_file(
        aware, np.full(7, 50.0), tmp_path / "a.h5", seed=2, directions=directions,
        chunk_size=3, progress=False,
    )  # fmt: skip
    np.testing.assert_allclose(_directions_in(out), directions, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(aware.received), directions)  # in chunk order
    # a normal-incidence model at theta = 0: no directions handed over, (0, 0, 1) written
    normal = FakeGenerator(False)
    out = generate_to_file(
        normal, np.full(4, 50.0), tmp_path / "n.h5", seed=2,
        directions=draw_directions([0.0], None, 4, 2), progress=False,
    )  # fmt: skip
    assert normal.received == [None]
    np.testing.assert_array_equal(_directions_in(out), np.tile([0.0, 0.0, 1.0], (4, 1)))
    with pytest.raises(UsageError, match="supports only normal incidence"):
        generate_to_file(
            normal, np.full(4, 50.0), tmp_path / "x.h5", seed=2,
            directions=draw_directions([30.0], None, 4, 2), progress=False,
        )  # fmt: skip
    assert not (tmp_path / "x.h5").exists()


# -- the command line ----------------------------------------------------------------------------


def test_simulate_with_angles(tmp_path: Path) -> None:
    out = tmp_path / "g.h5"
    base = ["simulate", "gflash", "--energy", "50", "--num", "6", "--seed", "4", "--quiet"]
    code, _, err = calogen(*base, "--theta", "30", "--phi", "90", "-o", out)
    assert code == 0, err
    np.testing.assert_allclose(
        _directions_in(out), np.tile(directions_from_angles([30.0], [90.0]), (6, 1)), atol=1e-7
    )
    code, text, _ = calogen("info", out)
    assert code == 0
    assert "theta:       30.00 - 30.00 deg" in text and "phi:         90.00 - 90.00 deg" in text
    # ranges: reproducible from --seed, and the same as the Python API's draw
    for name in ("r1.h5", "r2.h5"):
        code, _, err = calogen(
            *base, "--theta", "0", "60", "--phi", "0", "360", "-o", tmp_path / name
        )
        assert code == 0, err
    first, second = _directions_in(tmp_path / "r1.h5"), _directions_in(tmp_path / "r2.h5")
    np.testing.assert_array_equal(first, second)
    expected = draw_directions([0.0, 60.0], [0.0, 360.0], 6, seed=4).astype(np.float32)
    np.testing.assert_array_equal(first, expected)
    assert np.unique(first[:, 2]).size == 6


def test_theta_zero_is_normal_incidence(tmp_path: Path) -> None:
    """``--theta 0`` gives the same showers as no angle at all (only new streams are used)."""
    base = ["simulate", "gflash", "--energy", "10", "90", "--num", "5", "--seed", "9", "--quiet"]
    assert calogen(*base, "-o", tmp_path / "plain.h5")[0] == 0
    assert calogen(*base, "--theta", "0", "-o", tmp_path / "zero.h5")[0] == 0
    with ShowerFile(tmp_path / "plain.h5") as a, ShowerFile(tmp_path / "zero.h5") as b:
        plain, zero = a.read(), b.read()
    np.testing.assert_array_equal(plain.points, zero.points)
    np.testing.assert_array_equal(plain.energies, zero.energies)
    np.testing.assert_array_equal(plain.directions, zero.directions)


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeGenerator]:
    """``generate --model normal|aware`` loads a fake generator (no training needed)."""
    import calogen.models.registry as registry

    made = {"normal": FakeGenerator(False), "aware": FakeGenerator(True)}
    monkeypatch.setattr(registry, "load_generator", lambda name: made[str(name)])
    return made


def test_generate_with_angles(tmp_path: Path, fake_models: dict[str, FakeGenerator]) -> None:
    base = ["generate", "--energy", "50", "--num", "4", "--seed", "5", "--quiet"]
    code, _, err = calogen(*base, "--model", "aware", "--theta", "45", "-o", tmp_path / "a.h5")
    assert code == 0, err
    np.testing.assert_allclose(
        _directions_in(tmp_path / "a.h5"), np.tile(directions_from_angles([45.0]), (4, 1)),
        atol=1e-7,
    )  # fmt: skip
    code, _, err = calogen(
        *base, "--model", "aware", "--direction", "0.6", "0", "0.8", "-o", tmp_path / "d.h5"
    )
    assert code == 0, err
    np.testing.assert_allclose(_directions_in(tmp_path / "d.h5"), [[0.6, 0.0, 0.8]] * 4, atol=1e-7)
    # a model that supports only normal incidence accepts --theta 0 (it is given no directions)
    code, _, err = calogen(*base, "--model", "normal", "--theta", "0", "-o", tmp_path / "n.h5")
    assert code == 0, err
    assert fake_models["normal"].received == [None]


#: (extra arguments, message): bad angle options, each for simulate and generate.
BAD_ANGLES = {
    "theta 95": (["--theta", "95"], "must lie in [0, 90) deg, got 95"),
    "theta nan": (["--theta", "nan"], "argument --theta: must be finite"),
    "theta range to 90": (["--theta", "0", "90"], "must lie in [0, 90) deg, got 90"),
    "three thetas": (["--theta", "1", "2", "3"], "--theta takes one value or a range of two"),
    "phi nan": (["--theta", "30", "--phi", "nan"], "argument --phi: must be finite"),
    "phi without theta": (["--phi", "30"], "--phi needs --theta"),
    "theta with direction": (
        ["--theta", "30", "--direction", "0", "0", "1"],
        "not allowed with argument",
    ),
    "phi with direction": (
        ["--phi", "30", "--direction", "0.6", "0", "0.8"],
        "--phi goes with --theta, not with --direction",
    ),
    "direction away": (["--direction", "0", "0.6", "-0.8"], "z component must be positive"),
    "direction sideways": (["--direction", "1", "0", "0"], "z component must be positive"),
}

SAMPLERS = {
    "simulate": ["simulate", "gflash"],
    "generate": ["generate", "--model", "aware"],
    "generate normal-only": ["generate", "--model", "normal"],
}


def _audit(argv: list[object], message: str, out: Path) -> None:
    code, _, err = calogen(*argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("calogen: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(out.parent.glob(".*.partial"))


@pytest.mark.parametrize("case", list(BAD_ANGLES))
@pytest.mark.parametrize("command", list(SAMPLERS))
def test_bad_angle_options(
    command: str, case: str, tmp_path: Path, fake_models: dict[str, FakeGenerator]
) -> None:
    extra, message = BAD_ANGLES[case]
    out = tmp_path / "out.h5"
    base = [*SAMPLERS[command], "--energy", "50", "--num", "3", "--seed", "1", "--quiet"]
    _audit([*base, *extra, "-o", out], message, out)


@pytest.mark.parametrize(
    "extra", [["--theta", "30"], ["--theta", "0", "30"], ["--direction", "0.6", "0", "0.8"]]
)
def test_normal_only_model_refuses_inclined_showers(
    extra: list[str], tmp_path: Path, fake_models: dict[str, FakeGenerator]
) -> None:
    out = tmp_path / "out.h5"
    argv = ["generate", "--model", "normal", "--energy", "50", "--num", "3", "--seed", "1"]
    _audit([*argv, *extra, "-o", out, "--quiet"], "supports only normal incidence", out)


def test_help_states_units_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("simulate", "generate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--theta DEG [DEG ...]" in text and "--phi DEG [DEG ...]" in text
        assert "in deg, in [0, 90)" in text and "(default: normal incidence, theta = 0)" in text
        assert "wrapped to [0, 360)" in text and "(default 0; needs --theta)" in text


def test_shards_draw_the_same_directions_as_one_run(
    tmp_path: Path, fake_models: dict[str, FakeGenerator]
) -> None:
    base = ["generate", "--model", "aware", "--energy", "20", "80", "--num", "7", "--seed", "6"]
    base += ["--theta", "0", "60", "--phi", "0", "360", "--chunk-size", "2", "--quiet"]
    assert calogen(*base, "-o", tmp_path / "whole.h5")[0] == 0
    for index in (0, 1):
        code, _, err = calogen(
            *base, "--shards", "2", "--shard-index", index, "-o", tmp_path / f"s{index}.h5"
        )
        assert code == 0, err
    code, _, err = calogen(
        "merge", tmp_path / "s0.h5", tmp_path / "s1.h5", "-o", tmp_path / "m.h5", "--quiet"
    )
    assert code == 0, err
    whole = _directions_in(tmp_path / "whole.h5")
    np.testing.assert_array_equal(_directions_in(tmp_path / "m.h5"), whole)
    assert np.unique(whole[:, 0]).size == 7
