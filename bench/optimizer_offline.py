"""Offline comparison of samplers on a stand-in of the cosmology problem (a development aid).

The stand-in: ``bench/data/cosmology_grid.npz`` (``bench/cosmology_grid.py``: the real
simulation's chi2_hmf on a 13 x 13 grid over omega_m in [0.1, 0.5], sigma8 in [0.5, 1.1]),
interpolated smoothly (cubic in log chi2_hmf with scipy's RegularGridInterpolator). It keeps the
problem's shape, a curved degenerate valley whose floor dips below the tolerance over a few
percent of the box, but not the real surface's jaggedness below the grid spacing (halo counts
change in steps), so its numbers are not those of real campaigns. THIS IS A STAND-IN, NOT THE
BENCHMARK OF RECORD: that is ``bench/sample_efficiency.py``, which runs real campaigns. Against
the real simulation on the 25 x 25 grid (``bench/data/cosmology_grid_25.npz``) at the points
between the 13 x 13 nodes the interpolant is off by 8% (median) and agrees on chi2_hmf <= 1 at
98% of them; chi2_hmf <= 1 covers 4.3% of the box in the interpolant, 3.7% of the real grid's
points. ``--grid bench/data/cosmology_grid_25.npz`` runs on that finer grid instead.

Each run replays the campaign's loop without simulations: budget 24, 2 in flight, first
``suggest(2)``, then as each finishes (first submitted, first finished) ``observe`` it and
``suggest(1, pending=[the other])``. Simulations to tolerance: results up to and including the
first with chi2_hmf <= 1 (runs that never reach it count as budget + 1 in the mean and make the
median a lower bound, shown as "> 24"). Strategies, seed k for each run k:

``random``       independent uniform draws (what random search meant before the GP optimizer)
``sobol``        physflow's ``Optimizer`` held in its start-up phase (``startup`` > budget):
                 scrambled Sobol points
``tpe``          the previous optimizer: 4 uniform start-up points, then TPE throughout
                 (physflow's ``parzen_batch``, the TPE it hands over to at many results)
``tpe-optuna``   the same with Optuna's multivariate TPE, which physflow used before
``gp``           physflow's ``Optimizer`` as shipped (GP Bayesian optimisation)
``gp[k=v,..]``   with class attributes or ``startup`` changed (``--gp startup=6 candidates=4096``,
                 ``--gp fantasy_best=false``)

``--rounds K`` replays a campaign whose rounds fix their batch when they start: K points drawn at
once (``suggest(K, pending=running + queued)``) whenever fewer than 2 wait to start; each then
waits its turn, so the last of a batch runs several results after it was chosen.

``--held K`` replays physflow's rounds as they run now with a planner slower than the round's
simulations (``Campaign.held``): K points offered at once when every slot is idle (the planner's
turn ended after the last simulation of the round before), each started as a slot frees, as
offered while no result came in since (or in the start-up design), else replaced by a fresh
``suggest(1, pending=running)``. Against the default replay it measures what the rounds' idle
gaps and pairs started together cost in simulations. ``--pinned P`` runs the first P points of
each held round as offered whatever came in since: the simulations a round's hypothesis names,
which must run for its claim to be tested (``Held.pinned``).

``--spare`` replays the backfill's spare points (``workflows.backfill``, used where a fit takes
over ``SPARE_ABOVE`` of a simulation): while every slot is busy the optimizer draws a spare, and
the slot that frees next starts it at once, so each point misses the result that freed its slot.
Against the default replay it measures what a spare costs in simulations, the price of not
waiting for a fresh fit. ``--spare unless-best`` draws the point afresh where the result that
frees the slot is a new best (where a spare is most out of date).

It also times ``suggest`` at 10, 50 and 200 observations.

Run from the repository root: ``python bench/optimizer_offline.py [--seeds 100] [--gp K=V ...]``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import RegularGridInterpolator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from physflow.optimizer import Optimizer  # noqa: E402
from physflow.vocabulary.workflow import ParameterSpec  # noqa: E402

GRID = REPO / "bench" / "data" / "cosmology_grid.npz"
PARAMETERS = {"omega_m": ParameterSpec(min=0.1, max=0.5), "sigma8": ParameterSpec(min=0.5, max=1.1)}
BUDGET, CONCURRENT, TOLERANCE = 24, 2, 1.0
Objective = Callable[[dict[str, float]], float]


def stand_in(path: Path = GRID) -> Objective:
    """chi2_hmf(params), interpolated cubically in log chi2_hmf from the grid in ``path``."""
    with np.load(path) as f:
        axes, chi2 = (f["omega_m"], f["sigma8"]), f["chi2_hmf"]
    if np.isnan(chi2).any():
        raise SystemExit(f"{path} is incomplete: run bench/cosmology_grid.py to finish it")
    interp = RegularGridInterpolator(axes, np.log(np.maximum(chi2, 1e-3)), method="cubic")
    return lambda p: float(np.exp(interp([[p["omega_m"], p["sigma8"]]])[0]))


class RandomSearch:
    """Independent uniform draws (the same interface as ``Optimizer``)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def observe(self, params: dict[str, float], value: float) -> None:
        pass

    def suggest(self, n: int = 1, pending: Any = None) -> list[dict[str, float]]:
        return [{k: self.rng.uniform(p.min, p.max) for k, p in PARAMETERS.items()} for _ in range(n)]


