"""Shared test fixtures.

Tests that need the full Geant4 files use ``shared_data`` and skip when ``../shared/data``
is absent (a clone on another machine). The core suite runs on ``tests/data`` fixtures and on
showers made on the fly. ``CALOGEN_FULL_TESTS=1`` runs the slow end-to-end tests at full size;
by default (and in CI) they run at a reduced size.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CALOGEN_SHARED_DATA", REPO.parent / "shared" / "data"))
FIXTURES = Path(__file__).resolve().parent / "data"

torch.set_num_threads(1)


def run_calogen(*argv: object) -> tuple[int, str, str]:
    """Run ``calogen ARGV`` in-process; return the exit code, stdout and stderr."""
    from calogen.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def full_size() -> bool:
    """Whether slow tests should run at full size (``CALOGEN_FULL_TESTS=1``)."""
    return os.environ.get("CALOGEN_FULL_TESTS", "0") == "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the shared Geant4 files; skips the test when it is absent."""
    if not (SHARED_DATA / "g4_photons_10-90GeV_train.h5").exists():
        pytest.skip(f"shared Geant4 data not found in {SHARED_DATA} (only on the project machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """Folder of the small committed Geant4 subset (tests/data)."""
    return FIXTURES


@pytest.fixture(scope="session")
def normal_incidence_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CaloClouds II teacher trained for a few iterations on the normal-incidence
    fixture: a model that supports only normal incidence (the shipped default is
    angle-aware), for the refusals of --theta / --direction."""
    import yaml

    from calogen.cli import main

    folder = tmp_path_factory.mktemp("normal_model")
    config = {
        "base": "small",
        "widths": [16, 32, 16],
        "time_features": 8,
        "shower_flow": {"feature_set": "caloclouds2", "blocks": 1, "affine_per_block": 1,
                        "spline_per_block": 0, "hidden": [16, 16]},
        "iterations": 4,
        "batch_size": 4,
        "points_per_shower": 64,
        "checkpoint_every": 4,
        "shower_flow_iterations": 4,
        "shower_flow_batch": 32,
        "lr_warmup": 0,
        "max_points": 600,
    }  # fmt: skip
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = folder / "model"
    data = FIXTURES / "g4_photons_subset.h5"
    argv = ["train", "caloclouds2", "--config", str(folder / "tiny.yaml"), "--data", str(data)]
    assert main([*argv, "-o", str(out), "--quiet"]) == 0
    return out
