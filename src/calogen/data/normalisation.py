"""Normalisation of point features to [-1, 1] for the networks, and its inverse.

Per point ``(x [mm], y [mm], layer, e [GeV])``:

* x, y: divided by the bounding-box half width (200 mm) → [-1, 1]; or, with
  ``core_radius_mm = r0 > 0``, the radius is compressed as
  ``r' = asinh(r / r0) / asinh(half_width / r0)`` keeping the azimuth (linear for r ≪ r0,
  logarithmic for r ≫ r0). Electromagnetic showers put half their energy within ~2 mm of
  the axis and have tails to 200 mm; linearly scaled, the core is 1 % of the unit range,
  finer than a small diffusion network resolves. The map is smooth and exactly invertible;
* layer: the integer layer index is smeared uniformly within the layer
  (``layer + u``, ``u ~ U[0, 1)``) and mapped linearly from [0, n_layers] to [-1, 1];
  the inverse takes the floor, which recovers the integer layer exactly;
* e: ``log`` (default) maps ``ln e`` linearly from ``[ln e_min, ln e_max]`` to [-1, 1]
  (point energies span four decades), ``linear`` maps ``e`` from ``[0, e_max]``.

Without smearing (``smear=False``) the layer is placed at the layer centre
(``layer + 0.5``); then :meth:`Normalisation.inverse` is the exact inverse of
:meth:`Normalisation.forward` up to float rounding.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from calogen.errors import UsageError

ArrayT = NDArray[np.floating] | torch.Tensor


@dataclass(frozen=True)
class Normalisation:
    """Affine/log maps of the 4 point features to [-1, 1] (see module docstring).

    Attributes:
        half_width_mm: bounding box half width for x and y.
        n_layers: number of layers.
        energy_scale: ``"log"`` or ``"linear"``.
        e_min_gev: smallest point energy (log scale lower edge).
        e_max_gev: largest point energy.
        core_radius_mm: ``r0`` of the asinh compression of the transverse radius (0: linear).
    """

    half_width_mm: float = 200.0
    n_layers: int = 30
    energy_scale: Literal["log", "linear"] = "log"
    e_min_gev: float = 1e-6
    e_max_gev: float = 0.1
    core_radius_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.energy_scale not in ("log", "linear"):
            raise UsageError(f"energy_scale must be 'log' or 'linear', got {self.energy_scale!r}")
        if not (0 < self.e_min_gev < self.e_max_gev) or not math.isfinite(self.e_max_gev):
            raise UsageError(
                f"invalid energy range for normalisation: {self.e_min_gev} - {self.e_max_gev} GeV"
            )
        if not (math.isfinite(self.core_radius_mm) and self.core_radius_mm >= 0):
            raise UsageError(f"core_radius_mm must be >= 0, got {self.core_radius_mm}")

    def _radial_scale(self, r: ArrayT, inverse: bool) -> ArrayT:
        """Factor that maps (x, y) at radius ``r`` (mm forward, normalised inverse)."""
        r0 = self.core_radius_mm
        span = math.asinh(self.half_width_mm / r0)
        lib = torch if isinstance(r, torch.Tensor) else np
        tiny = 1e-6
        safe = lib.where(r > tiny, r, lib.ones_like(r))
        if inverse:  # r' -> r = r0 sinh(r' span); factor r / r'
            factor = r0 * lib.sinh(safe * span) / safe
            return lib.where(r > tiny, factor, lib.full_like(r, r0 * span))
        factor = lib.arcsinh(safe / r0) / (span * safe)  # r -> r'; factor r' / r
        return lib.where(r > tiny, factor, lib.full_like(r, 1.0 / (r0 * span)))

    # -- maps --------------------------------------------------------------------------------
    def forward(
        self,
        points: ArrayT,
        rng: np.random.Generator | torch.Generator | None = None,
        smear: bool = True,
    ) -> ArrayT:
        """Map points ``[..., 4]`` (x mm, y mm, layer, e GeV) to normalised ``[..., 4]``.

        Works on numpy arrays and torch tensors. ``rng`` drives the depth smearing (a numpy
        Generator for arrays, a torch Generator for tensors).
        """
        is_torch = isinstance(points, torch.Tensor)
        out = points.clone() if is_torch else np.array(points, dtype=np.float32, copy=True)
        layer = points[..., 2]
        if smear:
            if is_torch:
                u = torch.rand(layer.shape, generator=rng, dtype=points.dtype, device=points.device)
            else:
                gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng()
                u = gen.random(layer.shape, dtype=np.float32)
        else:
            u = 0.5
        if self.core_radius_mm > 0:
            r = (points[..., 0] ** 2 + points[..., 1] ** 2) ** 0.5
            scale = self._radial_scale(r, inverse=False)
            out[..., 0] = points[..., 0] * scale
            out[..., 1] = points[..., 1] * scale
        else:
            out[..., 0] = points[..., 0] / self.half_width_mm
            out[..., 1] = points[..., 1] / self.half_width_mm
        out[..., 2] = (layer + u) / self.n_layers * 2.0 - 1.0
        energy = points[..., 3]
        if self.energy_scale == "log":
            lo, hi = math.log(self.e_min_gev), math.log(self.e_max_gev)
            floor = self.e_min_gev
            clipped = energy.clamp_min(floor) if is_torch else np.maximum(energy, floor)
            logs = clipped.log() if is_torch else np.log(clipped)
            out[..., 3] = (logs - lo) / (hi - lo) * 2.0 - 1.0
        else:
            out[..., 3] = energy / self.e_max_gev * 2.0 - 1.0
        return out

    def inverse(self, normalised: ArrayT, clip_layers: bool = True) -> ArrayT:
        """Map normalised points back to (x mm, y mm, integer layer, e GeV)."""
        if isinstance(normalised, torch.Tensor):
            return self._inverse_torch(normalised, clip_layers)
        out = np.array(normalised, dtype=np.float32, copy=True)
        if self.core_radius_mm > 0:
            r = (normalised[..., 0] ** 2 + normalised[..., 1] ** 2) ** 0.5
            scale = self._radial_scale(r, inverse=True)
            out[..., 0] = normalised[..., 0] * scale
            out[..., 1] = normalised[..., 1] * scale
        else:
            out[..., 0] = normalised[..., 0] * self.half_width_mm
            out[..., 1] = normalised[..., 1] * self.half_width_mm
        layer = np.floor((normalised[..., 2] + 1.0) / 2.0 * self.n_layers)
        out[..., 2] = np.clip(layer, 0, self.n_layers - 1) if clip_layers else layer
        scaled = (normalised[..., 3] + 1.0) / 2.0
        if self.energy_scale == "log":
            lo, hi = math.log(self.e_min_gev), math.log(self.e_max_gev)
            out[..., 3] = np.exp(scaled * (hi - lo) + lo)
        else:
            out[..., 3] = scaled * self.e_max_gev
        return out

    def _inverse_torch(self, normalised: torch.Tensor, clip_layers: bool) -> torch.Tensor:
        """:meth:`inverse` of a tensor ``[..., 4]``: the same operations as the numpy form,
        in the same order (equal results), in place on contiguous channels (1.5x faster)."""
        # channels first and contiguous: element-wise operations on strided columns of
        # [P, 4] run at half speed; the transposing copies cost less than they save
        x, y, z, e = normalised.movedim(normalised.dim() - 1, 0).clone(
            memory_format=torch.contiguous_format
        )
        if self.core_radius_mm > 0:
            scale = self._radial_scale((x * x).add_(y * y).sqrt_(), inverse=True)
            x.mul_(scale)
            y.mul_(scale)
        else:
            x.mul_(self.half_width_mm)
            y.mul_(self.half_width_mm)
        layer = z.add_(1.0).div_(2.0).mul_(self.n_layers).floor_()
        if clip_layers:
            layer = layer.clamp_(0, self.n_layers - 1)
        scaled = e.add_(1.0).div_(2.0)
        if self.energy_scale == "log":
            lo, hi = math.log(self.e_min_gev), math.log(self.e_max_gev)
            energy = scaled.mul_(hi - lo).add_(lo).exp_()
        else:
            energy = scaled.mul_(self.e_max_gev)
        return torch.stack([x, y, layer, energy], -1)

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    @classmethod
    def fit(
        cls,
        path: str | os.PathLike[str],
        max_showers: int = 2000,
        energy_scale: Literal["log", "linear"] = "log",
        half_width_mm: float = 200.0,
        n_layers: int = 30,
        core_radius_mm: float = 0.0,
    ) -> Normalisation:
        """Energy range from the first ``max_showers`` showers of a file (with 10 % margins)."""
        from calogen.data.io import ShowerFile
        from calogen.data.packed import pack

        with ShowerFile(path) as f:
            energies = pack(f.read(0, max_showers)).points[:, 3]
        energies = energies[energies > 0]
        if energies.size == 0:
            raise UsageError(f"{path}: no points with positive energy to fit the normalisation")
        return cls(
            half_width_mm=half_width_mm,
            n_layers=n_layers,
            energy_scale=energy_scale,
            e_min_gev=float(energies.min()) * 0.9,
            e_max_gev=float(energies.max()) * 1.1,
            core_radius_mm=core_radius_mm,
        )
