"""What a campaign records: each simulation's life and each hypothesis, as the journal tells them.

Plain data on the ground floor, because every layer reads them: the loop keeps them, the store
journals and replays them, the agents' prompts and the report show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from physflow.vocabulary.ranking import finite_or_none

TASK_STATES = ("proposed", "submitted", "running", "finished", "failed", "cancelled")
#: The keys of a row of ``physflow results --json`` (and ``--csv``), in this order: scripts
#: outside physflow read them, so they change only with a new output format.
RESULT_KEYS = ("id", "status", "params", "metrics", "hypothesis", "source", "submitted", "started", "finished",
               "error")


@dataclass
class TaskRecord:
    """One simulation's life, with Colmena-style timings (UNIX seconds)."""

    id: str
    params: dict[str, float]
    hypothesis: str | None = None
    source: str = "planner"  # planner | optimizer (model fallback) | backfill | user
    status: str = "proposed"
    created: float | None = None
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    received: float | None = None
    stored: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: list[str] = field(default_factory=list)
    error: str | None = None
    host: str | None = None

    def public(self) -> dict[str, Any]:
        """Every field as plain data: what the agents see of a simulation (``CampaignView.results``:
        query_results, make_plot, the coder's ``results``), metrics as measured, NaN included."""
        return asdict(self)

    def result_row(self) -> dict[str, Any]:
        """One row of ``physflow results --json`` and ``--csv``: the ``RESULT_KEYS``, with
        non-finite metrics as null (JSON has no NaN)."""
        row = {key: getattr(self, key) for key in RESULT_KEYS}
        row["metrics"] = {k: finite_or_none(v) for k, v in self.metrics.items()}
        return row

    def score(self, metric: str) -> Any:
        """The task's value of ``metric`` if it finished, else None: what ranks it (see
        ``physflow.vocabulary.ranking``); a failed task never ranks, whatever it measured."""
        return self.metrics.get(metric) if self.status == "finished" else None


def task_order(task_id: str) -> tuple[int, str]:
    """A key that sorts task ids in the order they were made: t0999 before t1000 before t10000
    (ids are ``t`` and a number of at least four digits; a plain string sort puts t10000 first)."""
    return len(task_id), task_id


def status_counts(tasks: Iterable[TaskRecord], zeros: Iterable[str] = ()) -> dict[str, int]:
    """How many of ``tasks`` are in each status, in the order the statuses are first met; the
    ``zeros`` come first, counted from 0 even when no task has them (a display's fixed columns)."""
    counts = dict.fromkeys(zeros, 0)
    for t in tasks:
        counts[t.status] = counts.get(t.status, 0) + 1
    return counts


@dataclass
class Hypothesis:
    """A statement the planner made, the simulations that test it, and the critic's verdict."""

    id: str
    statement: str
    prediction: str = ""
    round: int = 0
    tasks: list[str] = field(default_factory=list)
    verdict: str | None = None  # supported | refuted | inconclusive, computed from the numbers
    evidence: str = ""
    advice: str = ""
    analysis: str = ""  # the coder's output on this hypothesis's results
    claim: dict[str, Any] | None = None  # vocabulary.steering.Claim.to_dict(): what the numbers judge
    author: str = "planner"  # planner, or optimizer: the surrogate's own claim when the model gave none
    reasoning: str = ""  # the critic's explanation of the verdict

    def observed(self, tasks: Mapping[str, TaskRecord], metric: str) -> list[tuple[dict[str, float], float]]:
        """(parameters, ``metric``) of each of its simulations that finished and measured it:
        what its claim is judged on, and what the planner is told it gave."""
        return [(tasks[t].params, tasks[t].metrics[metric]) for t in self.tasks
                if tasks[t].status == "finished" and metric in tasks[t].metrics]


def all_failed(tasks: Iterable[TaskRecord]) -> str | None:
    """Why a campaign whose simulations all failed (and at least one ran) has failed: how many,
    and the last one's error; None when one finished or none ended."""
    tasks = list(tasks)
    failed = [t for t in tasks if t.status == "failed"]
    if not failed or any(t.status == "finished" for t in tasks):
        return None
    return f"every simulation failed ({len(failed)}): {(failed[-1].error or '')[:200]}"
