"""Child processes that never outlive the process that started them.

An orchestrator killed with SIGKILL (walltime, node failure, ``kill -9``) runs no cleanup code,
so the kernel must end its children: an MPI launcher with its ranks, or an LLM server holding a
port and gigabytes of memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def keep_low_priority() -> None:
    """``preexec_fn`` part for a child started in a new session: keep the parent's low priority
    against the rest of the machine.

    Linux's autogroup scheduling (on by default on most distributions) shares the CPU between
    sessions first and applies nice only within a session, so a niced simulation in a session of
    its own competed with the model server as an equal: a planner turn measured 4.3x slower with
    two niced simulation ranks running, as slow as with no nice at all. The new session's
    autogroup gets the process's nice value (19 for SCHED_IDLE), which the kernel lets any process
    lower its own priority to. Elsewhere, or without /proc, nothing happens.
    """
    try:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if getattr(os, "SCHED_IDLE", None) is not None and os.sched_getscheduler(0) == os.SCHED_IDLE:
            nice = 19
    except (OSError, AttributeError):
        return
    if nice <= 0:
        return
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(nice))
    except OSError:
        pass


def start_detached() -> None:
    """``preexec_fn`` of a task's program in its own session: it dies with its parent and keeps
    its parent's low priority (``die_with_parent``, ``keep_low_priority``)."""
    die_with_parent()
    keep_low_priority()


def end_group(proc: subprocess.Popen, grace: float) -> None:
    """End ``proc`` and its process group (it was started with ``start_new_session``): SIGTERM,
    then SIGKILL if it has not exited after ``grace`` seconds; returns once it is reaped.

    The group, not the process: an MPI launcher's ranks and a model server's workers go with it.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
        return
    except ProcessLookupError:
        proc.wait()
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def reap_leftovers(folder: Path, grace: float = 3.0, before: float | None = None) -> list[int]:
    """End what a killed orchestrator left running under ``folder`` (its Parsl run directory).

    ``kill -9`` of an orchestrator leaves Parsl's interchange and worker pools running for good
    (they wait for a client that never returns), and with them any simulation still in flight.
    They are found by the paths in their command lines and open files (log files, submit
    scripts), and get SIGTERM, then SIGKILL after ``grace`` seconds; a simulation dies with its
    worker (``die_with_parent``). This process, its ancestors and its children are never touched,
    nor (with ``before``, UNIX seconds) a process started at or after that moment: a new
    orchestrator resuming the run. Returns the pids ended.
    """
    import psutil  # a dependency of Parsl

    me = psutil.Process()
    keep = {me.pid, *(p.pid for p in me.parents()), *(p.pid for p in me.children(recursive=True))}
    prefix = str(folder.resolve()) + os.sep
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        if proc.pid in keep or (before is not None and (proc.info["create_time"] or 0.0) >= before):
            continue
        try:
            paths = [*(proc.info["cmdline"] or []), *(f.path for f in proc.open_files())]
        except psutil.Error:
            continue
        if any(prefix in p for p in paths):
            found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [p.pid for p in found]


#: Seconds between a watchdog's looks at the process it watches.
WATCH_EVERY_S = 0.5


def start_watchdog(folder: Path) -> subprocess.Popen:
    """A process of its own session that ends what runs under ``folder`` (Parsl's run directory)
    as soon as this process is gone, however it went.

    Parsl's interchange and worker pools outlive a SIGKILLed orchestrator by minutes (they wait for
    heartbeats), holding cores or a batch job's nodes; a SIGKILL runs no cleanup, and a kill of the
    orchestrator's process group would take a watchdog in that group with it, so it gets its own
    session. Stop it with ``stop_watchdog`` on a clean shutdown.
    """
    return subprocess.Popen([sys.executable, "-m", "physflow.processes", str(os.getpid()), str(folder)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def stop_watchdog(proc: subprocess.Popen) -> None:
    """End a watchdog whose orchestrator shuts down cleanly (nothing is left for it to end)."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took the pid: ours is gone
        return False
    return True


def watch(pid: int, folder: Path) -> None:
    """The watchdog's body: wait for ``pid`` to end, then ``reap_leftovers(folder)``."""
    while _alive(pid) and os.getppid() == pid:  # reparented: the orchestrator is gone (or its pid reused)
        time.sleep(WATCH_EVERY_S)
    reap_leftovers(folder, before=time.time())  # not what a resume starts from now on


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))
