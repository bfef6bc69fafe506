"""Simulations that fail, hang or lose their worker: the campaign finishes, the failure is recorded
and shown to the agents, only transient failures are retried, and no process outlives its task."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import pytest
from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

from physflow.dispatch.retry import TRANSIENT_RETRIES, is_transient, retry_cost
from physflow.errors import AdapterError, ProposalError
from tests.conftest import results_of, submit_folder, write_script
from tests.reliability.campaigns import execution_counts, planner_rounds, processes_in, record_figures

pytestmark = pytest.mark.reliability

FAILING = """\
physflow: 1
name: failing
goal: find x
llm: {provider: replay, script: planner.jsonl}
agents:
  critic: {script: critic.jsonl}
  domain_expert: {enabled: false}
  coder: {enabled: false}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {task_id} {x}"
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 10, max_concurrent: 2, max_rounds: 5, wall_time: 10m, backfill: none}
"""

# Every fifth task (20%) fails deterministically; t0002 loses its worker once (a transient failure).
FAILING_SIM = """\
import json, os, signal, sys, time
task, x = sys.argv[1], float(sys.argv[2])
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "executions.log"), "a") as log:
    log.write(f"{task} {time.time()!r}\\n")
if int(task[1:]) % 5 == 4:
    sys.stderr.write(f"injected failure: the solver diverged at x={x}\\n")
    sys.exit(3)
if task == "t0002" and not os.path.exists(os.path.join(here, "worker-killed")):
    open(os.path.join(here, "worker-killed"), "w").close()
    os.kill(os.getppid(), signal.SIGKILL)  # the Parsl worker running this task dies
    time.sleep(30)
time.sleep(0.2)
json.dump({"loss": (x - 0.3) ** 2}, open("result.json", "w"))
"""


def test_injected_failures_are_stored_shown_to_the_agents_and_never_retried(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(FAILING)
    (tmp_path / "sim.py").write_text(FAILING_SIM)
    write_script(tmp_path / "planner.jsonl", planner_rounds(5))
    write_script(tmp_path / "critic.jsonl", [{"content": {"verdict": "inconclusive", "evidence": "one run failed",
                                                          "advice": "retry elsewhere"}}] * 5)
    run, proc = submit_folder(tmp_path)
    assert proc.returncode == 0, proc.stderr  # the campaign finishes despite the failures

    rows = {r["id"]: r for r in results_of(run)}
    assert len(rows) == 10
    failed = sorted(t for t, r in rows.items() if r["status"] == "failed")
    assert failed == ["t0004", "t0009"]  # 20%
    assert all(r["status"] == "finished" for t, r in rows.items() if t not in failed)
    runs = execution_counts(tmp_path)
    assert runs["t0002"] == 2, "the task whose worker died was not retried"
    assert all(runs[t] == 1 for t in rows if t != "t0002"), runs  # a non-zero exit is never retried
    with h5py.File(run / "campaign.h5", "r") as f:
        for t in failed:
            attrs = f[f"tasks/{t}"].attrs
            assert attrs["status"] == "failed" and attrs["error"].startswith("exit code 3; stderr tail:")
            assert f"injected failure: the solver diverged at x={rows[t]['params']['x']}" in attrs["error"]
    # What the critic was told about its hypotheses' simulations includes the failure and its stderr.
    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    to_critic = " ".join(str(t["content"]) for t in transcript if t["type"] == "task" and t.get("to") == "critic")
    assert "failed: exit code 3; stderr tail: injected failure: the solver diverged" in to_critic
    assert "## Failures" in (run / "report.md").read_text()
    record_figures("injected_failures", {"tasks": len(rows), "failures_injected": len(failed),
                                         "worker_losses": 1, "retried": 1, "campaign": "finished"})


HANGING = """\
physflow: 1
name: hanging
goal: find x
agents: {planner: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {x}"
  mpi: true
  resources: {ranks: 2, nodes: 1}
  walltime: 3s
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 4, max_concurrent: 2, wall_time: 5m}
"""

# Every rank of a run with x > 0.4 ignores SIGTERM and sleeps for good: only SIGKILL ends it.
HANGING_SIM = """\
import json, signal, sys, time
from mpi4py import MPI
x = float(sys.argv[1])
if x > 0.4:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)
if MPI.COMM_WORLD.rank == 0:
    json.dump({"loss": (x - 0.3) ** 2}, open("result.json", "w"))
"""


def test_walltime_kills_the_whole_mpi_process_tree(tmp_path: Path):
    run, proc = submit_folder(tmp_path, {"wf.yaml": HANGING, "sim.py": HANGING_SIM})
    assert proc.returncode == 0, proc.stderr
    rows = results_of(run)
    hung = [r for r in rows if r["params"]["x"] > 0.4]
    assert hung, "the optimizer proposed no x > 0.4 (seeded: it should)"
    for r in rows:
        if r["params"]["x"] > 0.4:
            assert r["status"] == "failed" and r["error"].startswith("timed out after 3 s"), r
            assert r["finished"] - r["started"] < 3 + 5 + 3  # walltime, SIGTERM grace, slack
        else:
            assert r["status"] == "finished", r
    time.sleep(0.5)
    left = [(p.pid, " ".join(p.info["cmdline"] or [])[:80]) for p in processes_in(tmp_path)]
    assert left == [], f"processes outlived their tasks: {left}"
    record_figures("walltime", {"tasks": len(rows), "timed_out": len(hung), "orphans": len(left)})


def test_only_transient_failures_are_retried():
    assert is_transient(WorkerLost(1, "node7")) and is_transient(ManagerLost(b"m1", "node7"))
    assert is_transient(ConnectionResetError("interchange went away"))
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = WorkerLost(2, "node8")
    assert is_transient(wrapped)
    for deterministic in (ProposalError("x=2 is outside [0, 1]"), AdapterError("no result.json"),
                          ValueError("could not convert string to float: 'abc'"), TypeError("bad kwargs"),
                          KeyError("omega_m"), ZeroDivisionError()):
        assert not is_transient(deterministic), deterministic
        assert retry_cost(deterministic, {}) > TRANSIENT_RETRIES  # Parsl gives up at once
    assert retry_cost(WorkerLost(1, "node7"), {}) == 1 <= TRANSIENT_RETRIES


def test_the_site_config_uses_the_retry_handler(tmp_path: Path):
    from physflow.dispatch.parsl_config import build_parsl_config
    from physflow.site_configs.loader import load_site

    config = build_parsl_config(load_site("local"), tmp_path, 2)
    assert config.retries == TRANSIENT_RETRIES and config.retry_handler is retry_cost
