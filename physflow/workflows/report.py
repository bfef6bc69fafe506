"""report.md and report.html from the store: what was hypothesised, what ran, what was learned.

Built from the journal (and, for arrays, campaign.h5 and the objective's target file), so
``physflow report RUN`` works on a finished, a crashed or a still-running campaign. The figures
are PNGs in ``plots/``; report.html carries them inline (base64) so it is one file to mail.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physflow.errors import StoreError
from physflow.vocabulary import ranking
from physflow.vocabulary.figures import CurveFigure
from physflow.vocabulary.records import TaskRecord
from physflow.workflows.store import CampaignState, JournalFollower, RunStore

PLOTS = "plots"
#: How many of the best simulations the adapter's array figures compare with the target.
N_BEST_CURVES = 3
#: Above this many slots the timeline shows how many simulations ran at once instead of one lane
#: per slot (a lane each for 10,000 slots would be a figure 4,500 inches tall).
MAX_LANES = 32
#: Above this many points the scatter plots bin them (hexagons coloured by the best metric in
#: each) instead of drawing a marker each: 100,000 markers are a blot, and slow to draw.
MAX_MARKERS = 3000
#: Rows a report's tables list at most (simulations: the best; hypotheses: the latest; failures: the
#: first): a report of 100,000 simulations is read, not scrolled; ``physflow results`` lists all.
MAX_TABLE_ROWS = 500


#: The report's first line when the workflow let model-written code run without kernel walls.
UNSAFE_LINE = ("**sandbox: unsafe** - this workflow let model-written code run with rlimits and audit hooks "
               "only where no kernel isolation was available (the transcript's sandbox note says which was used).")


def busy_fraction(state: CampaignState, slots: int) -> float | None:
    """Simulation-seconds over slot-seconds between the first submission and the last finish."""
    ran = [t for t in state.tasks.values() if t.started and t.finished]
    starts = [t.submitted for t in state.tasks.values() if t.submitted]
    if not ran or not starts or slots < 1:
        return None
    span = max(t.finished for t in ran) - min(starts)
    return sum(t.finished - t.started for t in ran) / (slots * span) if span > 0 else None


def scored_tasks(state: CampaignState, metric: str) -> list[TaskRecord]:
    """Finished tasks with a finite value of ``metric``, in the order they were proposed."""
    return [t for t in state.tasks.values() if ranking.is_finite(t.score(metric))]


def ranked_tasks(state: CampaignState, metric: str, goal: str) -> list[TaskRecord]:
    """Scored tasks, best first (smallest ``metric`` when minimizing, largest when maximizing)."""
    return ranking.ranked(state.tasks.values(), lambda t: t.score(metric), goal)


@dataclass
class ModelTurn:
    """One model reply: ``start`` is the transcript record before it (what the model was answering),
    ``end`` the reply itself; UNIX seconds."""

    agent: str
    start: float
    end: float
    tokens: int


def model_turns(run_dir: Path) -> list[ModelTurn]:
    """The model turns in transcript.jsonl (records that carry token counts); [] without one."""
    path = run_dir / "transcript.jsonl"
    if not path.is_file():
        return []
    turns, previous = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash
        t = record.get("t")
        tokens = int(record.get("prompt_tokens", 0) or 0) + int(record.get("completion_tokens", 0) or 0)
        if t is not None and tokens and previous is not None:
            turns.append(ModelTurn(record.get("agent", "?"), min(previous, t), t, tokens))
        previous = t if t is not None else previous
    return turns


def target_path(spec: dict[str, Any], run_dir: Path) -> Path | None:
    """The objective's target file (absolute in a run's workflow.yaml), if it exists."""
    target = spec.get("objective", {}).get("target")
    if not target:
        return None
    path = Path(target) if Path(target).is_absolute() else run_dir / target
    return path if path.is_file() else None


def true_parameters(spec: dict[str, Any], run_dir: Path) -> dict[str, float]:
    """Parameters the target was made with, where its file says (HDF5 root attributes ``true_<name>``)."""
    path = target_path(spec, run_dir)
    if path is None or path.suffix not in (".h5", ".hdf5"):
        return {}
    try:
        with h5py.File(path, "r") as f:
            return {name: float(f.attrs[f"true_{name}"]) for name in spec["simulation"]["parameters"]
                    if f"true_{name}" in f.attrs}
    except OSError:
        return {}


def _read_arrays(path: Path, group: str, names: tuple[str, ...]) -> dict[str, tuple[np.ndarray, str]] | None:
    """Datasets ``names`` of ``group`` with their units, or None if any is missing."""
    try:
        with h5py.File(path, "r") as f:
            g = f[group] if group else f
            if not all(n in g for n in names):
                return None
            return {n: (g[n][()], str(g[n].attrs.get("units", ""))) for n in names}
    except (OSError, KeyError):
        return None


def _fmt(value: float | None) -> str:
    if ranking.finite_or_none(value) is None:
        return "—"
    return f"{value:.4g}"


def _label(name: str, units: str | None) -> str:
    return f"{name} [{units}]" if units else f"{name} (dimensionless)"


class Figures:
    """The report's figures, drawn with matplotlib's Agg backend into ``plots/``.

    Each method returns the PNG's path, or None when the run has nothing to draw yet. Sizes and
    fonts are chosen to stay legible when printed at half a page's width.
    """

    def __init__(self, run_dir: Path, state: CampaignState, spec: dict[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110})
        self.run_dir, self.state, self.spec = run_dir, state, spec
        self.metric = spec["objective"]["metric"]
        self.goal = spec["objective"].get("goal", "minimize")
        self.params: dict[str, dict[str, Any]] = spec["simulation"]["parameters"]
        self.out = run_dir / PLOTS
        self.out.mkdir(exist_ok=True)

    def _save(self, fig: Any, name: str) -> Path:
        path = self.out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path)
        self.plt.close(fig)
        return path

    def _metric_scale(self, values: list[float]) -> str:
        positive = [v for v in values if v > 0]
        return "log" if len(positive) == len(values) and max(values) > 20 * min(values) else "linear"

    def objective(self) -> Path | None:
        """Metric of each finished simulation against its number, with the best so far."""
        scored = scored_tasks(self.state, self.metric)
        if not scored:
            return None
        n = np.arange(1, len(scored) + 1)
        values = np.array([t.metrics[self.metric] for t in scored])
        best = np.minimum.accumulate(values) if self.goal == "minimize" else np.maximum.accumulate(values)
        fig, ax = self.plt.subplots(figsize=(6, 3.6))
        dense = len(scored) > MAX_MARKERS
        for source, marker in (("planner", "o"), ("backfill", "s"), ("optimizer", "^"), ("user", "D")):
            pick = [i for i, t in enumerate(scored) if t.source == source]
            if pick:  # many points: small, translucent and rasterized, so the density shows
                style = dict(s=2, alpha=0.25, linewidths=0, rasterized=True) if dense else {}
                ax.scatter(n[pick], values[pick], marker=marker, label=f"{source} proposal", zorder=3, **style)
        ax.step(n, best, where="post", color="black", label="best so far")
        tolerance = self.spec["objective"].get("tolerance")
        if tolerance is not None:
            ax.axhline(tolerance, color="tab:green", ls="--", label=f"tolerance {tolerance:g}")
        ax.set_yscale(self._metric_scale(list(values)))
        ax.set_xlabel("simulation number (in order proposed)")
        ax.set_ylabel(_label(self.metric, None))
        ax.legend(fontsize=8)
        return self._save(fig, "objective")

    def parameter_space(self) -> Path | None:
        """Simulated points coloured by the metric (pairs of up to 4 parameters), best and truth marked."""
        scored = scored_tasks(self.state, self.metric)
        if not scored:
            return None
        names = list(self.params)[:4]
        truth = true_parameters(self.spec, self.run_dir)
        best = ranked_tasks(self.state, self.metric, self.goal)[0]
        values = np.array([t.metrics[self.metric] for t in scored])
        norm = None
        if self._metric_scale(list(values)) == "log":
            from matplotlib.colors import LogNorm

            norm = LogNorm(values.min(), values.max())
        if len(names) == 1:
            (p,) = names
            fig, ax = self.plt.subplots(figsize=(6, 3.6))
            x = [t.params[p] for t in scored]
            ax.scatter(x, values, c=values, norm=norm, cmap="viridis_r", edgecolor="k", zorder=3)
            ax.scatter([best.params[p]], [best.metrics[self.metric]], marker="*", s=250, c="red", label="best")
            if p in truth:
                ax.axvline(truth[p], color="black", ls="--", label="truth")
            ax.set_xlabel(_label(p, self.params[p].get("units")))
            ax.set_ylabel(_label(self.metric, None))
            ax.legend(fontsize=8)
            return self._save(fig, "parameters")
        k = len(names) - 1
        fig, axes = self.plt.subplots(k, k, figsize=(3.2 * k + 1.6, 3.0 * k + 0.4), squeeze=False, layout="constrained")
        sc = None
        for row in range(k):
            for col in range(k):
                ax = axes[row][col]
                if col > row:
                    ax.set_visible(False)
                    continue
                px, py = names[col], names[row + 1]
                xs, ys = [t.params[px] for t in scored], [t.params[py] for t in scored]
                if len(scored) > MAX_MARKERS:  # binned: each hexagon coloured by the best value in it
                    best_of = np.min if self.goal == "minimize" else np.max
                    sc = ax.hexbin(xs, ys, C=values, reduce_C_function=best_of, gridsize=40, norm=norm,
                                   cmap="viridis_r", mincnt=1, zorder=3)
                else:
                    sc = ax.scatter(xs, ys, c=values, norm=norm, cmap="viridis_r", edgecolor="k", s=40, zorder=3)
                ax.scatter([best.params[px]], [best.params[py]], marker="*", s=300, c="red", edgecolor="k",
                           zorder=4, label=f"best ({best.id})")
                if px in truth and py in truth:
                    ax.scatter([truth[px]], [truth[py]], marker="X", s=200, c="white", edgecolor="k", zorder=5,
                               label="truth")
                ax.set_xlim(self.params[px]["min"], self.params[px]["max"])
                ax.set_ylim(self.params[py]["min"], self.params[py]["max"])
                ax.set_xlabel(_label(px, self.params[px].get("units")))
                ax.set_ylabel(_label(py, self.params[py].get("units")))
                if row == col == 0:
                    ax.legend(fontsize=8, loc="best")
        fig.colorbar(sc, ax=axes, label=_label(self.metric, None), shrink=0.9)
        path = self.out / "parameters.png"
        fig.savefig(path)  # constrained layout (a colorbar over several axes): no tight_layout
        self.plt.close(fig)
        return path

    def curve(self, figure: CurveFigure) -> Path | None:
        """An array figure the adapter declares: the best simulations' arrays (campaign.h5) against
        the target's."""
        names = (figure.x, figure.y)
        h5 = self.run_dir / "campaign.h5"
        best = ranked_tasks(self.state, self.metric, self.goal)[:N_BEST_CURVES]
        curves = [(t, a) for t in best if h5.is_file()
                  and (a := _read_arrays(h5, f"tasks/{t.id}", names)) is not None]
        target = target_path(self.spec, self.run_dir)
        target_arrays = _read_arrays(target, "", names) if target and target.suffix in (".h5", ".hdf5") else None
        if not curves:
            return None
        x, y = names
        fig, ax = self.plt.subplots(figsize=(6, 3.8))
        for task, arrays in curves:
            params = ", ".join(f"{k}={v:.3g}" for k, v in task.params.items())
            ok = arrays[y][0] > 0
            ax.plot(arrays[x][0][ok], arrays[y][0][ok], marker=".", label=f"{task.id}: {params}")
        if target_arrays is not None:
            ok = target_arrays[y][0] > 0
            ax.plot(target_arrays[x][0][ok], target_arrays[y][0][ok], color="black", lw=2.5, ls="--",
                    label="target")
        units = curves[0][1]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{figure.xlabel} [{units[x][1]}]")
        ax.set_ylabel(f"{figure.ylabel} [{units[y][1]}]")
        ax.legend(fontsize=7)
        return self._save(fig, figure.name)

    def timeline(self, turns: list[ModelTurn], slots: int) -> Path | None:
        """Each worker slot busy (a simulation) or idle, and the model turns, against campaign time;
        beyond ``MAX_LANES`` slots, how many simulations ran at once against the slots."""
        ran = sorted((t for t in self.state.tasks.values() if t.started and t.finished), key=lambda t: t.started)
        if not ran:
            return None
        t0 = self.state.started or ran[0].started
        agents = sorted({turn.agent for turn in turns})
        end = max([self.state.ended or 0.0] + [t.finished for t in ran] + [turn.end for turn in turns]) - t0
        if max(slots, 1) > MAX_LANES:
            return self._running(ran, turns, agents, slots, t0, end)
        bars, failed = greedy_lanes(ran, max(slots, 1), t0)
        fig, ax = self.plt.subplots(figsize=(7, 1.2 + 0.45 * (len(bars) + len(agents))))
        labels = []
        for i, (lane, bad) in enumerate(zip(bars, failed, strict=True)):
            ax.broken_barh(lane, (i - 0.4, 0.8), color="tab:blue")
            ax.broken_barh(bad, (i - 0.4, 0.8), color="tab:red")
            labels.append(f"slot {i + 1}")
        for j, agent in enumerate(agents):
            spans = [(turn.start - t0, max(turn.end - turn.start, 0.05)) for turn in turns if turn.agent == agent]
            ax.broken_barh(spans, (len(bars) + j - 0.4, 0.8), color="tab:orange")
            labels.append(f"model: {agent}")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlim(0, end * 1.02)
        ax.set_xlabel("time since the campaign started [s]")
        bf = busy_fraction(self.state, slots)
        ax.set_title(f"workers busy (blue; red: failed) and idle (white); utilization {_fmt(bf)}", fontsize=9)
        ax.grid(axis="y", visible=False)
        return self._save(fig, "timeline")

    def _running(self, ran: list[TaskRecord], turns: list[ModelTurn], agents: list[str], slots: int, t0: float,
                 end: float) -> Path:
        """The timeline of a campaign with more slots than lanes fit: simulations running at each
        moment (a step curve) under the slots' line, the model turns as bars beneath."""
        times = np.array([t.started for t in ran] + [t.finished for t in ran]) - t0
        steps = np.concatenate([np.ones(len(ran)), -np.ones(len(ran))])
        order = np.argsort(times, kind="stable")
        running = np.cumsum(steps[order])
        if agents:
            fig, (ax, bx) = self.plt.subplots(2, 1, figsize=(7, 3.4 + 0.3 * len(agents)), sharex=True,
                                              gridspec_kw={"height_ratios": [4, len(agents)]})
        else:
            fig, ax = self.plt.subplots(figsize=(7, 3.2))
            bx = ax
        ax.step(times[order], running, where="post", color="tab:blue", lw=0.8, label="simulations running")
        ax.axhline(slots, color="black", ls="--", lw=1, label=f"{slots} slots")
        ax.set_ylim(0, slots * 1.08)
        ax.set_ylabel("simulations running")
        ax.legend(fontsize=8, loc="lower right")
        for j, agent in enumerate(agents):
            spans = [(turn.start - t0, max(turn.end - turn.start, 0.05)) for turn in turns if turn.agent == agent]
            bx.broken_barh(spans, (j - 0.4, 0.8), color="tab:orange")
        if agents:
            bx.set_yticks(range(len(agents)), [f"model: {a}" for a in agents])
        bx.set_xlim(0, end * 1.02)
        bx.set_xlabel("time since the campaign started [s]")
        bf = busy_fraction(self.state, slots)
        ax.set_title(f"simulations running against the {slots} slots; utilization {_fmt(bf)}", fontsize=9)
        return self._save(fig, "timeline")

    def tokens(self) -> Path | None:
        """Model tokens spent by each agent."""
        if not self.state.tokens:
            return None
        agents = sorted(self.state.tokens)
        fig, ax = self.plt.subplots(figsize=(5, 0.8 + 0.4 * len(agents)))
        ax.barh(agents, [self.state.tokens[a] for a in agents], color="tab:orange")
        ax.set_xlabel("tokens (prompt + completion)")
        return self._save(fig, "tokens")


