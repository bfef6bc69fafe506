"""Nothing lost: kill the orchestrator, resume, and no finished simulation is lost or re-run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import h5py
import pytest

from tests.conftest import physflow
from tests.reliability.campaigns import (
    SIM,
    WORKFLOW,
    execution_counts,
    finished_ids,
    journal,
    processes_in,
    submit,
    wait_for,
)

pytestmark = pytest.mark.reliability


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    return tmp_path


def test_resume_after_kill_reruns_nothing(folder: Path):
    run = folder / "run"
    proc = submit(folder, run)
    wait_for(lambda: len(finished_ids(run)) >= 4)
    os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator and everything in its session
    proc.wait()
    before = finished_ids(run)
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "failed"

    done = physflow("resume", str(run), cwd=folder)
    assert done.returncode == 0, done.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 12 and all(r["status"] == "finished" for r in rows)
    runs = execution_counts(folder)
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
    proc = submit(folder, run)
    wait_for(lambda: len(finished_ids(run)) >= 2)
    out = physflow("cancel", str(run))
    assert out.returncode == 0, out.stderr
    assert proc.wait(timeout=60) == 1
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "cancelled"
    time.sleep(1)
    left = [" ".join(p.info["cmdline"] or []) for p in processes_in(folder)]
    assert left == [], f"processes outlived the cancelled campaign: {left}"
    done = physflow("resume", str(run), cwd=folder)
    assert done.returncode == 0, done.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 12 and all(r["status"] == "finished" for r in rows)


def test_resume_repairs_a_torn_hdf5_file(folder: Path):
    run = folder / "run"
    proc = submit(folder, run)
    wait_for(lambda: len(finished_ids(run)) >= 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run / "campaign.h5").write_bytes(b"\x89HDF\r\n torn in the middle of a write")
    done = physflow("resume", str(run), cwd=folder)
    assert done.returncode == 0, done.stderr
    with h5py.File(run / "campaign.h5") as f:
        assert len(f["tasks"]) == 12
    assert list(run.glob("campaign.h5.torn-*"))


MPI_WORKFLOW = """\
physflow: 1
name: cancellable
goal: find x
agents: {planner: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/mpi_sim.py {x}"
  mpi: true
  resources: {ranks: 2, nodes: 1}
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 6, max_concurrent: 2, wall_time: 10m}
"""

MPI_SIM = """\
import json, sys, time
from mpi4py import MPI
x = float(sys.argv[1])
time.sleep(4)
MPI.COMM_WORLD.Barrier()
if MPI.COMM_WORLD.rank == 0:
    json.dump({"loss": (x - 0.3) ** 2}, open("result.json", "w"))
"""


def test_cancel_leaves_no_mpi_rank_behind(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(MPI_WORKFLOW)
    (tmp_path / "mpi_sim.py").write_text(MPI_SIM)
    run = tmp_path / "run"
    proc = submit(tmp_path, run)
    ranks = lambda: [p for p in processes_in(tmp_path) if "mpi_sim.py" in " ".join(p.info["cmdline"] or [])]  # noqa: E731
    wait_for(lambda: len(ranks()) >= 2)  # a simulation's two ranks are running
    out = physflow("cancel", str(run))
    assert out.returncode == 0 and out.stdout.strip() == f"{run}: cancelled", out.stderr
    assert proc.wait(timeout=60) == 1
    time.sleep(0.5)
    left = [(p.pid, " ".join(p.info["cmdline"] or [])[:80]) for p in processes_in(tmp_path)]
    assert left == [], f"processes outlived the cancelled campaign: {left}"
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert {r["status"] for r in rows} == {"cancelled"}
    done = physflow("resume", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in json.loads(physflow("results", str(run), "--json").stdout)] == ["finished"] * 6
