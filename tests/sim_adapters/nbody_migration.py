"""Run under mpiexec by test_nbody_pm: particle migration between uneven slabs, as a run moves
particles (few, near the edges) and as a rank gains or loses many at once (its arrays grow past
their spare room, or shrink): every particle ends on the rank that owns its x, none is lost or
duplicated, and each keeps its own position, momentum and id."""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from physflow.sim_adapters.nbody_pm.mesh import SlabMesh
from physflow.sim_adapters.nbody_pm.particles import Particles, migrate

N, BOX = 18, 36.0  # 18 planes over 3 or 4 ranks: uneven slabs


def check(particles: Particles, mesh: SlabMesh, expected_ids: np.ndarray) -> None:
    """Every particle on its owner, the whole set of ids unchanged, momenta still tied to ids."""
    assert np.all(mesh.owner_of(particles.pos[:, 0]) == mesh.rank)
    assert np.array_equal(particles.mom[:, 0], particles.ids * 0.5)  # each particle's own momentum
    assert np.array_equal(particles.mom[:, 1], particles.pos[:, 0])  # and its own position
    everything = np.sort(np.concatenate(mesh.comm.allgather(particles.ids)))
    assert np.array_equal(everything, expected_ids)


def main() -> int:
    comm = MPI.COMM_WORLD
    mesh = SlabMesh(N, BOX, comm, "alltoall")
    rng = np.random.default_rng([11, comm.rank])
    count = 2000
    lo, hi = mesh.x_start * mesh.cell, mesh.x_stop * mesh.cell
    pos = np.column_stack([rng.uniform(lo, hi, count), rng.uniform(0, BOX, (count, 2))])
    ids = np.arange(count, dtype=np.int64) + comm.rank * count
    particles = Particles(pos, np.column_stack([ids * 0.5, pos[:, 0], np.zeros(count)]), ids)
    all_ids = np.arange(count * comm.size, dtype=np.int64)
    for step, shift in enumerate((0.3, -0.7, 0.2, 9.0, -4.0, 13.0)):  # cells; then slabs at once
        x = particles.pos[:, 0]
        moved = rng.uniform(-1.0, 1.0, len(x)) * shift * mesh.cell if step < 3 else shift * mesh.cell
        particles.pos[:, 0] = (x + moved) % BOX
        particles.mom[:, 1] = particles.pos[:, 0]
        particles = migrate(particles, mesh)
        check(particles, mesh, all_ids)
    # Everything to rank 0's slab, then spread out again: arrays grow far past their room, then shrink.
    particles.pos[:, 0] = (particles.ids % 7 + 0.5) * (mesh.x_slabs[0][1] * mesh.cell / 7.5)
    particles.mom[:, 1] = particles.pos[:, 0]
    particles = migrate(particles, mesh)
    check(particles, mesh, all_ids)
    assert len(particles) == (len(all_ids) if comm.rank == 0 else 0)
    particles.pos[:, 0] = (particles.ids + 0.5) * (BOX / len(all_ids))
    particles.mom[:, 1] = particles.pos[:, 0]
    particles = migrate(particles, mesh)
    check(particles, mesh, all_ids)
    if comm.rank == 0:
        print("ok")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError:  # one rank's failure must not leave the others waiting in a collective
        import traceback

        traceback.print_exc()
        MPI.COMM_WORLD.Abort(1)
