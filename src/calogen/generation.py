"""Generating many showers into a file: energy draws, seeding and chunked streaming.

Memory stays bounded for any number of showers: the generator is called on chunks and
each chunk is written before the next is made. Seeds: the energies come from the stream
``[seed, 0]`` and chunk ``i`` from ``[seed, 1, i]`` (numpy ``SeedSequence`` entropy), so
the same seed gives the same file and chunks are independent streams.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from calogen.data.io import ShowerWriter, check_output_path
from calogen.errors import UsageError
from calogen.generator import Generator, check_directions, check_energies


def draw_energies(spec: Sequence[float], num: int, seed: int) -> NDArray[np.float64]:
    """Incident energies in GeV: one value → all equal; two values → uniform in [lo, hi]."""
    if num <= 0:
        raise UsageError(f"number of showers must be positive, got {num}")
    values = check_energies(spec, "--energy")
    if values.size == 1:
        return np.full(num, values[0])
    if values.size != 2:
        raise UsageError(f"--energy takes one value or a range of two, got {values.size}")
    lo, hi = sorted(values)
    return np.random.default_rng([seed, 0]).uniform(lo, hi, num)


def check_energy_range(
    generator: Generator, energies: NDArray[np.floating], strict: bool = False
) -> str | None:
    """Message if energies leave the generator's range (raise instead when ``strict``)."""
    lo, hi = generator.energy_range_gev
    outside = (energies < lo) | (energies > hi)
    if not outside.any():
        return None
    message = (
        f"{int(outside.sum())} of {energies.size} energies lie outside the range "
        f"{lo:g}-{hi:g} GeV that '{generator.name}' was made for; its showers there are "
        "extrapolations"
    )
    if strict:
        raise UsageError(message)
    return message


def generate_to_file(
    generator: Generator,
    energies: NDArray[np.floating],
    out: str | os.PathLike[str],
    *,
    seed: int,
    directions: NDArray[np.floating] | None = None,
    chunk_size: int = 1000,
    overwrite: bool = False,
    attrs: dict[str, str | int | float] | None = None,
    progress: bool = True,
    first_chunk: int = 0,
) -> Path:
    """Generate one shower per energy with ``generator`` and stream them to ``out``.

    The file appears only when complete (temporary name, then rename). ``first_chunk`` is the
    global index of the first chunk (for shards), so that shard files joined in order equal a
    single run with the same seed and chunk size.
    """
    energies = check_energies(energies)
    directions = check_directions(directions, energies.size)
    if directions is not None and not generator.supports_direction:
        raise UsageError(f"model '{generator.name}' does not support --direction")
    path = check_output_path(out, overwrite)
    file_attrs: dict[str, str | int | float] = {
        "generator": generator.name,
        "seed": int(seed),
        "frame": "x, y: mm relative to the impact point; z: layer index; e: GeV",
    }
    file_attrs.update(attrs or {})
    bar = tqdm(total=energies.size, unit="shower", disable=not progress, desc=generator.name)
    with ShowerWriter(
        path, energies.size, generator.max_points, overwrite=overwrite, attrs=file_attrs
    ) as writer:
        for index, start in enumerate(range(0, energies.size, chunk_size)):
            stop = min(start + chunk_size, energies.size)
            chunk = generator.sample(
                energies[start:stop],
                None if directions is None else directions[start:stop],
                seed=np.random.default_rng([seed, 1, first_chunk + index]),
            )
            writer.write(chunk)
            bar.update(stop - start)
    bar.close()
    return path


def shard_slice(num: int, chunk_size: int, shards: int, index: int) -> slice:
    """Showers of shard ``index`` of ``shards``: whole chunks, as evenly spread as possible."""
    if shards < 1 or not 0 <= index < shards:
        raise UsageError(f"shard index must be in 0..{shards - 1}, got {index}")
    n_chunks = -(-num // chunk_size)
    first = n_chunks * index // shards
    last = n_chunks * (index + 1) // shards
    return slice(min(first * chunk_size, num), min(last * chunk_size, num))