class PreviousTPE(Optimizer):
    """The optimizer before the GP: uniform start-up draws, then TPE throughout."""

    gp_max_observations = 0
    calls = 0  # its draws are keyed by the call, as they were

    def suggest(self, n: int = 1, pending: Any = None) -> list[dict[str, float]]:
        self.calls += 1
        return super().suggest(n, pending)

    def _sobol_points(self, start: int, n: int) -> np.ndarray:
        rng = random.Random(self.seed * 1_000_003 + self.calls)
        return np.array([[rng.uniform(0.0, 1.0) for _ in self.parameters] for _ in range(n)])


class OptunaTPE(PreviousTPE):
    """The same with Optuna's multivariate TPE, which physflow used until its own ``parzen_batch``
    (kept here as the reference it is measured against): the study rebuilt from every result for
    each call, each point of a batch one ask and a liar tell."""

    def _suggest_tpe(self, observed: list[tuple[dict[str, float], float]], n: int,
                     pending: list[dict[str, float]], rng: np.random.Generator) -> list[dict[str, float]]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = {name: optuna.distributions.FloatDistribution(p.min, p.max, log=p.log)
                         for name, p in self.parameters.items()}
        sampler = optuna.samplers.TPESampler(seed=(self.seed * 1_000_003 + self.calls) % 2**32,
                                             n_startup_trials=self.startup, multivariate=True)
        study = optuna.create_study(direction=self.goal, sampler=sampler)
        liar = max(v for _, v in observed)
        for params, value in observed + [(p, liar) for p in pending]:
            inside = {k: min(max(float(params[k]), p.min), p.max) for k, p in self.parameters.items()}
            study.add_trial(optuna.trial.create_trial(params=inside, distributions=distributions, value=value))
        out = []
        for _ in range(n):
            trial = study.ask(distributions)
            out.append(dict(trial.params))
            study.tell(trial, liar)
        return out


def gp_variant(settings: dict[str, str]) -> Callable[[int], Optimizer]:
    """A factory of ``Optimizer`` with class attributes (or ``startup``) set as in ``settings``."""
    startup = int(settings["startup"]) if "startup" in settings else None
    def value(key: str, text: str) -> Any:
        kind = type(getattr(Optimizer, key))
        return text.lower() in ("1", "true", "yes") if kind is bool else kind(text)

    attrs = {k: value(k, v) for k, v in settings.items() if k != "startup"}
    cls = type("Variant", (Optimizer,), attrs)
    return lambda seed: cls(PARAMETERS, "minimize", seed=seed, startup=startup)


def replay(opt: Any, objective: Objective) -> list[float]:
    """The objective values in the order a campaign with 2 in flight would store them."""
    values: list[float] = []
    in_flight = deque(opt.suggest(min(CONCURRENT, BUDGET), pending=[]))
    submitted = len(in_flight)
    while in_flight:
        params = in_flight.popleft()
        value = objective(params)
        opt.observe(params, value)
        values.append(value)
        free = min(CONCURRENT - len(in_flight), BUDGET - submitted)
        if free > 0:
            new = opt.suggest(free, pending=list(in_flight))
            in_flight.extend(new)
            submitted += len(new)
    return values


