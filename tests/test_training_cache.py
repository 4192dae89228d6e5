"""Training caches (calogen.models.training_cache) and training on another device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calogen.errors import UsageError
from calogen.models import caloclouds as cc
from calogen.models import caloclouds2 as cc2
from calogen.models.registry import load_generator
from calogen.models.training_cache import (
    merge_training_caches,
    read_training_cache,
    write_training_cache,
)
from conftest import run_calogen
from test_caloclouds2 import TINY_DISTILL, tiny_config


@pytest.fixture(scope="module")
def cache(fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "subset.npz"
    summary = write_training_cache(fixtures / "g4_photons_subset.h5", out, points_per_shower=50)
    return out, summary


def test_cache_keeps_the_full_showers_conditions_and_a_point_subset(fixtures, cache):
    path, summary = cache
    full = cc.load_training_data(fixtures / "g4_photons_subset.h5")
    data, meta = read_training_cache(path)
    assert summary["showers"] == full.n_showers == data.n_showers
    assert data.subsampled and not full.subsampled
    # the condition N is the simulated number of points, not the stored subset
    np.testing.assert_array_equal(data.counts, full.counts)
    stored = np.diff(data.offsets)
    np.testing.assert_array_equal(stored, np.minimum(full.counts, 50))
    np.testing.assert_allclose(data.energies, full.energies)
    assert set(data.features) == set(full.features)
    for key, value in full.features.items():
        np.testing.assert_allclose(data.features[key], value, rtol=1e-6, err_msg=key)
    # every cached point is a point of its shower (x, y in float16: ~0.1 mm at 200 mm)
    for s in (0, 7, full.n_showers - 1):
        mine = data.points[data.offsets[s] : data.offsets[s + 1]]
        theirs = full.points[full.offsets[s] : full.offsets[s + 1]]
        for p in mine:
            d = np.abs(theirs[:, :2] - p[:2]).max(axis=1)
            hit = (d < 0.13) & (theirs[:, 2] == p[2]) & np.isclose(theirs[:, 3], p[3], rtol=1e-6)
            assert hit.any()
    norm = cc.fit_normalisation(path, core_radius_mm=2.0)
    ref = cc.fit_normalisation(fixtures / "g4_photons_subset.h5", core_radius_mm=2.0)
    assert norm == ref
    assert meta["points_per_shower"] == 50 and not meta["straightened"]


def test_caloclouds2_trains_and_distils_on_a_cache(cache, tmp_path):
    path, _ = cache
    teacher, student = tmp_path / "t", tmp_path / "s"
    cc2.train(config=tiny_config(6), data=path, out=teacher, progress=False, corrections=False)
    cc2.distill(
        teacher=teacher,
        config=TINY_DISTILL,
        data=path,
        out=student,
        progress=False,
        corrections=False,
    )
    showers = load_generator(student).sample(np.array([30.0, 70.0]), seed=0)
    assert showers.points.shape[0] == 2 and np.isfinite(showers.points).all()


def test_cache_refusals(cache, fixtures, tmp_path):
    path, _ = cache
    with pytest.raises(UsageError, match="no whole showers to fit the corrections"):
        cc2.train(config=tiny_config(2), data=path, out=tmp_path / "a", progress=False)
    with pytest.raises(UsageError, match="needs whole showers"):
        cc.train(config="small", data=path, out=tmp_path / "b", progress=False, corrections=False)
    with pytest.raises(UsageError, match="axis frame"):
        cc.load_training_data(path, straighten=True)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    code, _, err = run_calogen(
        "train", "caloclouds2", "--data", junk, "-o", tmp_path / "c", "--no-corrections"
    )
    assert code != 0 and "not a calogen training cache" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "model.json").exists()


def test_trainer_to_device_keeps_the_run(fixtures):
    """Moving the trainers explicitly (here to the CPU) changes nothing: the GPU path draws
    its batches and noise on the CPU exactly like a CPU run."""
    data = fixtures / "g4_photons_subset.h5"
    losses = []
    for move in (False, True):
        trainer = cc2._trainer(cc2.get_config(tiny_config(4)), data, 1, None)
        if move:
            trainer.to(torch.device("cpu"))
        losses.append([trainer.step(i)["loss"] for i in range(4)])
    assert losses[0] == losses[1]


def test_device_and_no_corrections_refusals(fixtures, tmp_path):
    data = fixtures / "g4_photons_subset.h5"
    code, _, err = run_calogen(
        "train", "l2lflows", "--data", data, "-o", tmp_path / "l", "--no-corrections"
    )
    assert code != 0 and "has no corrections" in err
    if not torch.cuda.is_available():
        code, _, err = run_calogen(
            "train", "caloclouds2", "--data", data, "-o", tmp_path / "g", "--device", "cuda"
        )
        assert code != 0 and "no CUDA device" in err and "Traceback" not in err
        assert not (tmp_path / "g").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_follows_the_cpu_run(fixtures, tmp_path):
    """On a GPU the same seed gives the same batches: the losses agree to float precision
    for the first steps, and the finished teacher and student generate finite showers."""
    data = fixtures / "g4_photons_subset.h5"
    losses = {}
    for device in ("cpu", "cuda"):
        trainer = cc2._trainer(cc2.get_config(tiny_config(5)), data, 3, None)
        trainer.to(torch.device(device))
        losses[device] = [trainer.step(i)["loss"] for i in range(5)]
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=2e-3)
    teacher, student = tmp_path / "t", tmp_path / "s"
    cc2.train(
        config=tiny_config(6),
        data=data,
        out=teacher,
        progress=False,
        corrections=False,
        device="cuda",
    )
    cc2.distill(
        teacher=teacher,
        config=TINY_DISTILL,
        data=data,
        out=student,
        progress=False,
        corrections=False,
        device="cuda",
    )
    showers = load_generator(student).sample(np.array([30.0, 70.0]), seed=0)
    assert np.isfinite(showers.points).all()


def test_merged_caches_hold_both(cache, tmp_path):
    path, _ = cache
    merged = tmp_path / "merged.npz"
    summary = merge_training_caches([path, path], merged)
    one, _ = read_training_cache(path)
    both, meta = read_training_cache(merged)
    assert summary["showers"] == both.n_showers == 2 * one.n_showers
    np.testing.assert_array_equal(both.counts, np.concatenate([one.counts, one.counts]))
    np.testing.assert_array_equal(both.points, np.concatenate([one.points, one.points]))
    assert meta["merged_from"] == [str(path), str(path)]


def test_cache_header_and_cpu_only_trainers(cache):
    from calogen.models import scaffold
    from calogen.models.training_cache import training_cache_meta

    path, summary = cache
    meta = training_cache_meta(path)
    assert meta["sources"] == summary["sources"] and meta["points_per_shower"] == 50
    assert meta["e_min_gev"] < meta["e_max_gev"]

    class GridTrainer(scaffold.TrainerBase):
        name = "l2lflows"

    with pytest.raises(UsageError, match="'l2lflows' trains on the CPU only"):
        GridTrainer(None, None, 0, "data.h5").to("cuda")


def test_selected_showers_form_a_cache_of_their_own(cache, tmp_path):
    from calogen.models.training_cache import select_training_cache

    cache = cache[0]
    data, _ = read_training_cache(cache)
    keep = np.array([1, 3, 4])
    out = tmp_path / "subset.npz"
    select_training_cache(cache, keep, "three showers", out)
    sub, meta = read_training_cache(out)
    assert meta["selection"] == "three showers"
    np.testing.assert_array_equal(sub.energies, data.energies[keep])
    np.testing.assert_array_equal(sub.counts, data.counts[keep])
    for j, i in enumerate(keep):  # every stored point of each kept shower, in order
        np.testing.assert_array_equal(
            sub.points[sub.offsets[j] : sub.offsets[j + 1]],
            data.points[data.offsets[i] : data.offsets[i + 1]],
        )
    # the same showers chosen by a function of the cache's data (read once)
    select_training_cache(cache, lambda d: np.flatnonzero(np.isin(np.arange(d.n_showers), keep)),
                          "three showers", tmp_path / "by_function.npz")  # fmt: skip
    again, _ = read_training_cache(tmp_path / "by_function.npz")
    np.testing.assert_array_equal(again.points, sub.points)
    np.testing.assert_array_equal(again.energies, sub.energies)
    with pytest.raises(UsageError, match="increasing shower indices"):
        select_training_cache(cache, [3, 1], "unsorted", tmp_path / "bad.npz")
