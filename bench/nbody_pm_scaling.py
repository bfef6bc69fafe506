"""How fast is nbody_pm per step, what does a second rank buy, and how far is it from the FFT limit?

Runs the solver as a campaign task runs it (``mpiexec -n R python -m
physflow.sim_adapters.nbody_pm.solver``) at n_side^3 particles for each n_side and rank count,
with ``n_mesh = 2 n_side`` (the resolution the force was tuned for, so 8 mesh cells per
particle) and a box of ``n_side * spacing`` Mpc/h (default spacing 128/48 Mpc/h: the example
campaign's particle mass). Each run prints one JSON line; from it the table takes:

- s/step: mean wall time of one kick-drift-kick step (initial conditions, P(k) and the halo
  finder excluded), best of ``--repeats`` runs;
- particle-updates/s/core: n_side^3 / (s/step) / ranks;
- speed-up 1 -> R: s/step on one rank over s/step on R ranks (target >= 1.7 for R = 2);
- peak RSS: the largest ru_maxrss over ranks during the steps (before rank 0 gathers the
  particles for the halo finder), and bytes per particle: (peak RSS - RSS of an idle rank that
  has imported the solver) * ranks / n_side^3, so interpreter and libraries are left out.

The reference row per size is numpy.fft on the same n_mesh^3 mesh on one core: one rfftn and
three irfftn, the transforms of one PM step (density forward, three force components back),
i.e. what a step would cost if nothing but FFTs ran. pmesh (or fastpm) would be the better
reference, but ``pip install pmesh`` builds pfft and FFTW from source here and did not finish
in 2 minutes, so it is not attempted.

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128], help="particles per side (n_side)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts; the first is the baseline")
    parser.add_argument("--steps", type=int, default=10, help="time steps per run")
    parser.add_argument("--spacing", type=float, default=128.0 / 48.0, help="mean particle spacing [Mpc/h]")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (best s/step kept)")
    args = parser.parse_args(argv)

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
            for ranks in args.ranks:
                runs = [run_solver(n_side, ranks, args.steps, args.spacing, Path(tmp)) for _ in range(args.repeats)]
                per_step = min(r["seconds_per_step"] for r in runs)
                rss = max(r["max_rss_mb"] for r in runs)
                base = per_step if base is None else base
                print(f"{n:>11,} {2 * n_side:>5}^3 {ranks:>5} {per_step:>8.3f} {n / per_step / ranks:>15,.0f} "
                      f"{base / per_step:>7.2f}x {rss:>11.0f} {(rss - idle) * ranks * 2**20 / n:>10,.0f}", flush=True)
            fft = fft_step_seconds(2 * n_side, max(3, args.repeats))
            print(f"{n:>11,} {2 * n_side:>5}^3 {'numpy.fft 1 rfftn + 3 irfftn, 1 core':>38}: "
                  f"{fft:.3f} s = {n / fft:,.0f} updates/s (FFT-only floor)", flush=True)


if __name__ == "__main__":
    main()
