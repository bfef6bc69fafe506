"""Whole campaigns through the CLI, with real Parsl, real mpiexec and AutoGen's replay model."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from tests.conftest import physflow, results_of, submit_folder, write_script

HEAT = """\
physflow: 1
name: heat-replay
goal: Which kappa and power reproduce the observed field?
llm: {provider: replay, script: planner.jsonl}
agents:
  critic: {script: critic.jsonl}
  domain_expert: {enabled: false}
  coder: {enabled: false}
simulation:
  adapter: heat2d
  resources: {ranks: 2, nodes: 1}
  fixed: {n: 96, t_end: 0.05}
  parameters:
    kappa: {min: 0.05, max: 1.0, units: m^2/s}
    power: {min: 5, max: 60, units: K/s}
objective: {metric: chi2, target: data/heat2d_target.h5}
budget: {max_simulations: 8, max_concurrent: 2, max_rounds: 4, wall_time: 5m, backfill: none}
"""

H1 = {"hypothesis": "The field is matched near kappa 0.4 m^2/s.", "prediction": "chi2 below 5 at kappa 0.42"}


def test_replay_campaign_runs_validates_and_falls_back(heat_workflow, tmp_path):
    write_script(tmp_path / "planner.jsonl", [
        {"tool": "suggest_parameters", "arguments": {"n": 2}},
        {"content": {**H1, "simulations": [{"kappa": 1.7, "power": 30}]}},         # out of bounds
        {"content": {**H1, "simulations": [{"kappa": 0.42, "power": 30}, {"kappa": 0.3, "power": 30}]}},
        "this is not JSON at all",                                                   # round 2: garbage,
        {"content": {"hypothesis": "missing the rest"}},                             # incomplete,
        '{"hypothesis": "cut off at max_tok',                                        # truncated
    ])
    write_script(tmp_path / "critic.jsonl", [
        {"content": {"verdict": "supported", "evidence": "chi2 = 1.0 at kappa 0.42", "advice": "refine power"}}])
    wf = heat_workflow(HEAT)
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
    planned = [r for r in rows if r["source"] == "planner"]
    assert [r["params"] for r in planned] == [{"kappa": 0.42, "power": 30.0}, {"kappa": 0.3, "power": 30.0}]
    assert all(r["hypothesis"] == "H1" for r in planned)
    assert planned[0]["metrics"]["chi2"] < 2  # the truth
    fallback = [r for r in rows if r["source"] == "optimizer"]
    assert len(fallback) == 6 and all(r["hypothesis"] is None for r in fallback)

    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "finished" and status["tasks"] == {"finished": 8}

    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    kinds = [(t["agent"], t["type"]) for t in transcript]
    assert ("planner", "ToolCallRequestEvent") in kinds and ("planner", "ToolCallExecutionEvent") in kinds
    rejected = [t for t in transcript if t["type"] == "rejected"]
    assert any("kappa=1.7 is outside [0.05, 1.0]" in str(t["content"]) for t in rejected)
    errors = [t["content"] for t in transcript if t["agent"] == "planner" and t["type"] == "error"]
    assert len(errors) >= 3 and any("invalid JSON reply" in e for e in errors)
    assert any(t["type"] == "fallback" for t in transcript)

    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    verdicts = [e for e in events if e["event"] == "verdict"]
    assert verdicts[0]["id"] == "H1" and verdicts[0]["verdict"] == "supported"
    assert events[-1]["event"] == "campaign_ended" and events[-1]["reason"] == "simulation budget spent"

    with h5py.File(run / "campaign.h5") as f:
        assert sorted(f["tasks"]) == sorted(r["id"] for r in rows)
        g = f[f"tasks/{planned[0]['id']}"]
        assert g["temperature"].shape == (96, 96) and g["temperature"].attrs["units"] == "K"
        assert g["params"].attrs["kappa"] == 0.42 and g.attrs["hypothesis"] == "H1"
        assert {"created", "submitted", "started", "finished", "received", "stored"} <= set(g.attrs)
    report = (run / "report.md").read_text()
    assert "| H1 | The field is matched near kappa 0.4 m^2/s." in report and "supported" in report


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
