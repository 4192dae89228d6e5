"""Materials and the effective medium of a sampling calorimeter, as GFlash needs them.

GFlash (Grindhammer & Peters, hep-ex/0001020) describes a sampling calorimeter by an
*effective medium*: the absorber and the active layers of one sampling period mixed by mass.
Its parameters follow from the pure materials:

* mass fractions ``w_i = rho_i d_i / sum_j rho_j d_j`` of one sampling period;
* ``Z_eff = sum_i w_i Z_i``, ``A_eff = sum_i w_i A_i``;
* ``1 / X0_eff = sum_i w_i / X0_i`` (``X0`` in g/cm^2);
* critical energy of a pure material ``E_c = 2.66 MeV (X0 Z / A)^1.1`` (``X0`` in g/cm^2),
  of the mixture ``E_c,eff = X0_eff sum_i w_i E_c,i / X0_i``;
* Molière radius ``R_M = E_s X0 / E_c`` with ``E_s = 21.2 MeV``;
* sampling frequency ``F_S = X0_eff / (d_a + d_p)`` (sampling periods per radiation length);
* the e/mip ratio of the active medium ``ê = 1 / (1 + 0.007 (Z_p - Z_a))``.

Units: lengths in mm unless a name says otherwise, densities in g/cm^3, radiation lengths in
g/cm^2 (``*_gcm2``) or mm (``*_mm``), energies in MeV.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Scale energy of multiple scattering, MeV (enters the Molière radius).
E_SCALE_MEV = 21.2


@dataclass(frozen=True)
class Material:
    """A pure material.

    Attributes:
        name: short name.
        z: atomic number.
        a: atomic mass, g/mol.
        density: g/cm^3.
        x0_gcm2: radiation length, g/cm^2 (PDG).
    """

    name: str
    z: float
    a: float
    density: float
    x0_gcm2: float

    @property
    def x0_mm(self) -> float:
        """Radiation length in mm."""
        return 10.0 * self.x0_gcm2 / self.density

    @property
    def critical_energy_mev(self) -> float:
        """GFlash's critical energy ``2.66 MeV (X0 Z/A)^1.1`` (X0 in g/cm^2)."""
        return 2.66 * (self.x0_gcm2 * self.z / self.a) ** 1.1

    @property
    def moliere_radius_mm(self) -> float:
        """Molière radius ``21.2 MeV X0 / E_c`` in mm."""
        return E_SCALE_MEV * self.x0_mm / self.critical_energy_mev


TUNGSTEN = Material("W", z=74.0, a=183.84, density=19.30, x0_gcm2=6.76)
SILICON = Material("Si", z=14.0, a=28.0855, density=2.329, x0_gcm2=21.82)


@dataclass(frozen=True)
class EffectiveMedium:
    """The effective medium of one sampling period (passive + active layer).

    Attributes:
        passive: absorber material.
        active: sensitive material.
        passive_mm: absorber thickness, mm.
        active_mm: sensitive thickness, mm.
    """

    passive: Material
    active: Material
    passive_mm: float
    active_mm: float

    @property
    def period_mm(self) -> float:
        """Thickness of one sampling period, mm."""
        return self.passive_mm + self.active_mm

    @property
    def _masses(self) -> tuple[float, float]:
        """Mass per area of the passive and active layer (arbitrary common unit)."""
        return self.passive.density * self.passive_mm, self.active.density * self.active_mm

    @property
    def mass_fractions(self) -> tuple[float, float]:
        """Mass fractions ``(w_passive, w_active)``."""
        mp, ma = self._masses
        return mp / (mp + ma), ma / (mp + ma)

    @property
    def z_eff(self) -> float:
        """Mass-weighted atomic number."""
        wp, wa = self.mass_fractions
        return wp * self.passive.z + wa * self.active.z

    @property
    def a_eff(self) -> float:
        """Mass-weighted atomic mass, g/mol."""
        wp, wa = self.mass_fractions
        return wp * self.passive.a + wa * self.active.a

    @property
    def density(self) -> float:
        """Mean density, g/cm^3."""
        mp, ma = self._masses
        return (mp + ma) / self.period_mm

    @property
    def x0_gcm2(self) -> float:
        """Radiation length of the mixture, g/cm^2."""
        wp, wa = self.mass_fractions
        return 1.0 / (wp / self.passive.x0_gcm2 + wa / self.active.x0_gcm2)

    @property
    def x0_mm(self) -> float:
        """Radiation length of the mixture, mm."""
        return 10.0 * self.x0_gcm2 / self.density

    @property
    def critical_energy_mev(self) -> float:
        """``E_c,eff = X0_eff sum_i w_i E_c,i / X0_i``, MeV."""
        wp, wa = self.mass_fractions
        return self.x0_gcm2 * (
            wp * self.passive.critical_energy_mev / self.passive.x0_gcm2
            + wa * self.active.critical_energy_mev / self.active.x0_gcm2
        )

    @property
    def moliere_radius_mm(self) -> float:
        """Molière radius of the mixture, mm."""
        return E_SCALE_MEV * self.x0_mm / self.critical_energy_mev

    @property
    def sampling_frequency(self) -> float:
        """``F_S = X0_eff / (d_a + d_p)``: sampling periods per radiation length."""
        return self.x0_mm / self.period_mm

    @property
    def e_over_mip(self) -> float:
        """``ê = 1 / (1 + 0.007 (Z_passive - Z_active))``."""
        return 1.0 / (1.0 + 0.007 * (self.passive.z - self.active.z))

    @property
    def period_x0(self) -> float:
        """Thickness of one sampling period in radiation lengths (sum over both layers)."""
        return self.passive_mm / self.passive.x0_mm + self.active_mm / self.active.x0_mm
