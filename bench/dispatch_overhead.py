"""What is physflow's per-task overhead relative to raw Parsl HTEX?

Runs, in one process and side by side on the same machine, N no-op tasks three ways, each
repeated R times and interleaved (raw, raw-quiet, physflow, raw, ...) because the machine is noisy:

``raw``
    A plain Parsl ``HighThroughputExecutor`` with the settings of physflow's local ``cpu`` pool
    (``LocalProvider``, address 127.0.0.1, ``encrypted=False``, one worker per core); a no-op
    ``python_app``; all N submitted, then consumed with ``as_completed``. Parsl's default file
    log (DEBUG), as a Parsl user gets it.
``raw-quiet``
    The same with physflow's parsl.log (INFO without Parsl's ~9 lines per task): what Parsl
    itself costs once neither side writes per-task log lines, so the ratio to it is physflow's
    own overhead (journal, task folders, results store).
``physflow``
    physflow's whole task path on the local site: a ``ParslDispatcher`` built from
    ``load_site("local")``, a real ``RunStore`` in a temporary run directory and its
    ``Committer``. Per task: a ``TaskRecord``, the ``proposed`` and ``submitted`` journal events,
    ``dispatcher.submit(TaskSpec(function="bench.noop_tasks.noop"))``, a done-callback that hands
    the outcome to ``committer.future_done`` (as ``Campaign.submit_ready`` does) and a finalize equal to the
    campaign's for the ``python`` adapter. A task counts when ``on_committed`` reports it durable
    (fsync'd in ``journal.jsonl``) and visible to the agents; its ``campaign.h5`` group is written
    just behind by the committer's HDF5 stage, and a second rate counts until the last of those
    is written too (``committer.flush()``).

Worker start-up is excluded: each pool is warmed up (a few tasks run and waited for, every
executor's manager connected) before the clock starts. The clock runs from the first submit to
the last result seen (raw) or committed (physflow). For physflow it also reports the latency
from the worker's ``finished`` timestamp to the moment the result is committed, split into
Parsl's return path (finished -> received), the committer's queue and finalize
(received -> stored) and the group commit itself (stored -> committed).

Run from the repository root: ``python bench/dispatch_overhead.py [--tasks N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from physflow.sim_adapters.base import split_values  # noqa: E402
from physflow.vocabulary.records import TaskRecord  # noqa: E402
from physflow.vocabulary.task import Array, TaskSpec  # noqa: E402
from physflow.workflows.store import Committer, RunStore, read_journal  # noqa: E402

NOOP = "bench.noop_tasks.noop"
OBJECTIVE = "y"
READY_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 120.0
#: The runs of one repeat, in order: raw Parsl with its default log, raw Parsl with physflow's log, physflow.
MODES = ("raw", "raw-quiet", "physflow")


@dataclass
class RunResult:
    mode: str
    n: int
    seconds: float
    submit_seconds: float
    #: physflow: from the first submit until every result's HDF5 group is written too.
    hdf5_seconds: float | None = None
    #: Per-task latencies in seconds, by name (e.g. "finished->committed").
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def prepare_environment() -> None:
    """Parsl's interchange and workers inherit this process's environment.

    HTEX needs the venv's ``bin`` on PATH (physflow's ``ParslDispatcher`` does the same), and
    the workers need the repository root on ``PYTHONPATH`` to import ``bench.noop_tasks``.
    """
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])


def warm_up(dfk: Any, submit_one: Callable[[], Future], count: int) -> list[Any]:
    """Run ``count`` tasks and wait for them, then wait until every executor has a manager."""
    results = [f.result(timeout=READY_TIMEOUT_S) for f in [submit_one() for _ in range(count)]]
    deadline = time.monotonic() + READY_TIMEOUT_S
    for ex in dfk.executors.values():
        connected = getattr(ex, "connected_managers", None)
        if connected is None:
            continue
        while not connected():
            if time.monotonic() > deadline:
                raise RuntimeError(f"executor {ex.label} has no connected manager after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
    time.sleep(0.5)  # let the pools go idle before the clock starts
    return results


# -- raw Parsl ---------------------------------------------------------------------------------
def raw_config(run_dir: Path, workers: int | None = None, blocks: int = 1, quiet: bool = False,
               cores_per_worker: float = 1.0) -> Any:
    """Plain Parsl, mirroring physflow's local ``cpu`` pool (``build_parsl_config``); ``workers``
    per block (Parsl caps them at cores / ``cores_per_worker``), default one per core; ``blocks``
    worker pools.
    Its parsl.log is Parsl's default (DEBUG), or with ``quiet`` physflow's (INFO without the
    per-task lines, ``physflow.dispatch.parsl_logging``)."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    bin_dir = str(Path(sys.executable).parent)
    htex = HighThroughputExecutor(
        label="cpu", address="127.0.0.1", max_workers_per_node=workers or os.cpu_count() or 1, encrypted=False,
        cores_per_worker=cores_per_worker,
        provider=LocalProvider(init_blocks=blocks, min_blocks=0, max_blocks=blocks,
                               worker_init=f"export PATH={bin_dir}:$PATH; "))
    if quiet:
        from physflow.dispatch.parsl_logging import ParslFileLogging

        return Config(executors=[htex], run_dir=str(run_dir), strategy="none",
                      initialize_logging=ParslFileLogging(level=logging.INFO))
    return Config(executors=[htex], run_dir=str(run_dir), strategy="none", initialize_logging=True)


