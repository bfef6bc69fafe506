"""One orchestrator per run directory: a second is refused; the lock of a dead one is not in the way."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import physflow
from tests.reliability.campaigns import (
    SIM,
    WORKFLOW,
    execution_counts,
    finished_ids,
    processes_in,
    submit,
    wait_for,
)

pytestmark = pytest.mark.reliability


def test_a_second_orchestrator_is_refused_and_a_stale_lock_is_detected(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    run = tmp_path / "run"
    proc = submit(tmp_path, run, env={"SIM_SECONDS": "5"})  # long enough for the second orchestrator to try
    wait_for(lambda: len(finished_ids(run)) >= 1, proc=proc)

    for args in (("resume", str(run), "--yes"), ("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(run))):
        second = physflow(*args, cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert second.stderr.startswith("error: ") and str(run) in second.stderr
        assert f"in use by a running orchestrator (pid {proc.pid}" in second.stderr or "already exists" in second.stderr
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "running"

    os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the orchestrator alone: its lock file stays behind
    proc.wait()
    assert (run / "orchestrator.lock").read_text().startswith(f"pid {proc.pid} ")
    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "failed" and status["reason"] == "orchestrator not running"
    kept = finished_ids(run)
    # Parsl's interchange and worker pool outlive a kill -9 of the orchestrator: its watchdog ends
    # them within seconds, and resume ends any still running ("left running by the previous ...").
    leftovers = processes_in(tmp_path)
    done = physflow("resume", str(run), "--yes", cwd=tmp_path, env={"SIM_SECONDS": "0.1"})
    assert done.returncode == 0, done.stderr
    assert not [p for p in leftovers if p.is_running() and p.status() != "zombie"]
    assert processes_in(tmp_path) == []
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 12 and all(r["status"] == "finished" for r in rows)
    runs = execution_counts(tmp_path)
    assert all(runs[t] == 1 for t in kept), runs
    assert (run / "orchestrator.lock").read_text().split()[1] != str(proc.pid)
