"""What the campaign benchmarks share: real campaigns, and reading their journals.

Each campaign runs as ``python -m physflow submit WORKFLOW --run-dir RUN --yes`` in its own
process, exactly as a user runs one (``run_campaign``), or in this process as ``submit`` launches
it with the optimizer's seed chosen (``steer``: the benchmarks that compare strategies on common
random numbers); the benchmarks then read what happened from the run's ``journal.jsonl``
(worker-clock start and end of every simulation, the source of every proposal) and
``transcript.jsonl`` (every model turn). Nothing is timed from outside the run that the run does
not record itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
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

__all__ = ["FIGURES", "REPO", "CampaignRun", "ModelTurn", "Outcome", "UniformRandom", "busy_fraction", "load",
           "model_calls", "model_turns", "outcome_of", "prepare_environment", "pyplot", "run_campaign", "save_figure",
           "sleep_workflow", "steer", "transcript"]

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


@dataclass
class Outcome:
    """One strategy's campaign on one seed, as the strategy comparisons score it."""

    method: str
    seed: int
    budget: int
    values: list[float]  # the objective of each stored result, in the order stored
    started: int  # simulations submitted (a cancelled one ran, too)
    best: dict[str, float]
    best_value: float
    sources: dict[str, int]  # simulations submitted, by who proposed them (TaskRecord.source)
    wall_s: float
    reason: str
    run_dir: Path

    def to_tolerance(self, tol: float) -> int | None:
        """Results stored up to and including the first within ``tol`` (minimised); None: never."""
        return next((i + 1 for i, v in enumerate(self.values) if v <= tol), None)


