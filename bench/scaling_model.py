"""At how many concurrent simulations does physflow's own loop, not Parsl, limit utilization?

A model, fed with costs measured in this run, then tested with real campaigns.

Measured first (same machine, same run):
- ``c_parsl`` (s/task): 1 / raw Parsl HTEX throughput on no-op tasks, all submitted at once
  (``bench.dispatch_overhead.run_raw``, with parsl.log as physflow writes it: no per-task lines;
  the interchange is Parsl's serial stage);
- ``c_loop`` (s/task): physflow's own serial work per simulation in a real campaign — a
  ``physflow submit`` of an optimizer-steered campaign of zero-second simulations
  (``bench.noop_tasks.sleep_task`` with ``seconds: 0``) on ``--noop-slots`` slots (8): the cost
  for which the model below gives the campaign's measured throughput (``fitted_loop_cost``). It
  includes what the loop does per result: the committer (parse, journal, fsync, HDF5 behind),
  ``on_result``, and the optimizer's suggestion for the slot that fell free. On 2 slots the same
  campaign is bound by latency (Parsl's round trip to a worker, ~5 ms, waits on both slots at
  once), not by serial cost: its 1 / throughput less ``c_parsl``, the measure used before, is
  printed beside it.

The model: N slots each run a simulation of T seconds, then wait for two serial stations in
turn, physflow's loop (``c_loop``) and Parsl (``c_parsl``): a closed queueing network solved
exactly by mean value analysis. Utilization U(N, T) = throughput x T / N. The station with the
larger cost per task is the bottleneck: it saturates once N / T approaches 1 / c.

The test: real campaigns (``physflow submit``, optimizer-steered, no LLM) with N workers running
6N simulations of T = 0.25 s (sleeps: the machine's 2 cores are not the limit), and raw Parsl with
the same workers keeping N tasks in flight; measured busy fraction beside the model's U. The N
workers are emulated: HTEX pools of up to ``WORKERS_PER_POOL`` workers each with
``cores_per_worker`` = cores / workers (a sleeping simulation barely uses a core), so a 2-core
machine holds as many as its memory does (a worker ~40 MB); pools start one after another, so
the busy fraction is also given over the steady part of the run. ``--seconds`` and the counts
choose where on the model's curve the tests fall (N / T against the loop's rate).

Run from the repository root: ``python bench/scaling_model.py [--counts 2,8,16,32] [--seconds 0.25] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import wait
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.campaign_runs import (  # noqa: E402
    busy_fraction,
    load,
    prepare_environment,
    pyplot,
    run_campaign,
    save_figure,
    sleep_workflow,
)
from bench.dispatch_overhead import raw_config, run_raw  # noqa: E402

SITE = """\
name: scaling-{n}
description: this machine with {n} Python workers
scheduler: local
parsl_log_level: info
pools:
  cpu: {{kind: htex, workers_per_node: {workers}, cores_per_worker: {cores_per_worker}, init_blocks: {blocks},
        max_blocks: {blocks}}}
