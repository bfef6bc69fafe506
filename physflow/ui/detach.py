"""``physflow submit --detach``: the campaign runs on in its own session, the command returns.

The orchestrator is the ordinary foreground ``physflow submit`` in a child process started with
``start_new_session=True``: closing the terminal (SIGHUP to its session) or the submitting shell
exiting does not reach it. ``status``, ``watch`` and ``cancel`` find it through the run's lock
file, as for any orchestrator. Its stdout and stderr go to ``orchestrator.log`` in the run dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from physflow.errors import PhysflowError
from physflow.workflows.store import JOURNAL

LOG = "orchestrator.log"


def submit_detached(workflow: Path, run_dir: Path, options: list[str], start_timeout: float = 120.0) -> int:
    """Start the orchestrator for ``workflow`` detached; returns its pid once the run dir exists.

    ``options`` are passed on to the child's ``physflow submit`` (``--site``, ``--set``, ``--yes``).

    Waits (at most ``start_timeout`` s) until the child has created the run dir and its journal,
    so that the run dir printed afterwards is already usable by ``status``/``watch``/``cancel``.
    If the child stops before that (bad input found late, run dir taken), its log is shown and its
    exit code becomes this command's.
    """
    if run_dir.exists():
        raise PhysflowError(f"{run_dir} already exists (use physflow resume to continue a run)")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # The log starts beside the run dir (which the child must create itself) and is renamed into
    # it once it exists: the child's open descriptor follows the file.
    early_log = run_dir.parent / f".{run_dir.name}.{LOG}"
    argv = [sys.executable, "-m", "physflow", "submit", str(workflow.resolve()), "--run-dir", str(run_dir), *options]
    with open(early_log, "wb") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + start_timeout
    while not (run_dir / JOURNAL).exists():
        code = child.poll()
        if code is not None:
            text = early_log.read_text(errors="replace").strip()
            early_log.unlink(missing_ok=True)
            error = PhysflowError(f"the detached campaign stopped at once (exit {code}): "
                                  + (text.splitlines()[-1].removeprefix("error: ") if text else "no output"))
            error.exit_code = code or 1
            raise error
        if time.monotonic() > deadline:
            raise PhysflowError(f"the detached campaign (pid {child.pid}) did not create {run_dir} "
                                f"within {start_timeout:.0f} s; see {early_log}")
        time.sleep(0.05)
    os.replace(early_log, run_dir / LOG)
    return child.pid
