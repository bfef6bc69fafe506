"""What every dispatcher does: the one interface the campaign (and the CLI) sees.

Declared in the manner of Colmena's ``task_server/base.py``, so that the layers above dispatch
depend on this contract, not on a backend: ``ParslDispatcher`` (``parsl_backend``) and
``GlobusDispatcher`` (``globus_backend``) fulfil it structurally and need not import it.

The outcome a task's future completes with is the dict ``payload.execute`` returns on the worker:

``returncode`` (int)
    The program's exit code (124 when its walltime ran out); 0 for a function that returned, 1
    for one that raised or a task that could not start.
``timed_out`` (bool)
    Whether the task's walltime ran out and it was killed.
``stderr_tail`` (str)
    The last ``payload.STDERR_TAIL_BYTES`` of its stderr if it failed (or the exception it
    raised), else empty.
``command`` (str, command tasks only)
    The argv that ran, MPI launcher prefix included, as one shell line.
``value`` (function tasks only)
    What the Python function returned.
``started``, ``finished`` (float), ``host`` (str)
    UNIX seconds around the task and the node it ran on, for its provenance. Missing only where
    the payload never ran (a Globus MPI task whose shell failed before it, ``outcome_of``).

A future that raises instead means the machinery failed (a worker lost after its retries, a
task that could not be serialised); the campaign records that as a failed task.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from physflow.vocabulary.task import TaskSpec


class Dispatcher(Protocol):
    """Runs tasks somewhere else and hands back futures; made by ``backends.open_dispatcher``."""

    def submit(self, spec: TaskSpec) -> Future:
        """Send one task; its future's result is the outcome dict described in this module."""
        ...

    def submit_service(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)``, a long-lived service (the model server) beside the tasks; its
        future completes when ``fn`` returns."""
        ...

    def on_close(self, stop: Callable[[], None]) -> None:
        """Have ``close`` call ``stop`` first (a service's task must end before its pool)."""
        ...

    def close(self) -> None:
        """Call the ``on_close`` stops (last registered first), then release the pools or the
        endpoint connection. Safe to call more than once."""
        ...
