"""The numerical settings of an nbody_pm run (what a campaign keeps fixed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from physflow.sim_adapters.nbody_pm.cosmology import RHO_CRIT, Cosmology


@dataclass(frozen=True)
class Settings:
    """Box side ``box_size`` (Mpc/h), ``n_side``^3 particles, ``n_mesh``^3 PM cells, ``steps`` time
    steps uniform in a from ``z_init`` to 0, and the ``seed`` of the initial conditions.

    The defaults (110 592 particles in (128 Mpc/h)^3, ~2-3 s on 2 ranks) resolve halos from
    ~3e13 Msun/h and give a few hundred of them: enough for a halo mass function to tell
    (omega_m, sigma8) apart. ``n_mesh = 2 n_side`` is the resolution the force was tuned for.
    """

    box_size: float = 128.0
    n_side: int = 48
    n_mesh: int = 96
    steps: int = 10
    seed: int = 7
    z_init: float = 49.0

    def problems(self, ranks: int = 1) -> list[str]:
        """What is wrong with these settings for a run on ``ranks`` ranks (empty when fine)."""
        out = []
        if not (math.isfinite(self.box_size) and self.box_size > 0):
            out.append(f"box_size={self.box_size} must be positive")
        if self.n_side < 4 or self.n_mesh < 8:
            out.append(f"need n_side >= 4 and n_mesh >= 8 (got {self.n_side}, {self.n_mesh})")
        if min(self.n_side, self.n_mesh) < ranks:
            out.append(f"n_side={self.n_side} and n_mesh={self.n_mesh} must be at least the rank count {ranks}")
        if self.steps < 1:
            out.append(f"steps={self.steps} must be at least 1")
        if not (math.isfinite(self.z_init) and self.z_init > 0):
            out.append(f"z_init={self.z_init} must be positive")
        if self.seed < 0:
            out.append(f"seed={self.seed} must be non-negative")
        return out

    @property
    def a_init(self) -> float:
        """Scale factor at the start."""
        return 1.0 / (1.0 + self.z_init)

    @property
    def shot_noise(self) -> float:
        """Poisson shot noise V / N_particles, (Mpc/h)^3."""
        return self.box_size**3 / self.n_side**3

    def particle_mass(self, cosmo: Cosmology) -> float:
        """Mass of one particle, Msun/h: rho_crit omega_m box^3 / n_side^3."""
        return RHO_CRIT * cosmo.omega_m * (self.box_size / self.n_side) ** 3
