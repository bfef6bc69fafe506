"""chi2_hmf and chi2_pk of the shipped cosmology problem on a grid over (omega_m, sigma8).

Makes ``bench/data/cosmology_grid.npz``: the real ``nbody_pm`` simulation of
``workflows/examples/cosmology.yaml`` (box_size 128 Mpc/h, n_side 48, n_mesh 96, 10 steps,
seed 7, z_init 49, the other cosmological parameters at their Planck 2015 defaults) at every
point of an ``n x n`` grid spanning the YAML's bounds (omega_m in [0.1, 0.5], sigma8 in
[0.5, 1.1]), scored against ``workflows/examples/data/cosmology_target.h5`` with the adapter's
own ``chi2_hmf`` and ``chi2_pk`` (the same arrays ``NbodyPMAdapter.parse_outputs`` reads).
``bench/optimizer_offline.py`` interpolates it to compare samplers over many seeds offline.

Each point runs in this process on one MPI rank (``MPI.COMM_SELF``: one core) and takes about
1 s. The file is rewritten after every point and a rerun skips the points already done, so an
interruption loses at most the point in progress. The 13 x 13 default grid (169 points) took
167 s on a 2-core machine with another benchmark beside it; a 25 x 25 grid
(``--n 25 --out bench/data/cosmology_grid_25.npz``, kept to check the stand-in) took 606 s.
The file records the seconds of every point.

Arrays in the file: ``omega_m`` (n,), ``sigma8`` (n,), ``chi2_hmf`` (n, n) and ``chi2_pk``
(n, n) indexed [omega_m, sigma8] (NaN where not yet run), ``seconds`` (n, n) wall time per point.

Run from the repository root: ``python bench/cosmology_grid.py [--n 13] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: the lead's benchmarks run beside this

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from physflow.sim_adapters.nbody_pm import KNOWN, Target, chi2_hmf, chi2_pk  # noqa: E402
from physflow.sim_adapters.nbody_pm.cosmology import Cosmology  # noqa: E402
from physflow.sim_adapters.nbody_pm.settings import Settings  # noqa: E402

EXAMPLES = REPO / "workflows" / "examples"
TARGET = EXAMPLES / "data" / "cosmology_target.h5"
DEFAULT_OUT = REPO / "bench" / "data" / "cosmology_grid.npz"
#: The YAML's fixed settings and parameter bounds.
SETTINGS = Settings(box_size=128.0, n_side=48, n_mesh=96, steps=10, seed=7, z_init=49.0)
BOUNDS = {"omega_m": (0.1, 0.5), "sigma8": (0.5, 1.1)}


def metrics(omega_m: float, sigma8: float, target: Target) -> tuple[float, float]:
    """(chi2_hmf, chi2_pk) of one simulation at (omega_m, sigma8), run on one rank in this process."""
    from mpi4py import MPI

    from physflow.sim_adapters.nbody_pm import solver

    base = {name: default for name, (_, default, _) in KNOWN.items()}
    cosmo = Cosmology(**{**base, "omega_m": omega_m, "sigma8": sigma8})
    result = solver.run(cosmo, SETTINGS, MPI.COMM_SELF)
    # As parse_outputs: group sizes (stored as int32) times the particle mass.
    halo_mass = result.group_size.astype(np.int32) * result.particle_mass
    return chi2_hmf(halo_mass, target), chi2_pk(result.power.pk, target)


def load_or_new(path: Path, n: int) -> dict[str, np.ndarray]:
    """The grid saved in ``path`` if it has the same axes, else an empty one."""
    axes = {name: np.linspace(lo, hi, n) for name, (lo, hi) in BOUNDS.items()}
    if path.exists():
        with np.load(path) as f:
            saved = {k: f[k] for k in f.files}
        if all(np.array_equal(saved[name], axes[name]) for name in axes):
            return saved
        print(f"{path} has another grid: starting afresh", file=sys.stderr)
    empty = np.full((n, n), np.nan)
    return {**axes, "chi2_hmf": empty.copy(), "chi2_pk": empty.copy(), "seconds": empty.copy()}


def save(path: Path, grid: dict[str, np.ndarray]) -> None:
    """Write atomically (temporary file, then rename) so an interruption never leaves half a file."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **grid)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=13, help="grid points per parameter (default 13)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    target, _ = Target.read(TARGET)
    grid = load_or_new(args.out, args.n)
    todo = [(i, j) for i in range(args.n) for j in range(args.n) if np.isnan(grid["chi2_hmf"][i, j])]
    print(f"{len(todo)} of {args.n ** 2} points to run", flush=True)
    start = time.perf_counter()
    for done, (i, j) in enumerate(todo, 1):
        tick = time.perf_counter()
        om, s8 = float(grid["omega_m"][i]), float(grid["sigma8"][j])
        grid["chi2_hmf"][i, j], grid["chi2_pk"][i, j] = metrics(om, s8, target)
        grid["seconds"][i, j] = time.perf_counter() - tick
        save(args.out, grid)
        print(f"[{done}/{len(todo)}] omega_m={om:.4f} sigma8={s8:.4f} chi2_hmf={grid['chi2_hmf'][i, j]:.4g} "
              f"chi2_pk={grid['chi2_pk'][i, j]:.4g} ({grid['seconds'][i, j]:.1f} s)", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s; all points: {np.nansum(grid['seconds']):.0f} s of simulation")


if __name__ == "__main__":
    main()
