"""Child processes that never outlive the process that started them.

An orchestrator killed with SIGKILL (walltime, node failure, ``kill -9``) runs no cleanup code,
so the kernel must end its children: an MPI launcher with its ranks, or an LLM server holding a
port and gigabytes of memory.
"""

from __future__ import annotations

import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for subprocess: the child gets SIGTERM when its parent dies.

    Linux only (prctl); elsewhere it does nothing and the owner's own cleanup is all there is.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
