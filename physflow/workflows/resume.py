"""What a resumed campaign keeps, runs again and gives up on, decided from its journal alone.

Finished work is kept and never re-run; work that was in flight or queued when the orchestrator
stopped is queued again — once: a task the journal saw submitted twice was lost in flight twice
(it may be what kills the orchestrator) and is recorded as failed. A planner turn that the stop cut
short gives its round back. The loop applies the decision and journals it (``Resumption.events``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any

from physflow.vocabulary.records import Hypothesis, TaskRecord, task_order
from physflow.workflows.store import CampaignState

LOST_TWICE = "lost in flight twice (orchestrator stopped while it ran)"


@dataclass
class Resumption:
    tasks: dict[str, TaskRecord] = field(default_factory=dict)  # by id, in id order
    queue: list[TaskRecord] = field(default_factory=list)  # to run again, in id order
    hypotheses: dict[str, Hypothesis] = field(default_factory=dict)
    to_judge: list[str] = field(default_factory=list)  # hypotheses whose simulations all ended unjudged
    rounds: int = 0
    tokens_before: int = 0
    #: The decisions as journal events (kind, fields), in the order they were taken.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    requeued: int = 0
    lost: int = 0

    @property
    def kept(self) -> int:
        return sum(t.status == "finished" for t in self.tasks.values())


def resumption(previous: CampaignState) -> Resumption:
    """The state to continue from, given the state the journal of the stopped run replays to."""
    r = Resumption(hypotheses={hid: replace(h, tasks=list(h.tasks)) for hid, h in previous.hypotheses.items()})
    for task in sorted(previous.tasks.values(), key=lambda t: task_order(t.id)):
        task = copy.copy(task)  # ``previous`` stays what the journal says (its follower goes on reading)
        r.tasks[task.id] = task
        if task.status == "submitted" and previous.submits.get(task.id, 0) >= 2:
            task.status, task.error, task.stored = "failed", LOST_TWICE, time.time()
            r.events.append(("failed", {"task": task.id, "error": task.error, "metrics": {}, "arrays": []}))
            r.lost += 1
        elif task.status in ("submitted", "proposed", "cancelled"):
            task.status = "proposed"
            r.queue.append(task)
            r.events.append(("requeued", {"task": task.id}))
            r.requeued += 1
    r.to_judge = [hid for hid, h in r.hypotheses.items() if h.verdict is None and h.tasks and all(
        r.tasks[t].status in ("finished", "failed") for t in h.tasks)]
    r.rounds = previous.rounds - previous.round_unanswered  # a turn cut short by the crash is redone
    r.tokens_before = sum(previous.tokens.values())
    return r