def greedy_lanes(ran: list[TaskRecord], slots: int, t0: float) -> tuple[list[list[tuple[float, float]]],
                                                                        list[list[tuple[float, float]]]]:
    """(finished, failed) bars (start since ``t0``, duration; s) of each of ``slots`` lanes: each
    task, in order of start, goes to the lane that fell free first (the lowest-numbered among
    equals). A heap of (falls free at, lane): O(tasks log slots), not a scan of every lane per task."""
    import heapq

    bars: list[list[tuple[float, float]]] = [[] for _ in range(slots)]
    failed: list[list[tuple[float, float]]] = [[] for _ in range(slots)]
    lanes = [(t0, lane) for lane in range(slots)]
    for t in ran:
        _, lane = heapq.heappop(lanes)
        (failed if t.status == "failed" else bars)[lane].append((t.started - t0, t.finished - t.started))
        heapq.heappush(lanes, (t.finished, lane))
    return bars, failed


def _observed(h_tasks: list[str], state: CampaignState, metric: str, goal: str) -> str:
    """What the hypothesis' simulations measured: the best metric among its finished tasks."""
    done = [state.tasks[i] for i in h_tasks if i in state.tasks]
    top = ranking.best(done, lambda t: t.score(metric), goal)
    if top is None:
        return "pending" if done else ""
    scored = sum(ranking.is_finite(t.score(metric)) for t in done)
    return f"best {metric} = {_fmt(top.metrics[metric])} ({top.id}; {scored}/{len(done)} done)"


