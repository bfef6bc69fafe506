"""Whole campaigns through the CLI, with real Parsl, real mpiexec and AutoGen's replay model."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from tests.conftest import HEAT_REPLAY, X_STOPPED, physflow, results_of, submit_folder, write_script

H1 = {"hypothesis": "The field is matched nowhere this well: chi2 stays tiny everywhere.", "bound": "below",
      "value": 1e-9}


def test_replay_campaign_states_judges_and_falls_back(heat_workflow, tmp_path):
    """Round 1: a claim outside the bounds is sent back with the reason, the second is judged by the
    numbers (refuted), and the critic who calls it supported is refused and recorded. Round 2: garbage,
    an incomplete and a cut-off reply, then the optimizer's batch runs under physflow's own hypothesis."""
    write_script(tmp_path / "planner.jsonl", [
        {"content": {**H1, "simulations": ["E"]}},                                  # no such simulation
        {"content": {**H1, "simulations": ["A", "B", "C", "D"]}},
        "this is not JSON at all",                                                   # round 2: garbage,
        {"content": {"hypothesis": "missing the rest"}},                             # incomplete,
        '{"hypothesis": "cut off at max_tok',                                        # truncated
    ])
    write_script(tmp_path / "critic.jsonl", [
        {"content": {"verdict": "supported", "evidence": "chi2 = 1.0 at kappa 0.42", "advice": "refine power"}}])
    wf = heat_workflow(HEAT_REPLAY)
    run = tmp_path / "run"
    proc = physflow("submit", str(wf), "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run)

    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 8
    for row in rows:
        assert {"id", "status", "params", "metrics", "hypothesis", "submitted", "started", "finished"} <= set(row)
        assert row["status"] == "finished", row
        assert row["submitted"] <= row["started"] <= row["finished"]
    # no surrogate yet in either round (fewer than 3 results): no picks, every simulation the optimizer's,
    # and every simulation under a hypothesis
    assert {r["source"] for r in rows} == {"optimizer"}
    assert [r["hypothesis"] for r in rows] == ["H1"] * 4 + ["H2"] * 4

    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "finished" and status["tasks"] == {"finished": 8}

    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    rejected = [t for t in transcript if t["type"] == "rejected"]
    assert any("simulations.0: Input should be 'A', 'B', 'C' or 'D'" in str(t["content"]) for t in rejected)
    errors = [t["content"] for t in transcript if t["agent"] == "planner" and t["type"] == "error"]
    assert len(errors) >= 3 and any("invalid JSON reply" in e for e in errors)
    assert any(t["type"] == "fallback" for t in transcript)
    refused = [t for t in transcript if t["type"] == "verdict_refused"]
    assert refused and "the critic said supported, the numbers say refuted" in refused[0]["content"]

    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    hypotheses = {e["id"]: e for e in events if e["event"] == "hypothesis"}
    h1 = hypotheses["H1"]
    assert h1["author"] == "planner" and {k: h1["claim"][k] for k in ("metric", "bound", "value")} == {
        "metric": "chi2", "bound": "below", "value": 1e-9}
    for row in rows[:4]:  # the region: the box of the four simulations it named
        assert all(lo <= row["params"][name] <= hi for name, (lo, hi) in h1["claim"]["region"].items())
    assert hypotheses["H2"]["author"] == "optimizer" and hypotheses["H2"]["claim"] is None
    verdicts = {e["id"]: e for e in events if e["event"] == "verdict"}
    assert verdicts["H1"]["verdict"] == "refuted" and verdicts["H1"]["critic_refused"] == "supported"
    assert "4 simulation(s) in the region" in verdicts["H1"]["evidence"]
    assert verdicts["H2"]["verdict"] == "inconclusive"
    assert events[-1]["event"] == "campaign_ended" and events[-1]["reason"] == "simulation budget spent"

    with h5py.File(run / "campaign.h5") as f:
        assert sorted(f["tasks"]) == sorted(r["id"] for r in rows)
        g = f[f"tasks/{rows[0]['id']}"]
        assert g["temperature"].shape == (96, 96) and g["temperature"].attrs["units"] == "K"
        assert g["params"].attrs["kappa"] == rows[0]["params"]["kappa"] and g.attrs["hypothesis"] == "H1"
        assert {"created", "submitted", "started", "finished", "received", "stored"} <= set(g.attrs)
    report = (run / "report.md").read_text()
    assert "| H1 | The field is matched nowhere this well" in report and "refuted" in report


MPI_EXE = """\
physflow: 1
name: exe-mpi
goal: find alpha
agents:
  planner: {enabled: false}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {alpha}"
  mpi: true
  resources: {ranks: 2, nodes: 1}
  parameters: {alpha: {min: 0, max: 1}}
objective: {metric: loss, tolerance: 0.0001}
budget: {max_simulations: 6, max_concurrent: 2, wall_time: 5m}
"""

MPI_SIM = """\
import json, sys
from mpi4py import MPI
alpha = float(sys.argv[1])
comm = MPI.COMM_WORLD
if alpha > 0.5:
    sys.stderr.write(f"rank {comm.rank}: alpha {alpha} diverged\\n")
    sys.exit(5)
total = comm.allreduce(alpha, op=MPI.SUM)
if comm.rank == 0:
    json.dump({"loss": (total / comm.size - 0.25) ** 2, "ranks": comm.size}, open("result.json", "w"))
"""


def test_optimizer_only_mpi_executable_campaign_records_failures(tmp_path: Path):
    run, proc = submit_folder(tmp_path, {"sim.py": MPI_SIM, "wf.yaml": MPI_EXE})
    assert proc.returncode == 0, proc.stderr
    rows = results_of(run)
    assert len(rows) == 6 and {r["source"] for r in rows} == {"optimizer"}
    for row in rows:
        if row["params"]["alpha"] > 0.5:
            assert row["status"] == "failed" and "diverged" in row["error"] and "exit code" in row["error"]
        else:
            assert row["status"] == "finished" and row["metrics"]["ranks"] == 2.0
    assert any(r["status"] == "failed" for r in rows) and any(r["status"] == "finished" for r in rows)
    assert "## Failures" in (run / "report.md").read_text()


def test_a_turn_stopped_at_the_tolerance_leaves_its_simulations_under_a_record_that_says_so(tmp_path: Path):
    """The round's points ran while the planner (60 s a turn) was stating H1; the first result
    reaches the tolerance, the turn is stopped: H1 is recorded as not stated, with no claim."""
    write_script(tmp_path / "planner.jsonl", [{"content": {"hypothesis": "h", "bound": "below", "value": 1.0,
                                                           "simulations": ["A"]}}])
    sim = "import json, sys\njson.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n"
    run, proc = submit_folder(tmp_path, {"sim.py": sim, "wf.yaml": X_STOPPED})
    assert proc.returncode == 0, proc.stderr
    rows = results_of(run)
    # the round's batch started while its hypothesis was being stated (approval: auto)
    assert rows and all(r["hypothesis"] == "H1" and r["source"] in ("optimizer", "backfill") for r in rows)
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    (h1,) = [e for e in events if e["event"] == "hypothesis"]
    assert h1["statement"] == "Not stated: the planner's turn was stopped (tolerance reached)."
    assert h1["author"] == "optimizer" and h1["claim"] is None
    assert "| H1 | Not stated" in (run / "report.md").read_text()
