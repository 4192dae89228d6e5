"""Soak test: generate and evaluate many chunks in one process; resident memory stays flat.

A job on a batch farm generates millions of showers in chunks and evaluates them; memory that
grows with every chunk (a cache that is never emptied, tensors kept alive by a reference,
file handles left open) ends such jobs hours later. Each round writes a file with
:func:`calogen.generation.generate_to_file` in small chunks, reads it back chunk by chunk,
projects it and accumulates the evaluation observables, and computes the W1 metrics against
a reference. After a few warm-up rounds the resident set size (``/proc/self/statm``) must not
grow.

Reduced size by default (and in CI); ``CALOGEN_FULL_TESTS=1`` runs many more rounds and
showers.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import full_size

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm"),
]

MIB = 1024 * 1024


def rss_bytes() -> int:
    """Current resident set size of this process (``/proc/self/statm``, second field)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: generator -> (rounds, showers per round, chunk size) at reduced and full size.
SIZES = {
    "gflash": {"reduced": (12, 60, 10), "full": (80, 1000, 50)},
    "default": {"reduced": (8, 12, 4), "full": (40, 200, 20)},
}
WARM_UP = 4
#: Allowed growth after warm-up. Python and glibc keep freed memory in pools, so a few MiB of
#: drift are normal; a leak of one chunk's showers per round exceeds this within the rounds.
TOLERANCE_MIB = {"reduced": 16, "full": 32}


def _generator(name: str):  # type: ignore[no-untyped-def]
    if name == "gflash":
        from calogen.reference.gflash import GFlash

        return GFlash()
    from calogen.models.registry import load_generator

    return load_generator()


@pytest.mark.parametrize("name", list(SIZES))
def test_memory_stays_flat_over_many_chunks(name: str, tmp_path: Path, fixtures: Path) -> None:
    import torch

    from calogen.evaluation.report import EvaluationConfig, collect, compute_metrics
    from calogen.generation import draw_energies, generate_to_file
    from calogen.geometry import slab

    size = "full" if full_size() else "reduced"
    rounds, per_round, chunk = SIZES[name][size]
    torch.set_num_threads(1)
    generator = _generator(name)
    calorimeter = slab()
    config = EvaluationConfig(
        chunk_size=chunk, fpd_kpd=False, n_batches=2, k_folds=3, progress=False, max_cells=20_000
    )
    reference = collect(fixtures / "g4_photons_subset.h5", calorimeter, config, "Geant4")
    out = tmp_path / "chunked.h5"
    samples = []
    for i in range(rounds):
        energies = draw_energies([10.0, 90.0], per_round, seed=i)
        generate_to_file(
            generator,
            energies,
            out,
            seed=i,
            chunk_size=chunk,
            overwrite=True,
            progress=False,
        )
        sample = collect(out, calorimeter, config, name, seed=i)
        metrics = compute_metrics(reference, [sample], config)
        assert np.isfinite(metrics["candidates"][name]["w1"]["rows"]["occupancy"]["mean"])
        assert sample.n_showers == per_round
        del sample, metrics
        gc.collect()
        samples.append(rss_bytes())
    after = np.asarray(samples[WARM_UP:], dtype=np.float64) / MIB
    growth = after.max() - after[0]
    trend = np.polyfit(np.arange(after.size), after, 1)[0] * after.size
    report = ", ".join(f"{v / MIB:.0f}" for v in samples)
    assert growth < TOLERANCE_MIB[size], f"RSS grew by {growth:.1f} MiB; per round MiB: {report}"
    assert trend < TOLERANCE_MIB[size] / 2, f"RSS trend {trend:.1f} MiB; per round MiB: {report}"