"""

#: Seconds the raw pools may take to run their first tasks (many pools on 2 busy cores start slowly).
POOL_START_TIMEOUT_S = 600.0
COUNTS = (10, 30, 100, 300, 1000, 3000, 10000, 30000)
DURATIONS = (1.0, 10.0, 60.0, 600.0)


#: Workers in one HTEX pool at most (each a Python process of ~40 MB; ``cores_per_worker`` below
#: 1 lets a pool run more workers than the machine has cores: sleeping simulations barely use one).
WORKERS_PER_POOL = 64


def pools(n: int) -> tuple[int, int]:
    """(workers per pool, pools) for ``n`` emulated workers: at most ``WORKERS_PER_POOL`` a pool
    (``cores_per_worker`` = cores / workers), as few pools (blocks) as hold them."""
    blocks = -(-n // WORKERS_PER_POOL)
    return -(-n // blocks), blocks


def cores_per_worker(workers: int) -> float:
    """Parsl starts cores / cores_per_worker workers a pool: this many fit ``workers``."""
    return (os.cpu_count() or 1) / workers


def site_yaml(n: int) -> str:
    workers, blocks = pools(n)
    return SITE.format(n=n, workers=workers, blocks=blocks, cores_per_worker=f"{cores_per_worker(workers):.6g}")


def throughput(n: int, think: float, costs: list[float]) -> float:
    """Tasks/s of ``n`` slots that each compute ``think`` s, then queue at each serial station of
    ``costs`` (s per task) in turn: exact mean value analysis of the closed network."""
    queues = [0.0] * len(costs)
    rate = 0.0
    for k in range(1, n + 1):
        residence = [c * (1 + q) for c, q in zip(costs, queues, strict=True)]
        rate = k / (think + sum(residence))
        queues = [rate * r for r in residence]
    return rate


def mva(n: int, think: float, costs: list[float]) -> float:
    """Slot utilization of that network: throughput x think / n."""
    return throughput(n, think, costs) * think / n


def fitted_loop_cost(rate: float, slots: int, c_parsl: float) -> float:
    """The ``c_loop`` (s) for which the model's throughput of ``slots`` zero-second simulations,
    physflow's loop and Parsl in turn, is the measured ``rate``: with several slots Parsl's
    latency is hidden behind the other slots and the serial costs show. 0 where the rate is at
    or above what Parsl alone allows (the loop's cost is then below what this can resolve)."""
    if rate >= throughput(slots, 0.0, [0.0, c_parsl]):
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if throughput(slots, 0.0, [mid, c_parsl]) > rate else (lo, mid)
    return (lo + hi) / 2


def physflow_rate(base: Path, sims: int, slots: int = 2) -> float:
    """Simulations/s of a real optimizer-steered campaign of zero-second simulations on ``slots``."""
    run = run_campaign(sleep_workflow(f"scaling-{slots}", 0.0, sims, slots, site="./site.yaml"), base,
                       {"site.yaml": site_yaml(slots)})
    tasks = run.finished
    return len(tasks) / (max(t.stored for t in tasks) - min(t.started for t in tasks))


def steady_busy(intervals: list[tuple[float, float]], n: int) -> float:
    """Busy fraction of ``n`` slots in the steady part of a run: from the n-th task start (every
    pool is up by then) to the n-th last task end (before the final drain)."""
    a = sorted(s for s, _ in intervals)[n - 1]
    b = sorted((e for _, e in intervals), reverse=True)[n - 1]
    if b <= a:
        return float("nan")
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in intervals) / (n * (b - a))


class PeakMemory:
    """The machine's peak used memory above what was used when the block began, GB (polled
    every 0.2 s: the whole campaign, its worker pools and interchanges included)."""

    def __enter__(self) -> PeakMemory:
        import psutil

        self._base = self.peak = psutil.virtual_memory().used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            self.peak = max(self.peak, psutil.virtual_memory().used)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return (self.peak - self._base) / 1e9


def campaign_busy(base: Path, n: int, seconds: float, per_slot: int) -> tuple[float, float]:
    """(busy fraction over the whole run, over its steady part) of a real campaign on ``n`` workers."""
    run = run_campaign(sleep_workflow(f"scaling-{n}", seconds, per_slot * n, n, site="./site.yaml"), base,
                       {"site.yaml": site_yaml(n)})
    intervals = [(t.started, t.finished) for t in run.finished]
    return busy_fraction(intervals, n)[0], steady_busy(intervals, n)


def raw_busy(base: Path, n: int, seconds: float, per_slot: int) -> tuple[float, float]:
    """Raw Parsl: n workers kept full, one new task submitted as each finishes (as a loop would)."""
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from bench.noop_tasks import raw_sleep

    workers, blocks = pools(n)
    dfk = DataFlowKernel(raw_config(base / "parsl", workers=workers, blocks=blocks,
                                    cores_per_worker=cores_per_worker(workers)))
    try:
        app = python_app(raw_sleep, executors=["cpu"], data_flow_kernel=dfk)
        for f in [app(0.0) for _ in range(n)]:  # pools start one after another: allow minutes
            f.result(timeout=POOL_START_TIMEOUT_S)
        intervals: list[tuple[float, float]] = []
        pending = {app(seconds) for _ in range(n)}
        submitted = n
        while pending:
            done, pending = wait(pending, return_when="FIRST_COMPLETED")
            for f in done:
                intervals.append(f.result())
                if submitted < per_slot * n:
                    pending.add(app(seconds))
                    submitted += 1
    finally:
        dfk.cleanup()
    return busy_fraction(intervals, n)[0], steady_busy(intervals, n)


def model_table(c_parsl: float, c_loop: float) -> str:
    lines = [f"model U(N, T), costs c_loop {c_loop * 1e3:.2f} ms and c_parsl {c_parsl * 1e3:.2f} ms per task; "
             f"bottleneck: {'physflow loop' if c_loop > c_parsl else 'Parsl'}",
             f"{'N':>6} " + " ".join(f"{'T=' + format(t, 'g') + ' s':>9}" for t in DURATIONS)
             + "   U with Parsl alone at T=60 s"]
    for n in COUNTS:
        lines.append(f"{n:>6} " + " ".join(f"{mva(n, t, [c_loop, c_parsl]):9.3f}" for t in DURATIONS)
                     + f"   {mva(n, 60.0, [c_parsl]):.3f}")
    for t in DURATIONS:
        knee = next((n for n in range(1, 200_001, max(1, int(t))) if mva(n, t, [c_loop, c_parsl]) < 0.95), None)
        lines.append(f"T = {t:g} s: U falls below 0.95 at N ~ {knee if knee else '> 200000'} "
                     f"(loop saturates at N = T / c_loop = {t / c_loop:,.0f})")
    return "\n".join(lines)


