"""How long from a simulation's end until its result is stored and visible to the agents?

Three paths, measured one after the other in one run, each on its own warmed HTEX pool with the
settings of physflow's local ``cpu`` pool:

``raw Parsl``
    A no-op ``python_app`` submitted one at a time: the worker's end timestamp -> the future's
    result in the submitting process, and the whole round trip (submit -> result).
``colmena-style queues``
    Colmena 0.7.2's path, re-implemented (Colmena is not installed): the thinker sends a request
    as JSON over a pipe to a task-server *process* (Colmena's PipeQueues and TaskServer), which
    submits it to its own Parsl executor and sends the result, with its timestamps, back as JSON
    over a second pipe. One request at a time.
``physflow``
    A real optimizer-steered campaign in this process (``Campaign`` on the local site, its
    dispatcher, ``RunStore`` and ``Committer``), simulations of ``bench.noop_tasks.sleep_task``
    (0.25 s each, 2 at a time, so results arrive one by one as in a campaign). Timestamps per
    task, all from the run itself or from a wrapper that calls the real method and notes when it
    returned: the worker's end (``finished``), the journal stage's ``stored``, the fsync'd
    commit (``on_committed``: from here the agents may see it), the loop's handling of the result
    event (``on_result``: the planner's prompt and the tools read this state), and the HDF5
    stage's write of the task's group (``RunStore.write_hdf5`` returned).

The target (DESIGN.md): simulation end -> result in the store and visible to the agents,
median <= 50 ms locally, including the journal and HDF5 writes.

Run from the repository root: ``python bench/result_latency.py [--tasks N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.campaign_runs import load, prepare_environment, pyplot, save_figure, sleep_workflow  # noqa: E402
from bench.dispatch_overhead import ms, raw_config, warm_up  # noqa: E402


# -- raw Parsl -----------------------------------------------------------------------------------
def raw_parsl(n: int, base: Path) -> dict[str, list[float]]:
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from bench.noop_tasks import raw_noop

    dfk = DataFlowKernel(raw_config(base / "parsl-raw"))
    try:
        app = python_app(raw_noop, executors=["cpu"], data_flow_kernel=dfk)
        warm_up(dfk, app, 20)
        end_to_result, round_trip = [], []
        for _ in range(n):
            t0 = time.time()
            finished = app().result()
            now = time.time()
            end_to_result.append(now - finished)
            round_trip.append(now - t0)
    finally:
        dfk.cleanup()
    return {"end -> result seen": end_to_result, "round trip": round_trip}


# -- Colmena-style -------------------------------------------------------------------------------
def task_server(requests: Any, results: Any, parsl_dir: str) -> None:
    """The task-server process: requests in over one pipe, results (JSON) out over another."""
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from bench.noop_tasks import raw_noop

    dfk = DataFlowKernel(raw_config(Path(parsl_dir)))
    app = python_app(raw_noop, executors=["cpu"], data_flow_kernel=dfk)
    warm_up(dfk, app, 20)
    results.send(json.dumps({"ready": True}))

    def reply(fut: Any, request: dict[str, Any]) -> None:
        request.update(time_finished=fut.result(), time_result_sent=time.time())
        results.send(json.dumps(request))

    try:
        while True:
            request = json.loads(requests.recv())
            if request.get("stop"):
                break
            request["time_received_by_server"] = time.time()
            app().add_done_callback(lambda f, r=request: reply(f, r))
    finally:
        dfk.cleanup()


def colmena_style(n: int, base: Path) -> dict[str, list[float]]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as Colmena's TaskServer process
    req_recv, req_send = ctx.Pipe(duplex=False)
    res_recv, res_send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=task_server, args=(req_recv, res_send, str(base / "parsl-colmena")))
    server.start()
    try:
        if not res_recv.poll(180):
            raise RuntimeError("the Colmena-style task server did not start in 180 s")
        json.loads(res_recv.recv())
        end_to_result, round_trip = [], []
        for i in range(n):
            t0 = time.time()
            req_send.send(json.dumps({"task_id": i, "method": "noop", "time_created": t0}))
            result = json.loads(res_recv.recv())
            now = time.time()
            end_to_result.append(now - result["time_finished"])
            round_trip.append(now - t0)
        req_send.send(json.dumps({"stop": True}))
        server.join(60)
    finally:
        if server.is_alive():
            server.terminate()
    return {"end -> result seen": end_to_result, "round trip": round_trip}


# -- physflow ------------------------------------------------------------------------------------
def physflow_campaign(n: int, seconds: float, base: Path) -> dict[str, list[float]]:
    from physflow.dispatch.backends import open_dispatcher
    from physflow.workflows.campaign import Campaign, write_run_files
    from physflow.workflows.store import RunStore
    from physflow.workflows.validate import check_workflow

    (base / "wf.yaml").write_text(sleep_workflow("result-latency", seconds, n, 2))
    checked = check_workflow(base / "wf.yaml")
    run_dir = base / "run"
    store = RunStore.create(run_dir)
    store.open_for_writing()
    write_run_files(checked.workflow, run_dir, checked.site)
    committed: dict[str, float] = {}
    seen: dict[str, float] = {}
    in_hdf5: dict[str, float] = {}
    write_hdf5 = store.write_hdf5

    def timed_write_hdf5(results: list, *args: Any, **kwargs: Any) -> None:
        write_hdf5(results, *args, **kwargs)
        now = time.time()
        for task, _ in results:
            in_hdf5.setdefault(task.id, now)

    store.write_hdf5 = timed_write_hdf5  # type: ignore[method-assign]

    class TimedCampaign(Campaign):
        """The real loop; notes when each result became durable and when the loop took it."""

        def _on_committed(self, task: Any) -> None:
            committed[task.id] = time.time()
            super()._on_committed(task)

        def on_result(self, task: Any) -> None:
            seen[task.id] = time.time()
            super().on_result(task)

    campaign = TimedCampaign(checked.workflow, store, checked.site, dispatcher_factory=lambda: open_dispatcher(
        checked.site, run_dir / "parsl", checked.workflow.spec.budget.max_concurrent, 1, mpi=False))
    try:
        state = asyncio.run(campaign.run(None))
    finally:
        store.close()
    tasks = [t for t in campaign.tasks.values() if t.status == "finished"]
    if state != "finished" or len(tasks) != n:
        raise RuntimeError(f"physflow campaign {state}: {len(tasks)} of {n} finished ({campaign.stop_reason})")
    # The first results wait for the pool to start; they are still results, so they are counted.
    return {
        "end -> result seen": [t.received - t.finished for t in tasks],
        "end -> journal (stored)": [t.stored - t.finished for t in tasks],
        "end -> durable, visible": [committed[t.id] - t.finished for t in tasks],
        "end -> loop handled": [seen[t.id] - t.finished for t in tasks],
        "end -> in campaign.h5": [in_hdf5[t.id] - t.finished for t in tasks],
    }


# -- report --------------------------------------------------------------------------------------
def table(rows: dict[str, dict[str, list[float]]]) -> str:
    lines = [f"{'path':<22} {'interval':<26} {'n':>5} {'median ms':>10} {'p95 ms':>8}"]
    for path, series in rows.items():
        for name, values in series.items():
            lines.append(f"{path:<22} {name:<26} {len(values):>5} {ms(values, 50):>10.2f} {ms(values, 95):>8.2f}")
    raw = ms(rows["raw Parsl"]["end -> result seen"], 50)
    visible = ms(rows["physflow"]["end -> durable, visible"], 50)
    hdf5 = ms(rows["physflow"]["end -> in campaign.h5"], 50)
    lines.append(f"physflow end -> durable and visible: median {visible:.1f} ms = {visible / raw:.1f}x raw Parsl's "
                 f"end -> result; end -> in campaign.h5: median {hdf5:.1f} ms (target median <= 50 ms)")
    return "\n".join(lines)


def figure(rows: dict[str, dict[str, list[float]]]) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    for p, series in rows.items():
        for name, values in series.items():
            if name == "round trip" or name.endswith("(stored)"):
                continue
            v = np.sort(np.asarray(values) * 1e3)
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{p}: {name}")
    ax.set_xscale("log")
    ax.set_xlabel("ms after the simulation ended")
    ax.set_ylabel("fraction of results")
    ax.axvline(50, color="grey", ls=":")
    ax.legend(fontsize=7)
    return save_figure(fig, "result_latency.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per path (default 200)")
    parser.add_argument("--seconds", type=float, default=0.25, help="physflow's simulation length, s (default 0.25)")
    parser.add_argument("--quick", action="store_true", help="30 tasks per path (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks = 30
    prepare_environment()
    print(f"{args.tasks} tasks per path; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"load average {load()}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="physflow-bench-latency-") as tmp:
        base = Path(tmp)
        rows = {"raw Parsl": raw_parsl(args.tasks, base)}
        rows["colmena-style queues"] = colmena_style(args.tasks, base)
        rows["physflow"] = physflow_campaign(args.tasks, args.seconds, base)
    path = figure(rows)
    print(f"(total wall time {time.perf_counter() - started:.0f} s; load average {load()}; figure {path})\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
