"""How fast is nbody_pm per step, what does a second rank buy, and how far is it from the FFT limit?

Runs the solver as a campaign task runs it (``mpiexec -n R python -m
physflow.sim_adapters.nbody_pm.solver``) at n_side^3 particles for each n_side and rank count,
with ``n_mesh = 2 n_side`` (the resolution the force was tuned for, so 8 mesh cells per
particle) and a box of ``n_side * spacing`` Mpc/h (default spacing 128/48 Mpc/h: the example
campaign's particle mass). Each run prints one JSON line; from it the table takes:

- s/step: mean wall time of one kick-drift-kick step (initial conditions, P(k) and the halo
  finder excluded), best of ``--repeats`` runs (default 3), the rank counts alternated;
- particle-updates/s/core: n_side^3 / (s/step) / ranks;
- speed-up 1 -> R: s/step on one rank over s/step on R ranks (target >= 1.7 for R = 2), of the
  best runs, then of each alternated pair of runs;
- peak RSS: the largest ru_maxrss over ranks during the steps (before rank 0 gathers the
  particles for the halo finder), and bytes per particle: (peak RSS - RSS of an idle rank that
  has imported the solver) * ranks / n_side^3, so interpreter and libraries are left out.

Two reference rows per size:

- numpy.fft on the same n_mesh^3 mesh on one core: one rfftn and three irfftn, what a step with
  a forward transform and three backward ones (the textbook PM force) would cost if nothing but
  FFTs ran. (The solver now does one backward FFT per step: its force is a real-space centred
  difference of the potential, see ``gravity``.)
- distributed FFTs, per rank count: the solver's own ``SlabMesh`` (numpy pocketfft per axis, MPI
  all-to-all with strided datatypes) against mpi4py-fft's ``PFFT`` (slab decomposition, real-to-
  complex, the two local axes collapsed into one FFTW plan, FFTW_MEASURE) doing the same forward
  + three backward transforms of the same n_mesh^3 mesh on the same ranks, alternated, best of
  ``max(3, --repeats)``; FFTW's planning time is left out and printed apart. Both run in one
  ``mpiexec`` (this script with ``--fft-worker``). mpi4py-fft is optional (``pip install mpi4py-
  fft``, which builds against Debian's libfftw3-dev); without it the row says so and shows
  ``SlabMesh`` alone. pmesh was not tried again: ``pip install pmesh`` builds pfft and FFTW from
  source and had not finished after 2 minutes.

Run from the repository root: ``python bench/nbody_pm_scaling.py [--sides 64 128] [--ranks 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MPIEXEC = Path(sys.executable).parent / "mpiexec"
SOLVER = [sys.executable, "-m", "physflow.sim_adapters.nbody_pm.solver"]
#: What an idle rank holds after importing the solver: subtracted before bytes per particle.
IDLE_RSS = ("import resource, physflow.sim_adapters.nbody_pm.solver; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)")


def run_solver(n_side: int, ranks: int, steps: int, spacing: float, workdir: Path) -> dict:
    """One solver run under mpiexec; the JSON line it printed."""
    argv = [str(MPIEXEC), "-n", str(ranks), *SOLVER, "--n-side", str(n_side), "--n-mesh", str(2 * n_side),
            "--box-size", repr(n_side * spacing), "--steps", str(steps), "--out", "bench.h5"]
    proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def idle_rss_mb() -> float:
    """Peak RSS (MB) of a process that has only imported the solver."""
    proc = subprocess.run([sys.executable, "-c", IDLE_RSS], capture_output=True, text=True, check=True)
    return float(proc.stdout)


def fft_step_seconds(n_mesh: int, repeats: int) -> float:
    """Best time of one rfftn plus three irfftn of an n_mesh^3 float64 mesh with numpy (one core)."""
    field = np.random.default_rng(0).standard_normal((n_mesh,) * 3)
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        modes = np.fft.rfftn(field)
        for _ in range(3):
            np.fft.irfftn(modes, s=field.shape, axes=(0, 1, 2))
        best = min(best, time.perf_counter() - tick)
    return best


def distributed_fft_seconds(n_mesh: int, repeats: int) -> dict:
    """Best wall time (max over ranks) of forward + 3 backward transforms of an n_mesh^3 mesh with
    SlabMesh and, if importable, mpi4py-fft's PFFT; runs inside mpiexec (collective)."""
    from mpi4py import MPI

    from physflow.sim_adapters.nbody_pm.mesh import SlabMesh

    comm = MPI.COMM_WORLD
    mesh = SlabMesh(n_mesh, 1.0, comm)
    field = np.random.default_rng([1, comm.rank]).standard_normal((mesh.nx, n_mesh, n_mesh))
    back = np.empty_like(field)

    def ours() -> np.ndarray:
        modes = mesh.forward(field)
        for _ in range(3):
            mesh.backward(modes, out=back)
        return modes

    try:
        from mpi4py_fft import PFFT, newDistArray
    except ImportError as exc:
        pfft, missing = None, f"{type(exc).__name__}: {exc}"
    else:
        tick = time.perf_counter()
        # collapse: the two local axes as one 2-D FFTW plan, mpi4py-fft's faster setting here.
        pfft = PFFT(comm, (n_mesh,) * 3, axes=(0, 1, 2), dtype=np.float64, slab=True, collapse=True)
        plan = comm.allreduce(time.perf_counter() - tick, op=MPI.MAX)
        real, spectral = newDistArray(pfft, False), newDistArray(pfft, True)
        if real.shape != field.shape:
            raise RuntimeError(f"PFFT's real slab {real.shape} differs from SlabMesh's {field.shape}")
        real[...] = field

    def theirs() -> np.ndarray:
        pfft.forward(real, spectral, normalize=False)
        for _ in range(3):
            pfft.backward(spectral, real, normalize=True)
        return spectral

    def timed(transforms) -> tuple[float, np.ndarray]:
        comm.Barrier()
        tick = time.perf_counter()
        modes = transforms()
        return comm.allreduce(time.perf_counter() - tick, op=MPI.MAX), modes

    best = {"slabmesh": float("inf"), "pfft": float("inf")}
    for _ in range(repeats):  # alternated, so that both see the same machine load
        seconds, modes = timed(ours)
        best["slabmesh"] = min(best["slabmesh"], seconds)
        if pfft is not None:
            best["pfft"] = min(best["pfft"], timed(theirs)[0])
    out = {"ranks": comm.size, "n_mesh": n_mesh, "slabmesh_seconds": best["slabmesh"]}
    if pfft is None:
        out["pfft_missing"] = missing
    else:
        real[...] = field
        pfft.forward(real, spectral, normalize=False)
        # PFFT may split another Fourier axis over the ranks (kz when collapsed); compare the modes
        # that both hold on this rank: all kx, SlabMesh's ky rows, PFFT's kz range.
        ours_range = [(0, n_mesh), (mesh.y_start, mesh.y_stop), (0, mesh.nzc)]
        theirs_range = [(a.start, a.stop) for a in pfft.local_slice(True)]
        both = [(max(o[0], t[0]), min(o[1], t[1])) for o, t in zip(ours_range, theirs_range, strict=True)]

        def shared(array: np.ndarray, held: list[tuple[int, int]]) -> np.ndarray:
            return array[tuple(slice(lo - h[0], hi - h[0]) for (lo, hi), h in zip(both, held, strict=True))]

        ours_block, theirs_block = shared(modes, ours_range), shared(spectral, theirs_range)
        local = float(np.max(np.abs(theirs_block - ours_block))) if ours_block.size else 0.0
        difference = comm.allreduce(local, op=MPI.MAX)
        scale = comm.allreduce(float(np.max(np.abs(modes))), op=MPI.MAX)
        out.update(pfft_seconds=best["pfft"], pfft_plan_seconds=plan, max_relative_difference=difference / scale)
    return out


