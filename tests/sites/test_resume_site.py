"""`physflow resume` runs on the site exactly as it was resolved at submit: values given with
--set then are not asked for again, and a site YAML named by a relative path is still found."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import physflow

SITE = """\
name: mine
description: ${note}
pools:
  mpi:
    kind: mpi
    max_tasks: ${slots}
"""

WORKFLOW = """\
physflow: 1
name: resumable
goal: Which x minimises the loss?
site: sites/mine.yaml
agents: {planner: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {x}"
  mpi: true
  resources: {ranks: 1, nodes: 1}
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 5, max_concurrent: 1, wall_time: 5m}
"""

SIM = ("import json, sys, time\ntime.sleep(1)\n"
       "json.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n")


def finished_tasks(run: Path) -> int:
    journal = run / "journal.jsonl"
    lines = journal.read_text().splitlines() if journal.is_file() else []
    return sum(json.loads(line)["event"] == "finished" for line in lines if line.strip())


def test_resume_reuses_the_site_resolved_at_submit(tmp_path):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "mine.yaml").write_text(SITE)
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    run = tmp_path / "run"
    unset = physflow("validate", "wf.yaml", cwd=tmp_path)
    assert unset.returncode == 2 and "${note}, ${slots} not set" in unset.stderr
    submit = subprocess.Popen([sys.executable, "-m", "physflow", "submit", "wf.yaml", "--run-dir", str(run),
                               "--set", "note=my workstation", "--set", "slots=1"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while finished_tasks(run) < 1 and time.monotonic() < deadline and submit.poll() is None:
            time.sleep(0.2)
        assert finished_tasks(run) >= 1, submit.stderr.read() if submit.poll() is not None else "no task finished"
        assert physflow("cancel", str(run)).returncode == 0
        submit.wait(timeout=60)
    finally:
        if submit.poll() is None:
            submit.kill()
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "cancelled"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = physflow("resume", str(run), cwd=elsewhere)  # no --set, another folder
    assert resumed.returncode == 0, resumed.stderr
    assert "on site mine" in resumed.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 5 and all(r["status"] == "finished" for r in rows)
    assert json.loads((run / "run.json").read_text())["site"]["description"] == "my workstation"
