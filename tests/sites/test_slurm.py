"""`site: slurm` on a real Slurm cluster (slurmctld + slurmd + munge on this machine).

The campaign submits Parsl blocks with sbatch (SlurmProvider); each MPI simulation runs as a job
step launched by ``srun`` inside that job (the mpich wheel's MPI talks PMI-2 to Slurm). The same
workflow then runs on ``site: local``: changing ``site:`` is all a user does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLES, physflow

WHERE = """\
physflow: 1
name: where-it-ran
goal: Which x minimises the loss, and where did each simulation run?
site: {site}
agents: {{planner: {{enabled: false}}}}
simulation:
  adapter: executable
  command: "{{python}} {{workflow_dir}}/sim.py {{x}}"
  mpi: true
  resources: {{ranks: 2, nodes: 1}}
  parameters: {{x: {{min: 0, max: 1}}}}
objective: {{metric: loss}}
budget: {{max_simulations: 4, max_concurrent: 2, wall_time: 5m}}
"""

# Every rank reports the Slurm job and step it runs in (0 and -1 outside Slurm).
SIM = """\
import json, os, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
seen = comm.gather((int(os.environ.get("SLURM_JOB_ID", 0)), int(os.environ.get("SLURM_STEP_ID", -1))))
if comm.rank == 0:
    json.dump({"loss": (float(sys.argv[1]) - 0.3) ** 2, "ranks": comm.size, "slurm_job": seen[0][0],
               "slurm_step": seen[0][1], "places": len(set(seen))}, open("result.json", "w"))
"""

def run_where(tmp_path: Path, site: str, env: dict | None = None) -> tuple[Path, list[dict]]:
    (tmp_path / "wf.yaml").write_text(WHERE.format(site=site))
    (tmp_path / "sim.py").write_text(SIM)
    run = tmp_path / "run"
    proc = physflow("submit", "wf.yaml", "--run-dir", str(run), cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows), rows
    return run, rows


def slurm_jobs_of(run: Path, slurm_conf: Path) -> dict[int, dict[str, str]]:
    """Jobs the Slurm controller ran for this run (their output lies in the run's parsl/ folder)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True,
                         env={"SLURM_CONF": str(slurm_conf), "PATH": "/usr/bin:/bin"}).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("StdOut", "").startswith(str(run / "parsl")):
            jobs[int(fields["JobId"])] = fields
    return jobs


def test_campaign_simulations_run_as_srun_steps_inside_slurm_jobs(slurm_conf, tmp_path):
    run, rows = run_where(tmp_path, "slurm", env={"SLURM_CONF": str(slurm_conf)})
    jobs = slurm_jobs_of(run, slurm_conf)
    assert jobs, "Slurm ran no job for this run"
    assert all(j["JobName"].startswith("parsl.mpi.block-") for j in jobs.values())
    for r in rows:
        m = r["metrics"]
        assert m["ranks"] == 2 and m["places"] == 1  # both ranks in the same job step
        assert int(m["slurm_job"]) in jobs  # a job physflow's provider submitted for this run
        assert m["slurm_step"] >= 0  # launched by srun as a step, not run beside the job
    scripts = [p for p in (run / "parsl").rglob("submit_scripts/parsl.mpi.block-*")
               if not p.name.endswith((".stdout", ".stderr"))]
    assert scripts and all("#SBATCH --nodes=1" in p.read_text().splitlines() for p in scripts)


def test_the_same_workflow_runs_with_site_local(tmp_path):
    _, rows = run_where(tmp_path, "local")
    assert all(r["metrics"]["slurm_job"] == 0 and r["metrics"]["ranks"] == 2 for r in rows)


