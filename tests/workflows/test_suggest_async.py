"""The optimizer suggests in a worker thread: the loop keeps taking results while it fits, and the
slots freed meanwhile are asked for together by the next call (one refit for many slots)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from physflow.optimizer import Optimizer
from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.workflow import BudgetSpec
from physflow.workflows.backfill import Backfill
from physflow.workflows.campaign import Campaign
from physflow.workflows.launcher import launched
from physflow.workflows.store import RunStore
from physflow.workflows.validate import check_workflow

WORKFLOW = """\
physflow: 1
name: suggest-async
goal: Find the x in [0, 1] that minimises y.
agents: {planner: {enabled: false}}
simulation:
  adapter: python
  function: parabola.run
  parameters: {x: {min: 0.0, max: 1.0}}
objective: {metric: y, goal: minimize}
budget: {max_simulations: 16, max_concurrent: 4, max_rounds: 4, wall_time: 5m, backfill: none}
"""


PARABOLA = """\
def run(x):
    return {"y": (x - 0.3) ** 2}
"""


class PatientOptimizer(Optimizer):
    """After its first call, answers only once the loop has taken every result in flight (60 s at
    most): a fit that outlasts the simulations. It deadlocks if the loop waits for it."""

    campaign: Campaign
    calls: list[tuple[int, bool]]  # (points asked, gave up waiting), shared by all snapshots

    def suggest(self, n: int = 1, pending: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
        gave_up = False
        if self.calls:
            deadline = time.monotonic() + 60.0
            while self.campaign.in_flight and not gave_up:
                time.sleep(0.01)
                gave_up = time.monotonic() > deadline
        self.calls.append((n, gave_up))
        return super().suggest(n, pending)


def run_campaign(tmp_path: Path, monkeypatch, workflow: str, simulation: str,
                 optimizer_class: type, seed: int) -> tuple[str, Campaign, Any]:
    """A real campaign of ``workflow`` whose simulation is the module text ``simulation``
    (parabola.py, importable by the Parsl workers), steered by an ``optimizer_class`` that sees
    the campaign and records its calls: (state, campaign, optimizer)."""
    (tmp_path / "wf.yaml").write_text(workflow)
    (tmp_path / "parabola.py").write_text(simulation)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for the Parsl workers
    checked = check_workflow(tmp_path / "wf.yaml")
    run_dir = tmp_path / "run"
    store = RunStore.create(run_dir)
    store.open_for_writing()
    store.write_run_files(checked.workflow, checked.site)
    try:
        with launched(checked, store) as campaign:
            optimizer = optimizer_class(campaign.optimizer.parameters, "minimize", seed=seed)
            optimizer.campaign, optimizer.calls = campaign, []
            campaign.optimizer = optimizer
            state = asyncio.run(campaign.run())
    finally:
        store.close()
    return state, campaign, optimizer


def test_results_are_taken_while_the_optimizer_fits_and_freed_slots_are_batched(tmp_path: Path, monkeypatch):
    # a simulation that returns at once
    state, campaign, optimizer = run_campaign(tmp_path, monkeypatch, WORKFLOW, PARABOLA, PatientOptimizer, 1)
    tasks: list[Any] = list(campaign.tasks.values())
    assert state == "finished" and len(tasks) == 16, campaign.stop_reason
    assert all(t.status == "finished" and t.source == "optimizer" for t in tasks), [(t.status, t.error) for t in tasks]
    asked = [n for n, _ in optimizer.calls]
    assert not any(gave_up for _, gave_up in optimizer.calls), optimizer.calls  # the loop never waited on a fit
    assert asked[0] == 4 and max(asked[1:]) >= 2, asked  # slots freed during a fit were asked for together
    assert len(asked) < 16 and sum(asked) >= 16, asked


SLOW_PARABOLA = """\
import time


def run(x):
    time.sleep(0.3)
    return {"y": (x - 0.3) ** 2}
