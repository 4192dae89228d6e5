"""Reading and writing shower point clouds.

Two on-disk layouts are understood:

* ``showerdata`` — the HDF5 format of the `showerdata` package (variable-length points,
  ``energies [N,1]``, ``directions [N,3]``); this is the format calogen writes.
* ``legacy`` — the CaloClouds training layout: ``events [N, 4, max_points]`` float32 with
  channels (x, y, z, e) and zero padding at the FRONT, ``energy [N, 1]`` in GeV and
  optionally ``n_points [N]`` and ``directions [N, 3]`` (unit vectors of the incident
  particle, as in the shared file of inclined Geant4 showers).

Incident directions travel with the showers through every reader and writer; a legacy file
without ``directions`` holds showers at normal incidence ``(0, 0, 1)`` (see
:mod:`calogen.directions` for the frame).

In memory every shower set is a :class:`showerdata.Showers` with 4 channels
``(x [mm], y [mm], layer, e [GeV])`` padded at the end. Large files are read in chunks
(:meth:`ShowerFile.iter_chunks`); nothing here loads a whole file unless asked to.
Outputs are written to a temporary name in the target folder and renamed on success, so an
interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import showerdata
from numpy.typing import NDArray

from calogen.errors import CalogenError, UsageError

Format = Literal["showerdata", "legacy"]

#: Number of point channels: x [mm], y [mm], layer index, energy [GeV].
N_CHANNELS = 4


def _open_h5(path: str | os.PathLike[str]) -> h5py.File:
    """Open an HDF5 file for reading, turning every failure into one clear line."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected an HDF5 shower file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: file is empty")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:  # truncated or corrupt HDF5
        raise UsageError(f"{path}: cannot open HDF5 file (corrupt or truncated?): {exc}") from None


def detect_format(h5: h5py.File) -> Format:
    """Return the layout of an open HDF5 file or raise :class:`UsageError`."""
    keys = set(h5.keys())
    if {"showers", "energies", "shape"} <= keys:
        return "showerdata"
    if {"events", "energy"} <= keys:
        events = h5["events"]
        if not isinstance(events, h5py.Dataset) or events.ndim != 3 or events.shape[1] != 4:
            shape = getattr(events, "shape", None)
            raise UsageError(
                f"{h5.filename}: legacy 'events' must have shape [N, 4, max_points], got {shape}"
            )
        return "legacy"
    shown = ", ".join(sorted(keys)[:8]) or "nothing"
    raise UsageError(
        f"{h5.filename}: not a shower file (expected showerdata 'showers'/'energies' or legacy "
        f"'events'/'energy' datasets; found {shown})"
    )


