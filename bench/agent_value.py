"""Do the agents earn their place? The cosmology campaign on the same seeds and budget, six ways.

The problem is the cosmology example's (``workflows/examples/cosmology.yaml``: find omega_m and
sigma8 whose halo mass function matches a target's, chi2_hmf <= 1) at the small size that keeps a
simulation near 2 s on 2 cores, not the shipped demo's size: the benchmark makes its own target in
its temporary folder with ``physflow.sim_adapters.nbody_pm.make_target`` (48^3 particles, 96^3
mesh, 10 steps, box 128 Mpc/h, initial phases seed 7, true omega_m 0.31 and sigma8 0.83) and runs a
workflow with the same fixed values (2 ranks, 2 simulations at a time, 24 at most, the example's
knowledge folder). Every run is a real campaign in this process (``bench.campaign_runs.steer``:
``Campaign`` on the local site, real MPI simulations, journal, HDF5, the embedded model served by
llama.cpp as physflow serves it); they differ only in who chooses the simulations:

``random``            no agents; independent uniform draws (``UniformRandom``), blind to results
``optimizer``         no agents; the optimizer alone (scrambled Sobol, then a Gaussian process)
``physflow-1.5b``     the default team on the default model (Qwen2.5-Coder-1.5B), the planner
                      advising the optimizer, its share of slots earned (``planner_share: auto``);
                      without the coder unless ``--coder``: the coder's analyses and its closing
                      conclusion choose no simulation, and on 2 cores they add minutes to a run
``physflow-135m``     the same with ``model: smollm2-135m``
``physflow-1.5b-0.3`` the 1.5B team with the planner's share forced to 0.3 (``planner_share: 0.3``)
``physflow-1.5b-0.5`` ... forced to 0.5

Seed k seeds the optimizer (or the random sampler) and the order in which the planner sees the
candidates, in every method: common random numbers. An optimizer's point follows from its seed
and the data it sees (results and pending points), so a physflow run whose planner earns no
share runs the optimizer alone's points wherever their schedules meet (the same results in, the
same simulations running); where a round's timing differs (a slot that waits for the planner's
pick sees another result first), the runs part. Methods run interleaved seed by seed, so the
machine's noise spreads over all.

Reported per method, from the runs' journals and transcripts (``bench.campaign_runs``):

- simulations to tolerance: results stored up to and including the first with chi2_hmf <= 1;
  median and range; a run that never reaches it counts as budget + 1 (the median a lower bound);
  the ratio to the optimizer alone (target for physflow: <= 1.0, "the agents never cost
  simulations", whatever share the model earns);
- the planner's share: simulations that ran the planner's picks / simulations started;
- pick quality: each pick's place in the surrogate's own ranking of the (shuffled) candidates shown
  (0 = its best; chance = (shown - 1) / 2), and the mean pick score (1 = always the surrogate's
  best, 0 = chance, ``physflow.vocabulary.steering.pick_score``);
- proposal validity: invalid model outputs (unparsable, or rejected by physflow's checks) / model
  turns that answered (a turn the campaign stopped gave no output), every role (target <= 1 %: a
  published agentic screening campaign on Aurora lost 16 % of its tasks to tool-call errors);
- planner turn latency, median / p95 (s), over finished planner turns (picks and hypotheses; the
  turns the campaign stopped are not timed), with how many of them had a simulation running;
- hypotheses stated by the model, judged (a verdict computed from the numbers), supported; beside
  them the stand-ins physflow stated where the model gave none or its turn was stopped; critic
  verdicts refused because the numbers said otherwise.

Run from the repository root: ``python bench/agent_value.py [--seeds N] [--methods a,b,...]``.
Default: 3 seeds, every method. Nothing is cached: each run is real.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.campaign_runs import Outcome, load, model_turns, outcome_of, prepare_environment, steer, transcript  # noqa: E402
from bench.sample_efficiency import EXAMPLES, truth  # noqa: E402
from physflow.vocabulary.steering import pick_score  # noqa: E402
from physflow.workflows.store import read_journal  # noqa: E402

#: The target's solver settings (also the workflow's fixed values) and its true parameters.
SETTINGS = {"box_size": 128.0, "n_side": 48, "n_mesh": 96, "steps": 10, "seed": 7, "z_init": 49.0}
TRUE = {"omega_m": 0.31, "sigma8": 0.83}
TOLERANCE = 1.0

#: method -> (embedded model, or None: no agents; planner_share). ``random`` has no agents either.
METHODS: dict[str, tuple[str | None, str]] = {
    "random": (None, "auto"),
    "optimizer": (None, "auto"),
    "physflow-1.5b": ("qwen2.5-coder-1.5b-instruct", "auto"),
    "physflow-1.5b-0.3": ("qwen2.5-coder-1.5b-instruct", "0.3"),
    "physflow-135m": ("smollm2-135m", "auto"),
    "physflow-1.5b-0.5": ("qwen2.5-coder-1.5b-instruct", "0.5"),
}

WORKFLOW = """\
physflow: 1
name: agent-value
goal: >
  A simulated universe of (128 Mpc/h)^3 contains a few hundred friends-of-friends dark-matter
  halos above 3e13 Msun/h today. Which matter density omega_m and fluctuation amplitude sigma8
  reproduce its halo mass function (chi2_hmf at most 1)? More massive halos need larger sigma8
  or larger omega_m; say which combination the data constrain.