"""


class SlowOptimizer(Optimizer):
    """A fit that takes a sixth of a simulation (far above ``SPARE_ABOVE``); records, per call, the
    points asked for and whether every slot was busy at the time (a spare prepared ahead)."""

    campaign: Campaign
    calls: list[tuple[int, bool]]

    def suggest(self, n: int = 1, pending: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
        busy = len(self.campaign.in_flight) >= self.campaign.spec.budget.max_concurrent
        self.calls.append((n, busy))
        time.sleep(0.05)
        return super().suggest(n, pending)


def test_a_slow_fit_prepares_a_spare_point_while_every_slot_is_busy(tmp_path: Path, monkeypatch):
    workflow = WORKFLOW.replace("max_concurrent: 4", "max_concurrent: 2")
    state, campaign, optimizer = run_campaign(tmp_path, monkeypatch, workflow, SLOW_PARABOLA, SlowOptimizer, 2)
    tasks: list[Any] = list(campaign.tasks.values())
    assert state == "finished" and len(tasks) == 16, campaign.stop_reason
    assert all(t.status == "finished" and 0.0 <= t.params["x"] <= 1.0 for t in tasks)
    spares = [n for n, busy in optimizer.calls if busy]
    assert spares and set(spares) == {1}, optimizer.calls  # one point at a time, asked while all slots ran
    assert len({t.params["x"] for t in tasks}) == 16  # a spare is used once, never twice


def test_a_spare_is_dropped_after_a_new_best_or_too_many_results():
    """A spare has not seen the results since it was drawn: it may start after ordinary ones (at
    most ``max_concurrent``), never after a new best (offline, ``bench/optimizer_offline.py
    --spare``: used after every result it cost 9 / 8.7 simulations to the tolerance against 8 /
    8.2 fresh; dropped after a new best, 8 / 7.9)."""
    backfill = Backfill(BudgetSpec(max_concurrent=2), deliver=None)  # type: ignore[arg-type]
    task = TaskRecord(id="t0000", params={"x": 0.1}, hypothesis=None, source="optimizer", created=0.0)
    backfill.observe(task, new_best=True)
    backfill.spares_seen = backfill.results_count  # drawn now
    backfill.observe(task)
    backfill.observe(task)
    assert backfill.spare_usable()  # two ordinary results since
    backfill.observe(task)
    assert not backfill.spare_usable()  # three: more than max_concurrent
    backfill.spares_seen = backfill.results_count
    backfill.observe(task, new_best=True)
    assert not backfill.spare_usable()  # a new best since


STEP = """\
def run(x):
    return {"y": 1.0 if x > 0.5 else 2.0}
"""


def test_the_best_kept_as_results_arrive_is_the_best_over_every_task(tmp_path: Path, monkeypatch):
    """The loop keeps its best as results come in, in whatever order they finish: it is the one
    ``ranking.best`` finds over every task, ties (a step: many equal values) to the earliest task."""
    from physflow.vocabulary import ranking

    state, campaign, optimizer = run_campaign(tmp_path, monkeypatch, WORKFLOW, STEP, PathOptimizer, 3)
    tasks: list[Any] = list(campaign.tasks.values())
    assert state == "finished" and len(tasks) == 16
    assert sum(t.metrics["y"] == 1.0 for t in tasks) >= 2  # a tie to break
    assert campaign.best() is ranking.best(tasks, lambda t: t.score("y"), "minimize")
    # zero-second simulations on 4 slots free faster than a GP point is chosen: TPE took over
    assert optimizer.point_seconds is not None and optimizer.gp_point_seconds > optimizer.point_seconds
    assert optimizer.calls[:1] == ["gp"] and optimizer.calls[-1] == "tpe", optimizer.calls


class PathOptimizer(Optimizer):
    """Records which model chose each batch after the start-up design: "gp" or "tpe"."""

    campaign: Campaign
    calls: list[str]

    def _suggest_gp(self, *args: Any) -> list[dict[str, float]]:
        self.calls.append("gp")
        return super()._suggest_gp(*args)

    def _suggest_tpe(self, *args: Any) -> list[dict[str, float]]:
        self.calls.append("tpe")
        return super()._suggest_tpe(*args)
