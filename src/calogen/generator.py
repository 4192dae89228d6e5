"""The interface every shower generator implements (learned models and GFlash alike).

A generator maps incident energies (GeV) and, where supported, incident directions (unit
vectors) to showers in the project's point-cloud format: :class:`showerdata.Showers` with
points ``(x [mm], y [mm], layer index 0-29, e [GeV])`` relative to the impact point. Grid
models convert their voxels to points, so projection and evaluation never care which model
made a shower.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import showerdata
from numpy.typing import ArrayLike, NDArray

from calogen.errors import UsageError

Seed = int | np.random.Generator | None


@runtime_checkable
class Generator(Protocol):
    """A shower generator.

    Attributes:
        name: short name shown in reports (``"gflash"``, ``"caloclouds2-cm"``, ...).
        supports_direction: whether :meth:`sample` accepts ``directions``.
        energy_range_gev: incident energies the generator was made for (min, max) in GeV.
        max_points: upper bound of points per shower that :meth:`sample` returns.
    """

    name: str
    supports_direction: bool
    energy_range_gev: tuple[float, float]
    max_points: int

    def sample(
        self,
        energies: NDArray[np.floating],
        directions: NDArray[np.floating] | None = None,
        *,
        seed: Seed = None,
    ) -> showerdata.Showers:
        """Generate one shower per incident energy.

        Args:
            energies: ``[N]`` incident energies in GeV.
            directions: ``[N, 3]`` unit vectors (only if ``supports_direction``).
            seed: integer seed or numpy Generator; the same seed gives the same showers.
        """
        ...


def check_energies(energies: ArrayLike, what: str = "energies") -> NDArray[np.float64]:
    """Validate incident energies (finite, > 0) and return them as a float64 ``[N]`` array."""
    arr = np.asarray(energies, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"{what}: NaN or infinite values are not allowed")
    if np.any(arr <= 0):
        raise UsageError(f"{what}: incident energies must be positive (GeV), got {arr.min():g}")
    return arr


def check_directions(directions: ArrayLike | None, n: int) -> NDArray[np.float64] | None:
    """Validate ``[N, 3]`` unit direction vectors (or ``None``)."""
    if directions is None:
        return None
    arr = np.asarray(directions, dtype=np.float64)
    if arr.ndim == 1 and arr.shape == (3,):
        arr = np.broadcast_to(arr, (n, 3)).copy()
    if arr.shape != (n, 3):
        raise UsageError(f"directions: expected shape ({n}, 3), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise UsageError("directions: NaN or infinite values are not allowed")
    norms = np.linalg.norm(arr, axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-3):
        raise UsageError("directions: must be unit vectors (|d| = 1)")
    if np.any(arr[:, 2] <= 0):
        raise UsageError("directions: z component must be positive (into the calorimeter)")
    return arr / norms[:, None]


def as_rng(seed: Seed) -> np.random.Generator:
    """Turn a seed into a numpy Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)
