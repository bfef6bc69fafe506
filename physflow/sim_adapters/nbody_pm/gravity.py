"""Particle-mesh gravity: CIC density on the mesh, FFT Poisson solve, finite-difference force.

In comoving coordinates with t in 1/H0 the peculiar potential phi (units H0^2 (Mpc/h)^2)
obeys laplacian(phi) = 1.5 omega_m delta, and the canonical momentum changes as
dp/da = -grad(phi) / (a^2 E(a)). On the mesh (cell H):

    phi_k = -1.5 omega_m delta_k / (k^2 W_CIC(k)^2),   F_x,k = -i sin(k_x H) / H * phi_k, ...

The CIC window is divided out twice (once for painting, once for reading back) and the gradient
is the two-point finite difference (applied in real space, see ``ForceField``). With particles
starting at mesh-cell centres (see ``initial``) this pair reproduces the linear force of a plane
wave exactly and of any long wave to better than 1%, which keeps large-scale growth right (a 5%
force error at z = 49 becomes ~25% in P(k) at z = 0). Both kernels are real and the gradient is
odd, so with the same CIC kernel for painting and reading back the total force on all particles
is zero to round-off: momentum is conserved.
"""

from __future__ import annotations

import math

import numpy as np

from physflow.sim_adapters.nbody_pm.mesh import SlabMesh, Stencil


def density_modes(mesh: SlabMesh, stencil: Stencil, n_particles: int) -> np.ndarray:
    """Fourier modes of the density contrast delta = rho / mean - 1 painted from the stencil."""
    delta = mesh.paint(stencil)
    delta *= mesh.n**3 / n_particles
    delta -= 1.0
    return mesh.forward(delta)


class ForceField:
    """F = -grad(phi) (H0^2 Mpc/h) on one rank's slab, recomputed in place at every step.

    The gradient kernel -i sin(k H) / H is exactly the DFT of the centred difference
    -(phi[j + 1] - phi[j - 1]) / (2 H), so one inverse FFT of phi and three differences in real
    space give the same force as three inverse FFTs of the gradient modes, for a third of the
    transform work; the x difference needs one neighbouring plane of phi from each side.

    The field and the potential are kept between steps (about 32 bytes per mesh cell over the
    ranks): fresh arrays of this size cost as much in page faults as the arithmetic that fills them.
    """

    def __init__(self, mesh: SlabMesh) -> None:
        self.mesh = mesh
        #: The force, a ghosted slab (3, nx + 1, n + 1, n + 1) whose interiors [:, :nx, :n, :n] are set.
        self.values = mesh.ghosted(3)
        # phi / (2 H) on planes x_start - 1 .. x_stop, so that a centred difference is a subtraction.
        self._half_phi = np.empty((mesh.nx + 2, mesh.n, mesh.n))

    def solve(self, delta_k: np.ndarray, omega_m: float) -> np.ndarray:
        """The force of the density contrast with modes ``delta_k``: ``values``, overwritten."""
        mesh, n, nx = self.mesh, self.mesh.n, self.mesh.nx
        half_phi_k = mesh.modes_work()
        # phi_k / (2 H) = -0.75 omega_m delta_k / (H k^2 W_CIC^2), one kx plane at a time so that
        # no mesh-sized temporaries are made; the k = 0 mode has no potential.
        half = 0.5 * mesh.cell / math.pi  # np.sinc(x) = sin(pi x) / (pi x)
        window_x = np.sinc(mesh.kx[:, 0, 0] * half) ** 4
        window_yz = np.sinc(mesh.ky[0] * half) ** 4 * np.sinc(mesh.kz[0] * half) ** 4  # (ny, nzc)
        k2_yz = mesh.ky[0] ** 2 + mesh.kz[0] ** 2
        denominator = np.empty_like(k2_yz)
        scale = -0.75 * omega_m / mesh.cell
        for i in range(n):
            np.add(k2_yz, mesh.kx[i, 0, 0] ** 2, out=denominator)
            denominator *= window_yz
            denominator *= window_x[i]
            denominator[denominator == 0.0] = np.inf
            np.divide(scale, denominator, out=denominator)
            np.multiply(delta_k[i], denominator, out=half_phi_k[i])
        half_phi = self._half_phi
        mesh.backward(half_phi_k, out=half_phi[1:nx + 1])
        mesh.fill_x_neighbours(half_phi)
        fx, fy, fz = self.values[:, :nx, :n, :n]
        phi = half_phi[1:nx + 1]
        np.subtract(half_phi[:nx], half_phi[2:], out=fx)
        np.subtract(phi[:, :-2], phi[:, 2:], out=fy[:, 1:-1])
        np.subtract(phi[:, -1], phi[:, 1], out=fy[:, 0])
        np.subtract(phi[:, -2], phi[:, 0], out=fy[:, -1])
        np.subtract(phi[:, :, :-2], phi[:, :, 2:], out=fz[:, :, 1:-1])
        np.subtract(phi[:, :, -1], phi[:, :, 1], out=fz[:, :, 0])
        np.subtract(phi[:, :, -2], phi[:, :, 0], out=fz[:, :, -1])
        return self.values