site: local
{llm}
simulation:
  adapter: nbody_pm
  resources: {{ranks: 2, nodes: 1}}
  fixed: {fixed}
  walltime: 5m
  parameters:
    omega_m: {{min: 0.1, max: 0.5, description: matter density parameter today}}
    sigma8: {{min: 0.5, max: 1.1, description: rms linear density contrast in 8 Mpc/h spheres at z=0}}
objective: {{metric: chi2_hmf, target: target.h5, goal: minimize, tolerance: {tol}}}
budget: {{max_simulations: {budget}, max_concurrent: 2, max_rounds: {budget}, wall_time: 30m, backfill: {backfill},
         planner_share: {share}}}
knowledge: [knowledge]
approval: auto
"""


def workflow_text(method: str, budget: int, coder: bool = False, tolerance: float = TOLERANCE,
                  backfill: str = "none") -> str:
    """The benchmark's workflow for ``method``: no agents for random and optimizer, else the
    default team on the method's embedded model, without the coder unless ``coder``.
    ``max_rounds`` is the budget, so rounds never end a campaign before its simulations do
    (without agents there are no rounds). ``backfill: none`` (default) paces the campaign by the
    planner's rounds, as the demo is: with the optimizer's backfill and 2-s simulations the
    budget was spent before the planner's first turn ended, so the agents were never measured."""
    model, share = METHODS[method]
    llm = (f"llm: {{provider: embedded, model: {model}, max_tokens_total: 400000}}" if model
           else "agents: {planner: {enabled: false}}")
    if model and not coder:
        llm += "\nagents: {coder: {enabled: false}}"
    fixed = "{" + ", ".join(f"{k}: {v}" for k, v in SETTINGS.items()) + "}"
    return WORKFLOW.format(llm=llm, fixed=fixed, tol=tolerance, budget=budget, share=share, backfill=backfill)


def make_target(path: Path) -> None:
    """The target file, simulated once in a child process (one MPI rank: this process stays free of
    MPI, whose workers mpiexec starts)."""
    params = {**SETTINGS, **TRUE}
    code = ("import sys; from pathlib import Path; from physflow.sim_adapters.nbody_pm import make_target; "
            f"make_target(Path(sys.argv[1]), **{params!r})")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


