"""A site as data: its schema (``SiteSpec`` with its ``PoolSpec`` pools) and the checks that
refuse a request its pools cannot hold.

A site names its scheduler (local, pbs, slurm, globus), what every batch job needs (account,
queue, walltime, extra scheduler lines, module loads) and its pools: ``mpi`` pools run MPI tasks
(one MPI launch per task over a block's nodes), ``htex`` pools serial and GPU tasks, GPU pools
among them through ``accelerators`` (one worker per entry, each entry what the worker sees as its
devices). The checks live beside the schema because both ``physflow validate`` and the
dispatchers ask them, before Parsl or an endpoint would queue an impossible request forever.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from physflow.errors import SiteError
from physflow.vocabulary.workflow import Strict

WALLTIME = re.compile(r"\d+:[0-5]\d:[0-5]\d")


class PoolSpec(Strict):
    kind: Literal["mpi", "htex"]
    launcher: Literal["mpiexec", "srun", "aprun"] = Field(
        "mpiexec", description="mpi pools: the MPI launcher each task's command is prefixed with")
    nodes_per_block: int = Field(1, ge=1, description="nodes in one block (one batch job)")
    init_blocks: int = Field(1, ge=0, description="blocks started with the campaign")
    max_blocks: int = Field(1, ge=1, description="blocks at most; more than init_blocks lets Parsl scale out")
    workers_per_node: int | Literal["auto"] = Field(
        "auto", description="htex: workers per node (auto: one per core; with accelerators, one per entry)")
    max_tasks: int | Literal["auto"] = Field("auto", description="mpi: MPI tasks at once per block")
    cores_per_node: int | None = Field(None, ge=1, description="pbs: ncpus of -l select; slurm: --cpus-per-task")
    accelerators: list[str] = Field(
        [], description="htex: one worker per entry; the entry becomes the worker's CUDA_VISIBLE_DEVICES / "
                        "ZE_AFFINITY_MASK ('0' = one GPU, '0,1,2,3' = four for one worker, '0.1' = tile 1 of GPU 0)")
    cpu_affinity: str = Field("none", description="htex: Parsl's cpu_affinity (block, alternating, list:...)")
    launch_options: str = Field(
        "", description="htex on pbs/slurm: options of the mpiexec/srun that starts one worker pool per node")
    exclusive: bool = Field(True, description="slurm: ask for whole nodes (--exclusive)")
    queue: str | None = Field(None, description="this pool's queue/partition, if not the site's")
    walltime: str | None = Field(None, description="this pool's walltime (H:MM:SS), if not the site's")
    scheduler_options: str = Field("", description="extra #PBS/#SBATCH lines for this pool's blocks")
    select_options: str | None = Field(None, description="pbs: this pool's select options, if not the site's")
    worker_init: str = Field("", description="shell lines this pool's blocks run after the site's")

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        return None if value is None else _check_walltime(value)

    @field_validator("cpu_affinity")
    @classmethod
    def _affinity(cls, value: str) -> str:
        """What Parsl's worker pool reads (checked here: the pool would only fail on the node, in
        its own log): a strategy, or ``list:`` and one core list per worker (``0-7,104-111``)."""
        if not CPU_AFFINITY.fullmatch(value):
            raise ValueError(f"cpu_affinity {value!r} is not none, block, block-reverse, alternating or "
                             "list:CORES:CORES... (one comma-separated list of cores or ranges per worker)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PoolSpec:
        if self.init_blocks > self.max_blocks:
            raise ValueError(f"init_blocks ({self.init_blocks}) exceeds max_blocks ({self.max_blocks})")
        if self.accelerators and self.kind != "htex":
            raise ValueError("accelerators belong to htex pools (an MPI task binds its own GPUs)")
        workers = self.cpu_affinity.count(":")
        if workers and self.accelerators and workers != len(self.accelerators):
            raise ValueError(f"cpu_affinity lists cores for {workers} workers, accelerators make "
                             f"{len(self.accelerators)}: one core list per worker")
        return self

    def gpus_per_worker(self) -> int:
        """Devices one worker sees (0 for a CPU pool): what a multi-GPU task may use."""
        return min((len(a.split(",")) for a in self.accelerators), default=0)


#: Parsl's cpu_affinity: a strategy, or list: then per worker a comma list of cores and core ranges.
CPU_AFFINITY = re.compile(r"none|block|block-reverse|alternating|list(:\d+(-\d+)?(,\d+(-\d+)?)*)+")


def _check_walltime(value: str) -> str:
    if not WALLTIME.fullmatch(value.strip()):
        raise ValueError(f"walltime {value!r} is not H:MM:SS (e.g. 01:00:00)")
    return value.strip()


class SiteLLM(Strict):
    serve_on: str = "local"


class SiteSpec(Strict):
    name: str
    description: str = ""
    scheduler: Literal["local", "pbs", "slurm", "globus"] = "local"
    endpoint: str | None = Field(None, description="globus: the Globus Compute endpoint's UUID")
    account: str | None = Field(None, description="allocation charged (PBS -A, Slurm --account)")
    queue: str | None = Field(None, description="PBS queue or Slurm partition (empty: the default one)")
    walltime: str = Field("01:00:00", description="H:MM:SS of each block (batch job)")
    scheduler_options: str = Field("", description="extra #PBS/#SBATCH lines for every block")
    select_options: str = Field("", description="pbs: appended to -l select=N:ncpus=C (e.g. system=polaris)")
    worker_init: str = Field("", description="shell lines every block runs first (module loads)")
    interface: str | None = Field(
        None, description="network interface on which compute nodes reach the submitting machine "
                          "(bond0 on Polaris); default: 127.0.0.1 locally, every address otherwise")
    pools: dict[str, PoolSpec]
    llm: SiteLLM = SiteLLM()
    parsl_log_level: Literal["debug", "info", "warning"] = Field(
        "info", description="level of parsl/parsl.log; info leaves out Parsl's per-task lines (physflow's "
                            "journal has each task's events), debug writes them and more, which costs "
                            "dispatch throughput on campaigns of many short tasks")

    @field_validator("account", "queue", "endpoint", "interface", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        return _check_walltime(value)

    @model_validator(mode="after")
    def _scheduler_needs(self) -> SiteSpec:
        if self.scheduler == "globus" and not self.endpoint:
            raise ValueError("scheduler globus needs endpoint (the Globus Compute endpoint's UUID)")
        return self

    def mpi_pool(self) -> str:
        for name, pool in self.pools.items():
            if pool.kind == "mpi":
                return name
        raise SiteError(f"site {self.name} has no mpi pool for MPI simulations")

    def cpu_pool(self) -> str:
        """The serial pool: the first htex pool without GPUs, else the first htex pool."""
        htex = [name for name, pool in self.pools.items() if pool.kind == "htex"]
        if not htex:
            raise SiteError(f"site {self.name} has no htex pool for serial tasks")
        return next((name for name in htex if not self.pools[name].accelerators), htex[0])

    def pool(self, name: str) -> PoolSpec:
        if name not in self.pools:
            raise SiteError(f"site {self.name} has no pool {name!r} (pools: {', '.join(self.pools)})")
        return self.pools[name]


#: Ranks a local site may start per core of this machine: a few ranks a core is how MPI codes are
#: tried on a laptop; thousands are a typo that would start thousands of processes here.
LOCAL_RANKS_PER_CORE = 8


def check_mpi_request(site: SiteSpec, pool_name: str, nodes: int, ranks: int) -> None:
    """Refuse an MPI request that cannot run in one block of ``pool_name``: Parsl would queue it
    forever. ``field`` of the SiteError names the workflow key at fault."""
    pool = site.pool(pool_name)
    if nodes > pool.nodes_per_block:
        raise SiteError(f"{nodes} nodes do not fit a block of pool {pool_name} of site {site.name} "
                        f"({pool.nodes_per_block} nodes per block); Parsl would wait forever",
                        field="simulation.resources.nodes")
    if ranks < nodes:
        raise SiteError(f"{ranks} ranks cannot fill {nodes} nodes (at least one rank per node)",
                        field="simulation.resources.ranks")
    per_node = -(-ranks // nodes)
    if pool.cores_per_node is not None and per_node > pool.cores_per_node:
        raise SiteError(f"{ranks} ranks on {nodes} nodes is {per_node} per node, more than the "
                        f"{pool.cores_per_node} cores per node of pool {pool_name} of site {site.name}",
                        field="simulation.resources.ranks")
    cores = os.cpu_count() or 1
    if site.scheduler == "local" and ranks > LOCAL_RANKS_PER_CORE * cores:
        raise SiteError(f"{ranks} ranks on this machine's {cores} cores: a local site starts every rank here "
                        f"(at most {LOCAL_RANKS_PER_CORE * cores}, {LOCAL_RANKS_PER_CORE} a core); run it on a "
                        "cluster site", field="simulation.resources.ranks")


def check_gpus(site: SiteSpec, pool_name: str, gpus: int) -> None:
    """Refuse a task that needs ``gpus`` devices in one worker of a pool whose workers see fewer."""
    have = site.pool(pool_name).gpus_per_worker()
    if gpus > have:
        hint = (f"its workers see {have} each (accelerators {site.pools[pool_name].accelerators}); a pool "
                f"with accelerators: ['{','.join(map(str, range(gpus)))}'] gives one worker {gpus}") if have else \
            "it has no accelerators"
        raise SiteError(f"{gpus} GPUs asked of pool {pool_name} of site {site.name}, but {hint}",
                        field="llm.tensor_parallel")
