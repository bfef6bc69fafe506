"""How many simulations does each strategy need to solve the cosmology problem?

The problem is ``workflows/examples/cosmology.yaml`` as shipped: the built-in particle-mesh code
(``nbody_pm`` at the shipped sizes, 2 ranks; 48^3 particles, 96^3 mesh and 10 steps until
2026-12-06, 96^3 / 192^3 / 20 since), find (omega_m, sigma8) with chi2_hmf at the tolerance
against a target simulated at hidden true parameters (the target file's
``true_omega_m``/``true_sigma8`` attributes, read only to score the result), at most 24
simulations, 2 at a time. Three strategies, each a real campaign in this process (``Campaign``
on the local site, real MPI simulations, journal and HDF5), differing only in who chooses:

``random``
    No agents; the campaign's optimizer is replaced by ``UniformRandom``: independent uniform
    draws in the box (log parameters on a log scale), blind to the results.
``optimizer``
    No agents: the optimizer steers alone (what ``suggest_parameters`` returns: a Gaussian
    process after 4 scrambled-Sobol start-up points).
``physflow``
    The embedded model (SmolLM2-135M-Instruct on llama.cpp, served as physflow serves it) as the
    planner with the default team, the same optimizer as its ``suggest_parameters`` tool and
    backfill.

Seed k is the optimizer's seed in ``optimizer`` and ``physflow`` (common random numbers; it also
orders the candidates shown to the planner; the planner's first advice draws the first start-up
points as its candidates, so physflow's backfill starts later in the same sequence), and the
random sampler's seed in ``random``; the simulation's initial phases stay those
of the target (seed 7), as the problem requires. Simulations to tolerance: results stored up to
and including the first with chi2_hmf <= 1, in the order they were stored; a run that never
reaches it counts as "> budget" (the median then is a lower bound). The distance to the truth is
that of the best point, in units of each parameter's range (and in raw units).

A run is real every time: nothing is cached. Default: 5 seeds (--seeds N for more).

Run from the repository root: ``python bench/sample_efficiency.py [--seeds N] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import h5py  # noqa: E402

from bench.campaign_runs import Outcome, load, prepare_environment, pyplot, save_figure, steer  # noqa: E402

EXAMPLES = REPO / "workflows" / "examples"
METHODS = ("random", "optimizer", "physflow")


def truth(target: Path = EXAMPLES / "data" / "cosmology_target.h5") -> dict[str, float]:
    """The parameters a cosmology target was made at (its ``true_*`` attributes; for scoring only)."""
    with h5py.File(target, "r") as f:
        return {"omega_m": float(f.attrs["true_omega_m"]), "sigma8": float(f.attrs["true_sigma8"])}


def distance(params: dict[str, float], bounds: dict[str, Any], true: dict[str, float]) -> float:
    """Euclidean distance to the truth, each parameter in units of its range (dimensionless)."""
    return math.sqrt(sum(((params[k] - v) / (bounds[k].max - bounds[k].min)) ** 2 for k, v in true.items()))


def workflow_text(method: str, budget: int, steps: int | None) -> str:
    text = (EXAMPLES / "cosmology.yaml").read_text()
    text = text.replace("max_simulations: 24", f"max_simulations: {budget}")
    if steps is not None:
        text = text.replace("steps: 10,", f"steps: {steps},")
    if method != "physflow":
        text += "agents: {planner: {enabled: false}}\n"
    return text


def run_one(method: str, seed: int, budget: int, folder: Path, steps: int | None) -> Outcome:
    folder.mkdir(parents=True)
    for name in ("data", "knowledge"):
        shutil.copytree(EXAMPLES / name, folder / name)
    (folder / "wf.yaml").write_text(workflow_text(method, budget, steps))
    return steer(folder, method, seed, random_search=method == "random")


def summary(outcomes: list[Outcome], tol: float, true: dict[str, float], bounds: dict[str, Any]) -> str:
    lines = [f"{'method':<10} {'seed':>4} {'to tol':>7} {'started':>7} {'best chi2':>9} {'omega_m':>8} "
             f"{'sigma8':>7} {'dist':>6} {'wall s':>7}  sources"]
    for o in outcomes:
        n = o.to_tolerance(tol)
        lines.append(f"{o.method:<10} {o.seed:>4} {n if n else '>' + str(o.budget):>7} {o.started:>7} "
                     f"{o.best_value:>9.3f} {o.best.get('omega_m', math.nan):>8.3f} "
                     f"{o.best.get('sigma8', math.nan):>7.3f}"
                     f" {distance(o.best, bounds, true) if o.best else math.nan:>6.3f} {o.wall_s:>7.0f}  "
                     + ", ".join(f"{k} {v}" for k, v in sorted(o.sources.items())))
    lines.append("")
    lines.append(f"truth: omega_m {true['omega_m']}, sigma8 {true['sigma8']}; tolerance chi2_hmf <= {tol}; "
                 "'>N': not reached within the budget (counted as N+1 in the median, a lower bound)")
    lines.append(f"{'method':<10} {'runs':>4} {'reached':>7} {'median sims to tol':>18} {'mean':>6} "
                 f"{'median dist':>11} {'median best chi2':>16}")
    medians: dict[str, float] = {}
    for method in METHODS:
        rs = [o for o in outcomes if o.method == method]
        if not rs:
            continue
        counts = [o.to_tolerance(tol) or o.budget + 1 for o in rs]
        medians[method] = statistics.median(counts)
        lines.append(f"{method:<10} {len(rs):>4} {sum(o.to_tolerance(tol) is not None for o in rs):>7} "
                     f"{medians[method]:>18.1f} {statistics.mean(counts):>6.1f} "
                     f"{statistics.median(distance(o.best, bounds, true) for o in rs if o.best):>11.3f} "
                     f"{statistics.median(o.best_value for o in rs):>16.3f}")
    if {"physflow", "optimizer", "random"} <= set(medians):
        lines.append(f"physflow / optimizer: {medians['physflow'] / medians['optimizer']:.2f} (target <= 1); "
                     f"physflow / random: {medians['physflow'] / medians['random']:.2f} (target <= 0.5)")
    return "\n".join(lines)


def figure(outcomes: list[Outcome], tol: float) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 4))
    colors = {"random": "tab:grey", "optimizer": "tab:blue", "physflow": "tab:red"}
    for o in outcomes:
        best = [min(o.values[:i + 1]) for i in range(len(o.values))]
        ax.step(range(1, len(best) + 1), best, where="post", color=colors[o.method], alpha=0.7,
                label=o.method if o.seed == min(x.seed for x in outcomes if x.method == o.method) else None)
    ax.axhline(tol, color="black", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("simulations stored")
    ax.set_ylabel("best chi2_hmf so far")
    ax.legend()
    return save_figure(fig, "sample_efficiency.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy (default 5)")
    parser.add_argument("--budget", type=int, default=24, help="max_simulations per run (default 24, as shipped)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--steps", type=int, help="override the simulation's steps (default: as shipped, 10)")
    parser.add_argument("--quick", action="store_true", help="1 seed, budget 6, 4 steps (a smoke test, "
                        "not the problem as shipped)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.steps = 1, 6, 4
    methods = [m for m in args.methods.split(",") if m]
    prepare_environment()
    from physflow.workflows.validate import check_workflow

    tol = check_workflow(EXAMPLES / "cosmology.yaml").workflow.spec.objective.tolerance
    bounds = check_workflow(EXAMPLES / "cosmology.yaml").adapter.parameters
    true = truth()
    print(f"{args.seeds} seeds x {methods}; budget {args.budget}; {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average {load()}", flush=True)
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="physflow-bench-sample-") as tmp:
        for seed in range(args.seeds):
            for method in methods:  # interleaved, so machine noise spreads over all three
                o = run_one(method, seed, args.budget, Path(tmp) / f"{method}-{seed}", args.steps)
                outcomes.append(o)
                print(f"  seed {seed} {method:<9} to tol {o.to_tolerance(tol) or '>' + str(o.budget)} "
                      f"best {o.best_value:.3f} ({o.reason}; {o.wall_s:.0f} s)", flush=True)
    path = figure(outcomes, tol)
    print(f"(total wall time {time.perf_counter() - started:.0f} s; load average {load()}; figure {path})\n")
    print(summary(outcomes, tol, true, bounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
