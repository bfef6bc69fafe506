"""Which result is best: ranking by an objective's value, the one rule every floor shares.

The campaign's stop test, the report, the agents' result table and the optimizer all ask "which
is best"; they must never disagree, so the rule is written once, here, below all of them. Only
finite numbers count (a NaN or an infinite chi2 is a failed measurement, not a good or a bad
one); "minimize" puts the smallest first and any other goal the largest; ties keep the order the
items came in (the earlier simulation wins).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (an int or a float that is neither NaN nor infinite)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def finite_or_none(value: Any) -> Any:
    """``value``, or None where it is a non-finite float: JSON has no NaN or infinity, so a metric
    is written as null rather than as invalid JSON. Anything but a float passes unchanged."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _sign(goal: str) -> float:
    return 1.0 if goal == "minimize" else -1.0


def ranked(items: Iterable[T], value: Callable[[T], Any], goal: str, unscored_last: bool = False) -> list[T]:
    """``items`` best first by ``value(item)``; ties keep their order.

    Items without a finite value are left out, or, with ``unscored_last``, put after the others
    in their own order (a table of every simulation, the failed ones at the bottom).
    """
    sign = _sign(goal)
    scored, unscored = [], []
    for item in items:
        v = value(item)
        if is_finite(v):
            scored.append((sign * v, item))
        elif unscored_last:
            unscored.append(item)
    scored.sort(key=lambda pair: pair[0])
    return [item for _, item in scored] + unscored


def best(items: Iterable[T], value: Callable[[T], Any], goal: str) -> T | None:
    """The first item of ``ranked(items, value, goal)``, or None when none has a finite value; one
    pass, no sort (the campaign asks after every result)."""
    sign = _sign(goal)
    top: T | None = None
    top_key = math.inf
    for item in items:
        v = value(item)
        if is_finite(v) and (top is None or sign * v < top_key):
            top, top_key = item, sign * v
    return top


def reaches(value: float, tolerance: float, goal: str) -> bool:
    """Whether ``value`` is at least as good as ``tolerance``: at most it when minimizing, at
    least it otherwise."""
    return value <= tolerance if goal == "minimize" else value >= tolerance
