"""Does every command stay fast on a run of 100,000 finished tasks?

A run directory as a long Aurora campaign leaves it, written through physflow's own store code
(``RunStore.commit`` for the journal, ``RunStore.write_hdf5`` for campaign.h5, in groups of
``--group`` results as the Committer writes them): ``--tasks`` finished simulations of a
two-parameter ``python``-adapter workflow (``bench.noop_tasks.sleep_task``), with hypotheses
every 16 tasks. Then each command a user runs on it, as a separate process, timed with its peak
resident memory: ``status``, ``results --json`` and ``--csv``, ``watch --once``, ``fsck``,
``report``, the dashboard's data (``ui.snapshot``, in a fresh process), the catalog ``physflow
ask`` reads of campaign.h5 before its agents start (``Catalog.load``, ``describe``); the look ``watch`` and
the dashboard take every second on a live run once 16 more results came in (a journal follower
reads only those) against a replay of the whole journal; and ``resume`` of the
same run left as if its orchestrator had been killed with the budget spent (it replays the
journal, mends campaign.h5, and ends at once). Last, the same run with a torn journal tail and
campaign.h5 deleted, mended by ``fsck --repair``.

Run from the repository root: ``python bench/large_run.py [--tasks 100000] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from physflow.site_configs.loader import load_site  # noqa: E402
from physflow.ui.snapshot import snapshot  # noqa: E402
from physflow.vocabulary.records import TaskRecord  # noqa: E402
from physflow.vocabulary.workflow import load_workflow  # noqa: E402
from physflow.workflows.store import RunStore, _result_event  # noqa: E402

WORKFLOW = """\
physflow: 1
name: large-run
goal: How fast is everything on a run of many finished simulations?
site: local
agents: {{planner: {{enabled: false}}}}
simulation:
  adapter: python
  function: bench.noop_tasks.sleep_task
  parameters:
    x: {{min: 0.0, max: 1.0}}
    seconds: {{min: 0.0, max: 1.0}}
