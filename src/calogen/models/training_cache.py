"""Training caches: the training showers of a CaloClouds II run in one small file.

A GPU machine often has no room or no access for the full HDF5 files (the shared training
data are 230 MB). A cache holds what CaloClouds II training reads, at a fraction of the size:

* per shower, from the *full* shower: incident energy (GeV), the number of points as
  simulated (the point network's condition N), theta (deg) and the Shower Flow's features;
* a random subset of at most ``points_per_shower`` points of each shower (x, y in mm as
  float16, layer index, energy in GeV as float32), in the axis frame for angle-aware runs;
* the energy range of the point normalisation, fitted on the full files.

The points of a CaloClouds II shower are independent given (E, N, theta), and each training
step sees a random subset of ``points_per_shower`` points of a shower anyway, so the cached
subset is an unbiased sample of the same distribution; CaloClouds, whose EPiC encoder reads
the whole cloud, refuses caches. The corrections need whole showers: a run on a cache ends
without them (``--no-corrections``) and ``calogen fit-occupancy`` fits them afterwards on the
shower files the cache was made from.

Format: one ``.npz`` (numpy, no pickled objects), written to a temporary name, then renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calogen.errors import UsageError
from calogen.models.caloclouds import TrainingData
from calogen.models.training import _atomic_write_bytes

FORMAT = "calogen-training-cache"
VERSION = 1
_FEATURE = "feature."


def write_training_cache(
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    max_showers: int | None = None,
    straighten: bool = False,
    points_per_shower: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the cache of ``data`` (one or several shower files; the first ``max_showers``
    of each) to ``out`` (``.npz``); returns its summary (showers, points, size in MB)."""
    from calogen.models.caloclouds import fit_normalisation, load_training_data
    from calogen.models.caloclouds2 import subsample_points

    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"{out}: a training cache is a .npz file")
    if points_per_shower <= 0:
        raise UsageError(f"points_per_shower must be > 0, got {points_per_shower}")
    full = load_training_data(data, max_showers, straighten=straighten)
    norm = fit_normalisation(data)
    rng = np.random.default_rng(seed)
    idx, _ = subsample_points(
        full.offsets, np.arange(full.n_showers, dtype=np.int64), points_per_shower, rng
    )
    paths = [str(data)] if isinstance(data, (str, os.PathLike)) else [str(p) for p in data]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "sources": paths,
        "max_showers": max_showers,
        "straightened": bool(straighten),
        "points_per_shower": int(points_per_shower),
        "seed": int(seed),
        "e_min_gev": norm.e_min_gev,
        "e_max_gev": norm.e_max_gev,
    }
    subset = TrainingData(
        points=full.points[idx],
        offsets=np.concatenate(([0], np.cumsum(np.minimum(full.counts, points_per_shower)))),
        energies=full.energies,
        features=full.features,
        n_points=full.counts,
    )
    return _save(subset, meta, out)


def merge_training_caches(
    caches: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> dict[str, Any]:
    """One cache of the showers of several (e.g. made on different machines); they must
    hold showers in the same frame. The normalisation range is the widest of them."""
    if not caches:
        raise UsageError("no training caches to merge")
    parts = [read_training_cache(c) for c in caches]
    frames = {bool(m["straightened"]) for _, m in parts}
    if len(frames) > 1:
        raise UsageError("cannot merge training caches of the axis and the detector frame")
    keys = set(parts[0][0].features)
    if any(set(d.features) != keys for d, _ in parts):
        raise UsageError("cannot merge training caches with different shower features")
    metas = [m for _, m in parts]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "sources": [s for m in metas for s in m["sources"]],
        "max_showers": None,
        "straightened": frames.pop(),
        "points_per_shower": max(int(m["points_per_shower"]) for m in metas),
        "seed": [m["seed"] for m in metas],
        "e_min_gev": min(float(m["e_min_gev"]) for m in metas),
        "e_max_gev": max(float(m["e_max_gev"]) for m in metas),
        "merged_from": [str(c) for c in caches],
    }
    datas = [d for d, _ in parts]
    stored = np.concatenate([np.diff(d.offsets) for d in datas])
    merged = TrainingData(
        points=np.concatenate([d.points for d in datas]),
        offsets=np.concatenate(([0], np.cumsum(stored))).astype(np.int64),
        energies=np.concatenate([d.energies for d in datas]),
        features={k: np.concatenate([d.features[k] for d in datas]) for k in keys},
        n_points=np.concatenate([d.counts for d in datas]),
    )
    return _save(merged, meta, out)


