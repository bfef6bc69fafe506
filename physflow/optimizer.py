"""``suggest_parameters``: a sequential optimizer over every result of the campaign so far.

It gives even a small model good numbers to propose, and fills free simulation slots while the
agents still think (backfill). Optuna's TPE over the finished results; simulations still running
are told to it as the worst value seen so far (a pessimistic "constant liar") so that parallel
suggestions spread out instead of piling onto one point.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from physflow.workflows.spec import ParameterSpec


class Optimizer:
    def __init__(self, parameters: dict[str, ParameterSpec], goal: Literal["minimize", "maximize"] = "minimize",
                 seed: int = 0, startup: int | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.parameters = parameters
        self.goal = goal
        self.seed = seed
        self.startup = startup if startup is not None else max(4, 2 * len(parameters))
        self.observed: list[tuple[dict[str, float], float]] = []
        self._calls = 0
        self._distributions = {
            name: optuna.distributions.FloatDistribution(p.min, p.max, log=p.log) for name, p in parameters.items()}

    def observe(self, params: dict[str, float], value: float) -> None:
        """Record a finished simulation's objective value (non-finite values are skipped)."""
        if math.isfinite(value) and set(params) >= set(self.parameters):
            self.observed.append(({k: params[k] for k in self.parameters}, value))

    def best(self) -> tuple[dict[str, float], float] | None:
        if not self.observed:
            return None
        pick = min if self.goal == "minimize" else max
        return pick(self.observed, key=lambda pv: pv[1])

    def suggest(self, n: int = 1, pending: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
        """``n`` parameter sets to try next, each within bounds."""
        optuna = self._optuna
        self._calls += 1
        seed = self.seed * 1_000_003 + self._calls
        if len(self.observed) < self.startup:
            rng = random.Random(seed)
            return [{name: self._uniform(rng, p) for name, p in self.parameters.items()} for _ in range(n)]
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.startup, multivariate=True)
        study = optuna.create_study(direction=self.goal, sampler=sampler)
        values = [v for _, v in self.observed]
        liar = max(values) if self.goal == "minimize" else min(values)
        for params, value in self.observed + [(p, liar) for p in (pending or [])]:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=self._distributions,
                                                      value=value))
        out = []
        for _ in range(n):
            trial = study.ask(self._distributions)
            out.append(dict(trial.params))
            study.tell(trial, liar)
        return out

    @staticmethod
    def _uniform(rng: random.Random, p: ParameterSpec) -> float:
        if p.log:
            return math.exp(rng.uniform(math.log(p.min), math.log(p.max)))
        return rng.uniform(p.min, p.max)
