"""The steering loop: think -> propose -> dispatch -> simulate -> stream back -> store -> think.

Asynchronous in the manner of Colmena's Thinker: the loop reacts to named events, each handled
by the method registered for it (``@handles``), and never lets a worker idle while the model
thinks: free slots are backfilled by the optimizer (workflows.backfill). This module is the only
place where agents, adapters and dispatch meet; workflows.launcher builds what it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from physflow.agents.prompts import critic_prompt, default_analysis, hypothesis_prompt, resume_summary
from physflow.agents.team import ClaimOutcome, PickRecord, ScienceTeam, Transcript, Verdict
from physflow.dispatch.base import Dispatcher
from physflow.errors import PhysflowError, StoreError
from physflow.optimizer import Optimizer
from physflow.sim_adapters.base import Adapter
from physflow.site_configs.site import SiteSpec
from physflow.vocabulary import ranking
from physflow.vocabulary.records import Hypothesis, TaskRecord, all_failed, task_order
from physflow.vocabulary.steering import Advice, Candidate, Claim, Judgement, judge_claim, pick_quality, pick_score
from physflow.vocabulary.workflow import LoadedWorkflow, ParameterSpec, WorkflowSpec
from physflow.workflows.approval import Approver, ask_user, batch_text
from physflow.workflows.backfill import Backfill
from physflow.workflows.events import Event, Handlers
from physflow.workflows.resume import resumption
from physflow.workflows.store import CampaignState, Committer, RunStore

log = logging.getLogger("physflow.campaign")

#: The largest share of a round's simulations the planner's picks may earn (``budget.planner_share:
#: auto``): a published comparison of optimizers and LLM agents (arXiv 2603.24647) found a hybrid
#: best with the model on about 30% of the trials, and larger model shares worse.
EARNED_SHARE_MAX = 0.3
#: Candidates the optimizer offers beyond the round's batch, so that a pick is a choice.
EXTRA_CANDIDATES = 3
#: A round holds twice the slots (so they stay busy while the planner's next turn runs), but at
#: most this many of its simulations are candidates the planner is shown and its prompt names: a
#: small model's context and one small decision at a time. The rest of a large round are drawn by
#: the optimizer as slots free (with 1,000 slots, a round of 8 left 992 idle under ``backfill: none``).
ROUND_SHOWN = 8
#: At most this long (s) for the coder's answer to the goal at the end of a campaign.
CONCLUSION_SECONDS = 300.0

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
        self._judging: str | None = None  # the hypothesis the critic is judging now
        self.approved_once = self.spec.approval == "auto" or approver is None
        self.resume_note = self.last_analysis = ""  # said to the planner once; the coder's latest output
        self.rng = random.Random(int(self.spec.simulation.fixed.get("seed", 0)))  # shuffles and shares
        self.pick_scores: list[float] = []  # each pick's score against the surrogate (vocabulary.steering)
        self.pick_prior = 0.0  # the model's steering score from its qualification, if any
        self.spread = 0.0  # the simulations' scatter in the metric, from the latest surrogate
        self.thinking_on: str | None = None  # the hypothesis id the planner is stating now
        self.awaiting_batch = False  # the planner's turn has not released its round's batch yet
        #: Rounds' optimizer candidates not started yet, oldest round first: each runs as offered
        #: while no result has come in since, else the optimizer draws afresh for its slot.
        self.held: dict[str, Held] = {}
        #: The best finished task so far, kept as results arrive: asking ``ranking.best`` over every
        #: task after each result made a campaign of n results cost O(n^2) (10^10 steps at 100,000).
        self._best: TaskRecord | None = None

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
    def simulations_unplanned(self) -> int:
        """Simulations left that no round holds yet: what a new round may plan."""
        return self.simulations_left - self.held_count

    @property
    def held_count(self) -> int:
        return sum(h.count for h in self.held.values())

    @property
    def planner_thinking(self) -> bool:
        return self._planner is not None and not self._planner.done()

    def results(self) -> list[dict[str, Any]]:
        return [t.public() for t in self.tasks.values()]

    def suggest(self, n: int) -> list[dict[str, float]]:
        return self.optimizer.suggest(n, self.pending(self.optimizer.max_pending))

    def pending(self, latest: int | None = None) -> list[dict[str, float]]:
        """Parameters of the simulations running or queued, the newest last: the optimizer spreads
        away from them. ``latest``: only the newest that many (the optimizer sees at most
        ``Optimizer.max_pending``; with 10,000 in flight the whole list is not worth building per result)."""
        if latest is None:
            return [t.params for t in (*self.in_flight.values(), *self.queue)]
        newest = itertools.islice(itertools.chain(reversed(self.queue), reversed(self.in_flight.values())), latest)
        return [t.params for t in newest][::-1]

    def best(self) -> TaskRecord | None:
        """The best finished task (``ranking.best`` over every task, kept up to date by ``_rank``)."""
        return self._best

    def _rank(self, task: TaskRecord) -> None:
        """Let a task that just finished (or was restored) become the best: ``ranking.best``'s rule
        on the best so far and it, ties to the earlier simulation (the lower task id)."""
        obj = self.spec.objective
        pair = sorted((t for t in (self._best, task) if t is not None), key=lambda t: task_order(t.id))
        self._best = ranking.best(pair, lambda t: t.score(obj.metric), obj.goal)

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
        if task.status == "finished":
            self.optimizer.observe(task.params, task.metrics[metric])
            self._rank(task)
        self.backfill.observe(task, new_best=self._best is task)
        self.optimizer.point_seconds = self.backfill.point_seconds()
        if self.tolerance_reached() and not self.stop_reason:
            self.stop_reason = "tolerance reached"
        best = self.best()
        value = task.metrics.get(metric)
        log.info("%s %-8s %-9s %s %s  best %s", task.id, task.status, task.source,
                 " ".join(f"{k}={v:.4g}" for k, v in task.params.items()),
                 f"{metric}={value:.4g}" if value is not None else (task.error or "")[:80],
                 f"{best.metrics[metric]:.4g} ({best.id})" if best else "-")
        if task.hypothesis:
            self._judge_if_done(task.hypothesis)

    # -- the optimizer's slots (workflows.backfill) --------------------------------------------
    async def _deliver_suggestion(self, source: str, points: list[dict[str, float]] | BaseException,
                                  seen: int) -> None:
        await self._events.put(Event("suggested", (source, points, seen)))

    @handles("suggested")
    def on_suggested(self, source: str, points: list[dict[str, float]] | BaseException, seen: int) -> None:
        self.backfill.on_suggested(self, source, points, seen)

    # -- the planner: the optimizer's advisor --------------------------------------------------
    def planner_share(self) -> float:
        """The share of a round's simulations the planner's picks run: forced by
        ``budget.planner_share``, or earned (``auto``): ``EARNED_SHARE_MAX`` times the measured
        pick quality, so a model that picks no better than chance never costs a simulation."""
        forced = self.spec.budget.planner_share
        if forced != "auto":
            return float(forced)
        return EARNED_SHARE_MAX * pick_quality(self.pick_scores, self.pick_prior)

    def maybe_think(self) -> None:
        """The queue runs low: ask the planner for the next hypothesis while simulations run."""
        if self.stop_reason or self.team is None or self.planner_thinking:
            return
        budget = self.spec.budget
        if self.rounds >= budget.max_rounds or self.simulations_unplanned <= 0 \
                or len(self.queue) + self.held_count >= budget.max_concurrent:
            return
        self.rounds += 1
        self.committer.event("round", round=self.rounds)
        # The id is taken now: the optimizer's points that fill slots while the planner thinks run
        # under it (the planner states it without having seen their results).
        self.thinking_on = hid = f"H{self.rounds}"
        self.awaiting_batch = True
        # (a resumed run redoing a round its crash cut short finds simulations under the id already)
        self.hypotheses.setdefault(hid, Hypothesis(hid, "", round=self.rounds, tasks=[
            t.id for t in self.tasks.values() if t.hypothesis == hid]))
        held = [p for h in self.held.values() for p in h.points]  # the next round spreads away from these too
        self._planner = asyncio.create_task(self._plan(self.rounds, self.pending() + held))

    async def _plan(self, round_no: int, pending: list[dict[str, float]]) -> None:
        """The round's batch (the optimizer's candidates, the planner's picks in its share) and
        the hypothesis it tests; whatever fails, the loop gets a batch."""
        size = max(1, min(self.simulations_unplanned, self.spec.budget.max_concurrent * 2))
        capacity = min(size, ROUND_SHOWN)
        obj, picks, batch, started = self.spec.objective, [], [], False
        share = self.planner_share()  # the share this round's batch is composed with (journaled as such)
        outcome = ClaimOutcome()
        self.team.stated = None  # this turn's hypothesis, once the planner states it
        try:
            # extra candidates only once the optimizer's start-up design is done: before, they would
            # use up start-up points that then never run
            seen = len(self.optimizer.observed)
            extra = EXTRA_CANDIDATES if seen >= self.optimizer.startup else 0
            advice = await asyncio.to_thread(self.optimizer.advice, capacity + extra, pending)
            earned = math.floor(share * capacity + self.rng.random())  # unbiased rounding of share x capacity
            if advice.predicted:  # at least one pick a round, run or not: how the share is earned
                picks = await self.team.pick(advice.candidates, obj.goal, obj.metric, max(1, earned), self.rng)
            batch = compose_batch(advice.candidates, picks, earned, capacity)
            note, self.resume_note = self.resume_note, ""
            prompt = hypothesis_prompt(self, round_no, advice, [c for c, _ in batch], note, self.last_analysis)
            if self._unasked():  # the batch runs while the planner states what it tests
                started = True
                await self._events.put(Event("batch", (round_no, batch, seen, size - len(batch))))
            outcome = await self.team.hypothesize(prompt, obj.metric, [c.params for c, _ in batch])
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any agent failure
            outcome.errors.append(f"{type(exc).__name__}: {exc}")
            if not batch:
                advice = Advice.unpredicted(await self.backfill.points_now(self, capacity))
                batch = [(c, "optimizer") for c in advice.candidates]
        await self._events.put(Event("planned", (round_no, advice, picks, earned if picks else 0, batch, outcome,
                                                 started, share)))

    @handles("batch")
    def on_batch(self, round_no: int, batch: list[tuple[Candidate, str]], seen: int = 0, more: int = 0) -> None:
        """The round's simulations start before their hypothesis is stated, when nobody is asked
        to approve them: the planner's prompt was written before any of their results existed,
        so its prediction stays a prediction, and the slots do not wait for the model's turn.

        The planner's picks run as picked; the optimizer's candidates are held (``Held``) and
        each starts as a slot falls free, as offered if no result came in since (``seen``: the
        results the optimizer had when it offered them; its start-up design ignores results), else
        replaced by a point the optimizer draws then (``draw_round``). A batch fixed when the round
        starts runs its last point several results after choosing it: offline
        (``bench/optimizer_offline.py --rounds 4``, 100 seeds) that took a mean 9.9 simulations
        to the tolerance where one point drawn as each slot frees took 8.0. A round larger than
        ``ROUND_SHOWN`` holds ``more`` slots beyond its batch, each drawn afresh as it starts."""
        self.awaiting_batch = False
        if self.stop_reason:
            return
        hid = f"H{round_no}"
        batch = batch[:max(0, self.simulations_unplanned)]
        for c, source in batch:
            if source != "optimizer":
                self.new_task(c.params, source, hid)
        points = [c.params for c, source in batch if source == "optimizer"]
        more = max(0, min(more, self.simulations_unplanned - len(points)))
        if points or more:  # started by _schedule, which runs after every event
            self.held[hid] = Held(points, seen, more)

    def _start_held(self) -> None:
        """Queue held candidates for the free slots: those a hypothesis names (pinned) always,
        the others while they are still what the optimizer would offer (no result since, or
        still in its start-up design)."""
        opt = self.optimizer
        while self.held and not self.stop_reason and self.simulations_left > 0 \
                and len(self.queue) + len(self.in_flight) < self.spec.budget.max_concurrent:
            hid, held = next(iter(self.held.items()))
            if held.pinned:
                point = held.pinned[0]
            elif held.points and (len(opt.observed) == held.seen or len(opt.observed) < opt.startup):
                point = held.points[0]
            else:
                return  # the backfill draws it afresh
            self.new_task(point, "optimizer", self.draw_round(point))

    def draw_round(self, point: dict[str, float] | None = None) -> str | None:
        """The round whose held slot ``point`` (a held candidate) or the optimizer's next point
        fills (oldest first), taken. (Its verdict waits for that point's result: ``on_result``
        asks for it then.)"""
        if not self.held:
            return None
        hid, held = next(iter(self.held.items()))
        held.take(point)
        if not held.count:
            del self.held[hid]
        return hid

    def _release_held(self) -> None:
        """Nothing more will start (stopped, budget spent): the held slots are given up, and their
        rounds are judged on the simulations they ran."""
        held, self.held = list(self.held), {}
        for hid in held:
            self._judge_if_done(hid)

    @handles("planned")
    async def on_planned(self, round_no: int, advice: Advice, picks: list[PickRecord], earned: int,
                         batch: list[tuple[Candidate, str]], outcome: ClaimOutcome, started: bool = False,
                         share: float | None = None) -> None:
        hid = f"H{round_no}"
        self.thinking_on, self.awaiting_batch = None, False
        for record in picks:
            if record.place is not None:
                self.pick_scores.append(pick_score(record.place, record.shown))
        if advice.spread is not None:
            self.spread = advice.spread
        h = self.hypotheses.setdefault(hid, Hypothesis(hid, "", round=round_no))
        if self.stop_reason and not h.tasks:  # the campaign stopped while the planner thought: nothing runs
            return
        h.author = "planner" if outcome.ok else "optimizer"
        if outcome.ok:
            h.statement, h.claim = outcome.statement, outcome.claim.to_dict()  # type: ignore[union-attr]
        else:  # the model gave nothing usable: the surrogate's own claim, recorded as such
            self.transcript.note("physflow", "fallback", f"round {round_no}: no valid hypothesis "
                                 f"({'; '.join(outcome.errors)[-400:]}); the surrogate's prediction stands in")
            h.statement, claim = surrogate_claim(advice, [c for c, _ in batch], self.spec.objective.metric,
                                                 self.spec.objective.goal)
            h.claim = claim.to_dict() if claim else None
        h.prediction = Claim.from_dict(h.claim).text() if h.claim else "no prediction"
        log.info("round %d: %s %s: %s [%s]", round_no, hid, h.author, h.statement[:100], h.prediction)
        pinned = self._pin_claimed(hid, outcome.claim, batch, advice) if outcome.ok else 0
        review = outcome.review
        self._journal_hypothesis(
            h, review=review.model_dump() if review else None, pinned=pinned, fitted_on=advice.fitted_on,
            unverified_citations=outcome.unverified_citations,
            share=self.planner_share() if share is None else share, earned=earned,
            picks=[{"place": p.place, "shown": p.shown, "ran": i < earned and p.candidate is not None,
                    "error": p.error} for i, p in enumerate(picks)],
            pick_quality=pick_quality(self.pick_scores, self.pick_prior))
        params = [] if self.stop_reason or started else [c.params for c, _ in batch][:max(0, self.simulations_left)]
        approved = await self._approve(hid, params) if params else []
        if approved is None:
            return
        for p in approved:  # an edited set is the user's
            self.new_task(p, next((source for c, source in batch if c.params == p), "user"), hid)
        self._judge_if_done(hid)

    def _pin_claimed(self, hid: str, claim: Claim | None, batch: list[tuple[Candidate, str]],
                     advice: Advice) -> int:
        """The round's candidates the planner's claim is about and that have not started, pinned
        (``Held.pin``): they run as offered, so the claim has its simulations. (Replaced by fresh
        points once results came in, they left half the demo's claims with none: "inconclusive".)
        Offline (``bench/optimizer_offline.py --held 4 --pinned 1``) that costs no simulations to
        the tolerance. The surrogate's stand-in claim spans the whole batch and pins nothing.

        Nor are the optimizer's start-up design points pinned (candidates offered before
        ``Optimizer.startup`` results were in): a round planned while the design's first results
        came in offers the design's next points, and pinned they ran after the model had taken
        over, where the optimizer alone ran its model's points (seed 14 of bench/agent_value.py:
        two such points, 12 simulations to the tolerance against the optimizer's 10)."""
        held = self.held.get(hid)
        if held is None or claim is None or advice.fitted_on < self.optimizer.startup:
            return 0
        started = [self.tasks[t].params for t in self.hypotheses[hid].tasks]
        claimed = [c.params for c, _ in batch if claim.contains(c.params) and c.params not in started]
        return held.pin(claimed)

    def _judge_if_done(self, hid: str) -> None:
        """Queue ``hid`` for its verdict once it is stated and every simulation under it ended."""
        h = self.hypotheses.get(hid)
        if h and h.statement and h.verdict is None and hid not in self._to_judge and hid != self._judging \
                and hid not in self.held and h.tasks \
                and all(self.tasks[t].status in ("finished", "failed") for t in h.tasks):
            self._to_judge.append(hid)

    def _unasked(self) -> bool:
        """Whether the next batch runs without asking the user (workflow key ``approval``)."""
        mode = self.spec.approval
        return mode == "auto" or (mode == "plan" and self.approved_once) or self.approver is None

    async def _approve(self, hid: str | None, batch: list[dict[str, float]]) -> list[dict[str, float]] | None:
        """The batch to run after the user saw it (workflows.approval), or None: the campaign stops."""
        if self._unasked():
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

    # -- the verdict (computed), the critic's reasoning and the coder's analysis ------------------
    def judgement(self, hid: str) -> Judgement:
        """The verdict the numbers give ``hid``'s claim (``vocabulary.steering.judge_claim``)."""
        h, metric = self.hypotheses[hid], self.spec.objective.metric
        if not h.claim:
            return Judgement("inconclusive", "no numeric prediction was made, so the numbers cannot judge it", 0)
        return judge_claim(Claim.from_dict(h.claim), h.observed(self.tasks, metric), self.spread)

    def maybe_judge(self) -> None:
        """Start the critic on the next hypothesis to judge; not while free slots wait for the
        planner's batch (the critic's turn would hold the one model server the picks need)."""
        if self.team is None or not self._to_judge or (self._critic and not self._critic.done()):
            return
        if self.planner_thinking and self.awaiting_batch and len(self.in_flight) < self.spec.budget.max_concurrent:
            return
        hid = self._to_judge.popleft()
        if self.hypotheses[hid].verdict is not None:  # judged meanwhile: once is enough
            return
        self._judging = hid
        self._critic = asyncio.create_task(self._judge(hid, self.judgement(hid)))

    async def _judge(self, hid: str, judgement: Judgement) -> None:
        verdict = analysis = None
        if not self.hypotheses[hid].claim:  # nothing for the critic to explain, nor the coder to test
            await self._events.put(Event("judged", (hid, judgement, None, None)))
            return
        try:
            verdict = await self.team.judge(critic_prompt(self, hid, judgement))
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any agent failure
            self.transcript.note("critic", "error", f"{type(exc).__name__}: {exc}")
        # The coder runs the analysis the critic asked for, if any (its turns share the model with
        # the planner's; the goal's own question is answered once, at the end: conclude).
        request = verdict.analysis.strip() if verdict is not None else ""
        if request:
            try:
                run = await self.team.analyse(request, self.results())
                analysis = run.output if run else None
            except Exception as exc:  # noqa: BLE001
                self.transcript.note("coder", "error", f"{type(exc).__name__}: {exc}")
        await self._events.put(Event("judged", (hid, judgement, verdict, analysis)))

    async def conclude(self, limit: float = CONCLUSION_SECONDS) -> None:
        """The campaign's answer to its goal: the coder's code over every result, run in the
        sandbox, journaled with what it printed (the report states it with the code). At most
        ``limit`` seconds; never raises."""
        if self.team is None or not any(t.status == "finished" for t in self.tasks.values()):
            return
        for turn in (self._planner, self._critic):  # (the wall time can end the loop mid-turn)
            if turn and not turn.done():
                turn.cancel()  # nothing they say could run now; the coder gets the model to itself
        self._unstated(self.stop_reason)
        request = (self.spec.conclusion or default_analysis(self)).strip()
        try:
            # three runs: the campaign's answer is worth a second fix (the time limit still holds)
            run = await asyncio.wait_for(self.team.analyse(f"{request} (goal: {self.spec.goal.strip()})",
                                                           self.results(), attempts=3), limit)
        except Exception as exc:  # noqa: BLE001 - the campaign's results stand without a conclusion
            self.transcript.note("coder", "error", f"conclusion: {type(exc).__name__}: {exc}")
            run = None
        if run is not None:
            self.committer.event("conclusion", request=request, code=run.code, output=run.output, ok=run.ok)

    @handles("judged")
    def on_judged(self, hid: str, judgement: Judgement, verdict: Verdict | None, analysis: str | None = None) -> None:
        h, self._judging = self.hypotheses[hid], None
        h.verdict, h.evidence = judgement.verdict, judgement.evidence
        refused = None
        if verdict is not None and verdict.verdict != judgement.verdict:
            # The numbers decide; a critic that says otherwise is recorded, not followed.
            refused = verdict.verdict
            self.transcript.note("physflow", "verdict_refused", f"{hid}: the critic said {verdict.verdict}, the "
                                 f"numbers say {judgement.verdict} ({judgement.evidence})", to="critic")
        elif verdict is not None:
            h.reasoning = verdict.evidence
        if verdict is not None:
            h.advice = verdict.advice
        if analysis:
            h.analysis = analysis
            self.last_analysis = f"{hid}: {analysis[:600]}"
        log.info("%s judged %s: %s", hid, h.verdict, h.evidence[:100])
        self.committer.event("verdict", id=hid, verdict=h.verdict, evidence=h.evidence, advice=h.advice,
                             analysis=h.analysis, reasoning=h.reasoning, computed=True, critic_refused=refused)

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
                self._rank(task)
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
        if self.held and (self.stop_reason or self.simulations_left <= 0):
            self._release_held()
        self._start_held()
        self.maybe_think()
        self.submit_ready()
        self.backfill.request(self)
        self.maybe_judge()
        waiting = self.thinking_on is not None and bool(self.hypotheses[self.thinking_on].tasks)
        if self.planner_thinking and (self.stop_reason or (self.simulations_left <= 0 and not waiting)):
            # (with the budget spent, a turn whose hypothesis already has simulations may finish:
            # its statement is what they test)
            self._planner.cancel()
            self._planner = None
            reason = self.stop_reason or "simulation budget spent"
            self.transcript.note("physflow", "cancelled", f"planner turn stopped: {reason}")
            self._unstated(reason)

    def _unstated(self, reason: str) -> None:
        """The planner's turn stopped before it stated its hypothesis: the simulations that ran
        under the id it was stating get a record that says so (no claim, so no verdict)."""
        hid, self.thinking_on = self.thinking_on, None
        h = self.hypotheses.get(hid) if hid else None
        if h is None or h.statement or not h.tasks:
            return
        stated = self.team.stated if self.team else None
        if stated is not None and stated.ok:  # stopped during the expert's review: the claim was made
            h.statement, h.author, h.claim = stated.statement, "planner", stated.claim.to_dict()  # type: ignore[union-attr]
            h.prediction = stated.claim.text()  # type: ignore[union-attr]
        else:
            h.statement, h.author, h.prediction = f"Not stated: the planner's turn was stopped ({reason}).", \
                "optimizer", "no prediction"
        self._journal_hypothesis(h)

    def _journal_hypothesis(self, h: Hypothesis, **extra: Any) -> None:
        """The journal's record of a stated hypothesis (replay reads these keys; ``extra``: the
        round's review and steering figures)."""
        self.committer.event("hypothesis", id=h.id, statement=h.statement, prediction=h.prediction, round=h.round,
                             claim=h.claim, author=h.author, **extra)

    def _done(self) -> bool:
        """Nothing runs, thinks or waits to be judged, and nothing more will be started."""
        critic_busy = self._critic is not None and not self._critic.done()
        return (not self.in_flight and not self.planner_thinking and not critic_busy and not self._to_judge
                and not self.backfill.busy and bool(self.stop_reason or not (self.queue or self.held)))

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
        with contextlib.suppress(Exception):
            self._unstated(self.stop_reason or state)
        self.backfill.cancel()
        for task in list(self.in_flight.values()) + list(self.queue):
            task.status = "cancelled"
            self.committer.event("cancelled", task=task.id)
        with contextlib.suppress(Exception):  # every result in HDF5 before the journal says "ended"
            self.committer.flush()
        if self.team is not None:  # how often a model's reply had to be sent back (validity)
            self.committer.event("model_replies", turns=self.team.turns, invalid=self.team.invalid)
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
            if state == "finished":
                await self.conclude()
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