def run_fft_comparison(n_mesh: int, ranks: int, repeats: int) -> dict:
    """``distributed_fft_seconds`` under mpiexec on ``ranks`` ranks: the JSON line it printed."""
    argv = [str(MPIEXEC), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--fft-worker",
            str(n_mesh), "--repeats", str(repeats)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128], help="particles per side (n_side)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts; the first is the baseline")
    parser.add_argument("--steps", type=int, default=10, help="time steps per run")
    parser.add_argument("--spacing", type=float, default=128.0 / 48.0, help="mean particle spacing [Mpc/h]")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per configuration, rank counts alternated (best s/step kept)")
    parser.add_argument("--fft-worker", type=int, metavar="N_MESH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fft_worker:
        result = distributed_fft_seconds(args.fft_worker, args.repeats)
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            print(json.dumps(result))
        return

    idle = idle_rss_mb()
    header = (f"{'particles':>11} {'mesh':>6} {'ranks':>5} {'s/step':>8} {'updates/s/core':>15} "
              f"{'speed-up':>8} {'peak RSS MB':>11} {'B/particle':>10}")
    print(f"nbody_pm: n_mesh = 2 n_side, {args.steps} steps, box = n_side x {args.spacing:.4g} Mpc/h; "
          f"idle rank {idle:.0f} MB (subtracted in B/particle)")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="nbody_bench_") as tmp:
        for n_side in args.sides:
            n, base = n_side**3, None
            # Rank counts alternate within each repeat, so that a slow spell of this shared
            # machine hits both sides of a ratio rather than one configuration's every run.
            runs = {ranks: [] for ranks in args.ranks}
            for _ in range(args.repeats):
                for ranks in args.ranks:
                    runs[ranks].append(run_solver(n_side, ranks, args.steps, args.spacing, Path(tmp)))
            for ranks in args.ranks:
                per_step = min(r["seconds_per_step"] for r in runs[ranks])
                rss = max(r["max_rss_mb"] for r in runs[ranks])
                base = per_step if base is None else base
                print(f"{n:>11,} {2 * n_side:>5}^3 {ranks:>5} {per_step:>8.3f} {n / per_step / ranks:>15,.0f} "
                      f"{base / per_step:>7.2f}x {rss:>11.0f} {(rss - idle) * ranks * 2**20 / n:>10,.0f}", flush=True)
            for ranks in args.ranks[1:]:
                pairs = [one["seconds_per_step"] / many["seconds_per_step"]
                         for one, many in zip(runs[args.ranks[0]], runs[ranks], strict=True)]
                listed = " ".join(f"{ratio:.2f}x" for ratio in pairs)
                print(f"{n:>11,} {2 * n_side:>5}^3 {'speed-up in each alternated pair':>38}: "
                      f"{listed} ({args.ranks[0]} -> {ranks} ranks)", flush=True)
            fft = fft_step_seconds(2 * n_side, max(3, args.repeats))
            print(f"{n:>11,} {2 * n_side:>5}^3 {'numpy.fft 1 rfftn + 3 irfftn, 1 core':>38}: "
                  f"{fft:.3f} s = {n / fft:,.0f} updates/s (FFTs of a 3-backward PM step)", flush=True)
            for ranks in args.ranks:
                c = run_fft_comparison(2 * n_side, ranks, max(3, args.repeats))
                label = f"distributed fwd + 3 bwd, {ranks} rank{'s' if ranks > 1 else ''}"
                if "pfft_seconds" in c:
                    ours, theirs = c["slabmesh_seconds"], c["pfft_seconds"]
                    faster = "SlabMesh" if ours < theirs else "mpi4py-fft"
                    ratio = max(ours, theirs) / min(ours, theirs)
                    print(f"{n:>11,} {2 * n_side:>5}^3 {label:>38}: SlabMesh {ours:.3f} s, "
                          f"mpi4py-fft PFFT {theirs:.3f} s (+ {c['pfft_plan_seconds']:.1f} s planning; "
                          f"modes agree to {c['max_relative_difference']:.0e}): {faster} {ratio:.2f}x faster",
                          flush=True)
                else:
                    print(f"{n:>11,} {2 * n_side:>5}^3 {label:>38}: SlabMesh {c['slabmesh_seconds']:.3f} s; "
                          f"mpi4py-fft not available ({c['pfft_missing']})", flush=True)


if __name__ == "__main__":
    main()
