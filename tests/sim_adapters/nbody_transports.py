"""Run under mpiexec by test_nbody_pm: the slab FFT with each transpose transport, checked
against numpy's serial 3-D FFT and against each other (to the last bit)."""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from physflow.sim_adapters.nbody_pm.mesh import SlabMesh

N = 18  # 18 planes over 4 ranks: uneven slabs


def transforms(transport: str) -> tuple[np.ndarray, list[np.ndarray], str]:
    """Modes of a plane-seeded field, and three backward transforms in a row (as the initial
    conditions do), gathered whole on every rank; the transport the mesh chose."""
    comm = MPI.COMM_WORLD
    mesh = SlabMesh(N, 50.0, comm, transport)
    real = np.stack([np.random.default_rng([3, i]).standard_normal((N, N))
                     for i in range(mesh.x_start, mesh.x_stop)]).reshape(mesh.nx, N, N)
    modes = mesh.forward(real)
    backs = []
    for factor in (1.0, 2.0j, -3.0):
        out = np.empty((mesh.nx, N, N))
        mesh.backward(factor * modes, out=out)
        backs.append(np.concatenate(comm.allgather(out)))
    whole = np.concatenate(comm.allgather(modes), axis=1)
    mesh.release_work()
    return whole, backs, mesh.transport


def main() -> int:
    serial = np.fft.rfftn(np.stack([np.random.default_rng([3, i]).standard_normal((N, N)) for i in range(N)]))
    results = {asked: transforms(asked) for asked in ("alltoall", "shared")}
    (m1, b1, t1), (m2, b2, t2) = results["alltoall"], results["shared"]
    assert (t1, t2) == ("alltoall", "shared") or MPI.COMM_WORLD.size == 1, (t1, t2)
    assert np.array_equal(m1, m2) and all(np.array_equal(a, b) for a, b in zip(b1, b2, strict=True))
    np.testing.assert_allclose(m1, serial, rtol=0, atol=1e-10)
    for got, factor in zip(b1, (1.0, 2.0j, -3.0), strict=True):
        expected = np.fft.irfftn(factor * serial, s=(N, N, N), axes=(0, 1, 2))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    if MPI.COMM_WORLD.rank == 0:
        print(f"ok {t1} {t2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
