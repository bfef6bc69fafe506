"""Who fills a free slot, and when the optimizer fits: the backfill policy of the loop.

The optimizer steers alone when there is no team; with a team it backfills only while the
planner thinks (``budget.backfill: optimizer``), and never before the user approved a first
batch. A suggestion refits on every result (a Gaussian process: about 0.05 s at 50 results,
0.15 s at 200, 0.35 s at 300; TPE beyond, 10-50 ms): on the loop's thread that would cap the
campaign at a few tens of simulations per second. So it runs in a worker thread; results keep
being taken and journaled meanwhile, and the slots freed during one call are asked for together
by the next, so one refit serves many slots as the rate grows. One request at a time; the points
arrive as a "suggested" event.

A freed slot still waits for its fit. Where that wait is a noticeable part of a simulation
(``SPARE_ABOVE``), the optimizer prepares a spare point while every slot is busy, and a freed
slot starts on it at once; the spare has not seen the results that came in meanwhile, and is
dropped once more than ``max_concurrent`` of them have, or once one of them was a new best (the
point is then drawn afresh: the search is about to move, and a spare is most out of date).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sized
from typing import Protocol

from physflow.optimizer import Optimizer
from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.workflow import BudgetSpec

#: The optimizer prepares a spare point while every slot is busy once a suggestion takes more
#: than this fraction of a typical simulation's run time: below it a fresh fit is worth its
#: wait, above it an idle slot costs more. A spare misses the result that frees its slot: used
#: after every result it cost simulations, offline (``bench/optimizer_offline.py --spare``, 100
#: seeds, 2 in flight) 9 / 8.7 to the tolerance (median / mean) against 8 / 8.2 with fresh points;
#: dropped after a new best (``--spare unless-best``) 8 / 7.9, as fresh points. Hence the drop,
#: and a spare from 3 % of a simulation (0.1 while spares were used after every result).
SPARE_ABOVE = 0.03

#: The optimizer may be busy this share of the time at most: a point may cost this share of the
#: interval at which the slots free (a typical run time over ``max_concurrent``); where the GP's
#: points cost more, TPE chooses them (``Optimizer.point_seconds``).
POINT_SHARE = 0.5

#: Hands a finished suggestion (source, points or the error, results seen) back to the loop.
Deliver = Callable[[str, list[dict[str, float]] | BaseException, int], Awaitable[None]]


class Slots(Protocol):
    """What the policy reads of the loop, and the two things it asks the loop to do."""

    optimizer: Optimizer
    queue: Sized
    in_flight: Sized
    stop_reason: str
    team: object | None  # None: the optimizer steers alone
    approved_once: bool  # the user has approved a first batch (or approval is auto)
    thinking_on: str | None  # the hypothesis the planner is stating: the optimizer's points run under it

    @property
    def held_count(self) -> int: ...  # rounds' slots the optimizer fills as they fall free

    @property
    def simulations_left(self) -> int: ...

    @property
    def planner_thinking(self) -> bool: ...

    def pending(self, latest: int | None = None) -> list[dict[str, float]]: ...

    def new_task(self, params: dict[str, float], source: str, hypothesis: str | None) -> TaskRecord: ...

    def draw_round(self, point: dict[str, float] | None = None) -> str | None: ...

    def submit_ready(self) -> None: ...


class Backfill:
    """The optimizer's share of the slots; ``request`` whenever a slot may have fallen free."""

    def __init__(self, budget: BudgetSpec, deliver: Deliver) -> None:
        self.budget = budget
        self.deliver = deliver
        self.task: asyncio.Task | None = None  # the suggestion being fitted, if any
        #: A point the optimizer made ready while every slot was busy, the number of results it
        #: had seen, and how long the last suggestion took (seconds).
        self.spares: list[dict[str, float]] = []
        self.spares_seen = 0
        self.suggest_seconds = 0.0
        self.results_count = 0
        self.best_at = 0  # results_count when the campaign's best last changed
        self.recent_runs: deque[float] = deque(maxlen=20)  # run times of the last simulations, s

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def observe(self, task: TaskRecord, new_best: bool = False) -> None:
        """A result arrived (``new_best``: it became the campaign's best): count it, and keep its
        run time for the spare-point rule."""
        self.results_count += 1
        if new_best:
            self.best_at = self.results_count
        if task.status == "finished" and task.started is not None and task.finished is not None:
            self.recent_runs.append(task.finished - task.started)

    def typical_run(self) -> float | None:
        """The median run time of the last simulations (s), None before the first."""
        return statistics.median(self.recent_runs) if self.recent_runs else None

    def point_seconds(self) -> float | None:
        """What an optimizer's point may cost (s) at the rate the slots free, None before a run time
        is known (see ``POINT_SHARE``)."""
        run = self.typical_run()
        return None if run is None else POINT_SHARE * run / self.budget.max_concurrent

    async def points_now(self, loop: Slots, n: int) -> list[dict[str, float]]:
        """``n`` of the optimizer's points now (the planner's hints, a round's fallback), fitted in a
        worker thread; the pending parameters are read here, on the loop's thread."""
        return await asyncio.to_thread(loop.optimizer.suggest, n, loop.pending(loop.optimizer.max_pending))

    def slots(self, loop: Slots) -> tuple[int, str] | None:
        """How many free slots the optimizer should fill now, and as what source; None for none.

        A round's held slots come first (source ``optimizer``, under the round's hypothesis),
        then, while the planner thinks, the backfill's (under the hypothesis being stated)."""
        if loop.stop_reason or loop.queue or loop.simulations_left <= 0:
            return None
        free = min(self.budget.max_concurrent - len(loop.in_flight), loop.simulations_left)
        if free <= 0:
            return None
        if loop.team is None:
            return free, "optimizer"
        if loop.held_count:
            return min(free, loop.held_count), "optimizer"
        if loop.planner_thinking and self.budget.backfill == "optimizer" and loop.approved_once:
            return free, "backfill"
        return None

    def _fill(self, loop: Slots, points: list[dict[str, float]], n: int, source: str) -> None:
        """Queue ``points[:n]`` as ``source``: a round's held slots under that round, the
        backfill's under the hypothesis the planner is stating, the optimizer alone's under none."""
        for params in points[:n]:
            hypothesis = loop.draw_round() if source == "optimizer" and loop.team is not None else loop.thinking_on
            loop.new_task(params, source, hypothesis)

    def spare_usable(self) -> bool:
        """Whether the spare may still start: at most ``max_concurrent`` results came in since it
        was drawn, and none of them was a new best."""
        return self.results_count - self.spares_seen <= self.budget.max_concurrent and self.best_at <= self.spares_seen

    def request(self, loop: Slots) -> None:
        """Ask the optimizer for points for the free slots (or a spare), in a worker thread."""
        if self.busy:
            return
        wanted = self.slots(loop)
        if wanted is not None and self.spares:
            n, source = wanted
            if self.spare_usable():
                self._fill(loop, self.spares, n, source)
            self.spares = []
            loop.submit_ready()
            wanted = self.slots(loop)
        if wanted is None:
            if self._spare_wanted(loop):
                self._suggest(loop, 1, "spare")
            return
        self._suggest(loop, *wanted)

    def _spare_wanted(self, loop: Slots) -> bool:
        """Whether to prepare a spare point now: every slot busy, simulations left to start, the
        optimizer fills the next free slot, and a fit takes over ``SPARE_ABOVE`` of a simulation."""
        if self.spares or loop.stop_reason or loop.queue or loop.simulations_left <= 0:
            return False
        if loop.team is not None and self.budget.backfill != "optimizer" and not loop.held_count:
            return False
        run = self.typical_run()
        return run is not None and self.suggest_seconds > SPARE_ABOVE * run

    def _suggest(self, loop: Slots, n: int, source: str) -> None:
        optimizer, seen = loop.optimizer, self.results_count
        pending = loop.pending(optimizer.max_pending)

        async def work() -> None:
            started = time.perf_counter()
            try:  # Optimizer.suggest copies the results it fits on; observe() may go on meanwhile
                points: list[dict[str, float]] | BaseException = await asyncio.to_thread(
                    optimizer.suggest, n, pending)
            except Exception as exc:  # noqa: BLE001 - raised again on the loop's thread
                points = exc
            self.suggest_seconds = time.perf_counter() - started
            await self.deliver(source, points, seen)

        self.task = asyncio.create_task(work())

    def on_suggested(self, loop: Slots, source: str, points: list[dict[str, float]] | BaseException,
                     seen: int) -> None:
        """Queue the optimizer's points for the slots still free (a planner's proposals that came
        meanwhile go first; points no slot wants any more are dropped: they cost nothing), or keep
        a spare for the next slot to fall free."""
        self.task = None
        if isinstance(points, BaseException):
            raise points
        if source == "spare":
            self.spares, self.spares_seen = points, seen
            self.request(loop)  # a slot may have fallen free during the fit
            return
        wanted = self.slots(loop)
        if wanted is None:
            return
        self._fill(loop, points, wanted[0], wanted[1])

    def cancel(self) -> None:
        if self.busy:
            self.task.cancel()  # type: ignore[union-attr]
