"""What the planner decides on, as numbers: the optimizer's candidates with the surrogate's
prediction, a pick among them, and a hypothesis's falsifiable claim with the verdict its
simulations give it.

Ground floor, because the optimizer makes candidates, the agents pick among them and state claims,
the loop judges claims and the report shows them; none of those may import another. Everything
here is arithmetic on plain data, so a verdict is computed from the numbers and never taken on a
model's word (the model writes the reasoning around it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Goal = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Candidate:
    """A point the optimizer would run, with its surrogate's prediction of the objective
    (``mean`` ± ``sd``, in the metric's own units) and its rank in the optimizer's own order
    (0: the point its acquisition prefers)."""

    params: dict[str, float]
    mean: float
    sd: float
    rank: int = 0


def rank_by_prediction(candidates: Sequence[Candidate], goal: Goal) -> list[int]:
    """For each candidate, its place (0 = best) when ordered by predicted mean toward ``goal``:
    the surrogate's own ranking, against which a model's pick is measured."""
    sign = 1.0 if goal == "minimize" else -1.0
    order = sorted(range(len(candidates)), key=lambda i: (sign * candidates[i].mean, i))
    places = [0] * len(candidates)
    for place, i in enumerate(order):
        places[i] = place
    return places


def pick_score(place: int, n: int) -> float:
    """How much better than chance one pick was: 1 for the surrogate's best of ``n``, 0 for the
    middle (a random pick's expected place, (n - 1) / 2), negative below it."""
    if n < 2:
        return 0.0
    chance = (n - 1) / 2
    return (chance - place) / chance


def pick_quality(scores: Sequence[float], prior: float = 0.0, prior_weight: float = 2.0) -> float:
    """Measured pick quality in [0, 1]: the mean pick score, shrunk toward ``prior`` (what the
    model's qualification measured, 0 without one) by ``prior_weight`` pseudo-picks, so one lucky
    pick earns little. Never below 0: a model that picks worse than chance earns no slots, it does
    not take the optimizer's."""
    total = sum(scores) + prior * prior_weight
    return max(0.0, min(1.0, total / (len(scores) + prior_weight)))


@dataclass(frozen=True)
class Claim:
    """A hypothesis's falsifiable prediction: ``metric`` lies ``below`` (or ``above``) ``value``
    for every simulation whose parameters lie in ``region`` (per parameter [low, high]; a
    parameter not named is free)."""

    metric: str
    bound: Literal["below", "above"]
    value: float
    region: dict[str, tuple[float, float]] = field(default_factory=dict)

    def contains(self, params: Mapping[str, float]) -> bool:
        return all(lo <= params.get(name, math.nan) <= hi for name, (lo, hi) in self.region.items())

    def holds(self, observed: float) -> bool:
        return observed < self.value if self.bound == "below" else observed > self.value

    def text(self) -> str:
        where = ", ".join(f"{n} in [{lo:.4g}, {hi:.4g}]" for n, (lo, hi) in self.region.items())
        return f"{self.metric} {'<' if self.bound == 'below' else '>'} {self.value:.4g}" + (
            f" for {where}" if where else "")

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "bound": self.bound, "value": self.value,
                "region": {n: [lo, hi] for n, (lo, hi) in self.region.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Claim:
        region = data.get("region") or {}
        return cls(str(data["metric"]), "above" if data.get("bound") == "above" else "below",
                   float(data["value"]),  # type: ignore[arg-type]
                   {str(n): (float(v[0]), float(v[1])) for n, v in region.items()})  # type: ignore[union-attr]


@dataclass(frozen=True)
class Judgement:
    """The verdict the numbers give a claim, and the numbers that gave it."""

    verdict: Literal["supported", "refuted", "inconclusive"]
    evidence: str
    tested: int  # simulations inside the claim's region that finished


def judge_claim(claim: Claim, observations: Sequence[tuple[Mapping[str, float], float]],
                spread: float) -> Judgement:
    """The verdict on ``claim`` from ``observations`` (parameters, observed metric) of the
    hypothesis's finished simulations; ``spread`` is the simulations' own scatter in the metric
    (the surrogate's noise sd, metric units).

    Supported: every simulation in the region satisfies the bound. Refuted: one misses it by more
    than twice the spread (a miss beyond the noise). Inconclusive: misses within the noise, or no
    simulation inside the region.
    """
    inside = [(p, y) for p, y in observations if claim.contains(p) and math.isfinite(y)]
    if not inside:
        return Judgement("inconclusive", f"no finished simulation lies in the claim's region ({claim.text()})", 0)
    values = ", ".join(f"{y:.4g}" for _, y in inside[:8]) + (" ..." if len(inside) > 8 else "")
    misses = [y for _, y in inside if not claim.holds(y)]
    sign = 1.0 if claim.bound == "below" else -1.0
    worst = max((sign * (y - claim.value) for y in misses), default=0.0)
    said = f"{len(inside)} simulation(s) in the region: {claim.metric} = {values}; predicted {claim.text()}"
    if not misses:
        return Judgement("supported", f"{said}: every one satisfies it", len(inside))
    margin = 2.0 * max(spread, 0.0)
    if worst > margin:
        return Judgement("refuted", f"{said}: {len(misses)} miss(es) it, the worst by {worst:.3g} "
                                    f"(beyond twice the spread {spread:.3g})", len(inside))
    return Judgement("inconclusive", f"{said}: {len(misses)} miss(es) it by at most {worst:.3g}, "
                                     f"within twice the spread {spread:.3g}", len(inside))


@dataclass(frozen=True)
class Advice:
    """What the optimizer tells the planner each round: its ``candidates`` (best first in its own
    order, each with the surrogate's prediction; NaN before the surrogate has enough results), how
    far along each parameter the objective changes (``lengths``: the surrogate's length scale as a
    fraction of the parameter's range; small means the parameter matters), the simulations' own
    scatter in the metric (``spread``, metric units; None without a surrogate) and how many
    results the surrogate was fitted on."""

    candidates: list[Candidate]
    lengths: dict[str, float] = field(default_factory=dict)
    spread: float | None = None
    fitted_on: int = 0

    @classmethod
    def unpredicted(cls, points: Sequence[dict[str, float]], fitted_on: int = 0) -> Advice:
        """The optimizer's points in its order, without a surrogate's prediction (NaN)."""
        return cls([Candidate(p, math.nan, math.nan, i) for i, p in enumerate(points)], fitted_on=fitted_on)

    @property
    def predicted(self) -> bool:
        return bool(self.candidates) and all(math.isfinite(c.mean) and math.isfinite(c.sd) for c in self.candidates)
