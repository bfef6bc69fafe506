"""report.md from the store: what was hypothesised, what ran, what was learned.

Built from the journal alone, so ``physflow report RUN`` works on a finished, a crashed or a
still-running campaign.
"""

from __future__ import annotations

import math
from pathlib import Path

from physflow.workflows.store import CampaignState, RunStore


def busy_fraction(state: CampaignState, slots: int) -> float | None:
    """Simulation-seconds over slot-seconds between the first submission and the last finish."""
    ran = [t for t in state.tasks.values() if t.started and t.finished]
    starts = [t.submitted for t in state.tasks.values() if t.submitted]
    if not ran or not starts or slots < 1:
        return None
    span = max(t.finished for t in ran) - min(starts)
    return sum(t.finished - t.started for t in ran) / (slots * span) if span > 0 else None


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4g}"


def render(state: CampaignState, spec: dict, metric: str, slots: int) -> str:
    goal = spec.get("objective", {}).get("goal", "minimize")
    tasks = list(state.tasks.values())
    finished = [t for t in tasks if t.status == "finished" and metric in t.metrics
                and math.isfinite(t.metrics[metric])]
    sign = 1 if goal == "minimize" else -1
    best = min(finished, key=lambda t: sign * t.metrics[metric]) if finished else None
    out = [f"# Campaign report: {state.name}", "", f"**Goal.** {spec.get('goal', '').strip()}", "",
           f"**State:** {state.state} ({state.reason or 'running'}). "
           f"**Simulations:** {len(finished)} finished, {sum(t.status == 'failed' for t in tasks)} failed, "
           f"{len(tasks)} proposed. **Rounds:** {state.rounds}.", ""]
    if best:
        params = ", ".join(f"{k} = {v:.4g}" for k, v in best.params.items())
        out += [f"**Best:** task {best.id}: {params} → {metric} = {_fmt(best.metrics[metric])} ({goal}).", ""]
    bf = busy_fraction(state, slots)
    if state.started and state.ended:
        out += [f"**Wall time:** {state.ended - state.started:.1f} s; "
                f"**worker busy fraction:** {_fmt(bf)} over {slots} slot(s).", ""]
    out += ["## Hypotheses", "", "| id | hypothesis | predicted | verdict | evidence | tasks |",
            "|---|---|---|---|---|---|"]
    for h in state.hypotheses.values():
        cells = [h.id, h.statement, h.prediction, h.verdict or "pending", h.evidence, ", ".join(h.tasks)]
        out.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    if not state.hypotheses:
        out.append("| — | no hypothesis was stated (optimizer only) | | | | |")
    names = list(spec.get("simulation", {}).get("parameters", {}))
    header = "| task | source | hypothesis | " + " | ".join(names) + f" | {metric} | status | seconds |"
    out += ["", "## Simulations", "", header, "|---" * (len(names) + 6) + "|"]
    for t in tasks:
        secs = t.finished - t.started if t.finished and t.started else None
        out.append(f"| {t.id} | {t.source} | {t.hypothesis or ''} | " + " | ".join(_fmt(t.params.get(n)) for n in names)
                   + f" | {_fmt(t.metrics.get(metric))} | {t.status} | {_fmt(secs)} |")
    failures = [t for t in tasks if t.status == "failed"]
    if failures:
        out += ["", "## Failures", ""] + [f"- {t.id}: {(t.error or '').strip()[:400]}" for t in failures]
    if state.tokens:
        out += ["", "## Model tokens", "", "| agent | tokens |", "|---|---|"]
        out += [f"| {a} | {n} |" for a, n in sorted(state.tokens.items())]
        out.append(f"| total | {sum(state.tokens.values())} |")
    return "\n".join(out) + "\n"


def write_report(run_dir: Path) -> Path:
    import yaml

    store = RunStore(run_dir)
    state = store.state()
    spec = yaml.safe_load((run_dir / "workflow.yaml").read_text())
    text = render(state, spec, spec["objective"]["metric"], int(spec["budget"]["max_concurrent"]))
    path = run_dir / "report.md"
    path.write_text(text)
    return path
