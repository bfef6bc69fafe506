"""What the reliability tests share: small real campaigns, run through the CLI in their own processes.

Each simulation appends ``<task> <start time>`` to ``executions.log`` beside the workflow, so a
test can count how often each task really ran, independent of what the journal says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

#: Optimizer-only campaign of a serial executable: the cheapest real campaign there is.
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
import json, os, sys, time
task, x = sys.argv[1], float(sys.argv[2])
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "executions.log"), "a") as log:
    log.write(f"{task} {time.time()!r}\\n")
time.sleep(float(os.environ.get("SIM_SECONDS", "0.4")))
json.dump({"loss": (x - 0.3) ** 2, "profile": [x, x * x]}, open("result.json", "w"))
"""


def planner_rounds(n: int) -> list:
    """A replay planner's script: ``n`` rounds, each a hypothesis about the whole range of x."""
    return [{"content": {"hypothesis": f"the loss stays below {0.5 / (r + 1):.2f}", "bound": "below",
                         "value": 0.5 / (r + 1), "simulations": ["A"]}} for r in range(n)]


def journal(run: Path) -> list[dict]:
    """Complete journal lines only (a reader may catch the writer mid-line)."""
    path = run / "journal.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        events.append(json.loads(line))
    return events


def finished_ids(run: Path) -> set[str]:
    return {e["task"] for e in journal(run) if e["event"] == "finished"}


def executions(folder: Path) -> list[tuple[str, float]]:
    """(task, start time) of every run of a simulation, in order."""
    path = folder / "executions.log"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(task, float(t)) for task, t in rows]


def execution_counts(folder: Path) -> Counter:
    return Counter(task for task, _ in executions(folder))


def start(folder: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``physflow ARGS`` in a new session (so the test can kill it and all it started), output to files."""
    log = open(folder / f"orchestrator-{time.monotonic_ns()}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "physflow", *args], cwd=folder, stdout=log, stderr=log,
                            start_new_session=True, env={**os.environ, **(env or {})})


def submit(folder: Path, run: Path, workflow: str = "wf.yaml", env: dict | None = None) -> subprocess.Popen:
    return start(folder, "submit", str(folder / workflow), "--run-dir", str(run), "--yes", env=env)


def wait_for(predicate, timeout: float = 120, proc: subprocess.Popen | None = None) -> bool:
    """Poll until ``predicate()``; False if ``proc`` ended first. Fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return True


def processes_in(folder: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory lies in ``folder``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(folder) in text and proc.pid != os.getpid():
            found.append(proc)
    return found


def record_figures(name: str, figures: dict) -> None:
    """Append a test's counts to the JSON file named by $PHYSFLOW_RELIABILITY_FIGURES (BENCHMARKS.md's
    reliability table is made from it), and print them (visible with pytest -s)."""
    print(f"reliability figures {name}: {json.dumps(figures)}")
    target = os.environ.get("PHYSFLOW_RELIABILITY_FIGURES")
    if target:
        with open(target, "a") as fh:
            fh.write(json.dumps({"test": name, **figures}) + "\n")
