"""Dispatch through Globus Compute: ``globus_compute_sdk.Executor(endpoint_id=...)``.

A ``Dispatcher`` (``physflow.dispatch.base``) like ``ParslDispatcher``; the future's result is the
same outcome dict that ``payload.execute`` returns, so a Globus result takes the campaign's one
commit path (journal, then HDF5) the moment it arrives.

What crosses the wire, and why:

* A serial task is ``payload.execute(spec_dict)`` itself. Globus Compute's default code
  serializer (dill) pickles an importable function by reference, so the endpoint runs the
  physflow installed beside it, not a copy of the code.
* An MPI task is one ``ShellFunction`` — ``python -m physflow.dispatch.globus_backend {spec}`` —
  under ``executor.resource_specification`` (the task's nodes and ranks). GlobusMPIEngine puts the
  launcher prefix for those resources in ``$PARSL_MPI_PREFIX`` of the worker's environment; the
  payload prefixes the simulation's argv with it, exactly as under Parsl's MPIExecutor. Not an
  ``MPIFunction``: that would prefix the *payload* and run it once per rank, losing the payload's
  walltime kill of the whole launcher, its stdout/stderr files in the task folder and its
  start/finish times. One ShellFunction object serves every task (the spec is a keyword
  argument), so the SDK registers the function once per campaign, not once per task.

The endpoint's workers must see the run directory and physflow's interpreter at the same paths
(run physflow on the site's login node, the run directory on a shared filesystem): the adapter
reads each task's outputs from its folder after the result arrives.

``globus_call`` and ``outcome_of`` hold all of that; the dispatcher only hands their product to the
SDK, so the endpoint side is tested with Globus Compute's own engines started locally.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import pickle
import platform
import shlex
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from physflow.dispatch.payload import STDERR_TAIL_BYTES, execute
from physflow.errors import SiteError
from physflow.site_configs.site import SiteSpec, check_mpi_request
from physflow.vocabulary.task import TaskSpec

#: Exit code of a ShellFunction whose walltime ran out (as from timeout(1)).
SHELL_TIMEOUT = 124

#: Globus Compute refuses a task submission or a result over 10 MB (its docs, "Limits":
#: TASK_PAYLOAD_TOO_LARGE, MaxResultSizeExceeded). Anything over ``INLINE_BYTES`` travels through
#: the run directory, which the endpoint's workers share with physflow, never the payload.
PAYLOAD_LIMIT = 10 * 1024 * 1024
INLINE_BYTES = 1024 * 1024
#: Where a serial task's oversized return value waits for the orchestrator, in its task folder.
VALUE_FILE = "outcome-value.pkl"

#: Seconds the version check waits for the endpoint: its first block may wait in a batch queue.
ENDPOINT_ANSWER_S = 1800.0

#: The distributions whose versions must agree between physflow and its endpoint.
VERSIONED = ("parsl", "globus-compute-sdk", "globus-compute-endpoint", "physflow")


def environment_report() -> dict[str, str]:
    """Run on the endpoint (and here): the Python and the versions that must agree (``mismatches``)."""
    report = {"python": platform.python_version(), "executable": sys.executable}
    for name in VERSIONED:
        try:
            report[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            report[name] = "absent"
    return report


def mismatches(here: dict[str, str], there: dict[str, str]) -> list[str]:
    """What differs between this environment and the endpoint's, as phrases for one error line.

    The Python minor version must agree (a function pickled on 3.11 and run on 3.12 fails late,
    as WorkerLost: globus/globus-compute issue #2139); Parsl exactly (the endpoint's workers and
    interchange refuse each other otherwise, and ALCF pins it: argonne-lcf/user-guides PR #1242);
    physflow exactly (tasks are its functions, by reference); the Globus Compute SDK by major
    version. The endpoint needs globus-compute-endpoint, which this side may lack.
    """
    out = []
    minor = ".".join(here.get("python", "").split(".")[:2])
    if ".".join(there.get("python", "").split(".")[:2]) != minor:
        out.append(f"Python {there.get('python')} there, {here.get('python')} here")
    for name in ("parsl", "physflow"):
        if there.get(name) != here.get(name):
            out.append(f"{name} {there.get(name)} there, {here.get(name)} here")
    if there.get("globus-compute-sdk", "").split(".")[0] != here.get("globus-compute-sdk", "").split(".")[0]:
        out.append(f"globus-compute-sdk {there.get('globus-compute-sdk')} there, {here.get('globus-compute-sdk')} here")
    if there.get("globus-compute-endpoint", "absent") == "absent":
        out.append("no globus-compute-endpoint there")
    return out


def execute_spilled(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """``payload.execute`` on the endpoint, with a return value too large for a Globus result
    (over ``INLINE_BYTES`` pickled) written to the task's folder instead (``VALUE_FILE``); the
    orchestrator reads it back in ``outcome_of``."""
    outcome = execute(spec_dict)
    if "value" in outcome:
        data = pickle.dumps(outcome["value"], protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > INLINE_BYTES:
            path = Path(spec_dict["workdir"]) / VALUE_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            del outcome["value"]
            outcome["value_file"] = str(path)
    return outcome


def unspill(outcome: dict[str, Any]) -> dict[str, Any]:
    """An outcome whose value waits in its task folder (``execute_spilled``), with the value back.
    The file is physflow's own, written by its payload into this run's task folder."""
    path = outcome.pop("value_file", None)
    if isinstance(path, str):
        try:
            outcome["value"] = pickle.loads(Path(path).read_bytes())  # noqa: S301 - physflow's own file
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            return {**outcome, "returncode": outcome.get("returncode") or 1,
                    "stderr_tail": f"the result left in {path} cannot be read here ({exc}); does the endpoint "
                                   "share this run directory at the same path?"}
    return outcome


def lighten(spec: TaskSpec) -> TaskSpec:
    """``spec`` small enough to submit: input files over ``INLINE_BYTES`` in all are written into
    the task folder here (which the endpoint's workers share) instead of travelling inside it."""
    if sum(len(text.encode()) for text in spec.files.values()) <= INLINE_BYTES:
        return spec
    folder = Path(spec.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in spec.files.items():
        (folder / name).write_text(text)
    return dataclasses.replace(spec, files={})


@dataclasses.dataclass(frozen=True)
class GlobusCall:
    """One task as Globus Compute runs it: ``function(*args, **kwargs)`` on the endpoint, under
    ``resource_specification`` (None: the endpoint's default, a single worker slot)."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    resource_specification: dict[str, Any] | None


def mpi_runner(python: str = sys.executable) -> Any:
    """The ShellFunction that runs an MPI task's payload on the endpoint (``{spec}``: the task).

    ``python`` is the interpreter the endpoint's workers start: the orchestrator's own by default,
    the same path the adapters put into every task's argv.
    """
    from globus_compute_sdk import ShellFunction

    return ShellFunction(f"{shlex.quote(python)} -m physflow.dispatch.globus_backend {{spec}}",
                         name="physflow_task")


def serial_resources(mpi_only: bool) -> dict[str, Any] | None:
    """Resource specification for a serial task: none on a GlobusComputeEngine endpoint, one rank
    on one node where the endpoint is a GlobusMPIEngine (which refuses a task without one)."""
    if not mpi_only:
        return None
    return TaskSpec(task_id="", workdir="", ranks=1, nodes=1).resource_specification()


def globus_call(spec: TaskSpec, runner: Any, serial_spec: dict[str, Any] | None = None) -> GlobusCall:
    """What to submit for ``spec``; ``runner`` is ``mpi_runner()``, shared by all MPI tasks."""
    if spec.mpi:
        return GlobusCall(runner, (), {"spec": shlex.quote(json.dumps(spec.to_dict()))},
                          spec.resource_specification())
    return GlobusCall(execute_spilled, (spec.to_dict(),), {}, serial_spec)


def outcome_of(result: Any) -> dict[str, Any]:
    """A Globus result -> physflow's outcome dict (what ``payload.execute`` returns).

    A serial task's result is that dict already. An MPI task's is a ShellResult whose last stdout
    line is the payload's outcome as JSON; without one the payload itself failed to start (no
    physflow or no interpreter on the endpoint, a ShellFunction walltime), which is a failed task
    with the shell's exit code and stderr.
    """
    if isinstance(result, dict):
        return unspill(result)
    lines = (getattr(result, "stdout", "") or "").strip().splitlines()
    if lines:
        try:
            outcome = json.loads(lines[-1])
        except ValueError:
            outcome = None
        if isinstance(outcome, dict) and "returncode" in outcome:
            return outcome
    code = getattr(result, "returncode", 1) or 1
    stderr = getattr(result, "stderr", "") or f"unexpected result {type(result).__name__}: {result!r}"
    return {"returncode": code, "timed_out": code == SHELL_TIMEOUT, "stderr_tail": stderr[-STDERR_TAIL_BYTES:]}


def chained(remote: Future, convert: Callable[[Any], Any]) -> Future:
    """A future that completes with ``convert(remote.result())`` the moment ``remote`` does."""
    local: Future = Future()

    def done(f: Future) -> None:
        try:
            local.set_result(convert(f.result()))
        except BaseException as exc:  # noqa: BLE001 - the campaign records it as a failed task
            local.set_exception(exc)

    remote.add_done_callback(done)
    return local


class GlobusDispatcher:
    """Simulations on a Globus Compute endpoint; a model server (if any) beside the orchestrator.

    ``site.endpoint`` is the endpoint's UUID. An endpoint runs one engine: a campaign of MPI
    simulations needs a GlobusMPIEngine endpoint, one of Python functions a GlobusComputeEngine
    endpoint unless the site has only an MPI pool (``physflow endpoint-config`` writes either).
    """

    def __init__(self, site: SiteSpec, max_concurrent: int, nodes_needed: int = 1, mpi: bool = True,
                 service_pool: str | None = None) -> None:
        """Arguments as ``ParslDispatcher``'s. ``max_concurrent`` is the campaign's to keep: the
        endpoint's engine scales its own blocks to the tasks it is sent."""
        from globus_compute_sdk import Executor

        kinds = {pool.kind for pool in site.pools.values()}
        if mpi:  # the endpoint's engine, like Parsl's, would queue a task larger than a block forever
            check_mpi_request(site, site.mpi_pool(), nodes_needed, max(nodes_needed, 1))
        try:
            self.endpoint = str(uuid.UUID(str(site.endpoint)))
        except ValueError:
            raise SiteError(f"site {site.name}: endpoint {site.endpoint!r} is not a UUID (set endpoint, or "
                            "--set endpoint=UUID; globus-compute-endpoint list shows yours)",
                            None, None, "endpoint") from None
        try:  # logs in first (a browser or device code) unless the user has Globus tokens already
            self.executor = Executor(endpoint_id=self.endpoint)
        except Exception as exc:  # noqa: BLE001 - no login, no network: one line, not a traceback
            raise SiteError(f"cannot use Globus Compute endpoint {self.endpoint}: {type(exc).__name__}: {exc} "
                            "(log in once interactively, or set GLOBUS_COMPUTE_CLIENT_ID and "
                            "GLOBUS_COMPUTE_CLIENT_SECRET)", None, None, "endpoint") from None
        self.runner = mpi_runner()
        self.serial_spec = serial_resources("htex" not in kinds)
        self.service_pool = service_pool
        self._services = ThreadPoolExecutor(1, thread_name_prefix="physflow-service")
        self._on_close: list[Callable[[], None]] = []
        try:
            self.check_endpoint()
        except BaseException:
            self.close()
            raise

    def check_endpoint(self, timeout: float = ENDPOINT_ANSWER_S) -> None:
        """One small task before the first simulation: the endpoint's Python, Parsl, Globus
        Compute and physflow against this environment's (``mismatches``), refused in one line
        rather than failing late as WorkerLost on every simulation."""
        self.executor.resource_specification = self.serial_spec
        try:
            there = self.executor.submit(environment_report).result(timeout=timeout)
        except TimeoutError:
            raise SiteError(f"endpoint {self.endpoint} did not answer physflow's version check in {timeout:.0f} s: "
                            "is it running (globus-compute-endpoint list), or its first block still queued?",
                            None, None, "endpoint") from None
        except Exception as exc:  # noqa: BLE001 - whatever the endpoint says, one line
            raise SiteError(f"endpoint {self.endpoint} could not run physflow's version check ({type(exc).__name__}: "
                            f"{exc}); install physflow {environment_report()['physflow']} in the endpoint's "
                            "environment and restart it", None, None, "endpoint") from None
        wrong = mismatches(environment_report(), there if isinstance(there, dict) else {})
        if wrong:
            raise SiteError(f"endpoint {self.endpoint} does not match this environment: {'; '.join(wrong)}. Install "
                            "the same Python minor version, Parsl and physflow in the endpoint's environment and "
                            "restart it", None, None, "endpoint")

    def submit(self, spec: TaskSpec) -> Future:
        call = globus_call(lighten(spec), self.runner, self.serial_spec)
        # The SDK copies the specification into each task at submit time.
        self.executor.resource_specification = call.resource_specification
        return chained(self.executor.submit(call.function, *call.args, **call.kwargs), outcome_of)

    def submit_service(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a thread here: the agents talk to the model server on this machine."""
        return self._services.submit(fn, *args)

    def on_close(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` before the executor shuts down (a service's task must end first)."""
        self._on_close.append(stop)

    def close(self) -> None:
        """Stop the services, then stop waiting for results. Safe to call more than once.

        Tasks already on the endpoint run to their end there: Globus Compute cannot cancel them.
        """
        while self._on_close:
            self._on_close.pop()()
        self._services.shutdown(wait=True)
        self.executor.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    """Worker side of an MPI task: run the payload, print its outcome as the last stdout line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m physflow.dispatch.globus_backend TASK_SPEC_JSON")
    print(json.dumps(execute(json.loads(args[0])), default=str), flush=True)


if __name__ == "__main__":
    main()
