"""What each agent reads when the campaign asks it something, made from the campaign's view.

The prompts are the agents' side of the conversation: the loop decides *when* the planner,
critic or coder is asked (workflows.campaign), these functions decide *what* they are shown.
They read the campaign through ``agents.view.CampaignView`` only, so the agents' layer never depends on how
the loop keeps its state.
"""

from __future__ import annotations

import math

from physflow.agents.advisor import LETTERS
from physflow.agents.tools import results_table
from physflow.agents.view import CampaignView
from physflow.vocabulary.records import Hypothesis, status_counts
from physflow.vocabulary.steering import Advice, Candidate, Judgement
from physflow.vocabulary.workflow import ParameterSpec


def parameter_lines(parameters: dict[str, ParameterSpec]) -> str:
    """One line per parameter: its bounds, units and description."""
    return "\n".join(f"- {n}: between {p.min} and {p.max}" + (f" {p.units}" if p.units else "")
                     + (f" ({p.description})" if p.description else "")
                     for n, p in parameters.items())


def _result_line(params: dict[str, float], metric: str, value: object) -> str:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in params.items())
    return f"- {shown} -> {metric}={value:.4g}" if isinstance(value, float) else f"- {shown} -> {metric}={value}"


def surrogate_lines(advice: Advice, parameters: dict[str, ParameterSpec], metric: str) -> list[str]:
    """What the surrogate has learned, in words a small model can use: which parameters matter
    (short length scale: the objective changes over a small part of the range), the scatter."""
    if not advice.lengths:
        return [f"The surrogate model has too few results to predict {metric} yet."]
    ordered = sorted(advice.lengths.items(), key=lambda kv: kv[1])
    lines = [f"What the surrogate model learned from {advice.fitted_on} results: {metric} changes fastest along "
             + ", then ".join(f"{name} (over {length:.2g} of its range)" for name, length in ordered) + "."]
    if advice.spread is not None:
        lines.append(f"Repeated simulations scatter by about {advice.spread:.2g} in {metric}.")
    return lines


def hypothesis_prompt(view: CampaignView, round_no: int, advice: Advice, batch: list[Candidate], note: str = "",
                      last_analysis: str = "") -> str:
    """What the planner reads before it states the hypothesis of round ``round_no``: the goal,
    the surrogate's state, the top 5 and last 20 results, the hypotheses so far with their
    verdicts, and the batch about to run with its predictions (the planner's worth for a small
    model is in reading these numbers, not in recalling physics)."""
    spec, obj = view.spec, view.spec.objective
    # (not the stopping tolerance: a small model copied it as every prediction's value)
    lines = [f"Goal: {spec.goal.strip()}", f"Parameters:\n{parameter_lines(view.parameters)}",
             f"Objective: {obj.goal} {obj.metric}.", f"Round {round_no} of {spec.budget.max_rounds}; "
             f"{view.simulations_left} simulations left in the budget."]
    if note:
        lines.append(note)
    lines += surrogate_lines(advice, view.parameters, obj.metric)
    top = results_table(view, limit=5)
    if top:
        lines.append("Top 5 results:\n" + "\n".join(_result_line(r["params"], obj.metric, r["metrics"].get(obj.metric))
                                                      for r in top))
    done = [t for t in view.tasks.values() if t.status in ("finished", "failed")][-20:]
    if done:
        lines.append("Last results:\n" + "\n".join(
            _result_line(t.params, obj.metric, t.metrics.get(obj.metric)) if t.status == "finished"
            else f"- {t.params}: failed ({(t.error or '')[:80]})" for t in done))
    stated = [h for h in view.hypotheses.values() if h.claim][-4:]
    if stated:
        # Predictions and outcomes only, not the statements: a small model copied an earlier
        # statement, line format and all, into its own.
        def outcome(h: Hypothesis) -> str:
            seen = [y for _, y in h.observed(view.tasks, obj.metric)]
            return (h.verdict or "not judged yet") + (
                f"; its simulations gave {obj.metric} " + ", ".join(f"{v:.3g}" for v in seen[:6]) if seen else "")
        lines.append("Earlier predictions:\n" + "\n".join(f"- {h.id}: {h.prediction} -> {outcome(h)}"
                                                          for h in stated))
    if last_analysis:
        lines.append(f"The coder's latest analysis: {last_analysis}")
    lines.append("This round's simulations" + (", with the surrogate's prediction" if any(
        math.isfinite(c.mean) for c in batch) else "") + ":\n" + "\n".join(
        f"{LETTERS[i]}: " + ", ".join(f"{k}={v:.4g}" for k, v in c.params.items())
        + (f" -> predicted {obj.metric} {c.mean:.3g} ± {c.sd:.2g}" if math.isfinite(c.mean) else "")
        for i, c in enumerate(batch)))
    # A template, not an example: a small model copies an example's numbers (the grammar keeps the form).
    template = ('{"hypothesis": "<your statement>", "simulations": ["<letter>", ...], "bound": "below" or "above", '
                '"value": <a number>}')
    lines.append(f"State one new falsifiable hypothesis that this round's simulations test: name the simulations it "
                 f"is about by their letters, and a value {obj.metric} will stay below (or above) for them; say "
                 f"in the hypothesis why. Reply with JSON: {template}")
    return "\n".join(lines)


def critic_prompt(view: CampaignView, hid: str, judgement: Judgement) -> str:
    """What the critic reads to explain the verdict on ``hid``: the statement, its claim, each of
    its simulations' objective (or why it failed), the campaign's best, and the verdict the
    numbers gave (``vocabulary.steering.judge_claim``), which it must give too."""
    h = view.hypotheses[hid]
    metric, goal = view.spec.objective.metric, view.spec.objective.goal
    rows = "\n".join(f"- {view.tasks[t].params} -> " + (
        f"{metric}={view.tasks[t].metrics.get(metric)}" if view.tasks[t].status == "finished"
        else f"failed: {(view.tasks[t].error or '')[:160]}") for t in h.tasks)
    best = view.best()
    overall = f"Best of the campaign so far: {best.params} -> {metric}={best.metrics[metric]}" if best else ""
    return (f"Hypothesis {hid}: {h.statement}\nPrediction: {h.prediction}\n"
            f"Objective: {goal} {metric}.\nResults of its simulations:\n{rows}\n{overall}\n"
            f"The numbers give the verdict '{judgement.verdict}': {judgement.evidence}.\n"
            f"Give that verdict as JSON, explain it in evidence, and advise what to test next.")


def default_analysis(view: CampaignView) -> str:
    """The coder's closing request when the workflow names no ``conclusion:``: how the
    objective depends on each parameter, and where its optimum lies."""
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
