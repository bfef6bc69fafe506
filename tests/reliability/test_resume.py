"""Nothing lost: kill the orchestrator, resume, and no finished simulation is lost or re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import pytest

from tests.conftest import physflow

WORKFLOW = """\
physflow: 1
name: resumable
goal: find x
agents: {planner: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {task_id} {x}"
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 12, max_concurrent: 2, wall_time: 10m}
"""

SIM = """\
import json, sys, time
task, x = sys.argv[1], float(sys.argv[2])
with open(__file__.replace("sim.py", "executions.log"), "a") as log:
    log.write(task + "\\n")
time.sleep(0.4)
json.dump({"loss": (x - 0.3) ** 2}, open("result.json", "w"))
"""


def journal(run: Path) -> list[dict]:
    path = run / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def finished_ids(run: Path) -> set[str]:
    return {e["task"] for e in journal(run) if e["event"] == "finished"}


def start(folder: Path, run: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "physflow", "submit", str(folder / "wf.yaml"), "--run-dir",
                             str(run)], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    return tmp_path


def test_resume_after_kill_reruns_nothing(folder: Path):
    run = folder / "run"
    proc = start(folder, run)
    wait_for(lambda: len(finished_ids(run)) >= 4)
    os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator and everything in its session
    proc.wait()
    before = finished_ids(run)
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "failed"

    done = physflow("resume", str(run), cwd=folder)
    assert done.returncode == 0, done.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 12 and all(r["status"] == "finished" for r in rows)
    runs = Counter((folder / "executions.log").read_text().split())
    for task in before:
        assert runs[task] == 1, f"{task} finished before the kill but ran {runs[task]} times"
    assert all(n <= 2 for n in runs.values())  # in-flight tasks resubmitted once at most
    resumed = [e for e in journal(run) if e["event"] == "campaign_resumed"]
    assert len(resumed) == 1 and resumed[0]["kept"] == len(before)
    with h5py.File(run / "campaign.h5") as f:
        assert sorted(f["tasks"]) == sorted(r["id"] for r in rows)
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "finished"
    again = physflow("resume", str(run))
    assert again.returncode == 2 and "already finished" in again.stderr


def test_cancel_stops_cleanly_and_stays_resumable(folder: Path):
    run = folder / "run"
    proc = start(folder, run)
    wait_for(lambda: len(finished_ids(run)) >= 2)
    out = physflow("cancel", str(run))
    assert out.returncode == 0, out.stderr
    assert proc.wait(timeout=60) == 1
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "cancelled"
    time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-f", str(folder / "sim.py")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "simulations outlived the cancelled campaign"
    done = physflow("resume", str(run), cwd=folder)
    assert done.returncode == 0, done.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 12 and all(r["status"] == "finished" for r in rows)


def test_resume_repairs_a_torn_hdf5_file(folder: Path):
    run = folder / "run"
    proc = start(folder, run)
    wait_for(lambda: len(finished_ids(run)) >= 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run / "campaign.h5").write_bytes(b"\x89HDF\r\n torn in the middle of a write")
    done = physflow("resume", str(run), cwd=folder)
    assert done.returncode == 0, done.stderr
    with h5py.File(run / "campaign.h5") as f:
        assert len(f["tasks"]) == 12
    assert list(run.glob("campaign.h5.torn-*"))