@dataclass
class Held:
    """A round's optimizer candidates not started yet, in the optimizer's order, how many
    results the optimizer had seen when it offered them, and the round's slots beyond them
    (``fresh``: no candidate offered, drawn when each starts). ``pinned``: candidates the round's
    hypothesis names, which start as offered whatever came in since (its claim is about them:
    replaced, they would leave it with nothing to test)."""

    points: list[dict[str, float]]
    seen: int
    fresh: int = 0
    pinned: list[dict[str, float]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.pinned) + len(self.points) + self.fresh

    def take(self, point: dict[str, float] | None = None) -> None:
        """One slot given up to a point that starts now: ``point`` itself if it was held (pinned
        or offered), else an offered candidate's slot (the optimizer draws afresh: it replaces
        it), else a fresh slot; a pinned one only when nothing else is left."""
        for group in (self.pinned, self.points):
            if point is not None and point in group:
                group.remove(point)
                return
        if self.points:
            self.points.pop(0)
        elif self.fresh:
            self.fresh -= 1
        else:
            self.pinned.pop(0)

    def pin(self, claimed: list[dict[str, float]]) -> int:
        """Pin the ``claimed`` candidates that have not started: each takes one of the round's
        slots still held (an offered point's, the last first, else a fresh one's); how many."""
        pinned = 0
        for point in claimed:
            if point in self.pinned or not (self.points or self.fresh):
                continue
            if point in self.points:
                self.points.remove(point)
            elif self.fresh:
                self.fresh -= 1
            else:
                self.points.pop()
            self.pinned.append(point)
            pinned += 1
        return pinned