@dataclass
class AgentFigures:
    """What the agents did in one run, from its journal and transcript."""

    planner_sims: int = 0
    places: list[tuple[int, int]] = field(default_factory=list)  # (place, shown) of each scored pick
    pick_errors: int = 0
    earned_share: float | None = None  # planner_share the last round ran with
    calls: int = 0  # model turns that answered (every role)
    invalid: int = 0
    turn_s: list[float] = field(default_factory=list)  # finished planner turns, s
    turns_with_sims: int = 0  # of those, turns during which a simulation ran
    stopped_turns: int = 0
    stated: int = 0  # hypotheses the model stated (author planner)
    stand_ins: int = 0  # hypotheses physflow stated for it (author optimizer: the surrogate's claim)
    judged: int = 0  # of the model's, those with a verdict
    supported: int = 0  # of the model's, those the numbers supported
    refused: int = 0  # critic verdicts refused (the numbers said otherwise)


def agent_figures(run_dir: Path) -> AgentFigures:
    """What the agents did in the run at ``run_dir``, read from its journal and transcript."""
    f = AgentFigures()
    running: list[tuple[float, float]] = []  # (submitted, ended) of every simulation, UNIX s
    source: dict[str, str] = {}
    started: dict[str, float] = {}
    authors: dict[str, str | None] = {}  # hypothesis id -> who stated it
    for e in read_journal(run_dir / "journal.jsonl"):
        kind = e["event"]
        if kind == "proposed":
            source[e["task"]] = e.get("source", "")
        elif kind == "submitted":
            started[e["task"]] = e["t"]
            f.planner_sims += source.get(e["task"]) == "planner"
        elif kind in ("finished", "failed", "cancelled") and e["task"] in started:
            running.append((started.pop(e["task"]), e.get("t", math.inf)))
        elif kind == "hypothesis":
            authors[e["id"]] = e.get("author")
            if e.get("author") == "planner":
                f.stated += 1
            else:
                f.stand_ins += 1
            for pick in e.get("picks") or []:
                if pick.get("place") is None:
                    f.pick_errors += 1
                else:
                    f.places.append((pick["place"], pick["shown"]))
            if e.get("share") is not None:
                f.earned_share = e["share"]
        elif kind == "verdict":  # judged and supported: the model's own hypotheses
            mine = authors.get(e["id"]) == "planner"
            f.judged += mine
            f.supported += mine and e.get("verdict") == "supported"
            f.refused += e.get("critic_refused") is not None
    for turn in model_turns(transcript(run_dir)):
        if turn.cancelled:  # stopped before it answered: no output to be valid or not
            f.stopped_turns += turn.role == "planner"
            continue
        f.calls += 1
        f.invalid += turn.invalid
        if turn.role != "planner":
            continue
        f.turn_s.append(turn.seconds)
        f.turns_with_sims += any(s < turn.end and e > turn.start for s, e in running)
    return f


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    xs = sorted(values)
    i = q * (len(xs) - 1)
    lo = int(i)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (i - lo)


