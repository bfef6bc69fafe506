"""2D heat diffusion with sources on a domain-decomposed grid (mpi4py, halo exchange).

Solves dT/dt = kappa * laplacian(T) + power * S(x, y) on the unit square [0, 1]^2 m with
T = 0 K on the boundary and T = 0 K at t = 0, where S is a fixed pair of Gaussian heat
sources of peak 1 (so ``power`` is the peak heating rate in K/s). Explicit FTCS in time, the
5-point Laplacian in space; the grid's rows are split into slabs, one per MPI rank, with one
ghost row on each side exchanged every step. Each grid point follows exactly the same float
operations whatever the rank count, so results agree bit for bit across decompositions.

Run as ``mpiexec -n 2 python -m physflow.sim_adapters.heat2d.solver --kappa 0.3 --power 20``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from physflow.sim_adapters.decomposition import slab

#: Source centres (m) and width (m): fixed, part of the problem definition.
SOURCES = ((0.30, 0.35, 0.08), (0.70, 0.62, 0.06))
#: Fraction of the FTCS stability limit dt <= dx^2 / (4 kappa) used per step.
CFL = 0.8


def grid(n: int) -> tuple[np.ndarray, float]:
    """Interior grid coordinates (m) and spacing dx (m) for n x n interior points."""
    dx = 1.0 / (n + 1)
    return dx * np.arange(1, n + 1), dx


def source_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dimensionless source shape S(y, x), peak 1, on rows y and columns x."""
    yy, xx = np.meshgrid(y, x, indexing="ij")
    s = np.zeros_like(xx)
    for cx, cy, w in SOURCES:
        s += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w * w))
    return s


def time_steps(kappa: float, dx: float, t_end: float) -> tuple[int, float]:
    """Number of steps and step size (s) that reach t_end stably."""
    steps = int(np.ceil(t_end / (CFL * dx * dx / (4.0 * kappa))))
    return steps, t_end / steps


def solve(kappa: float, power: float, n: int = 96, t_end: float = 0.05, comm=None) -> np.ndarray | None:
    """Temperature field (K) at t_end on the n x n interior grid; returned on rank 0 only."""
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    size, rank = comm.Get_size(), comm.Get_rank()
    if n < size:
        raise ValueError(f"grid of {n} rows cannot be split over {size} ranks")
    x, dx = grid(n)
    r0, r1 = slab(n, size, rank)
    src = power * source_field(x, x[r0:r1])
    t = np.zeros((r1 - r0 + 2, n + 2))  # one ghost row above and below, boundary columns
    steps, dt = time_steps(kappa, dx, t_end)
    coef = kappa * dt / (dx * dx)
    up = rank - 1 if rank > 0 else None
    down = rank + 1 if rank < size - 1 else None
    for _ in range(steps):
        if up is not None:
            comm.Sendrecv(t[1], dest=up, recvbuf=t[0], source=up)
        if down is not None:
            comm.Sendrecv(t[-2], dest=down, recvbuf=t[-1], source=down)
        inner = t[1:-1, 1:-1]
        lap = t[:-2, 1:-1] + t[2:, 1:-1] + t[1:-1, :-2] + t[1:-1, 2:] - 4.0 * inner
        inner += coef * lap + dt * src
    parts = comm.gather(np.ascontiguousarray(t[1:-1, 1:-1]), root=0)
    return np.vstack(parts) if rank == 0 else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kappa", type=float, required=True, help="diffusivity [m^2/s]")
    parser.add_argument("--power", type=float, required=True, help="peak heating rate [K/s]")
    parser.add_argument("--n", type=int, default=96, help="interior grid points per side")
    parser.add_argument("--t-end", type=float, default=0.05, help="simulated time [s]")
    parser.add_argument("--out", default="field.h5", help="HDF5 file written by rank 0")
    args = parser.parse_args(argv)
    if not (args.kappa > 0 and np.isfinite(args.kappa) and np.isfinite(args.power) and args.n > 0):
        parser.error("kappa must be positive; kappa and power finite; n positive")

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    wall = time.perf_counter()
    field = solve(args.kappa, args.power, args.n, args.t_end, comm)
    wall = time.perf_counter() - wall
    if comm.Get_rank() == 0:
        import h5py

        steps, dt = time_steps(args.kappa, grid(args.n)[1], args.t_end)
        with h5py.File(args.out, "w") as f:
            d = f.create_dataset("temperature", data=field)
            d.attrs["units"] = "K"
            f.create_dataset("x", data=grid(args.n)[0]).attrs["units"] = "m"
            f.attrs.update(kappa=args.kappa, power=args.power, n=args.n, t_end=args.t_end,
                           steps=steps, dt=dt, ranks=comm.Get_size(), wall_seconds=wall)
        print(json.dumps({"steps": steps, "dt": dt, "ranks": comm.Get_size(), "wall_seconds": wall,
                          "max_temperature": float(field.max())}))


if __name__ == "__main__":
    main()
