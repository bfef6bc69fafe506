"""What the campaign benchmarks share: real campaigns through the CLI, and reading their journals.

Each campaign runs as ``python -m physflow submit WORKFLOW --run-dir RUN --yes`` in its own
process, exactly as a user runs one; the benchmarks then read what happened from the run's
``journal.jsonl`` (worker-clock start and end of every simulation, the source of every
proposal) and ``transcript.jsonl`` (every model turn). Nothing is timed from outside the run
that the run does not record itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.dispatch_overhead import load, prepare_environment  # noqa: E402
from physflow.vocabulary.records import TaskRecord  # noqa: E402
from physflow.workflows.store import CampaignState, read_journal, replay  # noqa: E402

FIGURES = REPO / "bench" / "figures"

__all__ = ["FIGURES", "REPO", "CampaignRun", "busy_fraction", "load", "prepare_environment", "pyplot", "run_campaign",
           "model_calls", "save_figure", "sleep_workflow", "transcript"]

#: The steering benchmarks' campaign: ``bench.noop_tasks.sleep_task`` through the ``python`` adapter.
SLEEP_WORKFLOW = """\
physflow: 1
name: {name}
goal: Find the x in [0, 1] that minimises y.
site: {site}
{team}
simulation:
  adapter: python
  function: bench.noop_tasks.sleep_task
  fixed: {{seconds: {seconds}}}
  parameters: {{x: {{min: 0.0, max: 1.0}}}}
objective: {{metric: y, goal: minimize}}
budget: {{max_simulations: {sims}, max_concurrent: {slots}, max_rounds: {sims}, wall_time: 15m, backfill: {backfill}}}
"""


def sleep_workflow(name: str, seconds: float, sims: int, slots: int, llm: str | None = None,
                   site: str = "local") -> str:
    """A campaign of ``sims`` simulations of ``seconds`` s each, ``slots`` at a time. ``llm`` (a
    YAML flow mapping) makes the planner the only agent, with optimizer backfill; without it the
    optimizer steers alone."""
    if llm is None:
        team, backfill = "agents: {planner: {enabled: false}}", "none"
    else:
        team = (f"llm: {llm}\nagents:\n  critic: {{enabled: false}}\n  domain_expert: {{enabled: false}}\n"
                "  coder: {enabled: false}")
        backfill = "optimizer"
    return SLEEP_WORKFLOW.format(name=name, site=site, team=team, seconds=seconds, sims=sims, slots=slots,
                                 backfill=backfill)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, name: str) -> Path:
    """Save ``fig`` as bench/figures/NAME and close it; returns the path."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    path = FIGURES / name
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


@dataclass
class CampaignRun:
    """One finished campaign: its run directory, its journal folded into state, its wall time (s)."""

    run_dir: Path
    state: CampaignState
    events: list[dict[str, Any]]
    wall_s: float
    stderr: str

    @property
    def tasks(self) -> list[TaskRecord]:
        return sorted(self.state.tasks.values(), key=lambda t: t.id)

    @property
    def finished(self) -> list[TaskRecord]:
        return [t for t in self.tasks if t.status == "finished"]

    def first(self, kind: str) -> float:
        """UNIX time of the first journal event of ``kind``."""
        return next(e["t"] for e in self.events if e["event"] == kind)


def run_campaign(workflow: str, folder: Path, files: dict[str, str] | None = None, timeout: float = 900.0,
                 env: dict[str, str] | None = None) -> CampaignRun:
    """Write ``workflow`` (YAML text) and ``files`` into ``folder``, run it with ``physflow submit``.

    Raises RuntimeError with the tail of the campaign's stderr if it does not finish.
    """
    prepare_environment()  # the workers import bench.noop_tasks: the repository root on PYTHONPATH
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wf.yaml").write_text(workflow)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    run = folder / "run"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "physflow", "submit", str(folder / "wf.yaml"), "--run-dir", str(run),
                           "--yes"], cwd=folder, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"campaign in {folder} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    events = read_journal(run / "journal.jsonl")
    return CampaignRun(run, replay(events), events, wall, proc.stderr)


def transcript(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the run's transcript.jsonl (agent messages, tool calls, notes)."""
    path = run_dir / "transcript.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def model_calls(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds of every model call, per role: from the role's previous transcript record (the
    request's last context: its task or a tool result) to a reply that carries tokens."""
    calls: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    for r in records:
        role = r.get("to") if r.get("agent") == "physflow" and r.get("type") == "task" else r.get("agent")
        if role is None or role == "physflow":
            continue
        if r.get("completion_tokens") and role in last:
            calls.setdefault(role, []).append(r["t"] - last[role])
        last[role] = r["t"]
    return calls


def busy_fraction(intervals: list[tuple[float, float]], slots: int, since: float | None = None) -> tuple[float, float]:
    """(busy fraction, makespan in s) of ``slots`` workers that ran tasks over ``intervals``.

    busy = sum of run intervals / (slots x makespan); the makespan runs from ``since`` (default:
    the first task's start) to the last task's end.
    """
    start = min(s for s, _ in intervals) if since is None else since
    makespan = max(e for _, e in intervals) - start
    return sum(e - s for s, e in intervals) / (slots * makespan), makespan