def _picks(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    places = [p for f in figs for p in f.places]
    if not places:
        return "none"
    chance = statistics.mean((n - 1) / 2 for _, n in places)
    return f"{len(places)}: {statistics.mean(p for p, _ in places):.2f} (chance {chance:.2f})"


def _score(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    places = [p for f in figs for p in f.places]
    return f"{statistics.mean(pick_score(p, n) for p, n in places):+.2f}" if places else "-"


def _share(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    ran, total = sum(f.planner_sims for f in figs), sum(o.started for o in outs)
    return f"{ran}/{total} = {ran / total:.2f}" if total else "-"


def _last_share(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    shares = [f.earned_share for f in figs if f.earned_share is not None]
    return " ".join(f"{s:.2f}" for s in shares) if shares else "no round"


def _validity(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    calls, bad = sum(f.calls for f in figs), sum(f.invalid for f in figs)
    return f"{bad}/{calls} = {100 * bad / calls:.1f}%" if calls else "no call"


def _latency(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    turns = [t for f in figs for t in f.turn_s]
    return f"{statistics.median(turns):.0f} / {percentile(turns, 0.95):.0f}" if turns else "no turn"


def _turns(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    return (f"{sum(len(f.turn_s) for f in figs)} ({sum(f.turns_with_sims for f in figs)}; "
            f"{sum(f.stopped_turns for f in figs)} stopped)")


def _hypotheses(figs: list[AgentFigures], outs: list[Outcome]) -> str:
    return (f"{sum(f.stated for f in figs)} / {sum(f.judged for f in figs)} / {sum(f.supported for f in figs)}"
            f" (+{sum(f.stand_ins for f in figs)})")


#: The agents' rows of the table: label, cell (the method's figures and outcomes), target.
AGENT_ROWS: list[tuple[str, Callable[[list[AgentFigures], list[Outcome]], str], str]] = [
    ("planner's sims / started", _share, "any (earned)"),
    ("picks: n, mean place", _picks, "below chance"),
    ("  mean pick score", _score, "> 0"),
    ("  unusable picks", lambda figs, outs: str(sum(f.pick_errors for f in figs)), ""),
    ("share at the last round", _last_share, ""),
    ("invalid outputs / calls", _validity, "<= 1%"),
    ("planner turn s, med / p95", _latency, ""),
    ("  turns (sims running; stopped)", _turns, ""),
    ("hyp. stated / judged / supp.", _hypotheses, ""),
    ("critic verdicts refused", lambda figs, outs: str(sum(f.refused for f in figs)), ""),
]


def table(outcomes: list[Outcome], figures: dict[tuple[str, int], AgentFigures], methods: list[str],
          tol: float = TOLERANCE) -> str:
    """Each figure a row, the methods side by side, with the ratio to the optimizer and the target."""
    outs = {m: [o for o in outcomes if o.method == m] for m in methods}
    shown = [m for m in methods if outs[m]]
    counts = {m: [o.to_tolerance(tol) or o.budget + 1 for o in outs[m]] for m in shown}
    opt = statistics.median(counts["optimizer"]) if "optimizer" in counts else None
    rows: list[tuple[str, list[str], str]] = [
        ("runs (reached tolerance)", [f"{len(outs[m])} ({sum(o.to_tolerance(tol) is not None for o in outs[m])})"
                                      for m in shown], ""),
        ("sims to tol: median", [f"{statistics.median(counts[m]):g}" for m in shown], ""),
        ("  per seed", [" ".join(map(str, counts[m])) for m in shown], ""),
        ("  ratio to optimizer", [f"{statistics.median(counts[m]) / opt:.2f}" if opt else "-" for m in shown],
         "physflow <= 1.00"),
    ]
    for label, cell, target in AGENT_ROWS:
        cells = []
        for m in shown:
            figs = [f for (meth, _), f in sorted(figures.items()) if meth == m]
            cells.append(cell(figs, outs[m]) if figs else "-")
        rows.append((label, cells, target))
    rows.append(("wall s per run, median", [f"{statistics.median(o.wall_s for o in outs[m]):.0f}" for m in shown], ""))
    width = max(len(r[0]) for r in rows)
    cols = [max(len(m), *(len(r[1][i]) for r in rows)) for i, m in enumerate(shown)]
    lines = [" | ".join([" " * width, *(f"{m:<{w}}" for m, w in zip(shown, cols, strict=True)), "target"]),
             "-+-".join(["-" * width, *("-" * w for w in cols), "-" * 16])]
    for label, cells, target in rows:
        lines.append(" | ".join([f"{label:<{width}}", *(f"{c:<{w}}" for c, w in zip(cells, cols, strict=True)),
                                 target]).rstrip())
    lines.append(f"sims to tol: results stored up to the first with chi2_hmf <= {tol:g}; a run that never reaches it "
                 "counts budget + 1. picks: place 0 = the surrogate's best of those shown. hyp.: the model's stated / "
                 "judged / supported (+ physflow's stand-ins, where the model gave none or its turn was stopped)")
    return "\n".join(lines)


def kept_runs(root: Path, methods: list[str]) -> tuple[list[Outcome], dict[tuple[str, int], AgentFigures]]:
    """The finished runs that ``--keep`` left in ``root`` (folders METHOD-SEED), scored again: a
    benchmark stopped part-way still gives the table of what it finished."""
    outcomes, figures = [], {}
    for folder in sorted(root.iterdir()):
        method, _, seed = folder.name.rpartition("-")
        journal = folder / "run" / "journal.jsonl"
        if method not in methods or not seed.isdigit() or not journal.exists():
            continue
        events = read_journal(journal)
        if not events or events[-1]["event"] != "campaign_ended" or events[-1].get("state") != "finished":
            continue  # cut off or cancelled: not a finished run
        o = outcome_of(folder / "run", method, int(seed))
        outcomes.append(o)
        if METHODS[method][0]:
            figures[(method, int(seed))] = agent_figures(o.run_dir)
    return outcomes, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    parser.add_argument("--budget", type=int, default=24, help="max_simulations per run (default 24)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"chi2_hmf that ends a campaign and counts as solved (default {TOLERANCE})")
    parser.add_argument("--coder", action="store_true", help="keep the coder in the team (its analyses and the "
                        "closing conclusion choose no simulation; they add minutes a run)")
    parser.add_argument("--backfill", choices=("none", "optimizer"), default="none",
                        help="budget.backfill of the agents' runs (default none: rounds pace the campaign)")
    parser.add_argument("--keep", type=Path, help="keep the run directories in this folder")
    parser.add_argument("--first-seed", type=int, default=0, metavar="K",
                        help="run seeds K, K+1, ... (more seeds into a --keep DIR; --table DIR scores them all)")
    parser.add_argument("--table", type=Path, metavar="DIR", help="run nothing: print the table of the finished "
                        "runs a --keep DIR holds (wall times then from their journals)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or args.seeds < 1 or args.budget < 1:
        print(f"error: --methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})" if unknown
              else "error: --seeds, --budget and --methods need at least one", file=sys.stderr)
        return 2
    if args.table:
        if not args.table.is_dir():
            print(f"error: --table: {args.table}: not a folder", file=sys.stderr)
            return 2
        outcomes, figures = kept_runs(args.table, methods)
        print(f"{len(outcomes)} finished runs in {args.table}: "
              + ", ".join(f"{o.method} {o.seed}" for o in sorted(outcomes, key=lambda o: (o.seed, o.method))))
        print(table(outcomes, figures, methods, args.tolerance))
        return 0
    prepare_environment()
    print(f"{args.seeds} seeds x {methods}; budget {args.budget}; coder {'on' if args.coder else 'off'}; "
          f"backfill {args.backfill}; "
          f"{os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average {load()}", flush=True)
    outcomes: list[Outcome] = []
    figures: dict[tuple[str, int], AgentFigures] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="physflow-bench-agents-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        target = root / "target.h5"
        t0 = time.perf_counter()
        make_target(target)
        print(f"target made in {time.perf_counter() - t0:.1f} s: {truth(target)}", flush=True)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for method in methods:  # interleaved, so the machine's noise spreads over every method
                folder = root / f"{method}-{seed}"
                folder.mkdir()
                shutil.copy(target, folder / "target.h5")
                shutil.copytree(EXAMPLES / "knowledge", folder / "knowledge")
                (folder / "wf.yaml").write_text(workflow_text(method, args.budget, args.coder, args.tolerance,
                                                              args.backfill))
                o = steer(folder, method, seed, random_search=method == "random")
                outcomes.append(o)
                if METHODS[method][0]:
                    figures[(method, seed)] = agent_figures(o.run_dir)
                print(f"  seed {seed} {method:<18} to tol {o.to_tolerance(args.tolerance) or '>' + str(o.budget):>3} "
                      f"best {o.best_value:.3f}  sources {o.sources}  ({o.reason}; {o.wall_s:.0f} s)", flush=True)
            if seed < args.first_seed + args.seeds - 1:  # the table so far: a run stopped early still has its figures
                print(f"\nafter seed {seed} ({time.perf_counter() - started:.0f} s):\n"
                      f"{table(outcomes, figures, methods, args.tolerance)}\n", flush=True)
    print(f"(total wall time {time.perf_counter() - started:.0f} s; load average {load()})\n")
    print(f"truth omega_m {TRUE['omega_m']}, sigma8 {TRUE['sigma8']}")
    print(table(outcomes, figures, methods, args.tolerance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
