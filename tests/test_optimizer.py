"""physflow.optimizer: suggestions stay in bounds, are reproducible, spread out in a batch, cope with
odd values, and the GP finds a narrow valley's floor far sooner than random search."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest

from physflow.optimizer import Optimizer, warp
from physflow.vocabulary.workflow import ParameterSpec

Params = dict[str, float]
VALLEY = {"x": ParameterSpec(min=-2.0, max=2.0), "y": ParameterSpec(min=-1.0, max=3.0)}
MIXED = {"rate": ParameterSpec(min=1e-4, max=1e2, log=True), "x": ParameterSpec(min=-1.0, max=1.0)}


def rosenbrock(p: Params) -> float:
    """A curved valley along y = x^2, minimum 0 at (1, 1)."""
    return (1.0 - p["x"]) ** 2 + 100.0 * (p["y"] - p["x"] ** 2) ** 2


def campaign(opt, objective: Callable[[Params], float], budget: int) -> list[tuple[Params, float]]:
    """Results in the order a campaign with 2 simulations in flight stores them (first in, first out)."""
    out: list[tuple[Params, float]] = []
    in_flight = deque(opt.suggest(2, pending=[]))
    submitted = len(in_flight)
    while in_flight:
        params = in_flight.popleft()
        value = objective(params)
        opt.observe(params, value)
        out.append((params, value))
        if submitted < budget:
            new = opt.suggest(1, pending=list(in_flight))
            in_flight.extend(new)
            submitted += len(new)
    return out


def in_bounds(params: Params, parameters: dict[str, ParameterSpec]) -> bool:
    return set(params) == set(parameters) and all(p.min <= params[k] <= p.max for k, p in parameters.items())


def test_suggestions_stay_in_bounds_including_log_parameters():
    # The optimum sits in a corner (smallest rate, largest x): the GP pushes against both bounds.
    opt = Optimizer(MIXED, seed=3)
    results = campaign(opt, lambda p: math.log10(p["rate"]) - p["x"], budget=16)
    assert all(in_bounds(p, MIXED) for p, _ in results)
    more = opt.suggest(5, pending=[results[-1][0]])
    assert len(more) == 5 and all(in_bounds(p, MIXED) for p in more)
    # A log parameter is spread on a log scale: uniform in value, 4 start-up points would all but
    # surely lie above 1e-1 (probability 0.999 each); on the log scale about half lie below.
    startup = [p["rate"] for p, _ in results[: opt.startup]]
    assert sum(r < 1e-1 for r in startup) >= 2
    best, _ = opt.best()
    assert best["rate"] < 1e-2 and best["x"] > 0.5, best


def test_same_seed_and_calls_give_the_same_suggestions_another_seed_others():
    runs = [campaign(Optimizer(VALLEY, seed=seed), rosenbrock, budget=10) for seed in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert [p for p, _ in runs[0]] != [p for p, _ in runs[2]]


def test_a_suggestion_follows_from_the_data_not_from_the_calls_before_it():
    """The same seed, results and pending points give the same points whatever was asked before
    (a planner's candidates beside the loop's calls; a resumed campaign's fresh optimizer), and a
    batch's first point is the point asked alone. Keyed by the call count and warm-started from
    the last fit, two campaigns with the same results parted (bench/agent_value.py, seeds 12-14)."""
    first = Optimizer(VALLEY, seed=4)
    results = campaign(first, rosenbrock, budget=9)
    other = Optimizer(VALLEY, seed=4)
    for params, value in results[:5]:
        other.observe(params, value)
    other.advice(6, pending=[results[6][0]])  # a planner's round on fewer results
    for params, value in results[5:]:
        other.observe(params, value)
    other.suggest(3, pending=[])
    pending = [{"x": 0.3, "y": 0.2}]
    alone = first.suggest(1, pending=pending)
    assert other.suggest(1, pending=pending) == alone
    assert first.suggest(3, pending=pending)[0] == alone[0]


def test_the_start_up_design_continues_after_a_resume_and_never_repeats():
    """Start-up points are the design's next ones: a fresh optimizer that sees the results and
    the pending points continues where the campaign's was (the design's 5th and 6th points, not
    its 1st and 2nd again), and two calls on the same data never hand out the same point."""
    first = Optimizer(VALLEY, seed=8, startup=8)
    design = first.suggest(4) + first.suggest(2)
    resumed = Optimizer(VALLEY, seed=8, startup=8)
    for params in design[:2]:
        resumed.observe(params, rosenbrock(params))
    assert resumed.suggest(2, pending=design[2:4]) == design[4:6]
    again = resumed.suggest(2, pending=design[2:4])
    assert not any(p in design for p in again)


def test_a_batch_with_pending_points_spreads_out():
    opt = Optimizer(VALLEY, seed=1)
    campaign(opt, rosenbrock, budget=8)
    pending = [{"x": 1.0, "y": 1.2}, {"x": 0.5, "y": 0.5}]  # near the minimum (1, 1), and elsewhere
    batch = opt.suggest(4, pending=pending)
    assert len(batch) == 4 and all(in_bounds(p, VALLEY) for p in batch)
    points = [(p["x"], p["y"]) for p in batch + pending + [q for q, _ in opt.observed]]
    gaps = [max(abs(a[0] - b[0]), abs(a[1] - b[1])) for i, a in enumerate(points) for b in points[:i]]
    assert min(gaps) > 1e-3, "a suggestion repeats a result, a pending point or another suggestion"


def test_a_batch_drawn_at_once_spreads_along_a_valley_instead_of_lining_up():
    """Kriging believer: each point of a batch enters the GP as a fantasy at its predicted value
    before the next is chosen, and a fantasy predicted below the best is the new best to beat.
    Without the latter the points of a batch lined up within a hair of each other (the mean of the
    smallest gap in a batch of 4, seeds 0-9 on the tilted valley after 10 results, was 0.008 of the
    box; with it 0.029)."""
    gaps = []
    for seed in range(10):
        opt = Optimizer(UNIT, seed=seed)
        campaign(opt, tilted_valley, budget=10)
        points = [(p["x"], p["y"]) for p in opt.suggest(4, pending=[])]
        gaps.append(min(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for i, a in enumerate(points) for b in points[:i]))
    assert sum(gaps) / len(gaps) > 0.015, gaps


def tilted_valley(p: Params) -> float:
    """A narrow straight valley across the diagonal (widths 0.03 across, 0.3 along): a degeneracy
    between two parameters. Minimum 0 at (0.7, 0.5)."""
    return ((p["x"] + p["y"] - 1.2) / 0.03) ** 2 + ((p["x"] - p["y"] - 0.2) / 0.3) ** 2


UNIT = {"x": ParameterSpec(min=0.0, max=1.0), "y": ParameterSpec(min=0.0, max=1.0)}
#: Measured over seeds 0-9 with 20 evaluations: the GP's best was 0.02-0.34 (all 10 below 0.5),
#: random search's 0.63-7.5 (none; over 100 seeds about 1 in 7 gets below 0.5).
TILTED_THRESHOLD, TILTED_BUDGET = 0.5, 20


class RandomSearch:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def observe(self, params: Params, value: float) -> None:
        pass

    def suggest(self, n: int, pending: list[Params] | None = None) -> list[Params]:
        return [{k: self.rng.uniform(p.min, p.max) for k, p in UNIT.items()} for _ in range(n)]


def reaches(opt) -> bool:
    return min(v for _, v in campaign(opt, tilted_valley, TILTED_BUDGET)) <= TILTED_THRESHOLD


def test_gp_finds_a_narrow_diagonal_valley_floor_where_random_search_does_not():
    gp = sum(reaches(Optimizer(UNIT, seed=seed)) for seed in range(10))
    rnd = sum(reaches(RandomSearch(seed)) for seed in range(10))
    assert gp >= 8, f"GP reached {TILTED_THRESHOLD} in {gp} of 10 runs"
    assert rnd <= 3, f"random search reached it in {rnd} of 10 runs: the test no longer separates them"


def test_maximize_finds_the_maximum():
    opt = Optimizer(VALLEY, goal="maximize", seed=2)
    results = campaign(opt, lambda p: 5.0 - (p["x"] - 0.7) ** 2 - (p["y"] - 2.0) ** 2, budget=14)
    best, value = opt.best()
    assert value == max(v for _, v in results) and value > 5.0 - 0.01, (best, value)


@pytest.mark.parametrize("values", [[3.0] * 6, [0.0] * 6, [0.0, -1.0, -1e9, 2.0, 0.0, 1e12]])
def test_constant_zero_negative_or_huge_values_do_not_crash(values):
    opt = Optimizer(VALLEY, seed=0)
    for value, params in zip(values, opt.suggest(len(values)), strict=True):
        opt.observe(params, value)
    for bad in (math.nan, math.inf, -math.inf):
        opt.observe({"x": 0.0, "y": 0.0}, bad)
    assert len(opt.observed) == len(values)  # non-finite values are skipped
    batch = opt.suggest(3, pending=[{"x": 0.0, "y": 0.0}])
    assert len(batch) == 3 and all(in_bounds(p, VALLEY) for p in batch)


def test_warp_is_monotone_and_finite():
    for values in ([1e-3, 0.5, 1.0, 70.0], [0.0, 2.0, 5.0], [-3.0, -1.0, 4.0], [2.0, 2.0]):
        z = warp(np.array(values), "minimize")
        assert np.all(np.isfinite(z)) and np.all(np.diff(z) >= 0)
        assert np.all(np.diff(warp(np.array(values), "maximize")) <= 0)


def test_many_results_use_tpe_instead_of_the_gp(monkeypatch):
    class Small(Optimizer):
        gp_max_observations = 6

    opt = Small(VALLEY, seed=0)
    campaign(opt, rosenbrock, budget=6)
    assert len(opt.observed) == 6

    def no_gp(*args, **kwargs):
        raise AssertionError("the GP ran above gp_max_observations")

    monkeypatch.setattr(opt, "_suggest_gp", no_gp)
    results = campaign(opt, rosenbrock, budget=4)
    assert len(results) == 4 and all(in_bounds(p, VALLEY) for p, _ in results)


def test_many_simulations_in_flight_hand_over_to_tpe(monkeypatch):
    """From ``gp_max_pending`` points pending on, TPE suggests (a GP point costs 100-200 ms: with
    hundreds in flight the slots would wait for it); below, the GP."""
    opt = Optimizer(VALLEY, seed=0)
    campaign(opt, rosenbrock, budget=8)
    paths = []
    monkeypatch.setattr(opt, "_suggest_gp", lambda observed, n, pending, rng: paths.append("gp") or [])
    monkeypatch.setattr(opt, "_suggest_tpe", lambda observed, n, pending, rng: paths.append("tpe") or [])
    many = [{"x": i / 40, "y": 0.0} for i in range(opt.gp_max_pending)]
    opt.suggest(1, pending=many[:-1])
    opt.suggest(1, pending=many)
    assert paths == ["gp", "tpe"]


def test_with_many_results_and_pending_points_a_call_sees_a_bounded_sample(monkeypatch):
    """TPE sees the best ``tpe_best`` results and a uniform sample of the others, ``tpe_max_observations``
    in all, in their order; a call sees the latest ``max_pending`` pending points: a call's cost
    stops growing with the campaign. The sample is the same for the same seed and data."""

    class Bounded(Optimizer):
        gp_max_observations = 6
        tpe_max_observations = 40
        tpe_best = 10
        max_pending = 5

    rng = random.Random(0)
    opt = Bounded(VALLEY, seed=3)
    for _ in range(300):
        p = {"x": rng.uniform(-2, 2), "y": rng.uniform(-1, 3)}
        opt.observe(p, rosenbrock(p))
    seen = []
    monkeypatch.setattr(opt, "_suggest_tpe", lambda observed, n, pending, rng: seen.append((observed, pending)) or [])
    pending = [{"x": i / 10, "y": 0.0} for i in range(12)]
    opt.suggest(3, pending=pending)
    observed, told = seen[-1]
    assert told == pending[-5:]
    assert len(observed) == 40 and len({id(o) for o in observed}) == 40
    order = {id(o): i for i, o in enumerate(opt.observed)}
    assert [order[id(o)] for o in observed] == sorted(order[id(o)] for o in observed)  # in their order
    best10 = sorted(opt.observed, key=lambda o: o[1])[:10]
    assert all(any(o is b for o in observed) for b in best10)
    opt.suggest(3, pending=pending)
    assert [id(o) for o in seen[-1][0]] == [id(o) for o in observed]  # the same data draw the same sample


def test_many_results_refit_the_gp_only_as_they_grow(monkeypatch):
    """From ``restart_below`` results on, a suggestion reuses the last fitted hyperparameters until
    the results have grown by ``refit_growth``; fewer results refit every time."""
    import physflow.optimizer as optimizer

    class Quick(Optimizer):
        restart_below = 8
        refit_growth = 0.5

    opt = Quick(VALLEY, seed=0)
    fitted_at = []
    real_fit = optimizer.fit_hyper

    def counting_fit(*args, **kwargs):
        fitted_at.append(len(opt.observed))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(optimizer, "fit_hyper", counting_fit)
    results = campaign(opt, rosenbrock, budget=20)
    assert all(in_bounds(p, VALLEY) for p, _ in results)
    # Sobol points until 4 results; a fit at each of 4-7 results (below restart_below); from 8 on
    # the fit made at 7 serves until 7 x 1.5 = 10.5 results, so the next are at 11 and 17.
    assert fitted_at == [4, 5, 6, 7, 11, 17], fitted_at


def test_suggestions_from_several_threads_while_results_arrive():
    """The campaign asks from a worker thread and an agent's tool from another while the loop
    observes results: every call must see a consistent copy of the results."""
    import threading
    import time

    opt = Optimizer(VALLEY, seed=3, startup=4)
    for p in opt.suggest(4):
        opt.observe(p, rosenbrock(p))
    errors: list[BaseException] = []
    points: list[Params] = []

    def ask() -> None:
        try:
            for _ in range(3):
                points.extend(opt.suggest(1))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    rng = random.Random(0)
    for _ in range(40):  # results arrive while the threads fit (a few per fit)
        p = {"x": rng.uniform(-2, 2), "y": rng.uniform(-1, 3)}
        opt.observe(p, rosenbrock(p))
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert errors == []
    assert len(points) == 6
    assert all(-2 <= p["x"] <= 2 and -1 <= p["y"] <= 3 for p in points)


def test_tpe_batches_concentrate_where_results_are_good_and_spread_apart():
    """``parzen_batch``: a batch drawn by one TPE fit lies in the cube, closer to the good results
    than uniform draws, keeps away from running simulations and from its own earlier points (the
    liar), and is the same for the same generator."""
    from physflow.optimizer import parzen_batch

    rng = np.random.default_rng(0)
    x = rng.random((400, 2))
    y = ((x - [0.3, 0.7]) ** 2).sum(axis=1)
    running = np.array([[0.3, 0.7]] * 10)  # the best spot is already being simulated
    batch = parzen_batch(x, y, running, 200, np.random.default_rng(1))
    assert batch.shape == (200, 2) and np.all((batch >= 0) & (batch <= 1))
    distance = np.sqrt(((batch - [0.3, 0.7]) ** 2).sum(axis=1))
    assert np.median(distance) < 0.5 * np.median(np.sqrt(((rng.random((200, 2)) - [0.3, 0.7]) ** 2).sum(axis=1)))
    assert len(np.unique(batch.round(6), axis=0)) == 200
    nearest = np.sqrt(((batch[:, None] - batch[None]) ** 2).sum(axis=2) + np.eye(200)).min(axis=1)
    assert np.median(nearest) > 0.005  # not stacked on one point
    np.testing.assert_array_equal(batch, parzen_batch(x, y, running, 200, np.random.default_rng(1)))
    without = parzen_batch(x, y, np.empty((0, 2)), 200, np.random.default_rng(1))
    near_running = lambda b: np.mean(np.sqrt(((b - [0.3, 0.7]) ** 2).sum(axis=1)) < 0.02)  # noqa: E731
    assert near_running(batch) < near_running(without)


def test_a_gp_point_that_costs_more_than_the_slots_can_wait_hands_over_to_tpe(monkeypatch):
    """The campaign says what a point may cost (``point_seconds``, from how fast its slots free);
    once a GP point has cost more, TPE chooses the points; without a limit the GP goes on."""
    opt = Optimizer(VALLEY, seed=0)
    campaign(opt, rosenbrock, budget=8)
    opt.suggest(1)
    assert opt.gp_point_seconds > 0
    paths = []
    real_tpe = opt._suggest_tpe
    monkeypatch.setattr(opt, "_suggest_tpe", lambda *a: paths.append("tpe") or real_tpe(*a))
    opt.point_seconds = 10.0
    opt.suggest(1)
    assert paths == []
    opt.point_seconds = opt.gp_point_seconds / 2
    assert in_bounds(opt.suggest(1)[0], VALLEY) and paths == ["tpe"]
