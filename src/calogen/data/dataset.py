"""Torch dataset over shower files and a sampler that batches showers of similar size.

The dataset holds the showers packed in memory (``points [P, 4]`` float32 + offsets; the
10k-shower training file takes about 0.4 GB) with their incident energies and directions
(unit vectors; ``(0, 0, 1)`` for files without directions) and returns raw points. Normalisation, depth
smearing and the optional random subset of points per shower happen in :meth:`collate`
with torch's global RNG, so a training loop that checkpoints the torch RNG state resumes
exactly. :class:`BucketBatchSampler` maps a global step number to a batch
deterministically (from the seed and the epoch), so resuming at step ``k`` needs no
sampler state.

Distributed training: pass ``rank`` and ``world_size``; each rank keeps every
``world_size``-th shower (its shard).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset, Sampler

from calogen.data.io import ShowerFile
from calogen.data.normalisation import Normalisation
from calogen.data.packed import pack
from calogen.errors import UsageError


class ShowerDataset(Dataset):
    """Showers of one file, packed in memory.

    Args:
        path: shower file (showerdata or legacy layout).
        normalisation: used by :meth:`collate` (``None``: points stay in physical units).
        max_showers: read only the first ``max_showers`` showers (before sharding).
        max_points_per_shower: :meth:`collate` keeps a random subset of at most this many
            points per shower (the points are i.i.d. given the conditions), ``None``: all.
        rank, world_size: shard for distributed training.
        chunk_size: showers read per chunk while loading.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        normalisation: Normalisation | None = None,
        max_showers: int | None = None,
        max_points_per_shower: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        chunk_size: int = 1000,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"invalid shard: rank {rank} of world size {world_size}")
        self.normalisation = normalisation
        self.max_points_per_shower = max_points_per_shower
        points, counts, energies, directions = [], [], [], []
        with ShowerFile(path) as f:
            stop = len(f) if max_showers is None else min(len(f), max_showers)
            for start in range(0, stop, chunk_size):
                chunk = f.read(start, min(start + chunk_size, stop))
                keep = (np.arange(start, start + len(chunk)) % world_size) == rank
                chunk = chunk[np.flatnonzero(keep)]
                packed = pack(chunk)
                points.append(packed.points)
                counts.append(packed.counts)
                energies.append(chunk.energies.reshape(-1))
                directions.append(np.asarray(chunk.directions, np.float32).reshape(-1, 3))
        if not counts or sum(len(c) for c in counts) == 0:
            raise UsageError(f"{path}: no showers to train on")
        self.points = np.concatenate(points).astype(np.float32)
        self.counts = np.concatenate(counts).astype(np.int64)
        self.energies = np.concatenate(energies).astype(np.float32)
        #: incident directions ``[N, 3]`` (unit vectors)
        self.directions = np.concatenate(directions).astype(np.float32)
        self.offsets = np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return {
            "points": torch.from_numpy(self.points[lo:hi]),
            "energy": float(self.energies[index]),
            "direction": torch.from_numpy(self.directions[index]),
            "n_points": int(self.counts[index]),
        }

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """:func:`collate_padded` with this dataset's normalisation and point subset."""
        return collate_padded(items, self.normalisation, self.max_points_per_shower)


def collate_padded(
    items: Sequence[dict[str, Any]],
    normalisation: Normalisation | None = None,
    max_points: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of showers into one batch.

    Returns:
        ``points [B, P, 4]`` (normalised if ``normalisation`` is given, zero padding),
        ``mask [B, P]`` (True for real points), ``energy [B]`` incident energy in GeV,
        ``n_points [B]`` the showers' full numbers of points (before any subset) and, when
        the items carry one, ``direction [B, 3]`` the incident unit vectors.
    """
    chosen = []
    for item in items:
        pts = item["points"]
        if max_points is not None and pts.shape[0] > max_points:
            pts = pts[torch.randperm(pts.shape[0], generator=generator)[:max_points]]
        chosen.append(pts)
    width = max((p.shape[0] for p in chosen), default=0)
    batch = torch.zeros(len(chosen), max(width, 1), 4)
    mask = torch.zeros(len(chosen), max(width, 1), dtype=torch.bool)
    for i, pts in enumerate(chosen):
        batch[i, : pts.shape[0]] = pts
        mask[i, : pts.shape[0]] = True
    if normalisation is not None:
        batch = normalisation.forward(batch, rng=generator)
        batch = batch * mask[..., None]
    out = {
        "points": batch,
        "mask": mask,
        "energy": torch.tensor([float(i["energy"]) for i in items]),
        "n_points": torch.tensor([int(i["n_points"]) for i in items]),
    }
    if items and all("direction" in i for i in items):
        out["direction"] = torch.stack([torch.as_tensor(i["direction"]) for i in items])
    return out


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of showers with similar numbers of points, reproducible from the step number.

    Each epoch the showers are ordered by point count with a random jitter of
    ``jitter`` (relative), cut into batches of ``batch_size`` consecutive showers, and the
    batches are shuffled. :meth:`batch` gives the batch of any global step directly.
    """

    def __init__(
        self,
        counts: NDArray[np.integer],
        batch_size: int,
        seed: int = 0,
        jitter: float = 0.1,
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        self.counts = np.asarray(counts, dtype=np.float64)
        self.batch_size = batch_size
        self.seed = seed
        self.jitter = jitter
        self.drop_last = drop_last
        n = len(self.counts)
        self.batches_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if self.batches_per_epoch == 0:
            raise UsageError(f"{n} showers are fewer than one batch of {batch_size}")
        self._cache: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in their order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        noisy = self.counts * (1.0 + self.jitter * rng.uniform(-1, 1, len(self.counts)))
        order = np.argsort(noisy, kind="stable")
        batches = [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)
        ]
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        permutation = rng.permutation(len(batches))
        batches = [batches[i] for i in permutation]
        self._cache = (epoch, batches)
        return batches

    def batch(self, step: int) -> list[int]:
        """Indices of the batch at global step ``step`` (0-based)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        return self.epoch_batches(epoch)[position]

    def iter_from(self, step: int = 0) -> Iterator[list[int]]:
        """Endless stream of batches starting at global step ``step``."""
        while True:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches(0))

    def __len__(self) -> int:
        return self.batches_per_epoch