def compose_batch(candidates: list[Candidate], picks: list[PickRecord], earned: int,
                  capacity: int) -> list[tuple[Candidate, str]]:
    """The round's simulations: the planner's first ``earned`` picks, then the optimizer's
    candidates in its own order, ``capacity`` in all; each with its source."""
    chosen = [p.candidate for p in picks[:earned] if p.candidate is not None]
    batch = [(candidates[i], "planner") for i in chosen]
    batch += [(c, "optimizer") for i, c in enumerate(candidates) if i not in chosen]
    return batch[:capacity]


def surrogate_claim(advice: Advice, batch: list[Candidate], metric: str, goal: str) -> tuple[str, Claim | None]:
    """The hypothesis physflow states when the model gave none: the surrogate's prediction for the
    batch (the metric within two of its sd of its mean over the batch's box); none before the
    surrogate predicts."""
    points = [c for c in batch if math.isfinite(c.mean) and math.isfinite(c.sd)]
    if not points:
        return "No prediction yet: the optimizer's space-filling points map the parameter space.", None
    region = {name: (min(c.params[name] for c in points), max(c.params[name] for c in points))
              for name in points[0].params}
    if goal == "minimize":
        claim = Claim(metric, "below", max(c.mean + 2 * c.sd for c in points), region)
    else:
        claim = Claim(metric, "above", min(c.mean - 2 * c.sd for c in points), region)
    return f"The surrogate predicts {claim.text()} (its own prediction; the model stated none).", claim
