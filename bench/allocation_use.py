"""How busy does each steering loop keep the allocation when every model turn takes seconds?

The scenario (issue "Campaign benchmarks"): 2 slots, 24 simulations of 1.0 s, 2.0 s per model
turn, one batch of 2 proposals per turn. Four loops run it, one after the other in one process:

``batch-synchronous``
    Raw Parsl HTEX with 2 workers: think 2.0 s, submit 2, wait for both, repeat.
``colmena-style``
    The same executor, driven the way Colmena 0.7.2's single asynchronous thinker drives it
    (re-implemented here, Colmena is not installed): a thinker thread thinks 2.0 s, then puts a
    batch of 2 requests on a queue as slots allow (Colmena's ResourceCounter); a task-server
    thread submits each request to Parsl; a result-processor thread takes the results off a
    second queue and frees the slots. The thinker never waits for results, so it is capped by its
    own rate: 1 task/s against the slots' 2/s.
``physflow (replay 2.0 s)``
    ``physflow submit`` of a real campaign: the local site (its HTEX ``cpu`` pool, 2 workers on
    this machine), physflow's loop, dispatcher and committer, and AutoGen's
    ReplayChatCompletionClient as the planner (``llm: {provider: replay, delay: 2.0}``: every
    model call sleeps 2.0 s first, then returns the next scripted proposal of 2 simulations);
    ``backfill: optimizer`` fills a slot that falls free while the planner thinks.
``physflow (embedded)``
    The same campaign with the embedded model (SmolLM2-135M on llama.cpp, served by physflow)
    as the planner: its turns take however long the real model takes (reported).

The simulation is the ``python`` adapter's function ``bench.noop_tasks.sleep_task``: it sleeps
1.0 s in the worker and reports y = (x - 0.3)^2. Each task's start and end are taken on the
worker (Parsl app return value, or physflow's journal). busy = sum of run intervals /
(slots x makespan); the makespan runs from the first task's start to the last task's end (the
physflow rows also give it from the campaign's start, which includes starting the worker pool).
The baselines' pool is started and warmed before their clock starts.

Quality of backfill: each physflow row counts where its simulations came from (planner,
backfill, optimizer fallback) and the median and best y of each; the scripted planner proposes
points that approach the optimum x = 0.3 the way a model that understood the problem would.

Run from the repository root: ``python bench/allocation_use.py [--sims 24] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.campaign_runs import (  # noqa: E402
    CampaignRun,
    busy_fraction,
    load,
    model_calls,
    prepare_environment,
    pyplot,
    run_campaign,
    save_figure,
    sleep_workflow,
    transcript,
)
from bench.dispatch_overhead import raw_config, warm_up  # noqa: E402


@dataclass
class LoopResult:
    name: str
    intervals: list[tuple[float, float]]
    slots: int
    loop_start: float | None = None
    sources: dict[str, list[float]] = field(default_factory=dict)
    turn_s: float | None = None
    note: str = ""

    @property
    def busy(self) -> float:
        return busy_fraction(self.intervals, self.slots)[0]

    @property
    def makespan(self) -> float:
        return busy_fraction(self.intervals, self.slots)[1]

    @property
    def makespan_from_start(self) -> float | None:
        return None if self.loop_start is None else max(e for _, e in self.intervals) - self.loop_start


def proposals(sims: int, per_turn: int) -> list[list[float]]:
    """The scripted model's batches: x values closing in on the optimum 0.3, all distinct."""
    turns = -(-sims // per_turn)
    return [[round(0.3 + (0.4 if j % 2 else -0.25) / (i + 1) + 0.003 * j, 4) for j in range(per_turn)]
            for i in range(turns)]


# -- the two baselines on raw Parsl --------------------------------------------------------------
def batch_synchronous(app: Any, batches: list[list[float]], sims: int, think: float, seconds: float) -> list:
    """Think, submit the batch, wait for all of it, repeat."""
    intervals: list[tuple[float, float]] = []
    for batch in batches:
        time.sleep(think)
        futures = [app(seconds) for _ in batch[:sims - len(intervals)]]
        intervals += [f.result() for f in futures]
        if len(intervals) >= sims:
            break
    return intervals


class SingleThinker:
    """Colmena's asynchronous single thinker, re-implemented: thinker, task server and result
    processor are threads joined by a request queue and a result queue."""

    def __init__(self, app: Any, batches: list[list[float]], sims: int, slots: int, think: float,
                 seconds: float) -> None:
        self.app, self.batches, self.sims, self.think, self.seconds = app, batches, sims, think, seconds
        self.requests: queue.Queue[float | None] = queue.Queue()
        self.results: queue.Queue[tuple[float, float]] = queue.Queue()
        self.slots = threading.Semaphore(slots)  # Colmena's ResourceCounter for one task pool
        self.intervals: list[tuple[float, float]] = []

    def thinker(self) -> None:
        made = 0
        for batch in self.batches:
            time.sleep(self.think)  # the model's turn
            for x in batch[:self.sims - made]:
                self.slots.acquire()
                self.requests.put(x)
                made += 1
            if made >= self.sims:
                break
        self.requests.put(None)

    def task_server(self) -> None:
        while self.requests.get() is not None:
            self.app(self.seconds).add_done_callback(lambda f: self.results.put(f.result()))

    def result_processor(self) -> None:
        for _ in range(self.sims):
            self.intervals.append(self.results.get())
            self.slots.release()

    def run(self) -> list[tuple[float, float]]:
        threads = [threading.Thread(target=f) for f in (self.thinker, self.task_server, self.result_processor)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.intervals


def run_baselines(base: Path, batches: list[list[float]], sims: int, slots: int, think: float,
                  seconds: float) -> list[LoopResult]:
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from bench.noop_tasks import raw_sleep

    dfk = DataFlowKernel(raw_config(base / "parsl", workers=slots))
    try:
        app = python_app(raw_sleep, executors=["cpu"], data_flow_kernel=dfk)
        warm_up(dfk, lambda: app(0.0), 2 * slots)
        out = []
        t0 = time.time()
        out.append(LoopResult("batch-synchronous (raw Parsl)", batch_synchronous(app, batches, sims, think, seconds),
                              slots, t0))
        time.sleep(1.0)
        t0 = time.time()
        out.append(LoopResult("colmena-style single thinker", SingleThinker(app, batches, sims, slots, think,
                                                                              seconds).run(), slots, t0))
    finally:
        dfk.cleanup()
    return out


# -- physflow ------------------------------------------------------------------------------------
def planner_turns(run: CampaignRun) -> list[float]:
    """Seconds of each planner turn: from its ``round`` event to the turn's proposals or fallback."""
    turns, start = [], None
    for e in run.events:
        if e["event"] == "round":
            start = e["t"]
        elif start is not None and e["event"] in ("hypothesis", "proposed") and e.get("source") != "backfill":
            turns.append(e["t"] - start)
            start = None
    return turns


def physflow_loop(name: str, llm: str, folder: Path, sims: int, slots: int, seconds: float,
                  files: dict[str, str] | None = None) -> LoopResult:
    run = run_campaign(sleep_workflow("allocation-use", seconds, sims, slots, llm), folder, files)
    tasks = run.finished
    if len(tasks) != sims:
        raise RuntimeError(f"{name}: {len(tasks)} of {sims} simulations finished; see {run.run_dir}")
    sources: dict[str, list[float]] = {}
    for t in tasks:
        sources.setdefault(t.source, []).append(t.metrics["y"])
    turns = planner_turns(run)
    records = transcript(run.run_dir)
    fallbacks = sum(1 for r in records if r.get("type") == "fallback")
    calls = model_calls(records).get("planner", [])
    last_end = max(t.finished for t in tasks)
    ended = run.first("campaign_ended")
    return LoopResult(name, [(t.started, t.finished) for t in tasks], slots, run.first("campaign_started"), sources,
                      statistics.median(calls) if calls else None,
                      f"{len(turns)} planner turns answered, {fallbacks} without a valid proposal; {len(calls)} model "
                      f"calls; campaign ended {ended - last_end:.1f} s after the last simulation")


def replay_script(batches: list[list[float]]) -> str:
    lines = [{"content": {"hypothesis": f"y falls as x approaches {batch[0]:.3f}",
                          "prediction": f"y below {0.5 / (i + 1) ** 2:.4f}",
                          "simulations": [{"x": x} for x in batch]}} for i, batch in enumerate(batches)]
    return "\n".join(json.dumps(line) for line in lines) + "\n"


# -- report --------------------------------------------------------------------------------------
def table(results: list[LoopResult], reference: LoopResult) -> str:
    lines = [f"{'loop':<34} {'busy':>5} {'makespan s':>10} {'from start s':>12} {'vs batch-sync':>13} "
             f"{'model call s':>12}"]
    for r in results:
        since = f"{r.makespan_from_start:12.1f}" if r.makespan_from_start is not None else f"{'':>12}"
        turn = f"{r.turn_s:12.2f}" if r.turn_s is not None else f"{'':>12}"
        lines.append(f"{r.name:<34} {r.busy:5.2f} {r.makespan:10.1f} {since} {r.busy / reference.busy:12.2f}x {turn}")
    lines.append("")
    lines.append("where physflow's simulations came from (y = (x - 0.3)^2, lower is better):")
    for r in results:
        for source, ys in sorted(r.sources.items()):
            lines.append(f"  {r.name:<32} {source:<10} {len(ys):3d} sims  median y {statistics.median(ys):.4f}  "
                         f"best y {min(ys):.5f}")
        if r.note:
            lines.append(f"  {r.name:<32} {r.note}")
    return "\n".join(lines)


def figure(results: list[LoopResult]) -> Path:
    fig, axes = pyplot().subplots(len(results), 1, figsize=(8, 1.6 * len(results) + 0.6), sharex=True)
    for ax, r in zip(axes, results, strict=True):
        t0 = min(s for s, _ in r.intervals)
        edges = sorted({t - t0 for iv in r.intervals for t in iv})
        running = [sum(s - t0 <= t < e - t0 for s, e in r.intervals) for t in edges]
        ax.step(edges, running, where="post")
        ax.set_ylim(0, r.slots + 0.3)
        ax.set_ylabel("running")
        ax.set_title(f"{r.name}: busy {r.busy:.2f}, makespan {r.makespan:.1f} s", fontsize=9)
    axes[-1].set_xlabel("seconds since the first simulation started")
    return save_figure(fig, "allocation_use.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=24, help="simulations per loop (default 24)")
    parser.add_argument("--slots", type=int, default=2, help="workers (default 2)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per simulation (default 1.0)")
    parser.add_argument("--think", type=float, default=2.0, help="seconds per model turn (default 2.0)")
    parser.add_argument("--per-turn", type=int, default=2, help="proposals per model turn (default 2)")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-model campaign")
    parser.add_argument("--quick", action="store_true", help="8 simulations, no embedded model (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sims, args.no_embedded = 8, True
    prepare_environment()
    print(f"{args.slots} slots, {args.sims} simulations of {args.seconds} s, {args.think} s per model turn, "
          f"{args.per_turn} proposals per turn; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"load average {load()}", flush=True)
    batches = proposals(args.sims, args.per_turn)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="physflow-bench-alloc-") as tmp:
        base = Path(tmp)
        results = run_baselines(base, batches, args.sims, args.slots, args.think, args.seconds)
        for r in results:
            print(f"  {r.name:<34} busy {r.busy:.2f}", flush=True)
        llm = f"{{provider: replay, script: planner.jsonl, delay: {args.think}}}"
        results.append(physflow_loop(f"physflow (replay {args.think:.1f} s)", llm, base / "replay", args.sims,
                                     args.slots, args.seconds, {"planner.jsonl": replay_script(batches)}))
        print(f"  {results[-1].name:<34} busy {results[-1].busy:.2f}", flush=True)
        if not args.no_embedded:
            llm = "{provider: embedded, model: smollm2-135m-instruct}"
            results.append(physflow_loop("physflow (embedded SmolLM2-135M)", llm, base / "embedded", args.sims,
                                         args.slots, args.seconds))
            print(f"  {results[-1].name:<34} busy {results[-1].busy:.2f}", flush=True)
    path = figure(results)
    print(f"(total wall time {time.perf_counter() - started:.0f} s; load average {load()}; figure {path})\n")
    print(table(results, results[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
