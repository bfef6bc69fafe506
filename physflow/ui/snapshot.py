"""One JSON-able picture of a run, rebuilt from its journal: what ``watch``, the foreground
progress display and the dashboard all show, so they can never disagree."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from physflow.vocabulary.ranking import finite_or_none
from physflow.vocabulary.records import TASK_STATES, status_counts
from physflow.workflows.report import busy_fraction, ranked_tasks, true_parameters
from physflow.workflows.store import JOURNAL, CampaignState, RunStore


def effective_state(store: RunStore, state: CampaignState) -> str:
    """The journal's state, except that a "running" campaign whose orchestrator holds no lock
    died without ending it: that is "failed" (and resumable)."""
    return "failed" if state.state == "running" and not store.is_live() else state.state


def journal_version(run_dir: Path) -> int:
    """The journal's size in bytes: it grows with every event, so it tells when anything changed."""
    journal = run_dir / JOURNAL
    return journal.stat().st_size if journal.exists() else 0


def eta_seconds(state: CampaignState, max_simulations: int, wall_time: float, now: float) -> float | None:
    """Seconds left, at the rate simulations have finished so far, capped by the wall-time budget.

    None before the first result (no rate yet) or once the campaign has ended.
    """
    if state.ended or not state.started:
        return None
    done = sum(t.status in ("finished", "failed") for t in state.tasks.values())
    elapsed = now - state.started
    if done == 0 or elapsed <= 0:
        return None
    by_rate = (max_simulations - done) * elapsed / done
    return max(0.0, min(by_rate, wall_time - elapsed))


def snapshot(run_dir: Path, now: float | None = None, state: CampaignState | None = None) -> dict[str, Any]:
    """The run as a dict of plain JSON values (times in UNIX seconds, durations in seconds);
    ``state``: the journal's state as a reader that looks again and again keeps it
    (``RunStore.follower``), else replayed here."""
    now = time.time() if now is None else now
    store = RunStore(run_dir)
    st = store.state() if state is None else state
    spec = store.resolved_spec()
    objective, budget = spec["objective"], spec["budget"]
    metric, goal = objective["metric"], objective.get("goal", "minimize")
    counts = status_counts(st.tasks.values(), zeros=(s for s in TASK_STATES if s != "running"))
    ranked = ranked_tasks(st, metric, goal)
    best = ranked[0] if ranked else None
    tasks = [{"id": t.id, "status": t.status, "source": t.source, "hypothesis": t.hypothesis,
              "params": t.params, "value": finite_or_none(t.metrics.get(metric)), "submitted": t.submitted,
              "started": t.started, "finished": t.finished, "error": t.error} for t in st.tasks.values()]
    hypotheses = [{"id": h.id, "statement": h.statement, "prediction": h.prediction, "round": h.round,
                   "verdict": h.verdict, "evidence": h.evidence, "tasks": h.tasks, "author": h.author,
                   "claim": h.claim, "reasoning": h.reasoning} for h in st.hypotheses.values()]
    return {
        "name": st.name or spec.get("name", ""), "goal": spec.get("goal", "").strip(),
        "state": effective_state(store, st), "reason": st.reason, "started": st.started, "ended": st.ended,
        "now": now, "elapsed": ((st.ended or now) - st.started) if st.started else None,
        "metric": metric, "goal_direction": goal, "tolerance": objective.get("tolerance"),
        "max_simulations": budget["max_simulations"], "max_concurrent": budget["max_concurrent"],
        "rounds": st.rounds, "max_rounds": budget["max_rounds"], "counts": counts, "tasks": tasks,
        "hypotheses": hypotheses,
        "best": {"id": best.id, "params": best.params, "value": best.metrics[metric]} if best else None,
        "tokens": st.tokens, "tokens_total": sum(st.tokens.values()),
        "max_tokens_total": spec.get("llm", {}).get("max_tokens_total"),
        "utilization": busy_fraction(st, store.slots(spec)),
        "eta_s": eta_seconds(st, int(budget["max_simulations"]), float(budget["wall_time"]), now),
        "parameters": {k: {"min": v["min"], "max": v["max"], "units": v.get("units")}
                       for k, v in spec["simulation"]["parameters"].items()},
        "truth": true_parameters(spec, run_dir),
        # Changes whenever an event is journaled: clients redraw figures only then.
        "version": journal_version(run_dir),
    }
