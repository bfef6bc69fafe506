"""Site -> Parsl: the providers, launchers and executors that get blocks for a site's pools.

``mpi`` pools become Parsl ``MPIExecutor``s with a ``SimpleLauncher`` (one worker pool per block
that calls the MPI launcher), ``htex`` pools become ``HighThroughputExecutor``s, GPU pools among
them through ``accelerators`` (one worker per entry). It lives beside the Parsl backend that
starts these pools, above the site data it reads (``physflow.site_configs``); the Globus Compute
endpoint config (``endpoint_config``) is built from the same ``provider_arguments``, so an
endpoint gets the very blocks physflow's own pools would.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from physflow.dispatch.retry import TRANSIENT_RETRIES, retry_cost
from physflow.errors import SiteError
from physflow.site_configs.site import Packing, SiteSpec, check_mpi_request, core_list, split_cores

if TYPE_CHECKING:
    from parsl.config import Config


def bin_dir() -> str:
    """The folder of this interpreter's executables: physflow's environment, which the workers
    (``block_worker_init``) and the submitting process (``parsl_backend.bin_dir_on_path``) both
    put first on PATH so that every part of a pool runs the same Python and Parsl."""
    return str(Path(sys.executable).parent)


def make_room_for_model(site: SiteSpec, pool_name: str, service_pool: str | None) -> str:
    """The shell line that gives a local pool's block the cores and priority that ``llm.cores``
    and ``llm.simulation_priority`` leave the simulations, or "" where they do not apply.

    It applies to every pool of a local site but the one serving the model (``service_pool``,
    None when physflow serves no model in this campaign), and sets the block's shell, whose
    children inherit it: Parsl's worker pool, its workers, mpiexec and every rank (Hydra binds
    no rank by default, so the ranks keep the set), and a Parsl ``cpu_affinity`` divides the same
    set among the workers. The model server pins itself (``ServerPlan.cores``): a process may not
    raise its own priority back, so the server's pool is never lowered.
    """
    if site.scheduler != "local" or service_pool is None or pool_name == service_pool:
        return ""
    split = split_cores(site)
    calls = [f"os.sched_setaffinity(p, {split[1]})"] if split else []
    priority = site.llm.simulation_priority
    if priority == "nice":
        calls.append("os.setpriority(os.PRIO_PROCESS, p, 19)")
    elif priority == "idle":
        calls.append("os.sched_setscheduler(p, os.SCHED_IDLE, os.sched_param(0))")
    if not calls:
        return ""
    line = f"{shlex.quote(sys.executable)} -c {shlex.quote('import os; p = os.getppid(); ' + '; '.join(calls))}"
    # Each simulation process in a session of its own (the payload's, and every rank mpiexec
    # starts) is its own autogroup, which Linux schedules as an equal of the model server's whatever
    # its nice: the payload gives those sessions this nice value (payload.SESSION_NICE).
    return line + ("; export PHYSFLOW_SESSION_NICE=19" if priority in ("nice", "idle") else "")


def packing_lines(site: SiteSpec, pool_name: str, packing: Packing | None) -> list[str]:
    """The shell lines that let an MPI pool's block run ``packing.per_node`` tasks on each node.

    Parsl's MPI scheduler gives each task whole entries of the block's node list; a node listed
    ``per_node`` times holds that many tasks at once. The list comes from ``$PBS_NODEFILE`` (PBS,
    and the local site's own file), or from Slurm's (then ``SLURM_NODELIST`` is unset so that
    Parsl reads the file; srun finds the allocation through ``SLURM_JOB_ID``). Each node's entries
    follow the others' (n1 n2 n1 n2): tasks spread over the nodes before they share one. Then the
    slots' cores and devices for the payload (``payload.SLOT_ENV``) and a folder of slot locks.
    """
    pool = site.pool(pool_name)
    if pool.kind != "mpi" or packing is None:
        return []
    per_node, lines = packing.per_node, []
    if site.scheduler == "local":
        count = pool.nodes_per_block * per_node
        lines.append('export PBS_NODEFILE="$(mktemp)"; '
                     f"printf 'localhost\\n%.0s' $(seq {count}) > \"$PBS_NODEFILE\"")
    elif per_node > 1:
        source = {"pbs": "awk '!seen[$0]++' \"$PBS_NODEFILE\"",
                  "slurm": 'scontrol show hostnames "$SLURM_JOB_NODELIST"'}.get(site.scheduler)
        if source:
            lines.append(f'physflow_nodes="$(mktemp)"; for _ in $(seq {per_node}); do {source}; done > '
                         '"$physflow_nodes"; export PBS_NODEFILE="$physflow_nodes"; unset SLURM_NODELIST')
    if packing.packed:
        values = {"PHYSFLOW_SLOTS": str(per_node),
                  "PHYSFLOW_SLOT_CORES": ";".join(core_list(list(c)) for c in packing.cores),
                  "PHYSFLOW_SLOT_GPUS": ";".join(packing.gpus), "PHYSFLOW_BIND": packing.bind,
                  "PHYSFLOW_CORES_PER_RANK": str(pool.cores_per_rank)}
        lines.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items() if v))
        lines.append('export PHYSFLOW_SLOT_DIR="$(mktemp -d)"')
    return lines


def block_worker_init(site: SiteSpec, pool_name: str, service_pool: str | None = None,
                      packing: Packing | None = None) -> str:
    """The shell lines each block of ``pool_name`` runs before its workers start.

    The site's lines first (module loads), then physflow's own environment first on PATH (so the
    workers run the same Python and Parsl as the submitting process; this is what needs the
    environment on a filesystem the compute nodes see), then the pool's lines. A local MPI pool
    also gets a node file listing this machine, which Parsl's MPI mode requires, and a local pool
    beside a model server the cores and priority the server leaves it (``make_room_for_model``);
    an MPI pool the node list and slots of its ``packing`` (``packing_lines``; None: one task a node).
    """
    pool = site.pool(pool_name)
    if site.scheduler == "local" and pool.kind == "mpi" and packing is None:
        packing = Packing(1)
    lines = [*packing_lines(site, pool_name, packing), site.worker_init.strip(), f"export PATH={bin_dir()}:$PATH",
             pool.worker_init.strip(), make_room_for_model(site, pool_name, service_pool)]
    return "\n".join(line for line in lines if line)


def build_provider(site: SiteSpec, pool_name: str, service_pool: str | None = None,
                   packing: Packing | None = None) -> Any:
    """The Parsl provider (with its launcher) that gets blocks for ``pool_name`` of ``site``.

    MPI pools use a ``SimpleLauncher``: one worker pool per block, on its first node, that
    prefixes each task with the MPI launcher over the block's nodes. Serial and GPU pools start one
    worker pool per node: ``mpiexec`` on PBS (``--cpu-bind``, as ALCF documents), ``srun`` on
    Slurm, plain processes locally.
    """
    provider, arguments = provider_arguments(site, pool_name, service_pool, packing)
    return provider(**arguments)


def provider_arguments(site: SiteSpec, pool_name: str, service_pool: str | None = None,
                       packing: Packing | None = None) -> tuple[type, dict[str, Any]]:
    """``build_provider``'s class and constructor arguments. Kept apart because Parsl providers
    rewrite some arguments as they store them (SlurmProvider appends ``#SBATCH`` lines to
    ``scheduler_options``), so a Globus Compute endpoint config needs the arguments themselves."""
    from parsl.launchers import MpiExecLauncher, SimpleLauncher, SingleNodeLauncher, SrunLauncher
    from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

    pool = site.pool(pool_name)
    blocks = dict(init_blocks=pool.init_blocks, min_blocks=0, max_blocks=pool.max_blocks,
                  worker_init=block_worker_init(site, pool_name, service_pool, packing))
    queue, walltime = pool.queue or site.queue, pool.walltime or site.walltime
    options = "\n".join(o.strip() for o in (site.scheduler_options, pool.scheduler_options) if o.strip())
    if site.scheduler == "local":
        launcher = SimpleLauncher() if pool.kind == "mpi" else SingleNodeLauncher()
        return LocalProvider, dict(launcher=launcher, nodes_per_block=1, **blocks)
    if site.loop == "job":
        # Inside the batch job physflow runs in: one block, started here, never queued. The MPI
        # pool's tasks reach the job's nodes through its node list (PBS_NODEFILE, SLURM_NODELIST,
        # which the block inherits); the other pools' workers run on this first node.
        launcher = SimpleLauncher() if pool.kind == "mpi" else SingleNodeLauncher()
        return LocalProvider, dict(launcher=launcher, nodes_per_block=1, **{**blocks, "init_blocks": 1,
                                                                            "max_blocks": 1})
    if site.scheduler == "pbs":
        launcher = SimpleLauncher() if pool.kind == "mpi" else MpiExecLauncher(
            bind_cmd="--cpu-bind", overrides=pool.launch_options or "--ppn 1")
        select = site.select_options if pool.select_options is None else pool.select_options
        return PBSProProvider, dict(account=site.account, queue=queue, walltime=walltime, scheduler_options=options,
                                    select_options=select, cpus_per_node=pool.cores_per_node or 1,
                                    nodes_per_block=pool.nodes_per_block, launcher=launcher, **blocks)
    if site.scheduler == "slurm":
        launcher = SimpleLauncher() if pool.kind == "mpi" else SrunLauncher(overrides=pool.launch_options)
        return SlurmProvider, dict(partition=queue, account=site.account, walltime=walltime,
                                   scheduler_options=options, cores_per_node=pool.cores_per_node,
                                   exclusive=pool.exclusive, nodes_per_block=pool.nodes_per_block,
                                   launcher=launcher, **blocks)
    raise SiteError(f"site {site.name} dispatches through Globus Compute: its endpoint ({site.endpoint}) "
                    "gets the blocks; build a provider from the site the endpoint runs on")


def _address(site: SiteSpec) -> str | None:
    """Where workers reach the interchange: loopback locally and inside the job (``loop: job``:
    every worker runs on this node), the named interface's address on a cluster, else None (Parsl
    then offers every address of this machine and workers probe them)."""
    if site.loop == "job":
        return "127.0.0.1"
    if site.interface:
        from parsl.addresses import address_by_interface

        try:
            return address_by_interface(site.interface)
        except OSError as exc:
            raise SiteError(f"site {site.name}: network interface {site.interface!r} not usable here "
                            f"({exc}); run on the site's login node or change interface") from None
    return "127.0.0.1" if site.scheduler == "local" else None


def build_parsl_config(site: SiteSpec, run_dir: Path, max_concurrent: int, nodes_needed: int = 1,
                       kinds: frozenset[str] = frozenset({"mpi", "htex"}), *,
                       pools: frozenset[str] | None = None, service_pool: str | None = None,
                       packing: Packing | None = None) -> Config:
    """A Parsl Config for ``site``, writing its files under ``run_dir`` (the run's parsl/ folder).

    Only pools of the given ``kinds`` (and, if given, with these names) are started: a campaign
    of MPI simulations holds no idle serial workers, one of Python functions starts no MPI pool,
    and on a site each started pool is a batch job that costs allocation hours. ``service_pool``:
    the pool that serves the model, if physflow serves one (the others make room for it).
    ``packing``: how the MPI pool's nodes hold the campaign's tasks (``site.pack_mpi``; None: one
    task a node, Parsl's own way).

    Building has no side effect on this process: whoever starts a DataFlowKernel from the config
    calls ``parsl_backend.bin_dir_on_path()`` first (HTEX needs it).
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, MPIExecutor

    from physflow.dispatch.parsl_logging import ParslFileLogging

    run_dir.mkdir(parents=True, exist_ok=True)
    local = site.scheduler == "local"
    address = _address(site)
    executors = []
    for name, pool in site.pools.items():
        if pool.kind not in kinds or (pools is not None and name not in pools):
            continue
        # Traffic stays on this machine locally; on a cluster it crosses a shared network.
        common = dict(label=name, address=address, encrypted=not local,
                      provider=build_provider(site, name, service_pool, packing if pool.kind == "mpi" else None))
        if pool.kind == "mpi":
            check_mpi_request(site, name, nodes_needed, max(nodes_needed, 1))
            tasks = max_concurrent if pool.max_tasks == "auto" else pool.max_tasks
            executors.append(MPIExecutor(mpi_launcher=pool.launcher, max_workers_per_block=tasks, **common))
        else:
            workers = pool.workers_per_node
            if workers == "auto":  # one per core of this machine; on a cluster, Parsl counts each node's
                workers = (os.cpu_count() or 1) if local else None
            executors.append(HighThroughputExecutor(
                max_workers_per_node=workers, cores_per_worker=pool.cores_per_worker,
                available_accelerators=pool.accelerators, cpu_affinity=pool.cpu_affinity, **common))
    scaling = any(site.pools[e.label].max_blocks > site.pools[e.label].init_blocks for e in executors)
    return Config(executors=executors, run_dir=str(run_dir), strategy="simple" if scaling else "none",
                  retries=TRANSIENT_RETRIES, retry_handler=retry_cost,  # worker loss only, never bad input
                  initialize_logging=ParslFileLogging(level=getattr(logging, site.parsl_log_level.upper())))