def _legacy_to_points(events: NDArray[np.float32], n_points: NDArray[np.int64]) -> NDArray:
    """Convert front-padded ``[n, 4, M]`` events into end-padded ``[n, max(n_points), 4]``."""
    n, _, m = events.shape
    width = int(n_points.max()) if n else 0
    points = np.zeros((n, width, N_CHANNELS), dtype=np.float32)
    if n == 0 or width == 0:
        return points
    # index of the j-th real point of shower i inside the front-padded array
    cols = (m - n_points)[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < n_points[:, None]
    cols = np.where(valid, cols, m - 1)
    for channel in range(N_CHANNELS):
        gathered = np.take_along_axis(events[:, channel, :], cols, axis=1)
        points[:, :, channel] = np.where(valid, gathered, 0.0)
    return points


@dataclass
class FileSummary:
    """What a shower file holds (for ``calogen info``)."""

    path: str
    format: Format
    n_showers: int
    energy_min_gev: float
    energy_max_gev: float
    energy_mean_gev: float
    points_min: int
    points_mean: float
    points_max: int
    max_points_stored: int
    attrs: dict[str, str]
    #: polar angle (deg) range of the stored directions, ``None`` if the file has none
    theta_range_deg: tuple[float, float] | None = None
    #: azimuth (deg, in [0, 360)) range of the stored directions, ``None`` if none
    phi_range_deg: tuple[float, float] | None = None

    def lines(self) -> list[str]:
        out = [
            f"file:        {self.path}",
            f"format:      {self.format}",
            f"showers:     {self.n_showers}",
        ]
        if self.n_showers:
            out += [
                f"energy:      {self.energy_min_gev:.3f} - {self.energy_max_gev:.3f} GeV "
                f"(mean {self.energy_mean_gev:.3f} GeV)",
                f"points:      {self.points_min} - {self.points_max} per shower "
                f"(mean {self.points_mean:.1f}; stored width {self.max_points_stored})",
            ]
            out += self._direction_lines()
        for key, value in self.attrs.items():
            out.append(f"attr {key}: {value}")
        return out

    def _direction_lines(self) -> list[str]:
        if self.theta_range_deg is None or self.phi_range_deg is None:
            return ["directions:  none stored (normal incidence)"]
        (t_lo, t_hi), (p_lo, p_hi) = self.theta_range_deg, self.phi_range_deg
        return [
            f"theta:       {t_lo:.2f} - {t_hi:.2f} deg (polar angle to the calorimeter normal)",
            f"phi:         {p_lo:.2f} - {p_hi:.2f} deg (azimuth)",
        ]


class ShowerFile:
    """Chunked reader for shower files of either layout.

    >>> with ShowerFile("showers.h5") as f:
    ...     for chunk in f.iter_chunks(1000):
    ...         ...  # chunk is a showerdata.Showers
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._h5 = _open_h5(self.path)
        try:
            self.format: Format = detect_format(self._h5)
            self._validate_layout()
        except Exception:
            self._h5.close()
            raise

    # -- layout ---------------------------------------------------------------------------
    def _validate_layout(self) -> None:
        h5 = self._h5
        energy_key = "energies" if self.format == "showerdata" else "energy"
        energy = h5[energy_key]
        if not isinstance(energy, h5py.Dataset) or energy.ndim not in (1, 2):
            raise UsageError(f"{self.path}: '{energy_key}' must be an [N, 1] dataset")
        if self.format == "legacy":
            n_events = h5["events"].shape[0]
            if energy.shape[0] != n_events:
                raise UsageError(
                    f"{self.path}: {n_events} events but {energy.shape[0]} incident energies"
                )
        else:
            if h5["showers"].shape[0] != energy.shape[0]:
                raise UsageError(f"{self.path}: number of showers and energies differ")
            shape = h5["shape"][...]
            if shape.shape != (3,) or int(shape[2]) not in (4, 5):
                raise UsageError(f"{self.path}: invalid showerdata 'shape' dataset {shape}")
        self._check_directions_layout()

    def _check_directions_layout(self) -> None:
        """A ``directions`` dataset, if present, must be ``[N, 3]`` (one vector per shower)."""
        if "directions" not in self._h5:
            return
        directions = self._h5["directions"]
        shape = getattr(directions, "shape", None)
        if not isinstance(directions, h5py.Dataset) or shape != (len(self), 3):
            raise UsageError(
                f"{self.path}: 'directions' must have shape [N, 3] = [{len(self)}, 3] (one unit "
                f"vector per shower), got {shape}"
            )

    def __enter__(self) -> ShowerFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._h5.close()

    def __len__(self) -> int:
        key = "energies" if self.format == "showerdata" else "energy"
        return int(self._h5[key].shape[0])

    @property
    def attrs(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._h5.attrs.items()}

    @property
    def max_points(self) -> int:
        """Width of the stored point arrays."""
        if self.format == "showerdata":
            return int(self._h5["shape"][1])
        return int(self._h5["events"].shape[2])

    @property
    def has_directions(self) -> bool:
        """Whether the file stores incident directions (else: normal incidence)."""
        return "directions" in self._h5

    # -- cheap per-shower columns -----------------------------------------------------------
    def incident_directions(self, start: int = 0, stop: int | None = None) -> NDArray[np.float32]:
        """Incident directions (unit vectors), shape ``[n, 3]``; ``(0, 0, 1)`` (normal
        incidence) for a file without directions. Not validated (see :meth:`check_columns`)."""
        if self.has_directions:
            return np.asarray(self._h5["directions"][start:stop], dtype=np.float32).reshape(-1, 3)
        n = len(range(*slice(start, stop).indices(len(self))))
        normal = np.zeros((n, 3), np.float32)
        normal[:, 2] = 1.0
        return normal

    def incident_energies(self, start: int = 0, stop: int | None = None) -> NDArray[np.float32]:
        """Incident energies in GeV, shape ``[n]``."""
        key = "energies" if self.format == "showerdata" else "energy"
        return np.asarray(self._h5[key][start:stop], dtype=np.float32).reshape(-1)

    def num_points(self, start: int = 0, stop: int | None = None) -> NDArray[np.int64]:
        """Number of points per shower, shape ``[n]`` (reads the events only if not stored)."""
        if self.format == "showerdata":
            return np.asarray(self._h5["num_points"][start:stop], dtype=np.int64)
        if "n_points" in self._h5:
            return np.asarray(self._h5["n_points"][start:stop], dtype=np.int64)
        events = self._h5["events"]
        stop = len(self) if stop is None else stop
        counts = [
            np.count_nonzero(events[i : min(i + 256, stop), 3, :], axis=1)
            for i in range(start, stop, 256)
        ]
        return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)

    # -- showers ---------------------------------------------------------------------------
    def read(
        self, start: int = 0, stop: int | None = None, *, validate: bool = True
    ) -> showerdata.Showers:
        """Showers ``start:stop`` as :class:`showerdata.Showers` (4 channels).

        With ``validate`` (default) showers whose incident energy is not finite and positive,
        whose points hold NaN or inf, or whose direction is not a unit vector into the
        calorimeter are refused with a :class:`UsageError` naming the file and the shower.
        """
        n = len(self)
        stop = n if stop is None else min(stop, n)
        start = max(0, min(start, stop))
        try:
            if self.format == "showerdata":
                showers = showerdata.load(self.path, start=start, stop=stop)
                if showers.points.shape[2] != N_CHANNELS:
                    showers = showerdata.Showers(
                        points=showers.points[:, :, :N_CHANNELS],
                        energies=showers.energies,
                        pdg=showers.pdg,
                        directions=showers.directions,
                        shower_ids=showers.shower_ids,
                    )
                if validate:
                    check_values(showers, str(self.path), first=start)
                return showers
            events = np.asarray(self._h5["events"][start:stop], dtype=np.float32)
            counts = self.num_points(start, stop)
            points = _legacy_to_points(events, counts)
            energies = self.incident_energies(start, stop).reshape(-1, 1)
            directions = self.incident_directions(start, stop)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise UsageError(f"{self.path}: cannot read showers {start}:{stop}: {exc}") from None
        showers = showerdata.Showers(
            points=points,
            energies=energies,
            directions=directions,
            pdg=22,
            shower_ids=np.arange(start, stop, dtype=np.int32),
            num_points=counts.astype(np.int32),
        )
        if validate:
            check_values(showers, str(self.path), first=start)
        return showers

    def iter_chunks(
        self,
        chunk_size: int = 1000,
        start: int = 0,
        stop: int | None = None,
        *,
        validate: bool = True,
    ) -> Iterator[showerdata.Showers]:
        """Yield consecutive chunks of at most ``chunk_size`` showers (see :meth:`read`)."""
        if chunk_size <= 0:
            raise UsageError(f"chunk size must be positive, got {chunk_size}")
        stop = len(self) if stop is None else min(stop, len(self))
        for first in range(start, stop, chunk_size):
            yield self.read(first, min(first + chunk_size, stop), validate=validate)

    def check_columns(self) -> None:
        """Check the per-shower columns (incident energies, directions) of the whole file
        without reading the points; raise :class:`UsageError` at the first bad shower."""
        n = len(self)
        for first in range(0, n, 1 << 20):
            last = min(first + (1 << 20), n)
            _check_energies(self.incident_energies(first, last), str(self.path), first)
            if self.has_directions:
                directions = np.asarray(self.incident_directions(first, last), np.float64)
                _check_directions(directions, str(self.path), first)

    def summary(self) -> FileSummary:
        """What the file holds; the angle ranges come from the stored directions (unchecked:
        :meth:`check_columns` refuses bad ones)."""
        from calogen.directions import angles_from_directions

        n = len(self)
        energies = self.incident_energies()
        counts = self.num_points()
        theta_range = phi_range = None
        if n and self.has_directions:
            with np.errstate(invalid="ignore", divide="ignore"):
                theta, phi = angles_from_directions(self.incident_directions())
            theta_range = (float(theta.min()), float(theta.max()))
            phi_range = (float(phi.min()), float(phi.max()))
        return FileSummary(
            path=str(self.path),
            format=self.format,
            n_showers=n,
            energy_min_gev=float(energies.min()) if n else float("nan"),
            energy_max_gev=float(energies.max()) if n else float("nan"),
            energy_mean_gev=float(energies.mean()) if n else float("nan"),
            points_min=int(counts.min()) if n else 0,
            points_mean=float(counts.mean()) if n else 0.0,
            points_max=int(counts.max()) if n else 0,
            max_points_stored=self.max_points,
            attrs=self.attrs,
            theta_range_deg=theta_range,
            phi_range_deg=phi_range,
        )


def read_showers(
    path: str | os.PathLike[str], start: int = 0, stop: int | None = None
) -> showerdata.Showers:
    """Read showers ``start:stop`` from a file of either layout."""
    with ShowerFile(path) as f:
        return f.read(start, stop)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def validate_showers(showers: showerdata.Showers, what: str = "showers") -> None:
    """Raise :class:`CalogenError` if showers hold NaN/inf or non-positive incident energies."""
    if showers.points.shape[-1] != N_CHANNELS:
        raise CalogenError(f"{what}: expected {N_CHANNELS} point channels (x, y, layer, e)")
    if not np.all(np.isfinite(showers.energies)) or np.any(showers.energies <= 0):
        raise CalogenError(f"{what}: incident energies must be finite and positive")
    if not np.all(np.isfinite(showers.points)):
        raise CalogenError(f"{what}: points contain NaN or inf")
    directions = np.asarray(showers.directions, np.float64).reshape(-1, 3)
    with np.errstate(invalid="ignore"):
        unit = np.abs(np.linalg.norm(directions, axis=1) - 1.0) <= 1e-3
        if not np.all(unit & (directions[:, 2] > 0)):
            raise CalogenError(
                f"{what}: directions must be finite unit vectors into the calorimeter (dz > 0)"
            )


def _check_energies(energies: NDArray, what: str, first: int) -> None:
    energies = np.asarray(energies).reshape(-1)
    bad = ~(np.isfinite(energies) & (energies > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise UsageError(
            f"{what}: incident energy of shower {first + i} is {float(energies[i]):g} GeV "
            f"({int(bad.sum())} bad; they must be finite and > 0)"
        )


def _check_directions(directions: NDArray, what: str, first: int) -> None:
    directions = np.asarray(directions, np.float64).reshape(-1, 3)
    with np.errstate(invalid="ignore"):
        norm = np.linalg.norm(directions, axis=1)
        bad = ~(np.isfinite(norm) & (np.abs(norm - 1.0) <= 1e-3) & (directions[:, 2] > 0))
    if bad.any():
        i = int(np.argmax(bad))
        shown = ", ".join(f"{v:g}" for v in directions[i])
        raise UsageError(
            f"{what}: direction of shower {first + i} is ({shown}); directions must be unit "
            "vectors pointing into the calorimeter (dz > 0)"
        )


def check_values(showers: showerdata.Showers, what: str = "showers", first: int = 0) -> None:
    """Refuse input showers with bad numbers (one :class:`UsageError` line naming the shower).

    Incident energies must be finite and > 0, points finite, directions unit vectors with
    ``dz > 0``. ``first`` is the index of the first shower in the file (for the message).
    """
    _check_energies(showers.energies, what, first)
    if showers.directions is not None:
        _check_directions(showers.directions, what, first)
    finite = np.isfinite(showers.points).all(axis=(1, 2))
    if not finite.all():
        i = int(np.argmin(finite))
        raise UsageError(f"{what}: shower {first + i} has NaN or infinite point values")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def check_output_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check that ``path`` may be written; return it as a :class:`Path`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: file exists (use --overwrite to replace it)")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory")
    if not path.parent.exists():
        raise UsageError(f"{path.parent}: output folder does not exist")
    return path


def check_folder_writable(out: str | os.PathLike[str]) -> None:
    """Check that the folder ``out`` is writable if it exists, else that it can be created
    (its nearest existing ancestor is a writable directory). Creates nothing."""
    out = Path(out)
    if out.is_dir():
        if not os.access(out, os.W_OK):
            raise UsageError(f"{out}: output folder is not writable")
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{out}: cannot create output folder ({parent} is not a directory)")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{out}: cannot create output folder ({parent} is not writable)")


class ShowerWriter:
    """Stream showers into a showerdata file; the file appears only when complete.

    Use as a context manager: on an exception (or Ctrl-C) the temporary file is removed and
    no output file is created.

    Args:
        path: output file.
        n_showers: total number of showers that will be written.
        max_points: largest number of points of any shower (an upper bound is fine).
        overwrite: replace an existing file.
        attrs: string attributes stored on the file (generator, model, seed, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_showers: int,
        max_points: int,
        *,
        overwrite: bool = False,
        attrs: dict[str, str | int | float] | None = None,
    ) -> None:
        self.path = check_output_path(path, overwrite)
        if n_showers < 0:
            raise UsageError(f"number of showers must be >= 0, got {n_showers}")
        self.n_showers = n_showers
        self.max_points = max(1, int(max_points))
        self.attrs = dict(attrs or {})
        self._tmp = _temporary_name(self.path)
        self._written = 0
        self._widest = 1
        self._file: showerdata.ShowerDataFile | None = None

    def __enter__(self) -> ShowerWriter:
        self._file = showerdata.ShowerDataFile(
            self._tmp, mode="w", shape=(self.n_showers, self.max_points, N_CHANNELS)
        )
        for key, value in self.attrs.items():
            self._file.attrs[key] = value
        return self

    def write(self, showers: showerdata.Showers) -> None:
        """Append a chunk of showers."""
        if self._file is None:
            raise RuntimeError("ShowerWriter used outside 'with'")
        validate_showers(showers)
        n = len(showers)
        if self._written + n > self.n_showers:
            raise CalogenError(
                f"{self.path}: more showers written than the {self.n_showers} declared"
            )
        if showers.points.shape[1] > self.max_points:
            raise CalogenError(
                f"{self.path}: shower with {showers.points.shape[1]} points exceeds the declared "
                f"maximum of {self.max_points}"
            )
        if n:
            self._file[self._written : self._written + n] = showers
            self._widest = max(self._widest, int(showers._num_points.max()))
        self._written += n

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if self._file is not None:
            if exc_type is None:
                # record the real widest shower so readers do not pad to the declared bound
                self._file.file["shape"][1] = self._widest
            self._file.close()
        if exc_type is None and self._written != self.n_showers:
            self._tmp.unlink(missing_ok=True)
            raise CalogenError(
                f"{self.path}: only {self._written} of {self.n_showers} showers were written"
            )
        if exc_type is not None:
            self._tmp.unlink(missing_ok=True)
            return
        os.replace(self._tmp, self.path)


def write_showers(
    path: str | os.PathLike[str],
    showers: showerdata.Showers,
    *,
    overwrite: bool = False,
    attrs: dict[str, str | int | float] | None = None,
) -> Path:
    """Write showers to a showerdata HDF5 file atomically; return the path."""
    width = int(showers.points.shape[1]) if len(showers) else 1
    with ShowerWriter(path, len(showers), width, overwrite=overwrite, attrs=attrs) as writer:
        writer.write(showers)
    return writer.path


def make_showers(
    points: NDArray[np.float32],
    num_points: NDArray[np.integer],
    energies: NDArray[np.floating],
    directions: NDArray[np.floating] | None = None,
    pdg: int = 22,
) -> showerdata.Showers:
    """Build :class:`showerdata.Showers` from end-padded ``points [N, M, 4]``."""
    energies = np.asarray(energies, dtype=np.float32).reshape(-1, 1)
    return showerdata.Showers(
        points=np.asarray(points, dtype=np.float32),
        energies=energies,
        pdg=pdg,
        directions=None if directions is None else np.asarray(directions, np.float32),
        num_points=np.asarray(num_points, dtype=np.int32),
    )


def merge_files(
    inputs: list[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    chunk_size: int = 1000,
    progress: bool = False,
    showers: tuple[int, int] | None = None,
) -> Path:
    """Concatenate shower files (e.g. generation shards) into one showerdata file.

    Reads and writes chunk by chunk, so memory stays bounded for any file size. The output
    appears only when complete. Attributes of the first input are kept, with ``merged_from``
    listing the inputs. ``showers=(start, stop)`` keeps only showers ``start..stop-1``
    (0-based) of the inputs joined in order, e.g. a held-out split of one file.
    """
    from tqdm.auto import tqdm

    if not inputs:
        raise UsageError("merge: no input files")
    files = [ShowerFile(p) for p in inputs]
    try:
        sizes = [len(f) for f in files]
        first, last = (0, sum(sizes)) if showers is None else showers
        if not 0 <= first < last <= sum(sizes):
            raise UsageError(
                f"--range {first} {last}: the inputs hold {sum(sizes)} showers (need "
                f"0 <= START < STOP <= {sum(sizes)})"
            )
        offsets = np.cumsum([0, *sizes])
        parts = [  # (file, local start, local stop) of the kept showers
            (f, max(first - int(o), 0), min(last - int(o), n))
            for f, o, n in zip(files, offsets, sizes, strict=False)
            if min(last - int(o), n) > max(first - int(o), 0)
        ]
        width = max(max(int(f.num_points(a, b).max(initial=0)), 1) for f, a, b in parts)
        attrs: dict[str, str | int | float] = dict(files[0].attrs)
        attrs["merged_from"] = ", ".join(str(Path(p).name) for p in inputs)
        if showers is not None:
            attrs["merged_range"] = f"showers {first}-{last - 1} of the joined inputs"
        total = last - first
        bar = tqdm(total=total, unit="shower", disable=not progress, desc="merge")
        with ShowerWriter(output, total, width, overwrite=overwrite, attrs=attrs) as writer:
            for f, a, b in parts:
                for chunk in f.iter_chunks(chunk_size, a, b):
                    writer.write(chunk)
                    bar.update(len(chunk))
        bar.close()
    finally:
        for f in files:
            f.close()
    return writer.path
