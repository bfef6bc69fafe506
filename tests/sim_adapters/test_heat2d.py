"""The built-in MPI simulation: real physics, the same answer on any number of ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from physflow.sim_adapters.decomposition import slab
from physflow.sim_adapters.heat2d.solver import grid, source_field, time_steps
from tests.conftest import EXAMPLES


def run_solver(tmp_path: Path, ranks: int, out: str, **kw) -> np.ndarray:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    args = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "physflow.sim_adapters.heat2d.solver",
            "--out", out] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    with h5py.File(tmp_path / out) as f:
        assert f.attrs["ranks"] == ranks
        return f["temperature"][...]


def test_two_ranks_agree_with_one_bit_for_bit(tmp_path):
    one = run_solver(tmp_path, 1, "one.h5", kappa=0.4, power=25, n=40, t_end=0.03)
    two = run_solver(tmp_path, 2, "two.h5", kappa=0.4, power=25, n=40, t_end=0.03)
    assert np.array_equal(one, two)
    assert one.max() > 0


def test_steady_state_balances_source_and_diffusion(tmp_path):
    # Long after start the field stops changing: kappa * laplacian(T) = -power * S.
    n, kappa, power = 40, 0.5, 10.0
    field = run_solver(tmp_path, 2, "ss.h5", kappa=kappa, power=power, n=n, t_end=2.0)
    x, dx = grid(n)
    t = np.pad(field, 1)
    lap = (t[:-2, 1:-1] + t[2:, 1:-1] + t[1:-1, :-2] + t[1:-1, 2:] - 4 * t[1:-1, 1:-1]) / dx**2
    residual = kappa * lap + power * source_field(x, x)
    assert np.abs(residual).max() < 1e-3 * power


def test_slabs_cover_the_grid_once():
    for size in (1, 2, 3, 7):
        rows = [r for rank in range(size) for r in range(*slab(50, size, rank))]
        assert rows == list(range(50))


def test_time_step_is_stable():
    steps, dt = time_steps(1.0, 0.01, 0.05)
    assert dt <= 0.01**2 / 4 and steps * dt == pytest.approx(0.05)


def test_shipped_target_is_matched_at_the_truth_only(tmp_path):
    with h5py.File(EXAMPLES / "data" / "heat2d_target.h5") as f:
        target, sigma = f["temperature"][...], f["temperature"].attrs["sigma"]
        kappa, power = f.attrs["true_kappa"], f.attrs["true_power"]
    truth = run_solver(tmp_path, 2, "t.h5", kappa=kappa, power=power)
    off = run_solver(tmp_path, 2, "o.h5", kappa=kappa * 1.3, power=power)
    assert np.mean(((truth - target) / sigma) ** 2) == pytest.approx(1.0, abs=0.1)
    assert np.mean(((off - target) / sigma) ** 2) > 5
