"""A SIGKILLed orchestrator takes its Parsl pools and their simulations with it (a watchdog of its
own session ends them), so no core or batch job is held by what nobody waits for any more."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.campaigns import SIM, WORKFLOW, executions, processes_in, start, wait_for

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("kill", ["process", "group"])
def test_nothing_outlives_a_killed_orchestrator(tmp_path: Path, kill: str):
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    proc = start(tmp_path, "submit", str(tmp_path / "wf.yaml"), "--run-dir", str(tmp_path / "run"), "--yes",
                 env={"SIM_SECONDS": "60"})
    assert wait_for(lambda: len(executions(tmp_path)) >= 2, timeout=120, proc=proc), "no simulation started"
    assert len(processes_in(tmp_path)) > 2  # the orchestrator, its pools, the simulations
    if kill == "process":
        os.kill(proc.pid, signal.SIGKILL)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30  # the watchdog looks every 0.5 s and gives 3 s of grace
    while processes_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [(p.pid, " ".join(p.info["cmdline"] or [])[:100]) for p in processes_in(tmp_path)]
    assert left == [], f"outlived the orchestrator: {left}"
