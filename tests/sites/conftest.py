"""A real Slurm cluster on this machine for the tests that need one (scripts/slurm_localhost.sh).

Skipped only where slurm-wlm is not installed; installed but failing to start is a test failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm_localhost.sh"


def _installed(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).is_file()


@pytest.fixture(scope="session")
def slurm_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Start munged, slurmctld and slurmd for the session; yields the cluster's slurm.conf.
    Every daemon and job it started is stopped afterwards, also when a test fails."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if not _installed(b)]
    if missing:
        pytest.skip(f"slurm-wlm/munge not installed (missing {', '.join(missing)}); scripts/test.sh installs them")
    if os.geteuid() != 0:
        pytest.skip("a localhost Slurm needs root (slurmd runs jobs as their owner)")
    folder = tmp_path_factory.mktemp("slurm")
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True,
                                 timeout=120)
        assert started.returncode == 0, f"slurm did not start:\n{started.stdout}\n{started.stderr}"
        yield folder / "slurm.conf"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=60)
