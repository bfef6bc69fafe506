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
import json
import shlex
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from physflow.dispatch.payload import STDERR_TAIL_BYTES, execute
from physflow.errors import SiteError
from physflow.site_configs.site import SiteSpec, check_mpi_request
from physflow.vocabulary.task import TaskSpec

#: Exit code of a ShellFunction whose walltime ran out (as from timeout(1)).
SHELL_TIMEOUT = 124


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
    return GlobusCall(execute, (spec.to_dict(),), {}, serial_spec)


def outcome_of(result: Any) -> dict[str, Any]:
    """A Globus result -> physflow's outcome dict (what ``payload.execute`` returns).

    A serial task's result is that dict already. An MPI task's is a ShellResult whose last stdout
    line is the payload's outcome as JSON; without one the payload itself failed to start (no
    physflow or no interpreter on the endpoint, a ShellFunction walltime), which is a failed task
    with the shell's exit code and stderr.
    """
    if isinstance(result, dict):
        return result
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

    def submit(self, spec: TaskSpec) -> Future:
        call = globus_call(spec, self.runner, self.serial_spec)
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
