"""Dark-matter particles of one rank, and their migration between ranks' slabs.

Positions are comoving, in Mpc/h, wrapped into the periodic box [0, box). Momenta are the
canonical p = a^2 dx/dt with t in units of 1/H0, so p is in Mpc/h (times H0); the peculiar
velocity is v = p / a * 100 km/s. Each particle carries its global lattice index as its id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from physflow.sim_adapters.nbody_pm.mesh import SlabMesh

#: Values per particle in a migration message: x, y, z, px, py, pz, id (ids < 2^53 are exact).
_PACKED = 7


@dataclass
class Particles:
    """The particles one rank owns: pos (N, 3) Mpc/h, mom (N, 3) H0 Mpc/h, ids (N,) int64."""

    pos: np.ndarray
    mom: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def wrap(self, box: float) -> None:
        """Put positions back into [0, box) Mpc/h."""
        pos = self.pos
        # A step moves particles by far less than a box, and then one shift by +-box is exact and
        # equals np.mod (for x in [-box, 0) and [box, 2 box)) at a quarter of its cost.
        pos[pos < 0.0] += box
        pos[pos >= box] -= box  # also turns x + box == box (tiny negative x) into 0
        if pos.size and (pos.min() < 0.0 or pos.max() >= box):  # moved by a box or more
            np.mod(pos, box, out=pos)
            pos[pos >= box] = 0.0  # x % box is box itself for tiny negative x


def migrate(particles: Particles, mesh: SlabMesh) -> Particles:
    """Send every particle to the rank whose mesh slab holds its x position (collective).

    Only the particles that change rank are packed and sent (a step moves few of them), and only
    those within a mesh cell of the slab's edges (or outside it) are looked up exactly: a
    particle further inside cannot have changed rank. The result is ordered by source rank,
    each source's particles in their previous order, with this rank's own staying particles in
    its place among the sources; when none leave or arrive the particles are returned as they are.
    """
    comm, rank = mesh.comm, mesh.rank
    x = particles.pos[:, 0]
    inner_lo, inner_hi = (mesh.x_start + 1) * mesh.cell, (mesh.x_stop - 1) * mesh.cell
    edge = np.flatnonzero((x < inner_lo) | (x >= inner_hi))
    edge_dest = mesh.owner_of(x[edge])
    moves = edge_dest != rank
    leaving, dest = edge[moves], edge_dest[moves]
    order = np.argsort(dest, kind="stable")
    leaving, dest = leaving[order], dest[order]
    send_counts = np.bincount(dest, minlength=mesh.size).astype(np.int64)
    recv_counts = np.empty(mesh.size, dtype=np.int64)
    comm.Alltoall(send_counts, recv_counts)
    if len(leaving) == 0 and recv_counts.sum() == 0:
        return particles
    packed = np.empty((len(leaving), _PACKED))
    packed[:, 0:3] = particles.pos[leaving]
    packed[:, 3:6] = particles.mom[leaving]
    packed[:, 6] = particles.ids[leaving]
    received = np.empty((int(recv_counts.sum()), _PACKED))
    sc, rc = (send_counts * _PACKED).tolist(), (recv_counts * _PACKED).tolist()
    sd = np.concatenate([[0], np.cumsum(sc)[:-1]]).tolist()
    rd = np.concatenate([[0], np.cumsum(rc)[:-1]]).tolist()
    comm.Alltoallv([packed, (sc, sd), MPI.DOUBLE], [received, (rc, rd), MPI.DOUBLE])
    staying = np.ones(len(particles), dtype=bool)
    staying[leaving] = False
    before = int(recv_counts[:rank].sum())  # received from lower ranks: they go first
    kept = len(particles) - len(leaving)
    total = kept + len(received)
    # Each array is written once, in place (compress with out=), not copied twice as a masked
    # selection followed by a concatenation would.
    out = Particles(np.empty((total, 3)), np.empty((total, 3)), np.empty(total, dtype=np.int64))
    for mine, theirs, columns in ((particles.pos, out.pos, slice(0, 3)), (particles.mom, out.mom, slice(3, 6)),
                                  (particles.ids, out.ids, 6)):
        theirs[:before] = received[:before, columns]
        np.compress(staying, mine, axis=0, out=theirs[before:before + kept])
        theirs[before + kept:] = received[before:, columns]
    return out


def gather_to_root(particles: Particles, comm: MPI.Comm) -> Particles | None:
    """All particles on rank 0, in id order (None on other ranks)."""
    parts = comm.gather((particles.pos, particles.mom, particles.ids), root=0)
    if comm.Get_rank() != 0:
        return None
    ids = np.concatenate([p[2] for p in parts])
    order = np.argsort(ids)
    return Particles(np.concatenate([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order],
                     ids[order])
