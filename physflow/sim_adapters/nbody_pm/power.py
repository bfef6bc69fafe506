"""The matter power spectrum P(k) measured from density modes on the slab-decomposed mesh.

P(k) = |delta_k|^2 V / n^6 / W_CIC(k)^2, where W_CIC = prod_i sinc^2(k_i H / 2) is the
cloud-in-cell window (H the cell size) that painting imprinted. Modes are averaged in shells of
width k_F = 2 pi / box, centred on k_F, 2 k_F, ..., up to (n/2 - 1) k_F (below Nyquist). Shot
noise, V / N_particles (Mpc/h)^3, is *not* subtracted; the caller records it. ``nmodes`` counts
modes of the full complex FFT in each shell (k and -k both), so a shell's cosmic-variance error
is P sqrt(2 / nmodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from physflow.sim_adapters.nbody_pm.mesh import SlabMesh


@dataclass
class PowerSpectrum:
    """Shell-averaged P(k): k (h/Mpc, mode-weighted mean), pk ((Mpc/h)^3), nmodes per shell."""

    k: np.ndarray
    pk: np.ndarray
    nmodes: np.ndarray


def measure_power(mesh: SlabMesh, delta_k: np.ndarray) -> PowerSpectrum:
    """Shell-averaged, CIC-deconvolved P(k) of the density contrast whose modes are ``delta_k``."""
    n, kf = mesh.n, mesh.k_fundamental
    n_bins = n // 2 - 1
    kmag = np.sqrt(mesh.k_squared())
    shell = np.floor(kmag / kf + 0.5).astype(np.intp) - 1  # shell j holds |k| in [(j+.5), (j+1.5)) k_F
    weight = np.broadcast_to(mesh.mode_multiplicity(), kmag.shape)
    power = np.abs(delta_k) ** 2 * (mesh.box**3 / float(n) ** 6) / mesh.cic_window() ** 2
    keep = (shell >= 0) & (shell < n_bins)
    s, w = shell[keep], weight[keep]
    sums = np.stack([np.bincount(s, weights=w * x, minlength=n_bins) for x in (power[keep], kmag[keep])] +
                    [np.bincount(s, weights=w, minlength=n_bins)])
    mesh.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    counts = sums[2]
    return PowerSpectrum(k=sums[1] / counts, pk=sums[0] / counts, nmodes=counts)