class UniformRandom:
    """Random search, in the campaign's optimizer slot: independent uniform draws, each parameter
    on its own scale (log-uniform for log parameters), whatever the results say."""

    def __init__(self, parameters: dict[str, Any], seed: int) -> None:
        self.parameters = parameters
        self.rng = random.Random(seed)

    def observe(self, params: dict[str, float], value: float) -> None:
        pass

    def suggest(self, n: int = 1, pending: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
        out = []
        for _ in range(max(0, n)):
            point = {}
            for name, p in self.parameters.items():
                if p.log:
                    point[name] = math.exp(self.rng.uniform(math.log(p.min), math.log(p.max)))
                else:
                    point[name] = self.rng.uniform(p.min, p.max)
            out.append(point)
        return out


def steer(folder: Path, method: str, seed: int, random_search: bool = False) -> Outcome:
    """Run ``folder/wf.yaml`` in this process as ``physflow submit`` launches it (the embedded
    model served as a task on the site's pool), its run directory ``folder/run``.

    Seed ``seed`` replaces the workflow's: it seeds the optimizer (or, with ``random_search``,
    ``UniformRandom`` in its place) and the loop's shuffles of the planner's candidates, so two
    strategies on the same seed start from the same points (common random numbers). The
    workflow's own ``fixed.seed`` stays the simulation's initial phases.
    """
    from physflow.optimizer import Optimizer
    from physflow.workflows.launcher import launched
    from physflow.workflows.store import RunStore
    from physflow.workflows.validate import check_workflow

    checked = check_workflow(folder / "wf.yaml")
    spec = checked.workflow.spec
    store = RunStore.create(folder / "run")
    store.open_for_writing()
    store.write_run_files(checked.workflow, checked.site)
    t0 = time.time()
    try:
        with launched(checked, store) as campaign:
            campaign.optimizer = (UniformRandom(campaign.adapter.parameters, seed) if random_search
                                  else Optimizer(campaign.adapter.parameters, campaign.spec.objective.goal, seed=seed))
            campaign.rng = random.Random(seed)
            asyncio.run(campaign.run())
    finally:
        store.close()
    return outcome_of(folder / "run", method, seed, spec.objective.metric, spec.objective.goal, time.time() - t0)


def outcome_of(run_dir: Path, method: str, seed: int, metric: str | None = None, goal: str | None = None,
               wall_s: float | None = None) -> Outcome:
    """The ``Outcome`` of a finished run, from its journal and workflow.yaml alone (so a kept run
    directory can be scored again); ``metric`` and ``goal`` default to the workflow's objective,
    ``wall_s`` to the journal's campaign start to end (without the pools' and the model
    server's start-up)."""
    import yaml

    from physflow.vocabulary import ranking

    spec = yaml.safe_load((run_dir / "workflow.yaml").read_text())
    metric, goal = metric or spec["objective"]["metric"], goal or spec["objective"].get("goal", "minimize")
    state = replay(read_journal(run_dir / "journal.jsonl"))
    tasks = state.tasks.values()
    done = sorted((t for t in tasks if t.status == "finished"), key=lambda t: t.stored)
    best = ranking.best(done, lambda t: t.score(metric), goal)
    sources: dict[str, int] = {}
    for t in tasks:
        if t.submitted is not None:
            sources[t.source] = sources.get(t.source, 0) + 1
    if wall_s is None:
        wall_s = (state.ended or math.nan) - (state.started or math.nan)
    return Outcome(method, seed, int(spec["budget"]["max_simulations"]), [t.metrics[metric] for t in done],
                   sum(t.submitted is not None for t in tasks), dict(best.params) if best else {},
                   best.metrics[metric] if best else math.inf, sources, wall_s, state.reason, run_dir)


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


#: The roles whose turns run inside the planner's (its picks, its hypothesis, the domain expert's
#: review of it): the campaign's note that it stopped the planner's turn stops theirs.
STOPPED_WITH_PLANNER = ("planner", "domain_expert")


@dataclass
class ModelTurn:
    """One agent turn (``physflow.agents.team.take_turn``): the task physflow sent, the reply
    or error that ended it, in UNIX seconds. ``invalid``: the reply could not be parsed, or
    physflow rejected it (a check failed) and sent it back; ``cancelled``: the campaign stopped
    the turn (it has no reply)."""

    role: str
    task: str
    start: float
    end: float
    invalid: bool
    cancelled: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


def model_turns(records: list[dict[str, Any]]) -> list[ModelTurn]:
    """Every model turn of a transcript, in the order started. A turn opens with physflow's
    ``task`` record to the role and closes with the role's ``tokens`` or ``error`` record; a
    ``rejected`` note to the role before its next task marks it invalid, a ``cancelled`` note of
    physflow while it is open marks it stopped. Roles run concurrently (the critic while the
    planner thinks), so turns are paired per role."""
    turns: list[ModelTurn] = []
    open_turn: dict[str, ModelTurn] = {}
    last: dict[str, ModelTurn] = {}  # each role's latest turn, closed or not: a later rejection is its
    for r in records:
        agent, kind = r.get("agent"), r.get("type")
        if agent == "physflow" and kind == "task":
            turn = ModelTurn(r["to"], str(r.get("content", "")), r["t"], math.nan, False, False)
            turns.append(turn)
            open_turn[turn.role] = last[turn.role] = turn
        elif agent == "physflow" and kind == "rejected" and r.get("to") in last:
            last[r["to"]].invalid = True
        elif agent == "physflow" and kind == "cancelled":  # the planner's turn (and its review) stopped
            for role in STOPPED_WITH_PLANNER:
                if role in open_turn:
                    open_turn[role].cancelled = True
        elif agent in open_turn and kind in ("tokens", "error"):
            turn = open_turn.pop(agent)
            turn.end = r["t"]
            turn.invalid = turn.invalid or kind == "error"
    for turn in open_turn.values():  # stopped when the campaign ended, without a record of its own
        turn.cancelled = True
    return turns


def busy_fraction(intervals: list[tuple[float, float]], slots: int, since: float | None = None) -> tuple[float, float]:
    """(busy fraction, makespan in s) of ``slots`` workers that ran tasks over ``intervals``.

    busy = sum of run intervals / (slots x makespan); the makespan runs from ``since`` (default:
    the first task's start) to the last task's end.
    """
    start = min(s for s, _ in intervals) if since is None else since
    makespan = max(e for _, e in intervals) - start
    return sum(e - s for s, e in intervals) / (slots * makespan), makespan