def replay_rounds(opt: Any, objective: Objective, size: int) -> list[float]:
    """The same, with the points drawn as a physflow round draws its batch when every point is
    fixed when the round starts: ``size`` at once (``suggest(size, pending=...)``) whenever
    fewer than ``CONCURRENT`` wait to start, each then waiting its turn in the queue."""
    values: list[float] = []
    running: deque[dict[str, float]] = deque()
    queue: deque[dict[str, float]] = deque()
    submitted = 0

    def top_up() -> None:
        nonlocal submitted
        while len(running) < CONCURRENT and queue:
            running.append(queue.popleft())
        if len(queue) < CONCURRENT and submitted < BUDGET:
            new = opt.suggest(min(size, BUDGET - submitted), pending=[*running, *queue])
            queue.extend(new)
            submitted += len(new)
            while len(running) < CONCURRENT and queue:
                running.append(queue.popleft())

    top_up()
    while running:
        params = running.popleft()
        value = objective(params)
        opt.observe(params, value)
        values.append(value)
        top_up()
    return values


def replay_held(opt: Any, objective: Objective, size: int, pinned: int = 0) -> list[float]:
    """The objective values in the order physflow's held rounds store them (``--held``; the
    first ``pinned`` of each round run as offered, ``--pinned``)."""
    values: list[float] = []
    running: deque[dict[str, float]] = deque()
    held: deque[dict[str, float]] = deque()
    submitted = seen = pins = 0
    while submitted < BUDGET or running:
        if not held and not running:  # every slot idle: the next round's batch, offered
            held.extend(opt.suggest(min(size, BUDGET - submitted), pending=[]))
            seen, pins = len(values), pinned
        while len(running) < CONCURRENT and held and submitted < BUDGET:
            params = held.popleft()
            pins -= 1
            if pins < 0 and len(values) != seen and len(values) >= getattr(opt, "startup", 0):
                params = opt.suggest(1, pending=list(running))[0]
            running.append(params)
            submitted += 1
        params = running.popleft()
        value = objective(params)
        opt.observe(params, value)
        values.append(value)
    return values


def replay_spare(opt: Any, objective: Objective, unless_best: bool = False) -> list[float]:
    """The objective values in the order a campaign with spare points stores them (``--spare``):
    each point is drawn while every slot is busy, before the result that frees its slot
    (``unless_best``: a result better than every one before it has the slot's point drawn afresh)."""
    values: list[float] = []
    in_flight = deque(opt.suggest(min(CONCURRENT, BUDGET), pending=[]))
    submitted = len(in_flight)
    spare = opt.suggest(1, pending=list(in_flight)) if submitted < BUDGET else []
    while in_flight:
        params = in_flight.popleft()
        value = objective(params)
        opt.observe(params, value)
        values.append(value)
        if submitted < BUDGET:
            if unless_best and value < min(values[:-1], default=math.inf):
                spare = opt.suggest(1, pending=list(in_flight))
            in_flight.append(spare[0])
            submitted += 1
            spare = opt.suggest(1, pending=list(in_flight)) if submitted < BUDGET else []
    return values


def to_tolerance(values: list[float]) -> int:
    """Simulations up to the first within tolerance; BUDGET + 1 if none."""
    return next((i + 1 for i, v in enumerate(values) if v <= TOLERANCE), BUDGET + 1)


def evaluate(make: Callable[[int], Any], objective: Objective, seeds: int, rounds: int = 0,
             held: int = 0, pinned: int = 0, spare: str = "") -> dict[str, float]:
    """Median and mean simulations to tolerance, fraction reached and seconds per run (``rounds``:
    batches of that size drawn ahead, ``replay_rounds``; ``held``: physflow's held rounds,
    ``replay_held``; neither: one point as each slot frees)."""
    start = time.perf_counter()

    def run(opt: Any) -> list[float]:
        if rounds:
            return replay_rounds(opt, objective, rounds)
        if spare:
            return replay_spare(opt, objective, spare == "unless-best")
        return replay_held(opt, objective, held, pinned) if held else replay(opt, objective)

    counts = [to_tolerance(run(make(seed))) for seed in range(seeds)]
    return {"median": statistics.median(counts), "mean": statistics.fmean(counts),
            "reached": sum(c <= BUDGET for c in counts) / seeds, "s_per_run": (time.perf_counter() - start) / seeds}


