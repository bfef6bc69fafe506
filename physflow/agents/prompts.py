"""What each agent reads when the campaign asks it something, made from the campaign's view.

The prompts are the agents' side of the conversation: the loop decides *when* the planner,
critic or coder is asked (workflows.campaign), these functions decide *what* they are shown.
They read the campaign through ``agents.view.CampaignView`` only, so the agents' layer never depends on how
the loop keeps its state.
"""

from __future__ import annotations

import json

from physflow.agents.tools import results_table
from physflow.agents.view import CampaignView
from physflow.vocabulary.records import status_counts
from physflow.vocabulary.workflow import ParameterSpec


def parameter_lines(parameters: dict[str, ParameterSpec]) -> str:
    """One line per parameter: its bounds, units and description."""
    return "\n".join(f"- {n}: between {p.min} and {p.max}" + (f" {p.units}" if p.units else "")
                     + (f" ({p.description})" if p.description else "")
                     for n, p in parameters.items())


def planner_prompt(view: CampaignView, round_no: int, hints: list[dict[str, float]], note: str = "",
                   last_analysis: str = "") -> str:
    """What the planner reads each round. ``hints`` are the optimizer's points (asked for in a
    worker thread by the caller: a Gaussian process fit would stall the loop); ``note`` is said
    once (what happened at a restart); ``last_analysis`` is the coder's latest output."""
    spec = view.spec
    obj = spec.objective
    tol = f" (stop when it reaches {obj.tolerance})" if obj.tolerance is not None else ""
    lines = [f"Goal: {spec.goal.strip()}", f"Parameters:\n{parameter_lines(view.parameters)}",
             f"Objective: {obj.goal} {obj.metric}{tol}.", f"Round {round_no} of {spec.budget.max_rounds}; "
             f"{view.simulations_left} simulations left in the budget."]
    if note:
        lines.append(note)
    table = results_table(view, limit=6)
    if table:
        lines.append("Best results so far:\n" + "\n".join(
            f"- {r['params']} -> {obj.metric}={r['metrics'].get(obj.metric)}" for r in table))
    failed = [t for t in view.tasks.values() if t.status == "failed"][-3:]
    if failed:
        lines.append("Recent failures:\n" + "\n".join(f"- {t.params}: {(t.error or '')[:200]}" for t in failed))
    judged = [(k, h) for k, h in view.hypotheses.items() if h.verdict][-3:]
    if judged:
        lines.append("Verdicts so far:\n" + "\n".join(
            f"- {k} '{h.statement[:160]}': {h.verdict}. {h.advice[:160]}" for k, h in judged))
    if last_analysis:
        lines.append(f"The coder's latest analysis: {last_analysis}")
    lines.append(f"The optimizer suggests: {json.dumps(hints)}")
    return "\n".join(lines)


def critic_prompt(view: CampaignView, hid: str) -> str:
    """What the critic reads to judge hypothesis ``hid``: its prediction, each of its
    simulations' objective (or why it failed), and the campaign's best so far."""
    h = view.hypotheses[hid]
    metric, goal = view.spec.objective.metric, view.spec.objective.goal
    rows = "\n".join(f"- {view.tasks[t].params} -> " + (
        f"{metric}={view.tasks[t].metrics.get(metric)}" if view.tasks[t].status == "finished"
        else f"failed: {(view.tasks[t].error or '')[:160]}") for t in h.tasks)
    best = view.best()
    overall = f"Best of the campaign so far: {best.params} -> {metric}={best.metrics[metric]}" if best else ""
    return (f"Hypothesis {hid}: {h.statement}\nPrediction: {h.prediction}\n"
            f"Objective: {goal} {metric}.\nResults of its simulations:\n{rows}\n{overall}\n"
            "Give your verdict as JSON.")


def default_analysis(view: CampaignView) -> str:
    """The coder's request when the critic asked for none: how the objective depends on each
    parameter, which is what the planner needs next."""
    names, obj = ", ".join(view.parameters), view.spec.objective
    return (f"For the finished simulations, fit {obj.metric} as a quadratic function of "
            f"({names}) with numpy least squares and print the fitted optimum ({obj.goal}) and the "
            f"best simulation so far.")


def resume_summary(view: CampaignView, rounds: int) -> str:
    """What the agents are told after a restart (not the whole transcript)."""
    counts = status_counts(view.tasks.values())
    best = view.best()
    metric = view.spec.objective.metric
    return (f"The campaign was restarted after round {rounds}. Simulations: "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + (f". Best so far: {best.params} -> {metric}={best.metrics[metric]:.4g}" if best else "") + ".")
