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