def select_training_cache(
    path: str | os.PathLike[str],
    keep: Sequence[int] | np.ndarray | Callable[[TrainingData], np.ndarray],
    selection: str,
    out: str | os.PathLike[str],
) -> dict[str, Any]:
    """Write the showers ``keep`` (indices, increasing; or a function of the cache's
    :class:`TrainingData` that returns them, so the cache is read once) of the cache at
    ``path`` as a cache of their own at ``out``, every stored point and condition with them;
    ``selection`` says in the header how they were chosen (e.g. ``"theta_deg > 40"``).
    Returns the summary."""
    data, meta = read_training_cache(path)
    keep = np.asarray(keep(data) if callable(keep) else keep, np.int64)
    if keep.size == 0 or np.any(np.diff(keep) <= 0) or keep[0] < 0 or keep[-1] >= data.n_showers:
        raise UsageError(f"{path}: select increasing shower indices below {data.n_showers}")
    stored = np.diff(data.offsets)
    rows = np.concatenate([np.arange(data.offsets[i], data.offsets[i + 1]) for i in keep])
    subset = TrainingData(
        points=data.points[rows],
        offsets=np.concatenate(([0], np.cumsum(stored[keep]))).astype(np.int64),
        energies=data.energies[keep],
        features={k: np.asarray(v)[keep] for k, v in data.features.items()},
        n_points=data.counts[keep],
    )
    return _save(subset, {**meta, "selection": selection}, out)


def _save(data: TrainingData, meta: dict[str, Any], out: Path | str) -> dict[str, Any]:
    """Write ``data`` (its ``counts``: the simulated N) and ``meta`` atomically."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"{out}: a training cache is a .npz file")
    points = data.points
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "xy_mm": points[:, :2].astype(np.float16),
        "layer": points[:, 2].astype(np.uint8),
        "e_gev": points[:, 3].astype(np.float32),
        "stored": np.diff(data.offsets).astype(np.int32),
        "n_points": data.counts.astype(np.int32),
        "energies_gev": data.energies.astype(np.float64),
        **{_FEATURE + k: np.asarray(v) for k, v in data.features.items()},
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: savez would append .npz to a path
            np.savez_compressed(handle, **arrays)

    _atomic_write_bytes(out, write)
    return {
        "cache": str(out),
        "showers": data.n_showers,
        "points": int(points.shape[0]),
        "size_mb": round(out.stat().st_size / 1e6, 2),
        **{k: meta[k] for k in ("sources", "max_showers", "straightened", "points_per_shower")},
    }


def training_cache_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a cache (sources, frame, normalisation range) without its arrays."""
    return _open(path, header_only=True)[1]


def _open(path: str | os.PathLike[str], header_only: bool = False) -> tuple[dict, dict[str, Any]]:
    """``(arrays, meta)`` of a cache (no arrays with ``header_only``); one-line
    :class:`UsageError` for anything that is not a readable cache of this version."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such training cache")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {} if header_only else {k: z[k] for k in z.files if k != "meta"}
    except Exception as exc:  # zip, npy and JSON errors alike: not a cache we can read
        raise UsageError(f"{path}: not a calogen training cache ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"{path}: not a calogen training cache (no '{FORMAT}' header)")
    if meta.get("version") != VERSION:
        raise UsageError(f"{path}: training cache version {meta.get('version')}, need {VERSION}")
    return arrays, meta


def read_training_cache(path: str | os.PathLike[str]) -> tuple[TrainingData, dict[str, Any]]:
    """``(TrainingData, meta)`` of a cache; one-line :class:`UsageError` for anything else."""
    arrays, meta = _open(path)
    try:
        stored = arrays["stored"].astype(np.int64)
        points = np.concatenate(
            [
                arrays["xy_mm"].astype(np.float32),
                arrays["layer"].astype(np.float32)[:, None],
                arrays["e_gev"].astype(np.float32)[:, None],
            ],
            axis=1,
        )
        data = TrainingData(
            points=points,
            offsets=np.concatenate(([0], np.cumsum(stored))).astype(np.int64),
            energies=arrays["energies_gev"].astype(np.float64),
            features={k[len(_FEATURE) :]: v for k, v in arrays.items() if k.startswith(_FEATURE)},
            n_points=arrays["n_points"].astype(np.int64),
        )
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{path}: damaged training cache ({exc})") from None
    n = data.n_showers
    if (
        int(stored.sum()) != points.shape[0]
        or data.counts.shape[0] != n
        or any(v.shape[0] != n for v in data.features.values())
        or not np.all(np.isfinite(points))
    ):
        raise UsageError(f"{path}: damaged training cache (inconsistent or non-finite arrays)")
    return data, meta


__all__ = [
    "merge_training_caches",
    "read_training_cache",
    "training_cache_meta",
    "write_training_cache",
]
