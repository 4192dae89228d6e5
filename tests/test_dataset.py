"""Torch dataset, padding collate and the bucketing sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from calogen.data.dataset import BucketBatchSampler, ShowerDataset
from calogen.data.normalisation import Normalisation


def test_dataset_items_and_collate(fixtures: Path) -> None:
    ds = ShowerDataset(fixtures / "g4_photons_subset.h5", Normalisation(), max_points_per_shower=64)
    assert len(ds) == 80
    item = ds[3]
    assert item["points"].shape == (item["n_points"], 4)
    batch = ds.collate([ds[i] for i in range(4)])
    assert batch["points"].shape == (4, 64, 4)
    assert batch["mask"].all()
    assert batch["points"].abs().max() <= 1.0
    assert batch["n_points"].tolist() == [ds[i]["n_points"] for i in range(4)]


def test_shards_partition_the_file(fixtures: Path) -> None:
    path = fixtures / "g4_photons_subset.h5"
    parts = [ShowerDataset(path, rank=r, world_size=3) for r in range(3)]
    assert sum(len(p) for p in parts) == 80
    whole = ShowerDataset(path)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([p.energies for p in parts])), np.sort(whole.energies)
    )


def test_bucket_sampler_groups_similar_counts_and_is_reproducible() -> None:
    counts = np.random.default_rng(0).integers(100, 4000, 1000)
    sampler = BucketBatchSampler(counts, batch_size=32, seed=5, jitter=0.05)
    batches = sampler.epoch_batches(0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([np.ptp(counts[b]) / counts[b].mean() for b in batches if len(b) > 1])
    assert spread < 0.3
    again = BucketBatchSampler(counts, batch_size=32, seed=5, jitter=0.05)
    assert again.batch(40) == sampler.batch(40)  # step 40 = epoch 1, batch 8
    assert sampler.epoch_batches(1) != sampler.epoch_batches(0)
    stream = sampler.iter_from(38)
    assert [next(stream) for _ in range(3)] == [sampler.batch(s) for s in (38, 39, 40)]


def test_collate_pads_with_mask() -> None:
    from calogen.data.dataset import collate_padded

    items = [
        {"points": torch.ones(3, 4), "energy": 10.0, "n_points": 3},
        {"points": torch.ones(5, 4), "energy": 20.0, "n_points": 5},
    ]
    batch = collate_padded(items)
    assert batch["points"].shape == (2, 5, 4)
    assert batch["mask"].sum(1).tolist() == [3, 5]
    assert batch["points"][0, 3:].abs().sum() == 0
