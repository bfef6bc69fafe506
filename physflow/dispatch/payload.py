"""The function that runs a simulation task on a worker.

A ``TaskSpec`` (physflow.vocabulary.task) is plain data that any backend (Parsl, Globus Compute) can
ship. ``execute`` runs on the worker: it starts the program (under the MPI launcher prefix the executor set in
``$PARSL_MPI_PREFIX`` when ``mpi`` is true), enforces the per-task walltime, keeps stdout and
stderr in the task's working directory, and reports its own start and finish times (UNIX
seconds) so that every result carries its provenance.
"""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from physflow.processes import die_with_parent, end_group
from physflow.vocabulary.task import TaskSpec

STDERR_TAIL_BYTES = 2000


def _tail(path: Path, nbytes: int = STDERR_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - nbytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _run_argv(spec: TaskSpec, workdir: Path) -> dict[str, Any]:
    argv = list(spec.argv or [])
    if spec.mpi:
        prefix = os.environ.get("PARSL_MPI_PREFIX")
        if not prefix:
            raise RuntimeError("mpi task on an executor without MPI mode: PARSL_MPI_PREFIX is not set")
        argv = shlex.split(prefix) + argv
    env = dict(os.environ, **spec.env)
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        # A new session so that a timeout kills the launcher and every rank it started.
        proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=err, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)
        try:
            code = proc.wait(timeout=spec.walltime)
            timed_out = False
        except subprocess.TimeoutExpired:
            end_group(proc, grace=5.0)
            code, timed_out = 124, True
    return {"returncode": code, "timed_out": timed_out, "command": shlex.join(argv),
            "stderr_tail": _tail(workdir / "stderr.txt") if code else ""}


def _run_function(spec: TaskSpec, workdir: Path) -> dict[str, Any]:
    module_name, _, attr = (spec.function or "").rpartition(".")
    func = getattr(importlib.import_module(module_name), attr)
    here = os.getcwd()
    os.chdir(workdir)
    try:
        value = func(**spec.kwargs)
    finally:
        os.chdir(here)
    return {"returncode": 0, "timed_out": False, "value": value, "stderr_tail": ""}


def execute(spec_dict: dict[str, Any], parsl_resource_specification: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one task on a worker; never raises for a failing simulation, only reports it.

    ``parsl_resource_specification`` is consumed by Parsl's MPI executor (it sets
    ``$PARSL_MPI_PREFIX`` from it); the task itself needs nothing more from it.
    """
    started = time.time()
    spec = TaskSpec(**spec_dict)
    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in spec.files.items():
        (workdir / name).write_text(text)
    try:
        outcome = _run_argv(spec, workdir) if spec.argv else _run_function(spec, workdir)
    except Exception as exc:  # noqa: BLE001 - a failing simulation is data, not a crash
        outcome = {"returncode": 1, "timed_out": False, "stderr_tail": f"{type(exc).__name__}: {exc}"}
    outcome.update(started=started, finished=time.time(), host=os.uname().nodename)
    return outcome