objective: {{metric: y, goal: minimize}}
budget: {{max_simulations: {tasks}, max_concurrent: 1000, wall_time: 48h}}
"""


def make_run(run: Path, tasks: int, group: int, seed: int = 0) -> float:
    """Write the run; returns the seconds it took."""
    started = time.perf_counter()
    rng = random.Random(seed)
    (run.parent / "wf.yaml").write_text(WORKFLOW.format(tasks=tasks))
    store = RunStore.create(run)
    store.open_for_writing()
    store.write_run_files(load_workflow(run.parent / "wf.yaml"), load_site("local"))
    t0 = time.time() - tasks * 0.01
    store.commit([{"event": "campaign_started", "t": t0, "name": "large-run", "pid": 1}])
    for first in range(0, tasks, group):
        events, results = [], []
        for i in range(first, min(tasks, first + group)):
            t = t0 + i * 0.01
            tid, hid = f"t{i:04d}", f"H{i // 16}"
            x, s = rng.random(), rng.random()
            if i % 16 == 0:
                events.append({"event": "round", "t": t, "round": i // 16})
            events.append({"event": "proposed", "t": t, "task": tid, "params": {"x": x, "seconds": s},
                           "source": "optimizer", "hypothesis": hid})
            events.append({"event": "submitted", "t": t, "task": tid})
            task = TaskRecord(id=tid, params={"x": x, "seconds": s}, hypothesis=hid, source="optimizer", created=t,
                              submitted=t, started=t + 0.001, finished=t + 0.002 + s, received=t + 0.003 + s,
                              stored=t + 0.004 + s, status="finished", host="node", metrics={"y": (x - 0.3) ** 2})
            events.append(_result_event(task))
            results.append((task, {}))
            if i % 16 == 15:
                events.append({"event": "hypothesis", "t": t, "id": hid, "statement": f"y < 0.1 near x = {x:.2f}",
                               "prediction": "y below 0.1", "round": i // 16, "author": "optimizer"})
                events.append({"event": "verdict", "t": t, "id": hid, "verdict": "inconclusive",
                               "evidence": "the spread of y"})
        store.commit(events)
        store.write_hdf5(results)
    store.close()
    return time.perf_counter() - started


def later_look(run: Path, new: int = 16) -> tuple[float, float, float]:
    """What ``physflow watch`` and the dashboard pay each second on a live run: (seconds of the
    first look, of a later look after ``new`` more results were journaled, of the same look
    replaying the whole journal as before), each the snapshot the panel shows. In this process."""
    follower = RunStore(run).follower()
    started = time.perf_counter()
    snapshot(run, state=follower.state())
    first = time.perf_counter() - started
    state = follower.state()
    t = (state.ended or time.time()) + 1.0
    base = len(state.tasks)
    lines = []
    for i in range(base, base + new):
        task = TaskRecord(id=f"t{i:04d}", params={"x": 0.5, "seconds": 0.0}, hypothesis=None, source="optimizer",
                          created=t, submitted=t, started=t, finished=t, received=t, stored=t, status="finished",
                          host="node", metrics={"y": 0.04})
        lines += [{"event": "proposed", "t": t, "task": task.id, "params": task.params, "source": "optimizer",
                   "hypothesis": None}, {"event": "submitted", "t": t, "task": task.id}, _result_event(task)]
    with open(run / "journal.jsonl", "a") as fh:
        fh.write("".join(json.dumps(e) + "\n" for e in lines))
    started = time.perf_counter()
    snapshot(run, state=follower.state())
    later = time.perf_counter() - started
    started = time.perf_counter()
    snapshot(run)
    return first, later, time.perf_counter() - started


def timed(argv: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """(seconds, peak resident GB, exit code, last stderr line) of one command."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    err = (proc.stderr.read().decode(errors="replace") if proc.stderr else "").strip().splitlines()
    return seconds, peak / 1e9, proc.returncode, err[-1] if err else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="finished simulations in the run")
    parser.add_argument("--group", type=int, default=1000, help="results a commit (as the Committer groups them)")
    parser.add_argument("--keep", type=Path, help="make the run here and keep it")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="physflow-large-")) if args.keep is None else args.keep.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / "run"
    if run.exists():
        shutil.rmtree(run)
    py = [sys.executable, "-m", "physflow"]
    print(f"{args.tasks} tasks; made in {make_run(run, args.tasks, args.group):.1f} s; journal "
          f"{(run / 'journal.jsonl').stat().st_size / 1e6:.1f} MB, campaign.h5 "
          f"{(run / 'campaign.h5').stat().st_size / 1e6:.1f} MB; load average {os.getloadavg()[0]:.2f}", flush=True)
    snapshot = [sys.executable, "-c", "import sys, json; from physflow.ui.snapshot import snapshot; "
                "json.dumps(snapshot(__import__('pathlib').Path(sys.argv[1])))", str(run)]
    catalog = [sys.executable, "-c", "import sys; from physflow.agents.catalog import Catalog; "
               "from physflow.sim_adapters import catalog_tables; "
               "from physflow.workflows.store import campaign_tables; "
               "Catalog.load([sys.argv[1]], group_tables=catalog_tables(), file_tables=[campaign_tables]).describe()",
               str(run / "campaign.h5")]
    commands = [("status --json", py + ["status", str(run), "--json"]),
                ("results --json", py + ["results", str(run), "--json"]),
                ("results --csv", py + ["results", str(run), "--csv"]),
                ("watch --once", py + ["watch", str(run), "--once"]),
                ("fsck", py + ["fsck", str(run)]),
                ("report", py + ["report", str(run)]),
                ("dashboard data (snapshot)", snapshot),
                ("ask's catalog of campaign.h5", catalog)]
    rows = []
    for name, argv in commands:
        seconds, gb, code, last = timed(argv, folder)
        rows.append((name, seconds, gb, code, last))
        print(f"  {name:28s} {seconds:7.2f} s  {gb:5.2f} GB  exit {code}  {last[:100]}", flush=True)
    first, later, whole = later_look(run)
    print(f"  watch/dashboard look: first {first:.2f} s, a later one (16 more results) {later:.2f} s, "
          f"the same replaying the whole journal {whole:.2f} s", flush=True)
    # resume: the orchestrator killed after the last result (no campaign_ended): replays and ends
    seconds, gb, code, last = timed(py + ["resume", str(run), "--yes"], folder)
    rows.append(("resume (budget spent)", seconds, gb, code, last))
    print(f"  {'resume (budget spent)':28s} {seconds:7.2f} s  {gb:5.2f} GB  exit {code}  {last[:100]}", flush=True)
    # damage: a torn last line and no campaign.h5, mended
    with open(run / "journal.jsonl", "ab") as fh:
        fh.write(b'{"event": "finished", "t": 1, "task": "t00')
    (run / "campaign.h5").unlink()
    seconds, gb, code, last = timed(py + ["fsck", str(run), "--repair"], folder)
    rows.append(("fsck --repair (torn, no h5)", seconds, gb, code, last))
    print(f"  {'fsck --repair (torn, no h5)':28s} {seconds:7.2f} s  {gb:5.2f} GB  exit {code}  {last[:100]}",
          flush=True)
    lines = json.loads(subprocess.run(py + ["results", str(run), "--json"], capture_output=True, text=True,
                                      cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout or "[]")
    print(f"  after repair: {len(lines)} tasks listed, {sum(r.get('status') == 'finished' for r in lines)} finished")
    print(f"\n| command on {args.tasks:,} tasks | seconds | peak RSS GB | exit |\n|---|---|---|---|")
    for name, seconds, gb, code, _ in rows:
        print(f"| {name} | {seconds:.2f} | {gb:.2f} | {code} |")
    per_task = max(gb for _, _, gb, _, _ in rows) * 1e9 / args.tasks
    print(f"\nlargest peak per task: {per_task / 1e3:.1f} kB ({math.ceil(per_task)} bytes)")
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
