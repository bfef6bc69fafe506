"""A periodic n^3 mesh split into x-slabs over MPI ranks: distributed real FFT and CIC.

Real space: rank r holds the planes [x_start, x_stop) of axis 0, an array (nx, n, n).
Fourier space: rank r holds the ky rows [y_start, y_stop) of the real FFT, an array
(n, ny, n//2 + 1) with axes (kx, ky, kz). ``forward`` does rfft along z and fft along y on the
local slab, an all-to-all transpose, then fft along x; ``backward`` undoes the three steps.
Each mode sees the same one-dimensional transforms whatever the rank count, so results agree
across decompositions to round-off. numpy's FFT normalisation: forward unnormalised, backward
divided by n^3.

The transforms work in place in complex work arrays that the mesh keeps between calls, because
a fresh mesh-sized temporary costs about as much in page faults and zeroing as the FFT pass that
fills it. How the transpose moves data (``transport``):

- ``local``: one rank; slab and rows are the same array and the transpose is the identity.
- ``shared``: all ranks on one node (``auto`` picks it then). The work array is one (n, n, nzc)
  array in an MPI-3 shared-memory window; a rank's slab is its planes, its rows are a strided
  view across every rank's planes, and the transpose is a barrier: nothing is copied. Barriers
  also open each transform, so no rank writes what another still reads.
- ``alltoall``: ranks on several nodes. Each rank has its own slab and rows arrays, and
  ``Alltoallw`` sends and receives strided blocks with MPI vector datatypes, so no transposed
  copy is made on either side.

The per-mode arithmetic is the same in all three, so they agree to the last bit.

Cloud-in-cell (CIC) assignment uses mesh nodes at x = i * cell. A particle owned by a rank lies
in [x_start, x_stop) * cell, so its stencil reaches one plane past the slab, and one row and
one column past the periodic y and z extent. Paint and readout therefore work on a *ghosted*
slab of shape (nx + 1, n + 1, n + 1): the x ghost plane belongs to the next rank (paint adds it
there, readout fetches it from there), the y and z ghosts are this rank's own row 0 and column
0. With the ghosts every particle's eight corners sit at fixed offsets from its lower corner.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from mpi4py import MPI

from physflow.sim_adapters.decomposition import slab

#: Particles per chunk of ``SlabMesh.readout`` (128 kB per float64 buffer: the chunk's gathers
#: and weights stay in a core's L2 cache).
READOUT_CHUNK = 16384
#: Bytes of one complex128 mode (the MPI displacements of ``Alltoallw`` are in bytes).
_COMPLEX_BYTES = 16
#: Environment variable that picks the transpose (``auto``, ``shared`` or ``alltoall``) where the
#: caller does not: the tests and benchmarks compare the two on one node.
TRANSPORT_ENV = "PHYSFLOW_NBODY_TRANSPOSE"

Transport = Literal["local", "shared", "alltoall"]


def choose_transport(comm: MPI.Comm, asked: str | None = None) -> Transport:
    """How a mesh on ``comm`` transposes (module docstring): ``asked`` (default: the environment
    variable ``TRANSPORT_ENV``, else ``auto``) is ``auto``, ``shared`` or ``alltoall`` (collective)."""
    asked = asked or os.environ.get(TRANSPORT_ENV) or "auto"
    if asked not in ("auto", "shared", "alltoall"):
        raise ValueError(f"{TRANSPORT_ENV}={asked!r}: expected auto, shared or alltoall")
    if comm.Get_size() == 1:
        return "local"
    if asked == "alltoall":
        return "alltoall"
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    one_node = node.Get_size() == comm.Get_size()
    node.Free()
    if asked == "shared" and not one_node:
        raise ValueError("a shared-memory transpose needs every rank on one node")
    return "shared" if one_node else "alltoall"


@dataclass
class Stencil:
    """CIC stencils of a set of particles on one rank's ghosted slab (see ``SlabMesh.ghosted``).

    ``base[i]`` is the flat index of particle i's lower corner in the (nx + 1, n + 1, n + 1)
    ghosted slab; its eight corners are ``base[i] + SlabMesh.corner_offsets``. ``weight[c, i]``
    is the CIC weight of corner c (the eight sum to 1). 72 bytes per particle.
    """

    base: np.ndarray
    weight: np.ndarray


class SlabMesh:
    """An n^3 mesh over a periodic box of side ``box`` (Mpc/h), slab-decomposed over ``comm``."""

    def __init__(self, n: int, box: float, comm: MPI.Comm, transport: str | None = None) -> None:
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
        #: Flat offsets of a CIC stencil's eight corners in the ghosted slab, (dx, dy, dz) in C order.
        ghosted = n + 1
        self.corner_offsets = np.array([(dx * ghosted + dy) * ghosted + dz
                                        for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)], dtype=np.intp)
        self.transport = choose_transport(comm, transport)
        self._slab_scratch: np.ndarray | None = None  # (nx, n, nzc) complex
        self._rows_scratch: np.ndarray | None = None  # (n, ny, nzc) complex; the same array on one rank
        self._window: MPI.Win | None = None  # holds both (as views) with the shared transport

    # -- Fourier transforms --------------------------------------------------------------------
    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """The complex work arrays: x-slab (nx, n, nzc) and ky-rows (n, ny, nzc), made on first use
        (collective with the shared transport)."""
        if self._slab_scratch is None:
            n, nzc = self.n, self.nzc
            if self.transport == "shared":
                size = n * n * nzc * _COMPLEX_BYTES if self.rank == 0 else 0
                self._window = MPI.Win.Allocate_shared(size, _COMPLEX_BYTES, comm=self.comm)
                memory, _ = self._window.Shared_query(0)
                whole = np.ndarray(buffer=memory, dtype=np.complex128, shape=(n, n, nzc))
                self._slab_scratch = whole[self.x_start:self.x_stop]
                self._rows_scratch = whole[:, self.y_start:self.y_stop]
            else:
                self._slab_scratch = np.empty((self.nx, n, nzc), dtype=np.complex128)
                self._rows_scratch = (self._slab_scratch if self.transport == "local" else
                                      np.empty((n, self.ny, nzc), dtype=np.complex128))
        return self._slab_scratch, self._rows_scratch

    def _sync(self) -> None:
        """With the shared transport, wait until every rank is done with the shared work array's
        previous phase (a no-op otherwise)."""
        if self.transport == "shared":
            self.comm.Barrier()

    def _transpose(self, slab_array: np.ndarray, rows: np.ndarray, to_rows: bool) -> None:
        """Between the x-slab layout (nx, n, nzc) and the ky-row layout (n, ny, nzc).

        With ``alltoall``, rank s gets (to_rows) or gives the block slab_array[:, y_s:y_e, :] of
        this rank, a strided MPI vector, which in rows is the contiguous block of planes
        [x_start, x_stop) of this rank. Shared: the two are views of one array; local: the same.
        """
        if self.transport != "alltoall":
            self._sync()
            return
        n, nzc = self.n, self.nzc
        widths = [e - s for s, e in self.x_slabs]
        strided = [MPI.C_DOUBLE_COMPLEX.Create_vector(self.nx, w * nzc, n * nzc).Commit() for w in widths]
        strided_displ = [s * nzc * _COMPLEX_BYTES for s, _ in self.x_slabs]
        contiguous = [MPI.C_DOUBLE_COMPLEX] * self.size
        block_counts = [w * self.ny * nzc for w in widths]
        block_displ = [s * self.ny * nzc * _COMPLEX_BYTES for s, _ in self.x_slabs]
        ones = [1] * self.size
        slab_spec = [slab_array, (ones, strided_displ), strided]
        rows_spec = [rows, (block_counts, block_displ), contiguous]
        try:
            if to_rows:
                self.comm.Alltoallw(slab_spec, rows_spec)
            else:
                self.comm.Alltoallw(rows_spec, slab_spec)
        finally:
            for datatype in strided:
                datatype.Free()

    def release_work(self) -> None:
        """Free the complex work arrays (they are made again by the next transform; collective
        with the shared transport)."""
        self._slab_scratch = self._rows_scratch = None
        if self._window is not None:
            self._window.Free()
            self._window = None

    def modes_work(self) -> np.ndarray:
        """The mesh's complex work array (n, ny, nzc): ``backward`` transforms it in place when it is
        passed as ``modes``, which saves a mesh-sized copy. Every transform overwrites it."""
        return self._scratch()[1]

    def forward(self, real: np.ndarray) -> np.ndarray:
        """Fourier modes (n, ny, nzc) of the real field whose local slab is ``real`` (nx, n, n).

        ``real`` may be a strided view (e.g. the interior of a ghosted slab); it is not modified.
        The result is a new array.
        """
        slab_array, rows = self._scratch()
        self._sync()
        np.fft.rfft(real, axis=2, out=slab_array)
        np.fft.fft(slab_array, axis=1, out=slab_array)
        self._transpose(slab_array, rows, to_rows=True)
        return np.fft.fft(rows, axis=0)

    def backward(self, modes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Local real slab (nx, n, n) of the field whose local Fourier rows are ``modes``.

        ``modes`` (n, ny, nzc) is not modified unless it is ``modes_work()``. With ``out`` (any
        (nx, n, n) float64 view, e.g. planes of a larger array) the slab is written there and
        returned.
        """
        slab_array, rows = self._scratch()
        self._sync()
        np.fft.ifft(modes, axis=0, out=rows)
        self._transpose(slab_array, rows, to_rows=False)
        np.fft.ifft(slab_array, axis=1, out=slab_array)
        return np.fft.irfft(slab_array, n=self.n, axis=2, out=out)

    def k_squared(self) -> np.ndarray:
        """|k|^2 (h/Mpc)^2 of the local Fourier rows, shape (n, ny, nzc)."""
        return self.kx**2 + self.ky**2 + self.kz**2

    def cic_window(self) -> np.ndarray:
        """Fourier window W_CIC(k) = prod_i sinc^2(k_i H / 2) of CIC assignment (1 at k = 0)."""
        half = 0.5 * self.cell / math.pi  # np.sinc(x) = sin(pi x) / (pi x)
        # Squared per axis first: one full-size product instead of three full-size temporaries.
        return (np.sinc(self.kx * half) ** 2 * np.sinc(self.ky * half) ** 2) * np.sinc(self.kz * half) ** 2

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
        n, ghosted = self.n, self.n + 1
        u = pos / self.cell
        lower = np.floor(u)
        frac = np.subtract(u, lower, out=u)
        cell = lower.astype(np.intp) % n
        base = ((cell[:, 0] - self.x_start) * ghosted + cell[:, 1]) * ghosted + cell[:, 2]
        near = 1.0 - frac
        weight = np.empty((2, 2, 2, len(pos)))
        for dy, wy in enumerate((near[:, 1], frac[:, 1])):
            for dz, wz in enumerate((near[:, 2], frac[:, 2])):
                wyz = wy * wz
                np.multiply(near[:, 0], wyz, out=weight[0, dy, dz])
                np.multiply(frac[:, 0], wyz, out=weight[1, dy, dz])
        return Stencil(base, weight.reshape(8, len(pos)))

    def fill_x_neighbours(self, field: np.ndarray) -> None:
        """Fill planes 0 and nx + 1 of ``field`` (nx + 2, ...), whose planes 1..nx are the local
        slab, with the last plane of the left neighbour's slab and the first of the right's."""
        nx = self.nx
        self.comm.Sendrecv(np.ascontiguousarray(field[nx]), dest=self.right, recvbuf=field[0], source=self.left)
        self.comm.Sendrecv(np.ascontiguousarray(field[1]), dest=self.left, recvbuf=field[nx + 1], source=self.right)

    def ghosted(self, components: int) -> np.ndarray:
        """An uninitialised ghosted slab (components, nx + 1, n + 1, n + 1) of float64.

        One contiguous ghosted slab per component: a component's interior ``[c, :nx, :n, :n]``
        is the local slab, and ``readout`` fills the ghost cells. Components apart (not
        interleaved as (..., c)) so that writing one component and gathering it at the particles
        touch only that component's memory.
        """
        return np.empty((components, self.nx + 1, self.n + 1, self.n + 1))

    def paint(self, stencil: Stencil) -> np.ndarray:
        """Particle count per cell of the local slab (nx, n, n), CIC-weighted (each particle adds 1).

        The result is the interior view of a ghosted array (strided; write to it in place).
        """
        n, nx, ghosted = self.n, self.nx, self.n + 1
        corners = self.corner_offsets[:, None] + stencil.base  # (8, N), 64 bytes per particle
        ext = np.bincount(corners.ravel(), weights=stencil.weight.ravel(), minlength=(nx + 1) * ghosted**2)
        del corners
        ext = ext.reshape(nx + 1, ghosted, ghosted)
        ext[:, :, 0] += ext[:, :, n]  # periodic z, then y: the (y, z) = (n, n) corner ends in (0, 0)
        ext[:, 0, :] += ext[:, n, :]
        ghost = np.empty((ghosted, ghosted))
        self.comm.Sendrecv(ext[nx], dest=self.right, recvbuf=ghost, source=self.left)
        ext[0] += ghost
        return ext[:nx, :n, :n]

    def readout(self, field: np.ndarray, stencil: Stencil) -> np.ndarray:
        """CIC-interpolate a field to the stencil's particles: (N, c).

        ``field`` is a ghosted slab (c, nx + 1, n + 1, n + 1) (see ``ghosted``) whose interiors
        hold the local values; its ghost cells are filled here (the x ghost plane from the next
        rank).

        Particles go in chunks of ``READOUT_CHUNK``, each through all eight corners and all
        components before the next: particles are kept in lattice order, so a chunk touches a few
        mesh planes, which stay in cache for its 8 c gathers. One whole-array pass per corner
        instead streams the field from memory 8 c times, and it was the largest cost of a step.
        """
        n, nx = self.n, self.nx
        for component in field:
            component[:nx, :n, n] = component[:nx, :n, 0]
            component[:nx, n, :] = component[:nx, 0, :]
            self.comm.Sendrecv(component[0], dest=self.left, recvbuf=component[nx], source=self.right)
        flats = [component.reshape(-1) for component in field]
        count = len(stencil.base)
        if count and (stencil.base.min() < 0 or stencil.base.max() + self.corner_offsets[-1] >= flats[0].size):
            raise ValueError("a particle's CIC stencil reaches outside this rank's ghosted slab")
        # The field shifted by each corner's offset: gathering at ``base`` from view c is corner c.
        shifted = [[flat[offset:] for offset in self.corner_offsets] for flat in flats]
        out = np.empty((len(field), count))
        values = np.empty(min(count, READOUT_CHUNK))
        for start in range(0, count, READOUT_CHUNK):
            stop = min(count, start + READOUT_CHUNK)
            base, weight, buffer = stencil.base[start:stop], stencil.weight[:, start:stop], values[:stop - start]
            for views, acc in zip(shifted, out[:, start:stop], strict=True):
                # mode="clip": with ``out`` and the default mode="raise" numpy gathers into a
                # temporary first (so that a bad index leaves ``out`` untouched), 3-8x slower;
                # every index was checked to lie inside the slab above, so nothing is clipped.
                np.take(views[0], base, out=acc, mode="clip")
                acc *= weight[0]
                for c in range(1, 8):
                    np.take(views[c], base, out=buffer, mode="clip")
                    buffer *= weight[c]
                    acc += buffer
        return out.T
