"""The steering loop: think -> propose -> dispatch -> simulate -> stream back -> store -> think.

Asynchronous in the manner of Colmena's Thinker: the loop reacts to named events, each handled
by the method registered for it (``@handles``), and never lets a worker idle while the model
thinks: free slots are backfilled by the optimizer (workflows.backfill). This module is the only
place where agents, adapters and dispatch meet; workflows.launcher builds what it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections import deque
from typing import Any

from physflow.agents.prompts import critic_prompt, default_analysis, planner_prompt, resume_summary
from physflow.agents.team import PlanOutcome, ScienceTeam, Transcript, Verdict
from physflow.dispatch.base import Dispatcher
from physflow.errors import PhysflowError, StoreError
from physflow.optimizer import Optimizer
from physflow.sim_adapters.base import Adapter
from physflow.site_configs.site import SiteSpec
from physflow.vocabulary import ranking
from physflow.vocabulary.records import Hypothesis, TaskRecord, all_failed
from physflow.vocabulary.workflow import LoadedWorkflow, ParameterSpec, WorkflowSpec
from physflow.workflows.approval import Approver, ask_user, batch_text
from physflow.workflows.backfill import Backfill
from physflow.workflows.events import Event, Handlers
from physflow.workflows.resume import resumption
from physflow.workflows.store import CampaignState, Committer, RunStore

log = logging.getLogger("physflow.campaign")

#: The loop's event handlers, registered by the methods below.
handles = Handlers()


class Campaign:
    """One campaign in one run directory, on a dispatcher whose pools are already started."""

    def __init__(self, workflow: LoadedWorkflow, adapter: Adapter, store: RunStore, site: SiteSpec,
                 dispatcher: Dispatcher, transcript: Transcript, approver: Approver | None = None) -> None:
        self.workflow, self.adapter, self.store, self.site = workflow, adapter, store, site
        self.dispatcher, self.transcript, self.approver = dispatcher, transcript, approver
        self.optimizer = Optimizer(adapter.parameters, self.spec.objective.goal,
                                   seed=int(self.spec.simulation.fixed.get("seed", 0)))
        self.tasks: dict[str, TaskRecord] = {}
        self.queue: deque[TaskRecord] = deque()
        self.in_flight: dict[str, TaskRecord] = {}
        self.hypotheses: dict[str, Hypothesis] = {}
        self.rounds, self.stop_reason, self.cancel_requested = 0, "", False
        self.team: ScienceTeam | None = None  # formed by the launcher; None: the optimizer steers alone
        self.committer: Committer | None = None
        self.store_error: BaseException | None = None  # the journal could not be written
        self.backfill = Backfill(self.spec.budget, self._deliver_suggestion)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._planner: asyncio.Task | None = None
        self._critic: asyncio.Task | None = None
        self._to_judge: deque[str] = deque()
        self.approved_once = self.spec.approval == "auto" or approver is None
        self.resume_note = self.last_analysis = ""  # said to the planner once; the coder's latest output

    # -- what the agents (agents.view.CampaignView) and the backfill policy read ---------------
    @property
    def spec(self) -> WorkflowSpec:
        return self.workflow.spec

    @property
    def parameters(self) -> dict[str, ParameterSpec]:
        return self.adapter.parameters

    @property
    def simulations_left(self) -> int:
        return self.spec.budget.max_simulations - len(self.tasks)

    @property
    def planner_thinking(self) -> bool:
        return self._planner is not None and not self._planner.done()

    def results(self) -> list[dict[str, Any]]:
        return [t.public() for t in self.tasks.values()]

    def suggest(self, n: int) -> list[dict[str, float]]:
        return self.optimizer.suggest(n, self.pending())

    def pending(self) -> list[dict[str, float]]:
        """Parameters of the simulations running or queued: the optimizer spreads away from them."""
        return [t.params for t in (*self.in_flight.values(), *self.queue)]

    def best(self) -> TaskRecord | None:
        obj = self.spec.objective
        return ranking.best(self.tasks.values(), lambda t: t.score(obj.metric), obj.goal)

    def tolerance_reached(self) -> bool:
        obj, best = self.spec.objective, self.best()
        return obj.tolerance is not None and best is not None and ranking.reaches(
            best.metrics[obj.metric], obj.tolerance, obj.goal)

    # -- tasks: proposed -> submitted -> finished | failed -------------------------------------
    def new_task(self, params: dict[str, float], source: str, hypothesis: str | None) -> TaskRecord:
        task = TaskRecord(id=self.store.next_task_id(self.tasks), params=params, hypothesis=hypothesis,
                          source=source, created=time.time())
        self.tasks[task.id] = task
        self.queue.append(task)
        if hypothesis:
            self.hypotheses[hypothesis].tasks.append(task.id)
        self.committer.event("proposed", t=task.created, task=task.id, params=params, hypothesis=hypothesis,
                             source=source)
        return task

    def submit_ready(self) -> None:
        """A slot is free: submit queued proposals (the optimizer's arrive through the backfill)."""
        if self.stop_reason:
            return
        while self.queue and len(self.in_flight) < self.spec.budget.max_concurrent:
            task = self.queue.popleft()
            spec = self.adapter.build_task(task.id, task.params, self.store.task_dir(task.id))
            task.status, task.submitted = "submitted", time.time()
            self.committer.event("submitted", t=task.submitted, task=task.id)
            self.in_flight[task.id] = task
            future = self.dispatcher.submit(spec)
            future.add_done_callback(lambda f, t=task: self.committer.future_done(t, f))

    def _on_committed(self, task: TaskRecord) -> None:
        """Runs in the committer thread once a result is durable: the loop may now see it."""
        self._loop.call_soon_threadsafe(self._events.put_nowait, Event("result", (task,)))

    @handles("result")
    def on_result(self, task: TaskRecord) -> None:
        metric = self.spec.objective.metric
        self.in_flight.pop(task.id, None)
        self.backfill.observe(task)
        if task.status == "finished":
            self.optimizer.observe(task.params, task.metrics[metric])
        if self.tolerance_reached() and not self.stop_reason:
            self.stop_reason = "tolerance reached"
        best = self.best()
        value = task.metrics.get(metric)
        log.info("%s %-8s %-9s %s %s  best %s", task.id, task.status, task.source,
                 " ".join(f"{k}={v:.4g}" for k, v in task.params.items()),
                 f"{metric}={value:.4g}" if value is not None else (task.error or "")[:80],
                 f"{best.metrics[metric]:.4g} ({best.id})" if best else "-")
        hid = task.hypothesis
        if hid and all(self.tasks[t].status in ("finished", "failed") for t in self.hypotheses[hid].tasks):
            self._to_judge.append(hid)

    # -- the optimizer's slots (workflows.backfill) --------------------------------------------
    async def _deliver_suggestion(self, source: str, points: list[dict[str, float]] | BaseException,
                                  seen: int) -> None:
        await self._events.put(Event("suggested", (source, points, seen)))

    @handles("suggested")
    def on_suggested(self, source: str, points: list[dict[str, float]] | BaseException, seen: int) -> None:
        self.backfill.on_suggested(self, source, points, seen)

    # -- the planner ---------------------------------------------------------------------------
    def maybe_think(self) -> None:
        """The queue runs low: ask the planner for the next hypothesis while simulations run."""
        if self.stop_reason or self.team is None or self.planner_thinking:
            return
        budget = self.spec.budget
        if self.rounds >= budget.max_rounds or self.simulations_left <= 0 or len(self.queue) >= budget.max_concurrent:
            return
        self.rounds += 1
        self.committer.event("round", round=self.rounds)
        self._planner = asyncio.create_task(self._plan(self.rounds))

    async def _plan(self, round_no: int) -> None:
        capacity = max(1, min(self.simulations_left, self.spec.budget.max_concurrent * 2, 8))
        try:
            hints = await self.backfill.points_now(self, 2)
            note, self.resume_note = self.resume_note, ""
            prompt = planner_prompt(self, round_no, hints, note, self.last_analysis)
            outcome = await self.team.propose(prompt, capacity)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any agent failure
            outcome = PlanOutcome(errors=[f"{type(exc).__name__}: {exc}"])
        await self._events.put(Event("planned", (round_no, outcome)))

    @handles("planned")
    async def on_planned(self, round_no: int, outcome: PlanOutcome) -> None:
        if self.stop_reason:  # the campaign stopped while the planner thought: nothing more runs
            return
        capacity = max(0, self.simulations_left)
        log.info("round %d: %s", round_no, f"hypothesis: {outcome.hypothesis[:100]}" if outcome.ok
                 else "no valid proposal from the model; the optimizer fills the round")
        if outcome.ok:
            hid, source, batch = f"H{round_no}", "planner", outcome.simulations[:capacity]
            self.hypotheses[hid] = Hypothesis(hid, outcome.hypothesis, outcome.prediction, round_no)
            review = outcome.review
            self.committer.event("hypothesis", id=hid, statement=outcome.hypothesis,
                                 prediction=outcome.prediction, round=round_no,
                                 review=review.model_dump() if review else None,
                                 unverified_citations=outcome.unverified_citations)
        else:  # the model gave nothing usable: the optimizer fills this round's slots, recorded as such
            self.transcript.note("physflow", "fallback",
                                 f"round {round_no}: no valid proposal ({'; '.join(outcome.errors)[-400:]}); "
                                 "using the optimizer's suggestions")
            n = min(capacity, self.spec.budget.max_concurrent)
            hid, source, batch = None, "optimizer", await self.backfill.points_now(self, n) if n else []
        approved = await self._approve(hid, batch) if hid or batch else []
        if approved is None:
            return
        for params in approved:
            self.new_task(params, source if params in batch else "user", hid)
        if outcome.rejected:
            self.transcript.note("physflow", "rejected", outcome.rejected)

    async def _approve(self, hid: str | None, batch: list[dict[str, float]]) -> list[dict[str, float]] | None:
        """The batch to run after the user saw it (workflows.approval), or None: the campaign stops."""
        mode = self.spec.approval
        if mode == "auto" or (mode == "plan" and self.approved_once) or self.approver is None:
            self.approved_once = True
            return batch
        text = batch_text(self.hypotheses[hid].statement if hid else None, hid, batch)
        answer = await ask_user(self.approver, text, batch, self.adapter.validate_params, self.simulations_left)
        self.committer.event("approval", hypothesis=hid, approved=answer is not None,
                             edited=answer is not None and answer != batch)
        if answer is None:
            self.stop_reason = "batch not approved"
            self.cancel_requested = True
        else:
            self.approved_once = True
        return answer

    # -- the critic and the coder --------------------------------------------------------------
    def maybe_judge(self) -> None:
        if self.team is None or not self._to_judge or (self._critic and not self._critic.done()):
            return
        hid = self._to_judge.popleft()
        self._critic = asyncio.create_task(self._judge(hid))

    async def _judge(self, hid: str) -> None:
        verdict = analysis = None
        try:
            verdict = await self.team.judge(critic_prompt(self, hid))
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any agent failure
            self.transcript.note("critic", "error", f"{type(exc).__name__}: {exc}")
        # The coder analyses every judged hypothesis: what the critic asked for, or else how the
        # objective depends on each parameter, which is what the planner needs next.
        request = verdict.analysis.strip() if verdict is not None else ""
        try:
            analysis = await self.team.analyse(request or default_analysis(self), self.results())
        except Exception as exc:  # noqa: BLE001
            self.transcript.note("coder", "error", f"{type(exc).__name__}: {exc}")
        await self._events.put(Event("judged", (hid, verdict, analysis)))

    @handles("judged")
    def on_judged(self, hid: str, verdict: Verdict | None, analysis: str | None = None) -> None:
        h = self.hypotheses[hid]
        if verdict is None:
            h.verdict, h.evidence = "inconclusive", "the critic gave no valid verdict"
        else:
            h.verdict, h.evidence, h.advice = verdict.verdict, verdict.evidence, verdict.advice
        if analysis:
            h.analysis = analysis
            self.last_analysis = f"{hid}: {analysis[:600]}"
        log.info("%s judged %s: %s", hid, h.verdict, h.evidence[:100])
        self.committer.event("verdict", id=hid, verdict=h.verdict, evidence=h.evidence, advice=h.advice,
                             analysis=h.analysis)

    # -- start, restore, stop ------------------------------------------------------------------
    def request_cancel(self, reason: str = "cancelled") -> None:
        """Stop cleanly (a signal, ``physflow cancel``, a store that cannot be written); resumable."""
        self.cancel_requested = True
        self.stop_reason = self.stop_reason or reason
        with contextlib.suppress(RuntimeError, AttributeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, Event("wake"))

    def _store_failed(self, exc: BaseException) -> None:
        """Runs in the committer's thread: the journal cannot be written (a full disk); stop."""
        self.store_error = exc
        self.request_cancel(f"cannot write the run directory: {getattr(exc, 'strerror', None) or exc}")

    def restore(self, previous: CampaignState) -> None:
        """Continue from a journal (workflows.resume decides what is kept and run again).

        Runs before the loop starts, after the committer exists (it journals what it decides).
        """
        repaired = self.store.repair_hdf5(previous.tasks.values(),
                                          lambda task: self.adapter.stored_arrays(self.store.task_dir(task.id)))
        r = resumption(previous)
        self.tasks, self.hypotheses, self.rounds = r.tasks, r.hypotheses, r.rounds
        if self.team:
            self.team.tokens_before = r.tokens_before
        self.queue.extend(r.queue)
        self._to_judge.extend(r.to_judge)
        for kind, fields in r.events:
            self.committer.event(kind, **fields)
        for task in self.tasks.values():
            if task.status == "finished":
                self.optimizer.observe(task.params, task.metrics.get(self.spec.objective.metric, math.nan))
        log.info("resumed: %d finished kept, %d requeued, %d lost, %d HDF5 groups repaired",
                 r.kept, r.requeued, r.lost, repaired)
        self.committer.event("campaign_resumed", name=self.spec.name, pid=os.getpid(), site=self.site.name,
                             kept=r.kept, requeued=r.requeued, lost=r.lost, repaired=repaired)

    def _start(self, previous: CampaignState | None) -> None:
        """Open the journal (the transcript's token counts go to it too), restore a resumed run."""
        self._loop = asyncio.get_running_loop()
        self.committer = Committer(self.store, lambda task, outcome: self.adapter.finish(
            task, outcome, self.store.task_dir(task.id)), self._on_committed, self._store_failed)
        self.transcript.on_tokens = lambda agent, n: self.committer.event("tokens", agent=agent, tokens=n)
        if previous is None:
            self.committer.event("campaign_started", name=self.spec.name, pid=os.getpid(), site=self.site.name)
        else:
            self.restore(previous)
            if self.team:
                self.resume_note = resume_summary(self, self.rounds)
                self.transcript.note("physflow", "resumed", self.resume_note, to="planner")
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_cancel)
        if self.team is None:  # no agents at all: the optimizer steers alone
            self.approved_once = True

    def _schedule(self) -> None:
        """Everything that may start now: a planner turn, queued simulations, the optimizer's
        points, a verdict; and a planner turn stopped when nothing it proposes could run."""
        self.maybe_think()
        self.submit_ready()
        self.backfill.request(self)
        self.maybe_judge()
        if self.planner_thinking and (self.stop_reason or self.simulations_left <= 0):
            self._planner.cancel()
            self._planner = None
            self.transcript.note("physflow", "cancelled", "planner turn stopped: "
                                 + (self.stop_reason or "simulation budget spent"))

    def _done(self) -> bool:
        """Nothing runs, thinks or waits to be judged, and nothing more will be started."""
        critic_busy = self._critic is not None and not self._critic.done()
        return (not self.in_flight and not self.planner_thinking and not critic_busy and not self._to_judge
                and not self.backfill.busy and bool(self.stop_reason or not self.queue))

    async def _until_done(self) -> None:
        deadline = time.monotonic() + self.spec.budget.wall_time
        while True:
            self._schedule()
            if self.cancel_requested or self._done():
                return
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                self.stop_reason = self.stop_reason or "wall time reached"
                return
            try:
                event = await asyncio.wait_for(self._events.get(), timeout)
            except asyncio.TimeoutError:
                continue
            await handles.dispatch(self, event)

    def _stop(self, state: str) -> None:
        """Cancel what still runs or waits, make everything durable, close the record."""
        for t in (self._planner, self._critic):
            if t and not t.done():
                t.cancel()
        self.backfill.cancel()
        for task in list(self.in_flight.values()) + list(self.queue):
            task.status = "cancelled"
            self.committer.event("cancelled", task=task.id)
        with contextlib.suppress(Exception):  # every result in HDF5 before the journal says "ended"
            self.committer.flush()
        best = self.best()
        self.committer.event("campaign_ended", state=state, reason=self.stop_reason, best=best.id if best else None)
        self.committer.close()

    async def run(self, previous: CampaignState | None = None) -> str:
        """Run to the end; returns the final state (finished | cancelled | failed).

        ``previous`` is the state rebuilt from this run's journal when resuming.
        """
        self._start(previous)
        state = "failed"
        try:
            await self._until_done()
            if self.store_error is not None:
                raise StoreError(f"{self.store.run_dir}: {self.stop_reason}; the journal keeps what was written "
                                 "before: physflow resume RUN once there is room") from None
            if not self.stop_reason:
                self.stop_reason = ("simulation budget spent" if self.simulations_left <= 0
                                    else "rounds done" if self.rounds >= self.spec.budget.max_rounds
                                    else "nothing left to do")
            state = "cancelled" if self.cancel_requested else "finished"
            if state == "finished" and (why := all_failed(self.tasks.values())):
                state, self.stop_reason = "failed", why
        except PhysflowError:
            self.stop_reason = self.stop_reason or "error"
            raise
        except BaseException as exc:
            self.stop_reason = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._stop(state)
        return state
