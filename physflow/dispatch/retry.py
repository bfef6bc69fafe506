"""Which failed tries Parsl should run again.

A task whose worker died (node failure, OOM killer, a lost manager) or whose connection to the
pool broke may well succeed on another try: it is retried. A task that failed because of what it
*is* — bad parameters, an adapter that rejects them, a resource request the executor refuses, a
function that cannot be serialised — fails the same way every time: retrying it only burns the
allocation. A simulation that exits non-zero is not a Parsl failure at all: ``payload.execute``
reports it as data, so it reaches the store and the agents on its first (and only) try.
"""

from __future__ import annotations

import math
from typing import Any

from physflow.errors import PhysflowError

#: Tries after the first for a transient failure (``Config(retries=...)``).
TRANSIENT_RETRIES = 2

#: Exception type names that mean "the place it ran broke", not "the task is wrong". Names, not
#: classes, so this module imports nothing of Parsl and matches the wrapped remote exceptions too.
TRANSIENT = frozenset({
    "WorkerLost", "ManagerLost", "BadStateException", "ScalingFailed", "CommandClientTimeoutError",
    "ConnectionError", "ConnectionResetError", "BrokenPipeError", "TimeoutError",
})


def is_transient(exc: BaseException) -> bool:
    """True for a failure of the machinery (retry), False for one of the task itself (do not)."""
    if isinstance(exc, PhysflowError):  # bad parameters, adapter validation: deterministic
        return False
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # a transient cause anywhere in the chain counts
        seen.add(id(exc))
        if any(cls.__name__ in TRANSIENT for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def retry_cost(exc: Exception, task_record: Any) -> float:
    """Parsl's ``retry_handler``: the cost of this failure against the task's retry budget.

    1 uses one of TRANSIENT_RETRIES tries; infinity ends the task now (Parsl retries while the
    summed cost is at most ``Config.retries``).
    """
    return 1.0 if is_transient(exc) else math.inf