def steering_summary(state: CampaignState) -> str:
    """Who steered, in numbers: hypotheses by the planner, verdicts (computed from the numbers)
    and refused critic verdicts, and the planner's share of the simulations with the pick quality
    that earned it."""
    hyps = list(state.hypotheses.values())
    by_planner = sum(h.author == "planner" for h in hyps)
    verdicts = [h.verdict for h in hyps if h.verdict]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("supported", "refuted", "inconclusive"))
    picks = [p for r in state.steering for p in r.get("picks") or []]
    scored = [p for p in picks if p.get("place") is not None]
    ran = sum(t.source == "planner" for t in state.tasks.values())
    last = state.steering[-1] if state.steering else {}
    refused = (f"; {state.critic_refused} critic verdict(s) the numbers contradicted were refused"
               if state.critic_refused else "")
    if state.model_turns:
        refused += (f". Model replies sent back as invalid: {state.model_invalid} of {state.model_turns} turns "
                    f"({100 * state.model_invalid / state.model_turns:.1f}%)")
    text = (f"**Steering.** The planner stated {by_planner} of {len(hyps)} hypotheses (the others: the "
            f"surrogate's own prediction). Verdicts, computed from the numbers: {counts or 'none yet'}{refused}. ")
    if scored:
        mean_place = sum(p["place"] for p in scored) / len(scored)
        chance = sum((p["shown"] - 1) / 2 for p in scored) / len(scored)
        text += (f"The planner made {len(picks)} pick(s) among the optimizer's shuffled candidates "
                 f"({len(picks) - len(scored)} unusable): mean place {mean_place:.2f} in the surrogate's "
                 f"ranking (0 = its best; chance "
                 f"{chance:.2f}); measured pick quality {last.get('pick_quality', 0):.2f}, so its share was "
                 f"{last.get('share', 0):.2f} of a round; {ran} of {len(state.tasks)} simulations ran its picks.")
    else:
        text += f"No pick was measured yet; {ran} of {len(state.tasks)} simulations ran the planner's picks."
    return text