def figure(c_parsl: float, c_loop: float, tests: list[tuple[int, float, float, float, float, float]],
           seconds: float) -> Path:
    ns = sorted({int(x) for x in [*range(1, 10), *[10 ** (k / 8) for k in range(8, 33)]]})
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for t in DURATIONS:
        ax.plot(ns, [mva(n, t, [c_loop, c_parsl]) for n in ns], label=f"model, T = {t:g} s")
    ax.plot([x[0] for x in tests], [x[2] for x in tests], "ko", label=f"physflow measured (steady), T = {seconds:g} s")
    ax.plot([x[0] for x in tests], [x[4] for x in tests], "k^", mfc="none",
            label=f"raw Parsl measured (steady), T = {seconds:g} s")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent simulations N")
    ax.set_ylabel("slot utilization")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    return save_figure(fig, "scaling_model.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="2,8,16,32", help="worker counts to test (default 2,8,16,32)")
    parser.add_argument("--seconds", type=float, default=0.25,
                        help="simulation length in the tests, s (default 0.25: the knee falls inside the counts)")
    parser.add_argument("--per-slot", type=int, default=6, help="simulations per worker in the tests (default 6)")
    parser.add_argument("--noop-sims", type=int, default=200, help="zero-second simulations to measure c_loop")
    parser.add_argument("--noop-slots", type=int, default=8,
                        help="slots of the zero-second campaign c_loop is fitted to (default 8)")
    parser.add_argument("--quick", action="store_true", help="counts 2,8, 60 zero-second simulations")
    args = parser.parse_args(argv)
    if args.quick:
        args.counts, args.noop_sims = "2,8", 60
    counts = [int(c) for c in args.counts.split(",")]
    prepare_environment()
    print(f"counts {counts}; T = {args.seconds} s; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"load average {load()}", flush=True)
    started = time.perf_counter()
    tests = []
    gb: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="physflow-bench-scaling-") as tmp:
        base = Path(tmp)
        raw = run_raw(1000, 20, base / "raw", quiet=True)  # parsl.log as physflow writes it
        c_parsl = 1 / raw.rate
        rate2 = physflow_rate(base / "loop-2", args.noop_sims, 2)
        rate = physflow_rate(base / "loop", args.noop_sims, args.noop_slots)
        c_loop = max(fitted_loop_cost(rate, args.noop_slots, c_parsl), 1e-6)
        print(f"  raw Parsl {raw.rate:.0f} no-op tasks/s; physflow campaign {rate2:.1f} zero-second "
              f"simulations/s on 2 slots (latency-bound: 1/rate - c_parsl = {(1 / rate2 - c_parsl) * 1e3:.2f} ms), "
              f"{rate:.1f}/s on {args.noop_slots}: c_loop fitted {c_loop * 1e3:.2f} ms", flush=True)
        for n in counts:
            with PeakMemory() as memory:
                pf, pf_steady = campaign_busy(base / f"campaign-{n}", n, args.seconds, args.per_slot)
            rb, rb_steady = raw_busy(base / f"raw-{n}", n, args.seconds, args.per_slot)
            tests.append((n, pf, pf_steady, rb, rb_steady, mva(n, args.seconds, [c_loop, c_parsl])))
            gb[n] = memory.gb
            print(f"  N={n}: physflow busy {pf:.3f} (steady {pf_steady:.3f}), raw Parsl {rb:.3f} "
                  f"(steady {rb_steady:.3f}); the campaign's peak memory {memory.gb:.2f} GB", flush=True)
    path = figure(c_parsl, c_loop, tests, args.seconds)
    print(f"(total wall time {time.perf_counter() - started:.0f} s; load average {load()}; figure {path})\n")
    print(model_table(c_parsl, c_loop))
    print()
    print(f"test with T = {args.seconds:g} s simulations ({args.per_slot}N per run); busy over the whole run / "
          "over its steady part (n-th start to n-th last end):")
    print(f"{'N':>6} {'physflow':>9} {'steady':>7} {'raw Parsl':>9} {'steady':>7} {'model U':>8} {'peak GB':>8}")
    for n, pf, pfs, rb, rbs, u in tests:
        print(f"{n:>6} {pf:9.3f} {pfs:7.3f} {rb:9.3f} {rbs:7.3f} {u:8.3f} {gb[n]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
