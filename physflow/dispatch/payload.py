"""The function that runs a simulation task on a worker.

A ``TaskSpec`` (physflow.vocabulary.task) is plain data that any backend (Parsl, Globus Compute) can
ship. ``execute`` runs on the worker: it starts the program (under the MPI launcher prefix the executor set in
``$PARSL_MPI_PREFIX`` when ``mpi`` is true), enforces the per-task walltime, keeps stdout and
stderr in the task's working directory, and reports its own start and finish times (UNIX
seconds) so that every result carries its provenance.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from physflow.processes import end_group, start_detached
from physflow.site_configs.cores import core_list, parse_cores
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


#: What a packed MPI pool's blocks export (``parsl_config.packing_lines``): tasks a node, the
#: slots' cores and devices (";" between slots), the binding style, cores a rank, and a folder of slot locks.
SLOT_ENV = ("PHYSFLOW_SLOTS", "PHYSFLOW_SLOT_CORES", "PHYSFLOW_SLOT_GPUS", "PHYSFLOW_BIND", "PHYSFLOW_CORES_PER_RANK",
            "PHYSFLOW_SLOT_DIR")
#: The variables a slot's devices are given in: NVIDIA, AMD and Intel (Level Zero) GPUs.
DEVICE_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")


@contextlib.contextmanager
def take_slot(host: str, slots: int, folder: str) -> Iterator[int]:
    """Hold one of ``host``'s ``slots`` slots for the block (a lock file each, in ``folder`` on
    the node where the block's workers run): which cores and devices of the node this task gets.

    Parsl starts at most ``slots`` tasks on a node (the node file lists it that many times), so a
    free slot exists but may be held for a moment by a task whose result is on its way back: try
    each, and again after a short wait. The lock is the kernel's (``flock``): a worker killed
    with its task frees the slot with it.
    """
    while True:
        for index in range(slots):
            fd = os.open(os.path.join(folder, f"{host}.{index}"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield index
            finally:
                os.close(fd)
            return
        time.sleep(0.05)


def bind_options(style: str, cores: list[int], ranks_per_node: int, cores_per_rank: int) -> list[str]:
    """The launcher options that bind a task's ranks on a node to ``cores`` (its slot's):
    ``cores_per_rank`` consecutive cores a rank. hydra: MPICH's ``-bind-to user:0+1,2+3``; pals:
    Cray PALS ``--cpu-bind list:0-1:2-3`` (Polaris, Aurora); slurm: ``--exact``, Slurm gives the
    step its own cores and binds them (the step's cores are Slurm's to choose, not ours)."""
    if style == "slurm":
        return ["--exact", f"--cpus-per-task={cores_per_rank}", "--cpu-bind=cores"]
    chunks = [cores[r * cores_per_rank:(r + 1) * cores_per_rank] for r in range(ranks_per_node)]
    if style == "hydra":
        return ["-bind-to", "user:" + ",".join("+".join(map(str, chunk)) for chunk in chunks)]
    if style == "pals":
        return ["--cpu-bind", "list:" + ":".join(core_list(chunk) for chunk in chunks)]
    return []


@contextlib.contextmanager
def packed(spec: TaskSpec, env: dict[str, str]) -> Iterator[list[str]]:
    """The launcher options of an MPI task in a packed pool (none elsewhere), its slot's devices
    set in ``env``; the slot is held while the block runs."""
    cores_text, gpus_text = env.get("PHYSFLOW_SLOT_CORES", ""), env.get("PHYSFLOW_SLOT_GPUS", "")
    folder, slots, style = env.get("PHYSFLOW_SLOT_DIR"), int(env.get("PHYSFLOW_SLOTS") or 0), env.get("PHYSFLOW_BIND")
    if not spec.mpi or not folder or slots < 1:
        yield []
        return
    host = (env.get("PARSL_MPI_NODELIST") or "localhost").split(",")[0]
    with take_slot(host, slots, folder) as index:
        if gpus_text:
            env.update(dict.fromkeys(DEVICE_ENV, gpus_text.split(";")[index]))
        cores = parse_cores(cores_text.split(";")[index]) if cores_text else []
        yield bind_options(style or "none", cores, -(-spec.ranks // spec.nodes),
                           int(env.get("PHYSFLOW_CORES_PER_RANK") or 1)) if cores or style == "slurm" else []


def _run_argv(spec: TaskSpec, workdir: Path) -> dict[str, Any]:
    env = dict(os.environ, **spec.env)
    with packed(spec, env) as options:
        return _launch(spec, workdir, env, options)


#: The block's request that each simulation session run at this nice value (``parsl_config.
#: make_room_for_model``, a local site serving the model beside its simulations).
SESSION_NICE = "PHYSFLOW_SESSION_NICE"


def low_priority_sessions(env: dict[str, str]) -> list[str]:
    """A prefix that sets its own session's autogroup nice, then execs the program: put before
    each rank's program, since mpiexec starts every rank in a session (and autogroup) of its own.

    Linux's autogroup scheduling shares the CPU between sessions before it looks at nice, so a
    rank at nice 19 in its own session competed with the model server as an equal (a planner turn
    4.3x slower with two niced ranks running, as with no nice at all; bench/thinking_cores.py).
    Empty where the block asked nothing or the kernel has no autogroups."""
    nice = env.get(SESSION_NICE, "")
    if not nice.isdigit() or not os.path.exists("/proc/self/autogroup"):
        return []
    return ["/bin/sh", "-c", f'echo {nice} > /proc/self/autogroup 2>/dev/null; exec "$@"', "physflow-nice"]


def _launch(spec: TaskSpec, workdir: Path, env: dict[str, str], options: list[str]) -> dict[str, Any]:
    argv = low_priority_sessions(env) + list(spec.argv or [])
    if spec.mpi:
        prefix = os.environ.get("PARSL_MPI_PREFIX")
        if not prefix:
            raise RuntimeError("mpi task on an executor without MPI mode: PARSL_MPI_PREFIX is not set")
        argv = shlex.split(prefix) + options + argv
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        # A new session so that a timeout kills the launcher and every rank it started.
        proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=err, env=env, start_new_session=True,
                                preexec_fn=start_detached)
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