def conclusion_section(state: CampaignState) -> list[str]:
    """The campaign's answer to its goal: what the coder's code printed, and the code (it ran in
    the sandbox over the campaign's own results; the numbers are its output, not the model's)."""
    c = state.conclusion
    if not c:
        return []
    said = "" if c.get("ok") else " The code failed; its error is shown instead of an answer."
    fence = "~~~~"  # a fence the code cannot close by accident (it may hold ```)
    return ["", "## Conclusion", "", f"**Asked of the coder:** {_cell(c.get('request') or '').rstrip('.')}.{said}", "",
            "What the code printed:", "", fence, str(c.get("output") or "").rstrip(), fence, "",
            "The code (run in the sandbox over this campaign's results):", "", fence + "python",
            str(c.get("code") or "").rstrip(), fence]


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render(state: CampaignState, spec: dict, metric: str, slots: int,
           figures: dict[str, Path] | None = None, turns: list[ModelTurn] | None = None) -> str:
    """The report as Markdown; ``figures`` (name -> PNG path) are linked relative to the run dir."""
    figures = figures or {}
    goal = spec.get("objective", {}).get("goal", "minimize")
    tasks = list(state.tasks.values())
    ranked = ranked_tasks(state, metric, goal)
    best = ranked[0] if ranked else None
    failures = [t for t in tasks if t.status == "failed"]

    def figure(name: str, caption: str) -> list[str]:
        return [f"![{caption}]({PLOTS}/{figures[name].name})", "", f"*{caption}*", ""] if name in figures else []

    out = [UNSAFE_LINE, ""] if spec.get("sandbox") == "unsafe" else []
    out += [f"# Campaign report: {state.name}", "", f"**Goal.** {spec.get('goal', '').strip()}", "",
           f"**State:** {state.state} ({state.reason or 'running'}). "
           f"**Simulations:** {len(scored_tasks(state, metric))} finished, {len(failures)} failed, "
           f"{len(tasks)} proposed. **Rounds:** {state.rounds}.", ""]
    if best:
        params = ", ".join(f"{k} = {v:.4g}" for k, v in best.params.items())
        out += [f"**Best:** task {best.id}: {params} → {metric} = {_fmt(best.metrics[metric])} ({goal}).", ""]
    bf = busy_fraction(state, slots)
    if state.started and state.ended:
        out += [f"**Wall time:** {state.ended - state.started:.1f} s; "
                f"**worker busy fraction:** {_fmt(bf)} over {slots} slot(s).", ""]
    out += ["## Hypotheses", "", "| id | hypothesis | predicted | observed | verdict | evidence | by | tasks |",
            "|---|---|---|---|---|---|---|---|"]
    hypotheses = list(state.hypotheses.values())
    if len(hypotheses) > MAX_TABLE_ROWS:
        out.insert(-2, f"The latest {MAX_TABLE_ROWS} of {len(hypotheses)} hypotheses (all: `physflow dashboard "
                       "RUN`, the run's journal.jsonl).\n")
    for h in hypotheses[-MAX_TABLE_ROWS:]:
        evidence = h.evidence + (f" — critic: {h.reasoning}" if h.reasoning else "")
        cells = [h.id, h.statement, h.prediction, _observed(h.tasks, state, metric, goal), h.verdict or "pending",
                 evidence, h.author, ", ".join(h.tasks)]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if not state.hypotheses:
        out.append("| — | no hypothesis was stated (optimizer only) | | | | | | |")
    else:
        out += ["", steering_summary(state)]
    out += conclusion_section(state)
    out += ["", "## Objective", ""] + figure("objective", f"{metric} of each simulation, in the order proposed")
    out += figure("parameters", f"Simulated parameters coloured by {metric}; star: best, X: the target's truth")
    for curve in curve_figures(spec):
        out += figure(curve.name, curve.caption)
    names = list(spec.get("simulation", {}).get("parameters", {}))
    header = "| task | source | hypothesis | " + " | ".join(names) + f" | {metric} | status | seconds |"
    out += ["## Simulations", ""]
    listed = tasks
    if len(tasks) > MAX_TABLE_ROWS:  # the best first, then the others in order proposed, up to the cap
        listed = list({t.id: t for t in [*ranked, *tasks]}.values())[:MAX_TABLE_ROWS]
        out += [f"The {MAX_TABLE_ROWS} best of {len(tasks)} simulations (all: `physflow results RUN --csv`).", ""]
    out += [header, "|---" * (len(names) + 6) + "|"]
    for t in listed:
        secs = t.finished - t.started if t.finished and t.started else None
        out.append(f"| {t.id} | {t.source} | {t.hypothesis or ''} | " + " | ".join(_fmt(t.params.get(n)) for n in names)
                   + f" | {_fmt(t.metrics.get(metric))} | {t.status} | {_fmt(secs)} |")
    out += ["", "## Workers and model", "", f"Utilization (busy fraction over {slots} slot(s)): {_fmt(bf)}; "
            f"model turns: {len(turns or [])}.", ""]
    out += figure("timeline", "Worker slots busy or idle, and model turns, over the campaign")
    if failures:
        out += ["## Failures", ""] + [f"- {t.id}: {_cell((t.error or '').strip()[:400])}"
                                      for t in failures[:MAX_TABLE_ROWS]]
        if len(failures) > MAX_TABLE_ROWS:
            out.append(f"- ... and {len(failures) - MAX_TABLE_ROWS} more (`physflow results RUN --json`)")
        out += [""]
    if state.tokens:
        out += ["## Model tokens", "", "| agent | tokens |", "|---|---|"]
        out += [f"| {a} | {n} |" for a, n in sorted(state.tokens.items())]
        out += [f"| total | {sum(state.tokens.values())} |", ""]
        out += figure("tokens", "Tokens spent per agent")
    return "\n".join(out).rstrip() + "\n"


