"""Where does the time of one full demo campaign go?

Runs the README's demo campaign as ``scripts/demo.sh`` runs it once the environment exists —
``physflow submit workflows/examples/cosmology.yaml --yes`` (embedded SmolLM2-135M on llama.cpp,
the built-in MPI N-body code on 2 ranks, local site) — and splits its wall time using only what
the run itself recorded: the journal (``journal.jsonl``: proposed, submitted, worker-clock
started/finished, stored), the transcript (``transcript.jsonl``: every agent message with its
time) and the report's file time. Then it times ``physflow report`` on the finished run alone.

Categories:
- set-up: process start -> ``campaign_started`` (validation, worker pools, model server start);
- LLM: the union of agent turns (a turn runs from the task a role is given to its last message,
  or to physflow cancelling it), and per role the model's own time (request -> reply);
- simulation: worker-clock run time of every simulation (slot-seconds) and the slots' busy
  fraction over the campaign;
- queue wait: ``submitted`` -> worker ``started`` per simulation;
- orchestration: ``proposed`` -> ``submitted`` and worker ``finished`` -> ``stored`` (the journal
  stage) per simulation, summed;
- end: ``campaign_ended`` -> report written (pools and model server shut down, report).

Run from the repository root: ``python bench/time_breakdown.py [--workflow YAML]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.campaign_runs import CampaignRun, busy_fraction, load, model_calls, run_campaign, transcript  # noqa: E402

EXAMPLES = REPO / "workflows" / "examples"


def union(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``intervals``."""
    total, end = 0.0, -float("inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def agent_turns(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Every agent turn as (start, end) from the transcript.

    A turn starts at a ``task`` note addressed to a role and ends at that role's last record
    before its next task (a planner turn physflow cancels: to the ``cancelled`` note).
    """
    turns: dict[str, list[list[float]]] = {}
    for r in records:
        agent, t = r.get("agent"), r["t"]
        if agent == "physflow" and r.get("type") == "task" and r.get("to"):
            turns.setdefault(r["to"], []).append([t, t])
        elif agent == "physflow" and r.get("type") == "cancelled" and "planner" in turns:
            turns["planner"][-1][1] = t  # the planner's turn, stopped when the campaign stopped
        elif agent in turns:
            turns[agent][-1][1] = t
    return [(s, e) for spans in turns.values() for s, e in spans]


def breakdown(run: CampaignRun, t_start: float, t_end: float, slots: int) -> list[tuple[str, float, str]]:
    started, ended = run.first("campaign_started"), run.first("campaign_ended")
    tasks = [t for t in run.tasks if t.started is not None and t.finished is not None]
    records = transcript(run.run_dir)
    turns = agent_turns(records)
    model = {role: sum(calls) for role, calls in model_calls(records).items()}
    report = (run.run_dir / "report.md").stat().st_mtime
    busy, _ = busy_fraction([(t.started, t.finished) for t in tasks], slots, since=started) if tasks else (0.0, 0.0)
    sim = sum(t.finished - t.started for t in tasks)
    queue = [t.started - t.submitted for t in tasks]
    to_submit = sum(t.submitted - t.created for t in run.tasks if t.submitted is not None)
    to_store = sum(t.stored - t.finished for t in tasks)
    rows = [
        ("whole command", t_end - t_start, "process start -> exit"),
        ("set-up", started - t_start, "validation, worker pools, model server start"),
        ("campaign", ended - started, "campaign_started -> campaign_ended"),
        ("  LLM (wall, union of turns)", union(turns), f"{len(turns)} agent turns"),
    ]
    rows += [(f"    model time: {role}", secs, "request -> reply, summed") for role, secs in sorted(model.items())]
    rows += [
        ("  simulation (slot-seconds)", sim, f"{len(tasks)} simulations; slots {busy:.2f} busy over the campaign"),
        ("  queue wait (summed)", sum(queue), f"submitted -> started; max {max(queue, default=0):.2f} s "
                                                "(the first waits for the pool)"),
        ("  orchestration (summed)", to_submit + to_store,
         f"proposed -> submitted {to_submit:.3f} s + finished -> stored {to_store:.3f} s"),
        ("end", report - ended, "campaign_ended -> report.md written (pools, model server stopped)"),
        ("  after: report.md", t_end - report, "report written -> process exit"),
    ]
    return rows


def time_report(run_dir: Path) -> float:
    """Seconds ``physflow report RUN`` takes on the finished run (report.md and plots again)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "physflow", "report", str(run_dir)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", type=Path, default=EXAMPLES / "cosmology.yaml",
                        help="the campaign to run (default: the demo's workflows/examples/cosmology.yaml)")
    parser.add_argument("--keep", type=Path, help="copy the run directory here afterwards")
    args = parser.parse_args(argv)
    print(f"{args.workflow.name}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"load average {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="physflow-bench-breakdown-") as tmp:
        folder = Path(tmp)
        for item in args.workflow.parent.iterdir():
            if item.is_dir():
                shutil.copytree(item, folder / item.name)
        t0 = time.time()
        run = run_campaign(args.workflow.read_text(), folder)
        t_end = t0 + run.wall_s
        from physflow.vocabulary.workflow import load_workflow

        slots = load_workflow(folder / "wf.yaml").spec.budget.max_concurrent
        rows = breakdown(run, t0, t_end, slots)
        report_s = time_report(run.run_dir)
        reason = next(e.get("reason") for e in run.events if e["event"] == "campaign_ended")
        sources: dict[str, int] = {}
        for t in run.tasks:
            sources[t.source] = sources.get(t.source, 0) + 1
        if args.keep:
            shutil.copytree(run.run_dir, args.keep)
    print(f"(load average {load()}; campaign ended: {reason}; simulations by source: "
          + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())) + ")\n")
    print(f"{'part':<32} {'seconds':>8}  what")
    for name, secs, what in rows:
        print(f"{name:<32} {secs:8.2f}  {what}")
    print(f"{'physflow report (rerun alone)':<32} {report_s:8.2f}  report.md + plots from the store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