def fresh_logging() -> None:
    """Put the loggers Parsl configures back as a fresh process has them.

    Parsl's ``FileLogging`` lowers the ``parsl`` logger's level to its own and never raises it
    again, so after a raw run (Parsl's default, DEBUG) a physflow run in the same process would
    build a log record for every DEBUG line that its INFO file never writes (several per task),
    which a ``physflow submit`` process does not do.
    """
    for name in ("parsl", "concurrent.futures"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def run_raw(n: int, warmup: int, base: Path, quiet: bool = False) -> RunResult:
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from bench.noop_tasks import raw_noop

    fresh_logging()
    dfk = DataFlowKernel(raw_config(base / "parsl", quiet=quiet))
    try:
        app = python_app(raw_noop, executors=["cpu"], data_flow_kernel=dfk)
        warm_up(dfk, app, warmup)
        t0 = time.perf_counter()
        futures = [app() for _ in range(n)]
        submitted = time.perf_counter()
        latency = []
        for fut in as_completed(futures):
            finished = fut.result()
            latency.append(time.time() - finished)
        seconds = time.perf_counter() - t0
    finally:
        dfk.cleanup()
    assert len(latency) == n
    return RunResult("raw-quiet" if quiet else "raw", n, seconds, submitted - t0,
                     latencies={"finished->result": latency})


# -- physflow ----------------------------------------------------------------------------------
def finalize(task: TaskRecord, outcome: dict[str, Any]) -> dict[str, Array]:
    """``Adapter.finish`` for the ``python`` adapter (``PythonAdapter.parse_outputs``)."""
    task.started, task.finished, task.host = outcome.get("started"), outcome.get("finished"), outcome.get("host")
    code = outcome.get("returncode", 1)
    if code != 0:
        task.status, task.error = "failed", f"exit code {code}; stderr tail: {outcome.get('stderr_tail', '').strip()}"
        return {}
    value = outcome.get("value")
    if not isinstance(value, dict):
        task.status, task.error = "failed", f"{NOOP} returned {type(value).__name__}, expected a dict"
        return {}
    out = split_values(value, NOOP)
    task.metrics, task.arrays = out.metrics, sorted(out.arrays)
    if OBJECTIVE not in out.metrics:
        task.status, task.error = "failed", f"the simulation reported no {OBJECTIVE}"
    else:
        task.status = "finished"
    return out.arrays


class CommitTracker:
    """``on_committed``: records when each task became durable, signals when a phase is done."""

    def __init__(self) -> None:
        self.committed: dict[str, float] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self._expect: set[str] = set()
        self._done = threading.Event()
        self._lock = threading.Lock()

    def expect(self, ids: set[str]) -> None:
        with self._lock:
            self._expect = set(ids) - set(self.committed)
            self._done.clear()
            if not self._expect:
                self._done.set()

    def __call__(self, task: TaskRecord) -> None:
        now = time.time()
        with self._lock:
            self.committed[task.id] = now
            self.tasks[task.id] = task
            self._expect.discard(task.id)
            if not self._expect:
                self._done.set()

    def wait(self, timeout: float) -> None:
        if not self._done.wait(timeout):
            raise RuntimeError(f"{len(self._expect)} tasks still not committed after {timeout:.0f} s")


def run_physflow(n: int, warmup: int, base: Path) -> RunResult:
    from physflow.dispatch.parsl_backend import ParslDispatcher
    from physflow.site_configs.loader import load_site

    fresh_logging()
    store = RunStore.create(base / "run")
    store.open_for_writing()
    tracker = CommitTracker()
    committer = Committer(store, finalize, tracker)
    dispatcher = None

    def submit(task_id: str) -> Future:  # Campaign.new_task + submit_ready
        params = {"x": 0.5}
        task = TaskRecord(id=task_id, params=params, source="optimizer", created=time.time())
        committer.event("proposed", t=task.created, task=task.id, params=params, hypothesis=None, source="optimizer")
        spec = TaskSpec(task_id=task.id, workdir=str(store.task_dir(task.id)), function=NOOP, kwargs=dict(params))
        task.status, task.submitted = "submitted", time.time()
        committer.event("submitted", t=task.submitted, task=task.id)
        future = dispatcher.submit(spec)
        future.add_done_callback(lambda f, t=task: committer.future_done(t, f))
        return future

    try:
        committer.event("campaign_started", name="dispatch-overhead", pid=os.getpid(), site="local")
        dispatcher = ParslDispatcher(load_site("local"), base / "run" / "parsl", os.cpu_count() or 1, mpi=False)
        warm_ids = [f"w{i:04d}" for i in range(warmup)]
        tracker.expect(set(warm_ids))
        counter = iter(warm_ids)
        outcomes = warm_up(dispatcher.dfk, lambda: submit(next(counter)), warmup)
        tracker.wait(RUN_TIMEOUT_S)
        bad = [o for o in outcomes if o.get("returncode") != 0]
        if bad:
            raise RuntimeError(f"warm-up tasks failed on the workers: {bad[0].get('stderr_tail')}")
        committer.flush()

        ids = [f"t{i:05d}" for i in range(n)]
        tracker.expect(set(ids))
        t0 = time.perf_counter()
        for task_id in ids:
            submit(task_id)
        submitted = time.perf_counter()
        tracker.wait(RUN_TIMEOUT_S)
        seconds = time.perf_counter() - t0
        committer.flush()
        hdf5_seconds = time.perf_counter() - t0
        committer.event("campaign_ended", state="finished", reason="benchmark", best=None)
        committer.close()
    finally:
        if dispatcher is not None:
            dispatcher.close()
        store.close()

    verify(store, ids, warm_ids, tracker)
    tasks = [tracker.tasks[i] for i in ids]
    latencies = {
        "finished->committed": [tracker.committed[t.id] - t.finished for t in tasks],
        "finished->received": [t.received - t.finished for t in tasks],
        "received->stored": [t.stored - t.received for t in tasks],
        "stored->committed": [tracker.committed[t.id] - t.stored for t in tasks],
    }
    return RunResult("physflow", n, seconds, submitted - t0, hdf5_seconds=hdf5_seconds, latencies=latencies)


def verify(store: RunStore, ids: list[str], warm_ids: list[str], tracker: CommitTracker) -> None:
    """Every committed task is really in journal.jsonl and campaign.h5, finished."""
    assert set(tracker.committed) == set(ids) | set(warm_ids), "on_committed saw other tasks than submitted"
    events = read_journal(store.journal_path)
    want = set(ids)
    kinds = Counter(e["event"] for e in events if e.get("task") in want)
    assert kinds == Counter({"proposed": len(ids), "submitted": len(ids), "finished": len(ids)}), kinds
    assert {e["task"] for e in events if e["event"] == "finished"} >= want
    total = len(ids) + len(warm_ids)
    assert sum(e["event"] == "finished" for e in events) == total
    with h5py.File(store.h5_path, "r") as f:
        groups = f["tasks"]
        assert len(groups) == total, f"{len(groups)} task groups in campaign.h5, expected {total}"
        for task_id in ids:
            g = groups[task_id]
            assert g.attrs["status"] == "finished", (task_id, dict(g.attrs))
            assert g["metrics"].attrs[OBJECTIVE] == 0.0


# -- report ------------------------------------------------------------------------------------
def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3


def report(results: list[RunResult], n: int, repeats: int) -> str:
    lines = [f"{'run':>3}  {'mode':<9} {'N':>6} {'seconds':>8} {'submit s':>8} {'tasks/s':>8}"]
    for i, r in enumerate(results):
        lines.append(f"{i // len(MODES) + 1:>3}  {r.mode:<9} {r.n:>6} {r.seconds:>8.3f} {r.submit_seconds:>8.3f} "
                     f"{r.rate:>8.0f}")
    lines.append("")
    lines.append(f"median of {repeats} runs:")
    lines.append(f"  {'mode':<9} {'N':>6} {'seconds':>8} {'submit s':>8} {'tasks/s':>8}")
    med: dict[str, float] = {}
    for mode in MODES:
        rs = [r for r in results if r.mode == mode]
        med[mode] = statistics.median(r.rate for r in rs)
        lines.append(f"  {mode:<9} {n:>6} {statistics.median(r.seconds for r in rs):>8.3f} "
                     f"{statistics.median(r.submit_seconds for r in rs):>8.3f} {med[mode]:>8.0f}")
    lines.append(f"  ratio physflow/raw (tasks/s): {med['physflow'] / med['raw']:.2f}   (target >= 0.9)")
    lines.append(f"  ratio physflow/raw-quiet (tasks/s): {med['physflow'] / med['raw-quiet']:.2f}   "
                 "(raw Parsl with physflow's quieter parsl.log)")
    hdf5 = statistics.median(n / r.hdf5_seconds for r in results if r.hdf5_seconds)
    lines.append(f"  physflow until campaign.h5 holds every result: {hdf5:.0f} tasks/s, "
                 f"ratio {hdf5 / med['raw']:.2f}")
    lines.append("")
    lines.append("per-task latency, ms (median over runs of each run's median / p95):")
    for mode in MODES:
        rs = [r for r in results if r.mode == mode]
        for name in rs[0].latencies:
            p50 = statistics.median(ms(r.latencies[name], 50) for r in rs)
            p95 = statistics.median(ms(r.latencies[name], 95) for r in rs)
            lines.append(f"  {mode:<9} {name:<22} median {p50:8.1f}   p95 {p95:8.1f}")
    return "\n".join(lines)


def load() -> str:
    """The 1/5/15-minute load average: a busy machine makes these numbers noisy."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="no-op tasks per run (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode, interleaved (default 3)")
    parser.add_argument("--warmup", type=int, default=20, help="tasks run before each timed run (default 20)")
    args = parser.parse_args(argv)
    prepare_environment()
    print(f"{args.tasks} no-op tasks x {args.repeats} repeats per mode; {os.cpu_count()} cores; "
          f"python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d %H:%M %Z')}; load average {load()}", flush=True)
    results: list[RunResult] = []
    started = time.perf_counter()
    for rep in range(args.repeats):
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix=f"physflow-bench-{mode}-") as tmp:
                if mode == "physflow":
                    r = run_physflow(args.tasks, args.warmup, Path(tmp))
                else:
                    r = run_raw(args.tasks, args.warmup, Path(tmp), quiet=mode == "raw-quiet")
            results.append(r)
            print(f"  run {rep + 1} {mode:<9} {r.seconds:7.3f} s  {r.rate:7.0f} tasks/s", flush=True)
            gc.collect()
    print(f"(total wall time {time.perf_counter() - started:.0f} s; load average {load()}; physflow results "
          "verified in journal.jsonl and campaign.h5)\n")
    print(report(results, args.tasks, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
