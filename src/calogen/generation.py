"""Generating many showers into a file: energy and direction draws, seeding, streaming.

Memory stays bounded for any number of showers: the generator is called on chunks and
each chunk is written before the next is made. Seeds: the energies come from the stream
``[seed, 0]``, chunk ``i`` from ``[seed, 1, i]`` and the incident angles from
``[seed, 2, 0]`` (theta) and ``[seed, 2, 1]`` (phi) (numpy ``SeedSequence`` entropy), so
the same seed gives the same file, chunks are independent streams, and a file made without
angles is the same as before angles existed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from calogen.data.io import ShowerWriter, check_output_path
from calogen.directions import angles_from_directions, check_angles, directions_from_angles
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


def draw_directions(
    theta_deg: Sequence[float] | None,
    phi_deg: Sequence[float] | None,
    num: int,
    seed: int,
) -> NDArray[np.float64] | None:
    """Incident directions ``[num, 3]`` (unit vectors) from polar angles and azimuths in deg.

    Each of ``theta_deg`` and ``phi_deg`` is one value (fixed) or two (MIN MAX: drawn
    uniformly in degrees in that range, reproducibly from ``seed``). ``theta`` must lie in
    [0, 90) deg; ``phi`` is any finite value, wrapped to [0, 360), and 0 when not given.
    ``None`` for both means normal incidence (returns ``None``); ``phi`` without ``theta``
    is refused. See :mod:`calogen.directions` for the frame.
    """
    if theta_deg is None:
        if phi_deg is not None:
            raise UsageError(
                "--phi needs --theta (phi is the azimuth of the polar angle theta; use "
                "--direction to give a vector)"
            )
        return None
    if num <= 0:
        raise UsageError(f"number of showers must be positive, got {num}")
    theta = _angle_values(theta_deg, "--theta")
    theta, _ = check_angles(theta, what="--theta")
    phi = np.zeros(1) if phi_deg is None else _angle_values(phi_deg, "--phi")
    check_angles(np.zeros_like(phi), phi)
    return directions_from_angles(
        _fixed_or_uniform(theta, num, [seed, 2, 0]), _fixed_or_uniform(phi, num, [seed, 2, 1])
    )


def _angle_values(spec: Sequence[float], what: str) -> NDArray[np.float64]:
    values = np.asarray(spec, dtype=np.float64).reshape(-1)
    if values.size not in (1, 2):
        raise UsageError(f"{what} takes one value or a range of two (MIN MAX), got {values.size}")
    return values


def _fixed_or_uniform(
    values: NDArray[np.float64], num: int, stream: list[int]
) -> NDArray[np.float64]:
    if values.size == 1:
        return np.full(num, values[0])
    lo, hi = sorted(values)
    return np.random.default_rng(stream).uniform(lo, hi, num)


def directions_for_model(
    generator: Generator, directions: NDArray[np.floating] | None
) -> NDArray[np.floating] | None:
    """The directions to hand to ``generator.sample``.

    A generator that supports only normal incidence gets ``None`` when every direction is
    normal (``--theta 0``, ``--direction 0 0 1``) and refuses inclined ones with a
    :class:`UsageError`; a direction-aware generator gets ``directions`` unchanged.
    """
    if directions is None or generator.supports_direction:
        return directions
    directions = np.asarray(directions, np.float64).reshape(-1, 3)
    if np.all(np.hypot(directions[:, 0], directions[:, 1]) <= 1e-12):
        return None
    theta, _ = angles_from_directions(directions)
    raise UsageError(
        f"model '{generator.name}' supports only normal incidence (--theta 0); it does not "
        f"support inclined showers (--theta/--direction up to theta = {theta.max():.3g} deg)"
    )


#: energies this fraction of a model's energy range beyond either end still count as inside:
#: the range is the smallest and largest energy of the training showers, which fall short
#: of the ends of the range they were drawn from (10.005-89.986 GeV for the default's 15,000
#: showers drawn in 10-90 GeV), and a request at 10 or 90 GeV is no extrapolation
ENERGY_RANGE_TOLERANCE = 0.01


def check_energy_range(
    generator: Generator, energies: NDArray[np.floating], strict: bool = False
) -> str | None:
    """Message if energies leave the generator's range (raise instead when ``strict``); within
    :data:`ENERGY_RANGE_TOLERANCE` of the range's width beyond its ends counts as inside."""
    lo, hi = generator.energy_range_gev
    margin = ENERGY_RANGE_TOLERANCE * max(hi - lo, 0.0)
    outside = (energies < lo - margin) | (energies > hi + margin)
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


def check_angle_range(
    generator: Generator, directions: NDArray[np.floating] | None, strict: bool = False
) -> str | None:
    """Message if polar angles leave the range of a direction-aware generator's training data
    (its ``theta_range_deg``; raise instead when ``strict``), like :func:`check_energy_range`."""
    theta_range = getattr(generator, "theta_range_deg", None)
    if directions is None or theta_range is None or not generator.supports_direction:
        return None
    lo, hi = theta_range
    theta, _ = angles_from_directions(directions)
    outside = (theta < lo - 1e-6) | (theta > hi + 1e-6)
    if not outside.any():
        return None
    message = (
        f"{int(outside.sum())} of {theta.size} polar angles lie outside the range "
        f"{lo:.3g}-{hi:.3g} deg that '{generator.name}' was made for; its showers there are "
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

    ``directions`` ``[N, 3]`` (unit vectors, or one ``[3]`` for all; ``None``: normal
    incidence) are passed to the generator (see :func:`directions_for_model`) and written
    into the file with the showers. The file appears only when complete (temporary name,
    then rename). ``first_chunk`` is the global index of the first chunk (for shards), so
    that shard files joined in order equal a single run with the same seed and chunk size.
    """
    energies = check_energies(energies)
    directions = check_directions(directions, energies.size)
    model_directions = directions_for_model(generator, directions)
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
                None if model_directions is None else model_directions[start:stop],
                seed=np.random.default_rng([seed, 1, first_chunk + index]),
            )
            if directions is not None:  # the requested directions travel with the showers
                chunk.directions = directions[start:stop].astype(np.float32)
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