def render_html(markdown: str, run_dir: Path, title: str) -> str:
    """report.md as one self-contained HTML page: the PNGs it links are inlined as base64."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        path = run_dir / match.group(1)
        if not path.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #999;padding:2px 6px}"
             "img{max-width:100%}@media print{img{max-width:90%;page-break-inside:avoid}}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def curve_figures(spec: dict[str, Any]) -> tuple[CurveFigure, ...]:
    """The array figures the run's adapter declares (``Adapter.figures``); none for an adapter
    this physflow does not know.

    The adapters are imported here, not with this module: ``status`` and ``watch`` read the
    report's rankings and should not wait for every simulation code to load.
    """
    from physflow.sim_adapters import adapter_class

    cls = adapter_class(spec.get("simulation", {}).get("adapter", ""))
    return cls.figures if cls is not None else ()


def draw_figures(run_dir: Path, state: CampaignState, spec: dict[str, Any], turns: list[ModelTurn]) -> dict[str, Path]:
    """Every figure the run has data for, by name (objective, parameters, the adapter's array
    figures, timeline, tokens)."""
    fig = Figures(run_dir, state, spec)
    drawn = {"objective": fig.objective(), "parameters": fig.parameter_space(),
             **{curve.name: fig.curve(curve) for curve in curve_figures(spec)},
             "timeline": fig.timeline(turns, RunStore(run_dir).slots(spec)), "tokens": fig.tokens()}
    return {name: path for name, path in drawn.items() if path is not None}


def write_report(run_dir: Path, follower: JournalFollower | None = None) -> Path:
    """Write report.md, plots/*.png and report.html; returns report.md's path. A report that
    cannot be written (a full disk) is a StoreError: the run itself is whole, and ``physflow
    report RUN`` writes it again once there is room. ``follower``: one that has read the journal
    already (a resume's), so only what was added since is read (100,000 tasks: 8 s a replay)."""
    store = RunStore(run_dir)
    state, spec = (follower or store.follower()).state(), store.resolved_spec()
    turns = model_turns(run_dir)
    try:
        figures = draw_figures(run_dir, state, spec, turns)
        text = render(state, spec, spec["objective"]["metric"], store.slots(spec), figures, turns)
        path = run_dir / "report.md"
        path.write_text(text)
        (run_dir / "report.html").write_text(render_html(text, run_dir, f"physflow: {state.name}"))
    except OSError as exc:
        raise StoreError(f"{run_dir}: cannot write the report ({exc.strerror or exc}); the run is whole: "
                         "physflow report RUN writes it once there is room") from None
    return path
