"""The steering loop: think -> propose -> dispatch -> simulate -> stream back -> store -> think.

Asynchronous in the manner of Colmena's Thinker: the loop reacts to named events — a slot
fell free, a result was stored, the planner finished thinking, the critic gave a verdict — and
never lets a worker idle while the model thinks. One planner turn proposes a batch; while it
thinks, free slots are backfilled with the optimizer's suggestions (``budget.backfill``), each
recorded as such. This module is the only place where agents, adapters and dispatch meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from physflow.agents.models import make_client
from physflow.agents.team import ROLES, PlanOutcome, ScienceTeam, Transcript, Verdict, role_tools
from physflow.agents.tools import Toolbox, results_table
from physflow.errors import AdapterError, PhysflowError, ProposalError
from physflow.optimizer import Optimizer
from physflow.sim_adapters import get_adapter
from physflow.sim_adapters.base import Adapter
from physflow.site_configs.site import SiteSpec
from physflow.spec.task import Array
from physflow.spec.workflow import LoadedWorkflow
from physflow.workflows.store import CampaignState, Committer, RunStore, TaskRecord

#: The optimizer prepares a spare point while every slot is busy once a suggestion takes more
#: than this fraction of a typical simulation's run time (see ``Campaign.request_suggestions``):
#: below it a fresh fit is worth its wait, above it an idle slot costs more.
SPARE_ABOVE = 0.03

log = logging.getLogger("physflow.campaign")

#: Shows the user a batch (text, parameter sets) and returns the parameter sets to run — the same,
#: or edited by the user — or None to refuse (the campaign then stops, resumable).
Approver = Callable[[str, list[dict[str, float]]], Awaitable[list[Any] | None]]


@dataclass
class Event:
    kind: str  # result | planned | judged | suggested | wake
    payload: Any = None


class Campaign:
    """One campaign in one run directory."""

    def __init__(self, workflow: LoadedWorkflow, store: RunStore, site: SiteSpec,
                 approver: Approver | None = None, dispatcher_factory: Callable[[], Any] | None = None) -> None:
        self.workflow = workflow
        self.spec = workflow.spec
        self.store = store
        self.site = site
        self.approver = approver
        self.dispatcher_factory = dispatcher_factory
        self.adapter: Adapter = get_adapter(workflow)
        self.budget = self.spec.budget
        self.objective = self.spec.objective
        self.optimizer = Optimizer(self.adapter.parameters, self.objective.goal,
                                   seed=int(self.spec.simulation.fixed.get("seed", 0)))
        self.tasks: dict[str, TaskRecord] = {}
        self.queue: deque[TaskRecord] = deque()
        self.in_flight: dict[str, TaskRecord] = {}
        self.hypotheses: dict[str, dict[str, Any]] = {}
        self.rounds = 0
        self.stop_reason = ""
        self.cancel_requested = False
        self.objective_metric = self.objective.metric
        self.goal = self.objective.goal
        self.team: ScienceTeam | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._planner: asyncio.Task | None = None
        self._critic: asyncio.Task | None = None
        self._suggesting: asyncio.Task | None = None
        #: A point the optimizer made ready while every slot was busy (``SPARE_ABOVE``), the
        #: number of results it had seen, and how long the last suggestion took (seconds).
        self._spares: list[dict[str, float]] = []
        self._spares_seen = 0
        self._suggest_seconds = 0.0
        self._results_count = 0
        self._recent_runs: deque[float] = deque(maxlen=20)  # run times of the last simulations, s
        self._to_judge: deque[str] = deque()
        self._approved_once = workflow.spec.approval == "auto" or approver is None
        self.tokens_before = 0
        self.resume_note = ""
        self.last_analysis = ""

    # -- the CampaignView the agents see -------------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        return [t.public() for t in self.tasks.values()]

    def suggest(self, n: int) -> list[dict[str, float]]:
        return self.optimizer.suggest(n, self._pending())

    async def _suggest_off_loop(self, n: int) -> list[dict[str, float]]:
        """The optimizer's points now, fitted in a worker thread (the pending parameters are read
        here, on the loop's thread, where the task tables change)."""
        return await asyncio.to_thread(self.optimizer.suggest, n, self._pending())

    def _pending(self) -> list[dict[str, float]]:
        """Parameters of the simulations running or queued: the optimizer spreads away from them."""
        return [t.params for t in (*self.in_flight.values(), *self.queue)]

    # -- bookkeeping ---------------------------------------------------------------------------
    def _new_task(self, params: dict[str, float], source: str, hypothesis: str | None) -> TaskRecord:
        task = TaskRecord(id=f"t{len(self.tasks):04d}", params=params, hypothesis=hypothesis, source=source,
                          created=time.time())
        self.tasks[task.id] = task
        self.queue.append(task)
        if hypothesis:
            self.hypotheses[hypothesis]["tasks"].append(task.id)
        self.committer.event("proposed", t=task.created, task=task.id, params=params, hypothesis=hypothesis,
                             source=source)
        return task

    @property
    def simulations_left(self) -> int:
        return self.budget.max_simulations - len(self.tasks)

    def best(self) -> TaskRecord | None:
        scored = [t for t in self.tasks.values() if t.status == "finished"
                  and math.isfinite(t.metrics.get(self.objective_metric, math.nan))]
        if not scored:
            return None
        sign = 1 if self.goal == "minimize" else -1
        return min(scored, key=lambda t: sign * t.metrics[self.objective_metric])

    def tolerance_reached(self) -> bool:
        tol, best = self.objective.tolerance, self.best()
        if tol is None or best is None:
            return False
        value = best.metrics[self.objective_metric]
        return value <= tol if self.goal == "minimize" else value >= tol

    # -- events --------------------------------------------------------------------------------
    def _finalize(self, task: TaskRecord, outcome: dict[str, Any]) -> dict[str, Array]:
        """Runs in the committer thread: a worker's outcome -> the task's final state."""
        task.started, task.finished, task.host = outcome.get("started"), outcome.get("finished"), outcome.get("host")
        code = outcome.get("returncode", 1)
        if code != 0:
            why = f"timed out after {self.spec.simulation.walltime:.0f} s" if outcome.get("timed_out") \
                else f"exit code {code}"
            task.status, task.error = "failed", f"{why}; stderr tail: {outcome.get('stderr_tail', '').strip()}"
            return {}
        try:
            out = self.adapter.parse_outputs(self.store.task_dir(task.id), outcome)
        except AdapterError as exc:
            task.status, task.error = "failed", str(exc)
            return {}
        task.metrics, task.arrays = out.metrics, sorted(out.arrays)
        if self.objective_metric not in out.metrics:
            task.status = "failed"
            task.error = f"the simulation reported no {self.objective_metric} (it reported: {', '.join(out.metrics)})"
        else:
            task.status = "finished"
        return out.arrays

    def _on_done(self, task: TaskRecord, future: Any) -> None:
        """Runs in Parsl's thread when a simulation's future completes."""
        task.received = time.time()
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - worker loss, serialization errors: a failed task
            outcome = {"returncode": 1, "stderr_tail": f"{type(exc).__name__}: {exc}"}
        self.committer.result(task, outcome)

    def submit_ready(self) -> None:
        """A slot is free: submit queued proposals (the optimizer's arrive by ``request_suggestions``)."""
        if self.stop_reason:
            return
        while self.queue and len(self.in_flight) < self.budget.max_concurrent:
            task = self.queue.popleft()
            spec = self.adapter.build_task(task.id, task.params, self.store.task_dir(task.id))
            task.status, task.submitted = "submitted", time.time()
            self.committer.event("submitted", t=task.submitted, task=task.id)
            self.in_flight[task.id] = task
            future = self.dispatcher.submit(spec)
            future.add_done_callback(lambda f, t=task: self._on_done(t, f))

    def _slots_for_optimizer(self) -> tuple[int, str] | None:
        """How many free slots the optimizer should fill now, and as what source; None for none.

        It steers alone when there is no team; with a team it backfills only while the planner
        thinks (``budget.backfill: optimizer``), and never before the user approved a first batch.
        """
        if self.stop_reason or self.queue or self.simulations_left <= 0:
            return None
        free = min(self.budget.max_concurrent - len(self.in_flight), self.simulations_left)
        if free <= 0:
            return None
        if self.team is None:
            return free, "optimizer"
        thinking = self._planner is not None and not self._planner.done()
        if thinking and self.budget.backfill == "optimizer" and self._approved_once:
            return free, "backfill"
        return None

    def request_suggestions(self) -> None:
        """Ask the optimizer for points for the free slots, in a worker thread.

        A suggestion refits on every result (a Gaussian process: about 0.05 s at 50 results, 0.15 s
        at 200, 0.35 s at 300; TPE beyond, 10-50 ms): on the loop's thread that would cap the
        campaign at a few tens of simulations per second. Off it, results keep being taken and
        journaled meanwhile, and the slots freed during one call are asked for together by the
        next, so one refit serves many slots as the rate grows. One request at a time; the points
        arrive as a "suggested" event.

        A freed slot still waits for its fit. Where that wait is a noticeable part of a
        simulation (``SPARE_ABOVE``), the optimizer prepares a spare point while every slot is
        busy, and a freed slot starts on it at once; the spare has not seen the results that came
        in meanwhile, and is dropped once more than ``max_concurrent`` of them have.
        """
        if self._suggesting is not None and not self._suggesting.done():
            return
        wanted = self._slots_for_optimizer()
        if wanted is not None and self._spares:
            n, source = wanted
            if self._results_count - self._spares_seen <= self.budget.max_concurrent:
                for params in self._spares[:n]:
                    self._new_task(params, source, None)
            self._spares = []
            self.submit_ready()
            wanted = self._slots_for_optimizer()
        if wanted is None:
            if self._spare_wanted():
                self._suggest(1, "spare")
            return
        self._suggest(*wanted)

    def _spare_wanted(self) -> bool:
        """Whether to prepare a spare point now: every slot busy, simulations left to start, the
        optimizer fills the next free slot, and a fit takes over ``SPARE_ABOVE`` of a simulation."""
        if self._spares or self.stop_reason or self.queue or self.simulations_left <= 0:
            return False
        if self.team is not None and self.budget.backfill != "optimizer":
            return False
        runs = self._recent_runs
        return bool(runs) and self._suggest_seconds > SPARE_ABOVE * statistics.median(runs)

    def _suggest(self, n: int, source: str) -> None:
        pending, seen = self._pending(), self._results_count

        async def work() -> None:
            started = time.perf_counter()
            try:  # Optimizer.suggest copies the results it fits on; observe() may go on meanwhile
                points: list[dict[str, float]] | BaseException = await asyncio.to_thread(
                    self.optimizer.suggest, n, pending)
            except Exception as exc:  # noqa: BLE001 - raised again on the loop's thread
                points = exc
            self._suggest_seconds = time.perf_counter() - started
            await self._events.put(Event("suggested", (source, points, seen)))

        self._suggesting = asyncio.create_task(work())

    def on_suggested(self, source: str, points: list[dict[str, float]] | BaseException, seen: int) -> None:
        """Queue the optimizer's points for the slots still free (a planner's proposals that came
        meanwhile go first; points no slot wants any more are dropped: they cost nothing), or keep
        a spare for the next slot to fall free."""
        self._suggesting = None
        if isinstance(points, BaseException):
            raise points
        if source == "spare":
            self._spares, self._spares_seen = points, seen
            self.request_suggestions()  # a slot may have fallen free during the fit
            return
        wanted = self._slots_for_optimizer()
        if wanted is None:
            return
        for params in points[:wanted[0]]:
            self._new_task(params, source, None)

    def maybe_think(self) -> None:
        """The queue runs low: ask the planner for the next hypothesis while simulations run."""
        if self.stop_reason or self.team is None or (self._planner and not self._planner.done()):
            return
        if self.rounds >= self.budget.max_rounds or self.simulations_left <= 0:
            return
        if len(self.queue) >= self.budget.max_concurrent:
            return
        self.rounds += 1
        self.committer.event("round", round=self.rounds)
        self._planner = asyncio.create_task(self._plan(self.rounds))

    async def _plan(self, round_no: int) -> None:
        capacity = max(1, min(self.simulations_left, self.budget.max_concurrent * 2, 8))
        try:
            hints = await self._suggest_off_loop(2)
            outcome = await self.team.propose(self._planner_prompt(round_no, hints), capacity)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any agent failure
            outcome = PlanOutcome(errors=[f"{type(exc).__name__}: {exc}"])
        await self._events.put(Event("planned", (round_no, outcome)))

    async def on_planned(self, round_no: int, outcome: PlanOutcome) -> None:
        if self.stop_reason:  # the campaign stopped while the planner thought: nothing more runs
            return
        capacity = max(0, self.simulations_left)
        log.info("round %d: %s", round_no, f"hypothesis: {outcome.hypothesis[:100]}" if outcome.ok
                 else "no valid proposal from the model; the optimizer fills the round")
        if outcome.ok:
            hid = f"H{round_no}"
            self.hypotheses[hid] = {"statement": outcome.hypothesis, "prediction": outcome.prediction, "tasks": []}
            review = outcome.review
            self.committer.event("hypothesis", id=hid, statement=outcome.hypothesis,
                                 prediction=outcome.prediction, round=round_no,
                                 review=review.model_dump() if review else None,
                                 unverified_citations=outcome.unverified_citations)
            proposed = outcome.simulations[:capacity]
            batch = await self._approve(hid, proposed)
            if batch is None:
                return
            for params in batch:
                self._new_task(params, "planner" if params in proposed else "user", hid)
        else:
            # The model gave nothing usable: the optimizer fills this round's slots, recorded as such.
            self.team.transcript.note("physflow", "fallback",
                                      f"round {round_no}: no valid proposal ({'; '.join(outcome.errors)[-400:]}); "
                                      "using the optimizer's suggestions")
            n = min(capacity, self.budget.max_concurrent)
            suggested = await self._suggest_off_loop(n) if n else []
            batch = await self._approve(None, suggested) if suggested else []
            if batch is None:
                return
            for params in batch:
                self._new_task(params, "optimizer" if params in suggested else "user", None)
        if outcome.rejected:
            self.team.transcript.note("physflow", "rejected", outcome.rejected)

    async def _approve(self, hid: str | None, batch: list[dict[str, float]]) -> list[dict[str, float]] | None:
        """The batch to run after the user saw it (``approval: plan | every-batch``), or None.

        A batch the user edited is checked against the parameter schema like any proposal; a
        problem is shown and the user asked again.
        """
        mode = self.spec.approval
        if mode == "auto" or (mode == "plan" and self._approved_once) or self.approver is None:
            self._approved_once = True
            return batch
        text = (f"Hypothesis {hid}: {self.hypotheses[hid]['statement']}\n" if hid else "Optimizer suggestions:\n")
        text += "\n".join(f"  {json.dumps(p)}" for p in batch)
        while True:
            answer = await self.approver(text, batch)
            if answer is None:
                break
            try:
                answer = [self.adapter.validate_params(p) for p in answer][:max(0, self.simulations_left)]
            except ProposalError as exc:
                text = f"The edited batch was rejected: {exc}\n" + "\n".join(f"  {json.dumps(p)}" for p in batch)
                continue
            break
        self.committer.event("approval", hypothesis=hid, approved=answer is not None,
                             edited=answer is not None and answer != batch)
        if answer is None:
            self.stop_reason = "batch not approved"
            self.cancel_requested = True
        else:
            self._approved_once = True
        return answer

    def on_result(self, task: TaskRecord) -> None:
        self.in_flight.pop(task.id, None)
        self._results_count += 1
        if task.status == "finished":
            self.optimizer.observe(task.params, task.metrics[self.objective_metric])
            if task.started is not None and task.finished is not None:
                self._recent_runs.append(task.finished - task.started)
        if self.tolerance_reached() and not self.stop_reason:
            self.stop_reason = "tolerance reached"
        best = self.best()
        value = task.metrics.get(self.objective_metric)
        log.info("%s %-8s %-9s %s %s  best %s", task.id, task.status, task.source,
                 " ".join(f"{k}={v:.4g}" for k, v in task.params.items()),
                 f"{self.objective_metric}={value:.4g}" if value is not None else (task.error or "")[:80],
                 f"{best.metrics[self.objective_metric]:.4g} ({best.id})" if best else "-")
        hid = task.hypothesis
        if hid and all(self.tasks[t].status in ("finished", "failed") for t in self.hypotheses[hid]["tasks"]):
            self._to_judge.append(hid)

    def maybe_judge(self) -> None:
        if self.team is None or not self._to_judge or (self._critic and not self._critic.done()):
            return
        hid = self._to_judge.popleft()
        self._critic = asyncio.create_task(self._judge(hid))

    async def _judge(self, hid: str) -> None:
        verdict = analysis = None
        try:
            verdict = await self.team.judge(self._critic_prompt(hid))
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any agent failure
            self.team.transcript.note("critic", "error", f"{type(exc).__name__}: {exc}")
        # The coder analyses every judged hypothesis: what the critic asked for, or else how the
        # objective depends on each parameter, which is what the planner needs next.
        request = verdict.analysis.strip() if verdict is not None else ""
        try:
            analysis = await self.team.analyse(request or self._default_analysis(), self.results())
        except Exception as exc:  # noqa: BLE001
            self.team.transcript.note("coder", "error", f"{type(exc).__name__}: {exc}")
        await self._events.put(Event("judged", (hid, verdict, analysis)))

    def _default_analysis(self) -> str:
        names = ", ".join(self.adapter.parameters)
        return (f"For the finished simulations, fit {self.objective_metric} as a quadratic function of "
                f"({names}) with numpy least squares and print the fitted optimum ({self.goal}) and the "
                f"best simulation so far.")

    def on_judged(self, hid: str, verdict: Verdict | None, analysis: str | None = None) -> None:
        h = self.hypotheses[hid]
        if verdict is None:
            h["verdict"], h["evidence"] = "inconclusive", "the critic gave no valid verdict"
        else:
            h["verdict"], h["evidence"], h["advice"] = verdict.verdict, verdict.evidence, verdict.advice
        if analysis:
            h["analysis"] = analysis
            self.last_analysis = f"{hid}: {analysis[:600]}"
        log.info("%s judged %s: %s", hid, h["verdict"], h["evidence"][:100])
        self.committer.event("verdict", id=hid, verdict=h["verdict"], evidence=h["evidence"],
                             advice=h.get("advice", ""), analysis=h.get("analysis", ""))

    def _resume_summary(self) -> str:
        """What the agents are told after a restart (not the whole transcript)."""
        counts: dict[str, int] = {}
        for t in self.tasks.values():
            counts[t.status] = counts.get(t.status, 0) + 1
        best = self.best()
        return (f"The campaign was restarted after round {self.rounds}. Simulations: "
                + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                + (f". Best so far: {best.params} -> {self.objective_metric}={best.metrics[self.objective_metric]:.4g}"
                   if best else "") + ".")

    # -- prompts -------------------------------------------------------------------------------
    def _parameter_lines(self) -> str:
        return "\n".join(f"- {n}: between {p.min} and {p.max}" + (f" {p.units}" if p.units else "")
                         + (f" ({p.description})" if p.description else "")
                         for n, p in self.adapter.parameters.items())

    def _planner_prompt(self, round_no: int, hints: list[dict[str, float]]) -> str:
        """What the planner reads each round; ``hints`` are the optimizer's points, asked for in a
        worker thread by the caller (a Gaussian process fit would stall the loop)."""
        obj = self.objective
        tol = f" (stop when it reaches {obj.tolerance})" if obj.tolerance is not None else ""
        lines = [f"Goal: {self.spec.goal.strip()}", f"Parameters:\n{self._parameter_lines()}",
                 f"Objective: {obj.goal} {obj.metric}{tol}.", f"Round {round_no} of {self.budget.max_rounds}; "
                 f"{self.simulations_left} simulations left in the budget."]
        if self.resume_note:
            lines.append(self.resume_note)
            self.resume_note = ""
        table = results_table(self, limit=6)
        if table:
            lines.append("Best results so far:\n" + "\n".join(
                f"- {r['params']} -> {obj.metric}={r['metrics'].get(obj.metric)}" for r in table))
        failed = [t for t in self.tasks.values() if t.status == "failed"][-3:]
        if failed:
            lines.append("Recent failures:\n" + "\n".join(f"- {t.params}: {(t.error or '')[:200]}" for t in failed))
        judged = [(k, h) for k, h in self.hypotheses.items() if h.get("verdict")][-3:]
        if judged:
            lines.append("Verdicts so far:\n" + "\n".join(
                f"- {k} '{h['statement'][:160]}': {h['verdict']}. {h.get('advice', '')[:160]}" for k, h in judged))
        if self.last_analysis:
            lines.append(f"The coder's latest analysis: {self.last_analysis}")
        lines.append(f"The optimizer suggests: {json.dumps(hints)}")
        return "\n".join(lines)

    def _critic_prompt(self, hid: str) -> str:
        h = self.hypotheses[hid]
        metric = self.objective_metric
        rows = "\n".join(f"- {self.tasks[t].params} -> " + (
            f"{metric}={self.tasks[t].metrics.get(metric)}" if self.tasks[t].status == "finished"
            else f"failed: {(self.tasks[t].error or '')[:160]}") for t in h["tasks"])
        best = self.best()
        overall = f"Best of the campaign so far: {best.params} -> {metric}={best.metrics[metric]}" if best else ""
        return (f"Hypothesis {hid}: {h['statement']}\nPrediction: {h['prediction']}\n"
                f"Objective: {self.goal} {metric}.\nResults of its simulations:\n{rows}\n{overall}\n"
                "Give your verdict as JSON.")

    # -- the loop ------------------------------------------------------------------------------
    def _on_committed(self, task: TaskRecord) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, Event("result", task))

    def request_cancel(self) -> None:
        self.cancel_requested = True
        self.stop_reason = self.stop_reason or "cancelled"
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, Event("wake"))

    def _toolbox(self, clients: dict[str, Any], transcript: Transcript) -> Toolbox:
        """The tools, with a sandbox only if some enabled role may run code."""
        from physflow.agents.knowledge import KnowledgeBase
        from physflow.agents.sandbox import Sandbox

        knowledge = KnowledgeBase([self.workflow.resolve(p) for p in self.spec.knowledge]) if self.spec.knowledge \
            else None
        if any(role == "coder" or "run_analysis_code" in role_tools(self.spec, role) for role in clients):
            try:
                self.sandbox = Sandbox(self.store.run_dir).start()
                transcript.note("physflow", "sandbox", f"isolation: {self.sandbox.isolation}",
                                warning=self.sandbox.warning)
            except PhysflowError as exc:
                transcript.note("physflow", "sandbox", f"no sandbox: {exc}; analysis code is disabled")
        return Toolbox(self, validate=self.adapter.validate_params, sandbox=self.sandbox, knowledge=knowledge,
                       plots_dir=self.store.run_dir / "plots")

    def _arrays_from_workdir(self, task: TaskRecord) -> dict[str, Array]:
        """A finished task's arrays, parsed again from its working directory (HDF5 repair)."""
        return self.adapter.stored_arrays(self.store.task_dir(task.id))

    def restore(self, previous: CampaignState) -> None:
        """Continue from a journal: finished work is kept, in-flight work resubmitted once.

        Runs before the loop starts, after the committer exists (it journals what it decides).
        """
        repaired = self.store.repair_hdf5(previous.tasks.values(), self._arrays_from_workdir)
        for hid, h in previous.hypotheses.items():
            self.hypotheses[hid] = {"statement": h.statement, "prediction": h.prediction, "tasks": list(h.tasks),
                                    **({"verdict": h.verdict, "evidence": h.evidence, "advice": h.advice}
                                       if h.verdict else {})}
        requeued = lost = 0
        for task in sorted(previous.tasks.values(), key=lambda t: t.id):
            self.tasks[task.id] = task
            if task.status == "finished":
                self.optimizer.observe(task.params, task.metrics.get(self.objective_metric, math.nan))
            elif task.status == "submitted" and previous.submits.get(task.id, 0) >= 2:
                task.status, task.error = "failed", "lost in flight twice (orchestrator stopped while it ran)"
                task.stored = time.time()
                self.committer.event("failed", task=task.id, error=task.error, metrics={}, arrays=[])
                lost += 1
            elif task.status in ("submitted", "proposed", "cancelled"):
                task.status = "proposed"
                self.queue.append(task)
                self.committer.event("requeued", task=task.id)
                requeued += 1
        for hid, h in self.hypotheses.items():
            if "verdict" not in h and h["tasks"] and all(
                    self.tasks[t].status in ("finished", "failed") for t in h["tasks"]):
                self._to_judge.append(hid)
        self.rounds = previous.rounds - previous.round_unanswered  # a turn cut short by the crash is redone
        self.tokens_before = sum(previous.tokens.values())
        finished = sum(t.status == "finished" for t in self.tasks.values())
        log.info("resumed: %d finished kept, %d requeued, %d lost, %d HDF5 groups repaired",
                 finished, requeued, lost, repaired)
        self.committer.event("campaign_resumed", name=self.spec.name, pid=os.getpid(), site=self.site.name,
                             kept=finished, requeued=requeued, lost=lost, repaired=repaired)

    async def run(self, clients: dict[str, Any] | None, previous: CampaignState | None = None) -> str:
        """Run to the end; returns the final state (finished | cancelled | failed).

        ``previous`` is the state rebuilt from this run's journal when resuming.
        """
        self._loop = asyncio.get_running_loop()
        self.committer = Committer(self.store, self._finalize, self._on_committed)
        transcript = Transcript(self.store.run_dir / "transcript.jsonl",
                                on_tokens=lambda agent, n: self.committer.event("tokens", agent=agent, tokens=n))
        self.sandbox = None
        if clients and "planner" in clients:
            self.toolbox = self._toolbox(clients, transcript)
            self.team = ScienceTeam(self.spec, clients, self.toolbox, self.adapter.parameters, transcript)
        if previous is None:
            self.committer.event("campaign_started", name=self.spec.name, pid=os.getpid(), site=self.site.name)
        else:
            self.restore(previous)
            if self.team:
                self.team.tokens_before = self.tokens_before
                self.resume_note = self._resume_summary()
                transcript.note("physflow", "resumed", self.resume_note, to="planner")
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_cancel)
        state = "failed"
        deadline = time.monotonic() + self.budget.wall_time
        self.dispatcher = None
        try:
            self.dispatcher = await asyncio.to_thread(self.dispatcher_factory)
            if self.team is None:  # no agents at all: the optimizer steers alone
                self._approved_once = True
            while True:
                self.maybe_think()
                self.submit_ready()
                self.request_suggestions()
                self.maybe_judge()
                planner_busy = self._planner is not None and not self._planner.done()
                if planner_busy and (self.stop_reason or self.simulations_left <= 0):
                    # Nothing it proposes could run any more: stop the turn instead of waiting for it.
                    self._planner.cancel()
                    self.team.transcript.note("physflow", "cancelled", "planner turn stopped: "
                                              + (self.stop_reason or "simulation budget spent"))
                    planner_busy = False
                critic_busy = self._critic is not None and not self._critic.done()
                suggesting = self._suggesting is not None and not self._suggesting.done()
                if self.cancel_requested:
                    break
                if not self.in_flight and not planner_busy and not critic_busy and not self._to_judge \
                        and not suggesting and (self.stop_reason or not self.queue):
                    break
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    self.stop_reason = self.stop_reason or "wall time reached"
                    break
                try:
                    event = await asyncio.wait_for(self._events.get(), timeout)
                except asyncio.TimeoutError:
                    continue
                if event.kind == "result":
                    self.on_result(event.payload)
                elif event.kind == "planned":
                    await self.on_planned(*event.payload)
                elif event.kind == "judged":
                    self.on_judged(*event.payload)
                elif event.kind == "suggested":
                    self.on_suggested(*event.payload)
            if not self.stop_reason:
                self.stop_reason = ("simulation budget spent" if self.simulations_left <= 0
                                    else "rounds done" if self.rounds >= self.budget.max_rounds
                                    else "nothing left to do")
            state = "cancelled" if self.cancel_requested else "finished"
        except PhysflowError:
            self.stop_reason = self.stop_reason or "error"
            raise
        except BaseException as exc:
            self.stop_reason = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for t in (self._planner, self._critic, self._suggesting):
                if t and not t.done():
                    t.cancel()
            for task in list(self.in_flight.values()) + list(self.queue):
                task.status = "cancelled"
                self.committer.event("cancelled", task=task.id)
            with contextlib.suppress(Exception):  # every result in HDF5 before the journal says "ended"
                self.committer.flush()
            self.committer.event("campaign_ended", state=state, reason=self.stop_reason,
                                 best=self.best().id if self.best() else None)
            self.committer.close()
            transcript.close()
            if self.sandbox is not None:
                self.sandbox.close()
            if self.dispatcher is not None:
                await asyncio.to_thread(self.dispatcher.close)
        return state


