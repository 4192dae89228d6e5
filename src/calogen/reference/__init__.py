"""Reference simulators that are not learned.

* :class:`GFlash` — the Grindhammer–Peters parameterisation of electromagnetic showers
  (hep-ex/0001020), tuned to the shared Geant4 photon showers; :func:`simulate` is a
  one-call convenience.
"""

from __future__ import annotations

from calogen.reference.gflash import GFlash, GFlashParameters, simulate
from calogen.reference.materials import SILICON, TUNGSTEN, EffectiveMedium, Material

__all__ = [
    "SILICON",
    "TUNGSTEN",
    "EffectiveMedium",
    "GFlash",
    "GFlashParameters",
    "Material",
    "simulate",
]