def suggest_seconds(objective: Objective, sizes: tuple[int, ...] = (10, 50, 200)) -> dict[int, tuple[float, float]]:
    """Seconds of ``suggest(1, pending=[one])`` with n observations: first call and mean of 3 more."""
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        opt = Optimizer(PARAMETERS, seed=0)
        for u in rng.random((n, 2)):
            params = {k: p.min + ui * (p.max - p.min) for ui, (k, p) in zip(u, PARAMETERS.items(), strict=True)}
            opt.observe(params, objective(params))
        pending = [opt.best()[0]]
        times = []
        for _ in range(4):
            tick = time.perf_counter()
            opt.suggest(1, pending=pending)
            times.append(time.perf_counter() - tick)
        out[n] = (times[0], statistics.fmean(times[1:]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="runs per strategy (default 100)")
    parser.add_argument("--grid", type=Path, default=GRID, help=f"grid file (default {GRID})")
    parser.add_argument("--only", nargs="*", default=["random", "sobol", "tpe", "gp"],
                        help="strategies to run (default: random sobol tpe gp)")
    parser.add_argument("--gp", nargs="*", action="append", default=[], metavar="K=V",
                        help="an extra GP row with these settings (repeatable), e.g. --gp startup=6 polish=8")
    parser.add_argument("--rounds", type=int, default=0, metavar="K",
                        help="draw K points at once whenever fewer than 2 wait to start (a round whose batch is "
                             "fixed when it starts), instead of one point as each slot frees")
    parser.add_argument("--held", type=int, default=0, metavar="K",
                        help="physflow's held rounds of K with idle gaps between them (replay_held)")
    parser.add_argument("--pinned", type=int, default=0, metavar="P",
                        help="with --held: the first P points of each round run as offered (a hypothesis's)")
    parser.add_argument("--spare", nargs="?", const="always", default="", choices=["always", "unless-best"],
                        help="each point drawn as a spare while every slot is busy, before the result that "
                             "frees its slot (replay_spare); unless-best: not after a new best result")
    parser.add_argument("--no-timing", action="store_true", help="skip the suggest timings")
    parser.add_argument("--budget", type=int, default=BUDGET, help=f"simulations a run (default {BUDGET})")
    parser.add_argument("--concurrent", type=int, default=CONCURRENT, help=f"in flight (default {CONCURRENT})")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"chi2_hmf that counts as solved (default {TOLERANCE})")
    args = parser.parse_args(argv)
    globals().update(BUDGET=args.budget, CONCURRENT=args.concurrent, TOLERANCE=args.tolerance)
    objective = stand_in(args.grid)
    strategies: dict[str, Callable[[int], Any]] = {
        "random": RandomSearch,
        "sobol": lambda seed: Optimizer(PARAMETERS, seed=seed, startup=10**9),
        "tpe": lambda seed: PreviousTPE(PARAMETERS, seed=seed),
        "tpe-optuna": lambda seed: OptunaTPE(PARAMETERS, seed=seed),
        "gp": lambda seed: Optimizer(PARAMETERS, seed=seed)}
    strategies = {k: v for k, v in strategies.items() if k in args.only}
    for settings in args.gp:
        pairs = dict(s.split("=", 1) for s in settings)
        strategies[f"gp[{','.join(settings)}]"] = gp_variant(pairs)
    print(f"stand-in {args.grid.name}; {args.seeds} seeds; budget {BUDGET}, {CONCURRENT} in flight, "
          f"tolerance chi2_hmf <= {TOLERANCE}; "
          + (f"rounds of {args.rounds} drawn ahead" if args.rounds else
             f"held rounds of {args.held} ({args.pinned} pinned), idle between rounds" if args.held
             else f"spare points ({args.spare}), drawn before the result that frees their slot" if args.spare
             else "one point as each slot frees"))
    print(f"{'strategy':<32} {'median':>7} {'mean':>6} {'reached':>8} {'s/run':>6}")
    for name, make in strategies.items():
        r = evaluate(make, objective, args.seeds, args.rounds, args.held, args.pinned, args.spare)
        median = f"> {BUDGET}" if r["median"] > BUDGET else f"{r['median']:g}"
        print(f"{name:<32} {median:>7} {r['mean']:>6.1f} {r['reached']:>8.0%} {r['s_per_run']:>6.2f}", flush=True)
    if not args.no_timing:
        for n, (first, later) in suggest_seconds(objective).items():
            print(f"suggest with {n:>3} observations: {1e3 * first:6.0f} ms first call, {1e3 * later:6.0f} ms later "
                  f"(warm-started fit)")
    print("mean counts a run that never reaches the tolerance as", BUDGET + 1, "; this is a stand-in",
          "(bench/sample_efficiency.py runs the real campaigns)")


if __name__ == "__main__":
    main()