def resolved_workflow(workflow: LoadedWorkflow) -> dict[str, Any]:
    """The spec that ran, with defaults filled and file paths made absolute."""
    data = workflow.spec.model_dump(mode="json")
    if data["objective"].get("target"):
        data["objective"]["target"] = str(workflow.resolve(data["objective"]["target"]))
    if data["llm"].get("script"):
        data["llm"]["script"] = str(workflow.resolve(data["llm"]["script"]))
    for agent in data["agents"].values():
        if agent.get("script"):
            agent["script"] = str(workflow.resolve(agent["script"]))
    for name, template in (data["simulation"].get("inputs") or {}).items():
        data["simulation"]["inputs"][name] = str(workflow.resolve(template))
    if data["site"].endswith((".yaml", ".yml")):
        data["site"] = str(workflow.resolve(data["site"]))
    return data


def write_run_files(workflow: LoadedWorkflow, run_dir: Path, site: SiteSpec) -> None:
    (run_dir / "workflow.yaml").write_text(yaml.safe_dump(resolved_workflow(workflow), sort_keys=False))
    (run_dir / "run.json").write_text(json.dumps({"workflow_dir": str(workflow.directory),
                                                  "source": str(workflow.path), "site": site.model_dump()},
                                                 indent=1))


def model_clients(workflow: LoadedWorkflow, base_url: str | None, api_key: str | None = None) -> dict[str, Any]:
    """One client per enabled role (roles may name their own model, or their own replay script).

    Roles that share one replay script share one client, so the script is read in call order.
    """
    spec = workflow.spec
    clients: dict[str, Any] = {}
    by_script: dict[str, Any] = {}
    if not spec.has_team:
        return clients
    for role in ROLES:
        if not spec.agent_enabled(role):
            continue
        agent = spec.agents.get(role)  # type: ignore[call-overload]
        llm = spec.llm
        if llm.provider == "replay":
            script = (agent.script if agent and agent.script else None) or llm.script or ""
            if script not in by_script:
                by_script[script] = make_client(llm.model_copy(update={"script": script}),
                                                script_dir=workflow.directory)
            clients[role] = by_script[script]
        else:
            clients[role] = make_client(llm, base_url=base_url, script_dir=workflow.directory,
                                        model=agent.model if agent else None, api_key=api_key)
    return clients