def test_heat2d_example_campaign_finishes_on_slurm(slurm_conf, heat_workflow, tmp_path):
    # The shipped example as it is, with the optimizer steering alone (no model) and a short budget.
    example = yaml.safe_load((EXAMPLES / "heat2d.yaml").read_text())
    example["agents"] = {"planner": {"enabled": False}}
    example["objective"].pop("tolerance")
    example["budget"].update(max_simulations=4, wall_time="5m")
    wf = heat_workflow(yaml.safe_dump(example))
    run = tmp_path / "run"
    proc = physflow("submit", str(wf), "--site", "slurm", "--run-dir", str(run), cwd=tmp_path,
                    env={"SLURM_CONF": str(slurm_conf)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "finished" and status["tasks"] == {"finished": 4}
    assert slurm_jobs_of(run, slurm_conf)
    assert json.loads((run / "run.json").read_text())["site"]["scheduler"] == "slurm"


PACKED = """\
physflow: 1
name: packed
goal: Do two one-rank simulations share a Slurm node, each on its own core?
site: slurm
agents: {planner: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {x}"
  mpi: true
  resources: {ranks: 1, nodes: 1}
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 4, max_concurrent: 2, wall_time: 5m}
"""

# The rank's cores as Slurm bound them, and when it ran (UNIX s).
PACKED_SIM = """\
import json, os, sys, time
from mpi4py import MPI
start = time.time(); time.sleep(3)
cores = sorted(os.sched_getaffinity(0))
json.dump({"loss": (float(sys.argv[1]) - 0.3) ** 2, "core": cores[0], "cores": len(cores), "start": start,
           "end": time.time(), "step": int(os.environ.get("SLURM_STEP_ID", -1))}, open("result.json", "w"))
"""


def packed_rows(tmp_path: Path, site: str, *options: str, env: dict | None = None) -> list[dict]:
    """Run PACKED on ``site``; each simulation's metrics, after checking that two ran at once and
    that simulations running at once never shared a core."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores")
    (tmp_path / "wf.yaml").write_text(PACKED.replace("site: slurm", f"site: {site}"))
    (tmp_path / "sim.py").write_text(PACKED_SIM)
    run = tmp_path / "run"
    proc = physflow("submit", "wf.yaml", "--run-dir", str(run), *options, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr  # two slots exist for max_concurrent 2
    rows = [r["metrics"] for r in json.loads(physflow("results", str(run), "--json").stdout)]
    assert len(rows) == 4 and all(m["cores"] == 1 for m in rows), rows
    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]
             if max(a["start"], b["start"]) < min(a["end"], b["end"])]
    assert pairs, f"no two simulations ran at once: {rows}"
    assert all(a["core"] != b["core"] for a, b in pairs), pairs  # at once, never on the same core
    return rows


def test_one_rank_simulations_share_a_node_as_steps_on_their_own_cores(slurm_conf, tmp_path):
    rows = packed_rows(tmp_path, "slurm", "--set", "tasks_per_node=2", env={"SLURM_CONF": str(slurm_conf)})
    assert all(m["step"] >= 0 for m in rows)  # each a step of the block's job


def test_one_rank_simulations_share_this_machine_each_on_its_own_core(tmp_path):
    rows = packed_rows(tmp_path, "local")
    assert all(m["step"] == -1 for m in rows)


def test_loop_job_runs_the_campaign_inside_the_users_own_batch_job(slurm_conf, tmp_path):
    """``loop: job``: the user submits one batch job that runs ``physflow submit``; the pools start
    inside it (no job of their own) and each MPI simulation is a step of that job."""
    (tmp_path / "wf.yaml").write_text(WHERE.format(site="slurm"))
    (tmp_path / "sim.py").write_text(SIM)
    run = tmp_path / "run"
    script = tmp_path / "campaign.sh"
    script.write_text(f"#!/bin/bash\ncd {tmp_path}\nexec {sys.executable} -m physflow submit wf.yaml --set loop=job "
                      f"--run-dir {run}\n")
    env = {**os.environ, "SLURM_CONF": str(slurm_conf)}
    sbatch = subprocess.run(["sbatch", "--wait", "--exclusive", "--nodes=1", "-o", str(tmp_path / "job.out"),
                             str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert sbatch.returncode == 0, (sbatch.stderr, (tmp_path / "job.out").read_text())
    outer = int(sbatch.stdout.split()[-1])
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows), rows
    assert all(int(r["metrics"]["slurm_job"]) == outer and r["metrics"]["slurm_step"] >= 0 for r in rows)
    assert slurm_jobs_of(run, slurm_conf) == {}  # no block of its own was submitted


def test_loop_job_outside_a_batch_job_is_refused_in_one_line(tmp_path):
    (tmp_path / "wf.yaml").write_text(WHERE.format(site="slurm"))
    (tmp_path / "sim.py").write_text(SIM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "physflow", "submit", "wf.yaml", "--set", "loop=job", "--run-dir",
                           str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "site slurm has loop: job, but this is not inside a slurm job (no $SLURM_JOB_ID)" in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
