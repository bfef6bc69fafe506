"""Fixtures of the reliability tests: one small finished campaign, and a fresh copy of it per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.reliability.campaigns import SIM, WORKFLOW, submit


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One real campaign (12 simulations, each with an array), shared read-only by a module's tests."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "wf.yaml").write_text(WORKFLOW)
    (folder / "sim.py").write_text(SIM)
    proc = submit(folder, folder / "run", env={"SIM_SECONDS": "0.05"})
    assert proc.wait(timeout=300) == 0
    return folder / "run"


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run (tasks/ included, so repairs can parse arrays again)."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy
