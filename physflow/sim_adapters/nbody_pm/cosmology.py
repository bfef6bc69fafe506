"""Flat LCDM: background, linear growth, the linear matter power spectrum, Sheth-Tormen halos.

Units throughout: lengths in Mpc/h, wavenumbers in h/Mpc, power in (Mpc/h)^3, masses in Msun/h,
densities in (Msun/h)/(Mpc/h)^3, time in 1/H0 (so that H(a)/H0 = E(a)).

- Growth D(a) is the growing mode of flat LCDM without radiation (Omega_L = 1 - omega_m),
  D(a) ∝ E(a) ∫_0^a da' / (a' E(a'))^3, normalised to D(1) = 1.
- The transfer function is Eisenstein & Hu (1998, ApJ 496, 605), eqs. 26-31: the fit without
  baryon acoustic wiggles, but with baryon suppression of the shape.
- P(k) = A k^n_s T(k)^2 D(a)^2 with A chosen so that the rms of the z = 0 linear density in
  top-hat spheres of radius 8 Mpc/h is sigma8.
- The halo mass function is Sheth & Tormen (1999) with sigma(M) from the same P(k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Critical density today, h^2 Msun/Mpc^3, i.e. (Msun/h)/(Mpc/h)^3.
RHO_CRIT = 2.775e11
#: CMB temperature today (K), enters the Eisenstein & Hu fit.
T_CMB = 2.7255
#: Linear collapse threshold used by the Sheth-Tormen mass function.
DELTA_C = 1.686
#: Sheth & Tormen (1999) parameters: amplitude, ellipsoidal a, low-mass slope p.
ST_A, ST_a, ST_p = 0.3222, 0.707, 0.3

# Gauss-Legendre nodes on [0, 1] for the growth integral (the integrand is smooth after x = a s^2).
_GL_S, _GL_W = (0.5 * (v + 1.0) if i == 0 else 0.5 * v for i, v in enumerate(np.polynomial.legendre.leggauss(64)))
# ln k grid (h/Mpc) for sigma(R): wide enough that the integrand vanishes at both ends.
_LNK = np.linspace(math.log(1e-5), math.log(1e3), 4096)


def top_hat_window(x: np.ndarray) -> np.ndarray:
    """Fourier transform of a unit-volume spherical top hat, W(x = kR) = 3 (sin x - x cos x) / x^3."""
    x = np.asarray(x, dtype=float)
    small = x < 1e-3
    xs = np.where(small, 1.0, x)
    w = 3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3
    return np.where(small, 1.0 - x * x / 10.0, w)


@dataclass(frozen=True)
class Cosmology:
    """A flat LCDM model; omega_m and omega_b are density parameters today (not times h^2)."""

    omega_m: float = 0.3089
    omega_b: float = 0.0486
    h: float = 0.6774
    n_s: float = 0.9667
    sigma8: float = 0.8159
    _amplitude: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.omega_m <= 1.0:
            raise ValueError(f"omega_m={self.omega_m} must be in (0, 1]")
        if not 0.0 <= self.omega_b < self.omega_m:
            raise ValueError(f"omega_b={self.omega_b} must be in [0, omega_m)")
        if not (0.2 <= self.h <= 2.0 and 0.5 <= self.n_s <= 1.5 and 0.0 < self.sigma8 <= 3.0):
            raise ValueError("need 0.2 <= h <= 2, 0.5 <= n_s <= 1.5 and 0 < sigma8 <= 3")
        object.__setattr__(self, "_amplitude", 1.0)
        amp = (self.sigma8 / float(self.sigma_r(8.0))) ** 2
        object.__setattr__(self, "_amplitude", amp)

    # -- background --------------------------------------------------------------------------
    @property
    def omega_l(self) -> float:
        """Cosmological-constant density parameter of the flat model."""
        return 1.0 - self.omega_m

    @property
    def mean_density(self) -> float:
        """Mean matter density today, (Msun/h)/(Mpc/h)^3."""
        return RHO_CRIT * self.omega_m

    def efunc(self, a: np.ndarray | float) -> np.ndarray:
        """E(a) = H(a)/H0 (dimensionless)."""
        a = np.asarray(a, dtype=float)
        return np.sqrt(self.omega_m / a**3 + self.omega_l)

    # -- linear growth -----------------------------------------------------------------------
    def _integral(self, a: np.ndarray) -> np.ndarray:
        # I(a) = ∫_0^a dx/(x E(x))^3 = 2 a^(5/2) ∫_0^1 s^4 (Om + OL a^3 s^6)^(-3/2) ds  (x = a s^2)
        a = np.asarray(a, dtype=float)[..., None]
        s = _GL_S
        integrand = s**4 * (self.omega_m + self.omega_l * a**3 * s**6) ** -1.5
        return 2.0 * a[..., 0] ** 2.5 * (integrand @ _GL_W)

    def _growth_raw(self, a: np.ndarray | float) -> np.ndarray:
        return 2.5 * self.omega_m * self.efunc(a) * self._integral(a)

    def growth(self, a: np.ndarray | float) -> np.ndarray:
        """Linear growth factor D(a), D(1) = 1 (D = a in matter domination)."""
        return self._growth_raw(a) / self._growth_raw(1.0)

    def dgrowth_da(self, a: np.ndarray | float) -> np.ndarray:
        """dD/da of the normalised growth factor."""
        a = np.asarray(a, dtype=float)
        e = self.efunc(a)
        de_da = -1.5 * self.omega_m / (a**4 * e)
        raw = 2.5 * self.omega_m * (de_da * self._integral(a) + 1.0 / (a**3 * e * e))
        return raw / self._growth_raw(1.0)

    def momentum_growth(self, a: np.ndarray | float) -> np.ndarray:
        """g_p(a) = a^3 E(a) dD/da: the canonical momentum p = a^2 dx/dt (units H0 Mpc/h) per
        unit linear displacement in linear theory."""
        a = np.asarray(a, dtype=float)
        return a**3 * self.efunc(a) * self.dgrowth_da(a)

    def force_growth(self, a: np.ndarray | float) -> np.ndarray:
        """g_f(a) = a^2 E(a) dg_p/da = 1.5 omega_m D(a): the PM force per unit linear displacement."""
        return 1.5 * self.omega_m * self.growth(a)

    # -- linear power spectrum ---------------------------------------------------------------
    def transfer(self, k: np.ndarray) -> np.ndarray:
        """Eisenstein & Hu (1998) no-wiggle transfer function T(k), k in h/Mpc."""
        k = np.asarray(k, dtype=float)
        om_h2 = self.omega_m * self.h**2
        ob_h2 = self.omega_b * self.h**2
        f_b = self.omega_b / self.omega_m
        theta = T_CMB / 2.7
        sound = 44.5 * math.log(9.83 / om_h2) / math.sqrt(1.0 + 10.0 * ob_h2**0.75)  # Mpc
        alpha = 1.0 - 0.328 * math.log(431.0 * om_h2) * f_b + 0.38 * math.log(22.3 * om_h2) * f_b**2
        gamma = self.omega_m * self.h * (alpha + (1.0 - alpha) / (1.0 + (0.43 * k * self.h * sound) ** 4))
        q = k * theta**2 / gamma
        l0 = np.log(2.0 * math.e + 1.8 * q)
        c0 = 14.2 + 731.0 / (1.0 + 62.5 * q)
        return l0 / (l0 + c0 * q * q)

    def linear_power(self, k: np.ndarray, a: float = 1.0) -> np.ndarray:
        """Linear matter power spectrum P(k, a), (Mpc/h)^3, for k in h/Mpc (P = 0 at k = 0)."""
        k = np.asarray(k, dtype=float)
        kk = np.where(k > 0, k, 1.0)
        p = self._amplitude * kk**self.n_s * self.transfer(kk) ** 2 * float(self.growth(a)) ** 2
        return np.where(k > 0, p, 0.0)

    def sigma_r(self, radius: np.ndarray | float, a: float = 1.0) -> np.ndarray:
        """rms linear density contrast in top-hat spheres of ``radius`` Mpc/h at scale factor a."""
        r = np.atleast_1d(np.asarray(radius, dtype=float))
        k = np.exp(_LNK)
        integrand = k**3 * self.linear_power(k, a) * top_hat_window(np.outer(r, k)) ** 2 / (2.0 * math.pi**2)
        var = np.trapezoid(integrand, _LNK, axis=-1)
        out = np.sqrt(var)
        return out if np.ndim(radius) else out[0]

    def sigma_m(self, mass: np.ndarray | float, a: float = 1.0) -> np.ndarray:
        """rms linear density contrast on the mass scale M (Msun/h): R = (3M / 4 pi rho_m)^(1/3)."""
        radius = (3.0 * np.asarray(mass, dtype=float) / (4.0 * math.pi * self.mean_density)) ** (1.0 / 3.0)
        return self.sigma_r(radius, a)

    # -- halos -------------------------------------------------------------------------------
    def sheth_tormen(self, mass: np.ndarray, a: float = 1.0) -> np.ndarray:
        """Sheth-Tormen halo mass function dn/dlnM, (Mpc/h)^-3, at masses M (Msun/h).

        dn/dlnM = (rho_m / M) nu f(nu) |dln sigma / dln M|, with nu = delta_c / sigma(M) and
        nu f(nu) = A sqrt(2a/pi) [1 + (a nu^2)^-p] nu exp(-a nu^2 / 2).
        """
        mass = np.atleast_1d(np.asarray(mass, dtype=float))
        step = 0.01  # in ln M, for the logarithmic slope of sigma(M)
        sig = self.sigma_m(mass, a)
        slope = (np.log(self.sigma_m(mass * math.exp(step), a)) - np.log(self.sigma_m(mass * math.exp(-step), a)))
        slope /= 2.0 * step
        nu = DELTA_C / sig
        anu2 = ST_a * nu * nu
        nu_f = ST_A * math.sqrt(2.0 * ST_a / math.pi) * (1.0 + anu2**-ST_p) * nu * np.exp(-0.5 * anu2)
        return self.mean_density / mass * nu_f * np.abs(slope)
