"""Initial conditions: a Gaussian random field and the Zel'dovich approximation.

White noise is drawn plane by plane on the n_side^3 particle lattice, each x plane from its own
generator seeded by (seed, plane index), so the field does not depend on how planes are split
over ranks. Its Fourier modes are scaled to the linear power spectrum at z = 0,
delta_k = w_k sqrt(P(k) n^3 / V), and the displacement is Psi_k = i k delta_k / k^2 (so that
delta = -div Psi). Modes with any component at the lattice Nyquist frequency are dropped.
Particles start at x = q + D(a) Psi(q), p = g_p(a) Psi(q) (see ``Cosmology.momentum_growth``).
"""

from __future__ import annotations

import numpy as np

from physflow.sim_adapters.nbody_pm.cosmology import Cosmology
from physflow.sim_adapters.nbody_pm.mesh import SlabMesh
from physflow.sim_adapters.nbody_pm.particles import Particles


def white_noise(lattice: SlabMesh, seed: int) -> np.ndarray:
    """Unit-variance Gaussian noise on the local slab (nx, n, n) of the lattice."""
    n = lattice.n
    planes = [np.random.default_rng([seed, i]).standard_normal((n, n)) for i in range(lattice.x_start, lattice.x_stop)]
    return np.stack(planes) if planes else np.empty((0, n, n))


def displacement(lattice: SlabMesh, cosmo: Cosmology, seed: int) -> np.ndarray:
    """Zel'dovich displacement Psi (Mpc/h) at D = 1 on the local lattice slab: (nx, n, n, 3)."""
    n = lattice.n
    modes = lattice.forward(white_noise(lattice, seed))
    k2 = lattice.k_squared()
    power = cosmo.linear_power(np.sqrt(k2))
    delta = modes * np.sqrt(power * n**3 / lattice.box**3)
    delta[lattice.nyquist_mask() | (k2 == 0.0)] = 0.0
    inv_k2 = 1.0 / np.where(k2 == 0.0, 1.0, k2)
    psi = np.empty((lattice.nx, n, n, 3))
    for axis, k in enumerate((lattice.kx, lattice.ky, lattice.kz)):
        lattice.backward(1j * k * inv_k2 * delta, out=psi[..., axis])
    return psi


def zeldovich(lattice: SlabMesh, cosmo: Cosmology, seed: int, a: float, mesh_cell: float) -> Particles:
    """One particle per lattice site of this rank's slab, displaced to scale factor a.

    The lattice is shifted by half a PM cell (``mesh_cell``, Mpc/h) along each axis so that,
    when the mesh is an integer multiple of the lattice, particles start at cell centres and
    CIC paints the unperturbed lattice as a uniform density (see ``gravity``).
    """
    n, spacing = lattice.n, lattice.cell
    psi = displacement(lattice, cosmo, seed).reshape(-1, 3)
    i, j, k = np.meshgrid(np.arange(lattice.x_start, lattice.x_stop), np.arange(n), np.arange(n), indexing="ij")
    q = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1) * spacing + 0.5 * mesh_cell
    ids = ((i * n + j) * n + k).ravel().astype(np.int64)
    particles = Particles(q + float(cosmo.growth(a)) * psi, float(cosmo.momentum_growth(a)) * psi, ids)
    particles.wrap(lattice.box)
    return particles
