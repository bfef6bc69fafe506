"""Dispatch through Parsl: a DataFlowKernel from a site config, one app per pool kind.

A ``Dispatcher`` (``physflow.dispatch.base``): ``submit(TaskSpec) -> concurrent.futures.Future``
is the whole interface the campaign sees; MPI tasks go to the site's MPIExecutor pool with their
resource specification, others to HTEX.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from physflow.dispatch.parsl_config import bin_dir, build_parsl_config
from physflow.dispatch.payload import execute
from physflow.processes import start_watchdog, stop_watchdog
from physflow.site_configs.site import Packing, SiteSpec, check_loop_here
from physflow.vocabulary.task import TaskSpec


def bin_dir_on_path() -> None:
    """Put physflow's environment (``parsl_config.bin_dir``) first on this process's PATH, once.

    HTEX starts its interchange (and, locally, its workers) as commands found on the PATH of the
    process that starts the DataFlowKernel; without the environment's ``bin`` there (a venv used
    without activating it) that start fails with FileNotFoundError for ``interchange.py``. Call
    it before any DataFlowKernel made from ``build_parsl_config``'s Config.
    """
    here = bin_dir()
    if here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


class ParslDispatcher:
    """Simulations (and a model server, if any) on the site's Parsl pools, started by this process."""

    def __init__(self, site: SiteSpec, parsl_dir: Path, max_concurrent: int, nodes_needed: int = 1,
                 mpi: bool = True, service_pool: str | None = None, packing: Packing | None = None) -> None:
        """``mpi``: whether the campaign's simulations are MPI tasks (then only the site's MPI pool
        starts, else only its serial pool, or its MPI pool where it has no other).
        ``service_pool``: a pool that runs long-lived services (the model server) beside them.
        ``packing``: how the MPI pool's nodes hold the simulations (``site.pack_mpi``)."""
        from parsl import python_app
        from parsl.dataflow.dflow import DataFlowKernel

        check_loop_here(site)
        kinds = {pool.kind for pool in site.pools.values()}
        wanted = "mpi" if mpi or "htex" not in kinds else "htex"
        started = {site.mpi_pool() if wanted == "mpi" else site.cpu_pool()}
        started |= {service_pool} if service_pool else set()
        self.config = build_parsl_config(site, parsl_dir, max_concurrent, nodes_needed,
                                         frozenset(site.pools[name].kind for name in started),
                                         pools=frozenset(started), service_pool=service_pool, packing=packing)
        bin_dir_on_path()
        self.dfk = DataFlowKernel(self.config)
        self._watchdog = start_watchdog(parsl_dir)  # the pools end with this process, even a SIGKILLed one
        self.service_pool = service_pool
        self._on_close: list[Callable[[], None]] = []
        self._mpi = self._cpu = None
        if wanted == "mpi":
            self._mpi = python_app(execute, executors=[site.mpi_pool()], data_flow_kernel=self.dfk)
        else:
            self._cpu = python_app(execute, executors=[site.cpu_pool()], data_flow_kernel=self.dfk)
        self.labels = [e.label for e in self.config.executors]

    def submit(self, spec: TaskSpec) -> Future:
        if spec.mpi:
            if self._mpi is None:
                raise RuntimeError("this dispatcher started no MPI pool (it was made with mpi=False)")
            return self._mpi(spec.to_dict(), parsl_resource_specification=spec.resource_specification())
        app = self._cpu or self._mpi
        if app is self._mpi:
            return app(spec.to_dict(), parsl_resource_specification={"num_nodes": 1, "ranks_per_node": 1,
                                                                       "num_ranks": 1})
        return app(spec.to_dict())

    def submit_service(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the service pool: a task that lives as long as the campaign."""
        from parsl import python_app

        if self.service_pool is None:
            raise RuntimeError("this dispatcher was made without a service pool")
        return python_app(fn, executors=[self.service_pool], data_flow_kernel=self.dfk)(*args)

    def on_close(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` before the pools shut down (a service's task must end first)."""
        self._on_close.append(stop)

    def close(self) -> None:
        """Stop the services, then the pools. Safe to call more than once."""
        while self._on_close:
            self._on_close.pop()()
        if not self.dfk.cleanup_called:
            self.dfk.cleanup()
        stop_watchdog(self._watchdog)
