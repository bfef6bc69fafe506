"""A periodic n^3 mesh split into x-slabs over MPI ranks: distributed real FFT and CIC.

Real space: rank r holds the planes [x_start, x_stop) of axis 0, an array (nx, n, n).
Fourier space: rank r holds the ky rows [y_start, y_stop) of the real FFT, an array
(n, ny, n//2 + 1) with axes (kx, ky, kz). ``forward`` does rfft along z and fft along y on the
local slab, an all-to-all transpose, then fft along x; ``backward`` undoes the three steps.
Each mode sees the same one-dimensional transforms whatever the rank count, so results agree
across decompositions to round-off. numpy's FFT normalisation: forward unnormalised, backward
divided by n^3.

Cloud-in-cell (CIC) assignment uses mesh nodes at x = i * cell. A particle owned by a rank lies
in [x_start, x_stop) * cell, so its stencil reaches one plane past the slab: paint adds that
ghost plane to the next rank, readout fetches it from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from physflow.sim_adapters.heat2d.solver import slab


@dataclass
class Stencil:
    """CIC weights of a set of particles on one rank's slab (+ ghost plane): 8 corners each.

    ``index[c]`` are flat indices into the (nx + 1, n, n) extended slab, ``weight[c]`` the
    weights of corner c; 128 bytes per particle.
    """

    index: list[np.ndarray]
    weight: list[np.ndarray]


class SlabMesh:
    """An n^3 mesh over a periodic box of side ``box`` (Mpc/h), slab-decomposed over ``comm``."""

    def __init__(self, n: int, box: float, comm: MPI.Comm) -> None:
        size, rank = comm.Get_size(), comm.Get_rank()
        if n < size:
            raise ValueError(f"a mesh of {n} planes cannot be split over {size} ranks")
        self.n, self.box, self.comm = n, float(box), comm
        self.size, self.rank = size, rank
        self.cell = self.box / n
        self.x_slabs = [slab(n, size, r) for r in range(size)]
        self.x_start, self.x_stop = self.x_slabs[rank]
        self.nx = self.x_stop - self.x_start
        self.y_start, self.y_stop = self.x_slabs[rank]  # ky rows split like x planes
        self.ny = self.nx
        self.nzc = n // 2 + 1
        #: Which rank owns each x plane.
        self.owner = np.repeat(np.arange(size), [b - a for a, b in self.x_slabs])
        self.right, self.left = (rank + 1) % size, (rank - 1) % size
        # Wavenumbers (h/Mpc) of the local Fourier slab, broadcastable to (n, ny, nzc).
        kf = 2.0 * math.pi / self.box
        k1 = np.fft.fftfreq(n, 1.0 / n) * kf
        self.kx = k1[:, None, None]
        self.ky = k1[self.y_start:self.y_stop][None, :, None]
        self.kz = (np.arange(self.nzc) * kf)[None, None, :]
        self.k_fundamental = kf
        self.k_nyquist = math.pi * n / self.box

    # -- Fourier transforms --------------------------------------------------------------------
    def _alltoallv(self, send: np.ndarray, send_counts: list[int], recv_counts: list[int]) -> np.ndarray:
        recv = np.empty(sum(recv_counts), dtype=np.complex128)
        sdispl = np.concatenate([[0], np.cumsum(send_counts)[:-1]]).tolist()
        rdispl = np.concatenate([[0], np.cumsum(recv_counts)[:-1]]).tolist()
        self.comm.Alltoallv([send, (send_counts, sdispl), MPI.C_DOUBLE_COMPLEX],
                            [recv, (recv_counts, rdispl), MPI.C_DOUBLE_COMPLEX])
        return recv

    def forward(self, real: np.ndarray) -> np.ndarray:
        """Fourier modes (n, ny, nzc) of the real field whose local slab is ``real`` (nx, n, n)."""
        n, nzc = self.n, self.nzc
        a = np.fft.fft(np.fft.rfft(real, axis=2), axis=1)  # (nx, n, nzc)
        send = np.ascontiguousarray(a.transpose(1, 0, 2)).ravel()  # ky-major: blocks are contiguous
        widths = [b - s for s, b in self.x_slabs]
        recv = self._alltoallv(send, [w * self.nx * nzc for w in widths], [self.ny * w * nzc for w in widths])
        blocks, offset = [], 0
        for w in widths:  # block from rank s: (ny, nx_s, nzc)
            blocks.append(recv[offset:offset + self.ny * w * nzc].reshape(self.ny, w, nzc).transpose(1, 0, 2))
            offset += self.ny * w * nzc
        full = np.concatenate(blocks, axis=0) if blocks else np.empty((n, self.ny, nzc), complex)
        return np.fft.fft(full, axis=0)

    def backward(self, modes: np.ndarray) -> np.ndarray:
        """Local real slab (nx, n, n) of the field whose local Fourier rows are ``modes``."""
        n, nzc = self.n, self.nzc
        b = np.ascontiguousarray(np.fft.ifft(modes, axis=0))  # (n, ny, nzc): x blocks contiguous
        widths = [e - s for s, e in self.x_slabs]
        recv = self._alltoallv(b.ravel(), [w * self.ny * nzc for w in widths], [self.nx * w * nzc for w in widths])
        blocks, offset = [], 0
        for w in widths:  # block from rank s: (nx, ny_s, nzc)
            blocks.append(recv[offset:offset + self.nx * w * nzc].reshape(self.nx, w, nzc))
            offset += self.nx * w * nzc
        a = np.concatenate(blocks, axis=1)
        return np.fft.irfft(np.fft.ifft(a, axis=1), n=n, axis=2)

    def k_squared(self) -> np.ndarray:
        """|k|^2 (h/Mpc)^2 of the local Fourier rows, shape (n, ny, nzc)."""
        return self.kx**2 + self.ky**2 + self.kz**2

    def cic_window(self) -> np.ndarray:
        """Fourier window W_CIC(k) = prod_i sinc^2(k_i H / 2) of CIC assignment (1 at k = 0)."""
        half = 0.5 * self.cell / math.pi  # np.sinc(x) = sin(pi x) / (pi x)
        return (np.sinc(self.kx * half) * np.sinc(self.ky * half) * np.sinc(self.kz * half)) ** 2

    def mode_multiplicity(self) -> np.ndarray:
        """How many modes of the full (complex) FFT each stored rfft mode stands for: 1 or 2."""
        mult = np.full((1, 1, self.nzc), 2.0)
        mult[..., 0] = 1.0
        if self.n % 2 == 0:
            mult[..., -1] = 1.0
        return mult

    def nyquist_mask(self) -> np.ndarray:
        """True for local modes with any component at the Nyquist frequency (even n only)."""
        if self.n % 2:
            return np.zeros((1, 1, 1), dtype=bool)
        kn = self.k_nyquist * (1 - 1e-12)
        return (np.abs(self.kx) >= kn) | (np.abs(self.ky) >= kn) | (np.abs(self.kz) >= kn)

    # -- real-space slab geometry --------------------------------------------------------------
    def plane_of(self, pos_x: np.ndarray) -> np.ndarray:
        """Index of the mesh plane at or below each x position (Mpc/h), in [0, n)."""
        return np.floor(pos_x / self.cell).astype(np.intp) % self.n

    def owner_of(self, pos_x: np.ndarray) -> np.ndarray:
        """Rank whose slab holds each x position (Mpc/h)."""
        return self.owner[self.plane_of(pos_x)]

    def stencil(self, pos: np.ndarray) -> Stencil:
        """CIC stencil of particles at ``pos`` (N, 3) Mpc/h, all inside this rank's slab."""
        n = self.n
        u = pos / self.cell
        base = np.floor(u)
        frac = u - base
        base = base.astype(np.intp) % n
        ix = base[:, 0] - self.x_start
        iy, iz = base[:, 1], base[:, 2]
        wx = (1.0 - frac[:, 0], frac[:, 0])
        wy = (1.0 - frac[:, 1], frac[:, 1])
        wz = (1.0 - frac[:, 2], frac[:, 2])
        jx = (ix, ix + 1)
        jy = (iy, (iy + 1) % n)
        jz = (iz, (iz + 1) % n)
        index, weight = [], []
        for a in (0, 1):
            for b in (0, 1):
                wab = wx[a] * wy[b]
                row = (jx[a] * n + jy[b]) * n
                for c in (0, 1):
                    index.append(row + jz[c])
                    weight.append(wab * wz[c])
        return Stencil(index, weight)

    def paint(self, stencil: Stencil) -> np.ndarray:
        """Particle count per cell of the local slab (nx, n, n), CIC-weighted (each particle adds 1)."""
        n, cells = self.n, (self.nx + 1) * self.n * self.n
        ext = np.zeros(cells)
        for idx, w in zip(stencil.index, stencil.weight, strict=True):
            ext += np.bincount(idx, weights=w, minlength=cells)
        ext = ext.reshape(self.nx + 1, n, n)
        ghost = np.empty((n, n))
        self.comm.Sendrecv(np.ascontiguousarray(ext[-1]), dest=self.right, recvbuf=ghost, source=self.left)
        ext[0] += ghost
        return ext[:-1]

    def readout(self, field: np.ndarray, stencil: Stencil) -> np.ndarray:
        """CIC-interpolate a local field (nx, n, n, c) to the stencil's particles: (N, c)."""
        c = field.shape[3]
        ext = np.empty((self.nx + 1,) + field.shape[1:])
        ext[:-1] = field
        self.comm.Sendrecv(np.ascontiguousarray(field[0]), dest=self.left, recvbuf=ext[-1], source=self.right)
        flat = ext.reshape(-1, c)
        out = np.zeros((len(stencil.weight[0]) if stencil.weight else 0, c))
        for idx, w in zip(stencil.index, stencil.weight, strict=True):
            out += flat[idx] * w[:, None]
        return out
