"""No-op tasks for the dispatch benchmarks, importable by Parsl workers as ``bench.noop_tasks``.

Workers import this module by name, so the repository root must be on their ``sys.path``;
``bench/dispatch_overhead.py`` puts it on ``PYTHONPATH`` before it starts any worker pool.
"""

from __future__ import annotations

import time


def raw_noop() -> float:
    """The raw-Parsl task: does nothing, returns when it finished (UNIX seconds, worker clock)."""
    return time.time()


def noop(**params: float) -> dict[str, float]:
    """The physflow task (a ``python``-adapter simulation): one scalar metric, no arrays."""
    return {"y": 0.0, **params}


def sleep_task(x: float, seconds: float = 1.0) -> dict[str, float]:
    """The steering benchmarks' simulation: sleeps ``seconds`` (s) and reports y = (x - 0.3)^2, so
    that a proposal's quality is a number too (the best x is 0.3)."""
    time.sleep(seconds)
    return {"y": (x - 0.3) ** 2}


def raw_sleep(seconds: float = 1.0) -> tuple[float, float]:
    """The raw-Parsl form of ``sleep_task``: (start, end) in UNIX seconds on the worker's clock."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()
