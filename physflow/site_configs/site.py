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
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from physflow.errors import SiteError
from physflow.site_configs.cores import CORE_LIST, MAX_CORES, core_list, parse_cores
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
    cores_per_worker: float = Field(
        1.0, gt=0, le=MAX_CORES, description="htex: cores each worker counts for (Parsl's cores_per_worker): below 1, "
                                             "more workers than cores, for tasks that mostly wait")
    max_tasks: int | Literal["auto"] = Field("auto", description="mpi: MPI tasks at once per block")
    tasks_per_node: int | Literal["auto"] = Field(
        "auto", description="mpi: one-node tasks packed on each node, each bound to its own cores (and "
                                  "accelerators); auto: as many as the node's cores and accelerators hold")
    cores_per_rank: int = Field(1, ge=1, le=8192, description="mpi: cores each rank is bound to when tasks are packed "
                                                     "(its threads'; 2 for both hardware threads of a core)")
    bind: Literal["auto", "hydra", "pals", "slurm", "none"] = Field(
        "auto", description="mpi: how a packed task's ranks are bound: hydra (MPICH's mpiexec -bind-to user:), "
                            "pals (Cray PALS mpiexec --cpu-bind list:, Polaris and Aurora), slurm (srun --exact: "
                            "Slurm gives each step its own cores), none (pack without binding); auto: hydra on a "
                            "local site, pals with mpiexec on PBS, slurm with srun")
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
        if isinstance(self.tasks_per_node, int) and not 1 <= self.tasks_per_node <= MAX_CORES:
            raise ValueError(f"tasks_per_node {self.tasks_per_node} is not a count of tasks on a node (1 to "
                             f"{MAX_CORES}, or auto)")
        if self.kind == "mpi" and any("," in a for a in self.accelerators):
            raise ValueError("an mpi pool's accelerators name a node's devices one an entry ('0', '1', ...); "
                             "physflow gives each packed task its share")
        workers = self.cpu_affinity.count(":")
        if workers and self.accelerators and workers != len(self.accelerators):
            raise ValueError(f"cpu_affinity lists cores for {workers} workers, accelerators make "
                             f"{len(self.accelerators)}: one core list per worker")
        return self

    def gpus_per_worker(self) -> int:
        """Devices one worker sees (0 for a CPU pool): what a multi-GPU task may use."""
        return min((len(a.split(",")) for a in self.accelerators), default=0)


#: Parsl's cpu_affinity: a strategy, or list: then per worker a core list.
CPU_AFFINITY = re.compile(rf"none|block|block-reverse|alternating|list(:{CORE_LIST})+")


def _check_walltime(value: str) -> str:
    if not WALLTIME.fullmatch(value.strip()):
        raise ValueError(f"walltime {value!r} is not H:MM:SS (e.g. 01:00:00)")
    return value.strip()


#: How simulations make room for the model server on a local site (``llm.simulation_priority``).
SIMULATION_PRIORITIES = {"normal": "as every process", "nice": "nice 19", "idle": "SCHED_IDLE"}


class SiteLLM(Strict):
    """Where the model is served, and how it shares a local site's cores with the simulations.

    On a laptop the model server and the simulations compete for the same few cores; llama.cpp's
    threads wait for each other at every layer, so one thread preempted by a simulation stalls
    them all (a planner turn measured 10x slower with two simulations running). ``cores`` pins
    the server's threads to a core set (its thread count follows) and the simulation pools to the
    rest; ``simulation_priority`` leaves the cores shared but runs the simulations at a low
    priority, so the model takes the cores only while it thinks and the simulations have them all
    the rest of the time. Both apply where physflow serves the model beside its simulations: a
    local site's campaign with an embedded (or local vLLM) model.

    Default ``cores: none`` with ``simulation_priority: nice``: on an idle 2-core machine, with two
    simulation ranks running, a planner turn (~1,000 prompt + 150 generated tokens) took 4.35x
    its time alone when everything shared the cores and 1.05x with the simulations niced (every
    simulation session's autogroup too: ``dispatch.payload.low_priority_sessions``); pinned to
    one core it took 1.02x of a turn alone that is itself 1.9x slower, and the simulations lose a
    core for the whole campaign, also while the model is idle, which is most of the time
    (``bench/thinking_cores.py``, BENCHMARKS.md "Cores for thinking").
    """

    serve_on: str = "local"
    tool_parser: str | None = Field(None, pattern=r"^[a-z0-9_-]{1,40}$",
                                    description="vllm served here: --tool-call-parser for every model (a "
                                                "workflow's llm.tool_parser wins; default: the model family's)")
    cores: str = Field(
        "none", description="local sites: cores the model server's threads are pinned to ('1', '2-3', '0,2'), "
                            "the simulation pools getting the others; auto: the last quarter of this machine's "
                            "cores (1 to 4); none: the server and the simulations share every core")
    simulation_priority: Literal["normal", "nice", "idle"] = Field(
        "nice", description="local sites, while physflow serves the model: the simulation pools' priority; "
                            "nice: nice 19, so the model takes the cores while it thinks and the simulations "
                            "have them otherwise; idle: SCHED_IDLE (Linux), simulations run only on cores "
                            "nothing else wants; normal: the same priority as the model")

    @field_validator("cores", mode="before")
    @classmethod
    def _cores(cls, value: Any) -> Any:
        """A core list, none or auto (a single core may come as a YAML number: ``cores: 1``)."""
        value = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else value
        if isinstance(value, str) and value not in ("none", "auto"):
            parse_cores(value)
        return value


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
                          "(hsn0 on Polaris and Aurora); default: 127.0.0.1 locally, every address otherwise")
    pools: dict[str, PoolSpec]
    loop: Literal["login", "job"] = Field(
        "login", description="pbs/slurm: where physflow's loop runs. login: on the login node, each pool a "
                             "batch job it submits; job: inside a batch job you submitted, its pools started "
                             "in that job (the MPI pool over the job's nodes, the others on its first node)")
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
        if self.loop == "job" and self.scheduler not in ("pbs", "slurm"):
            raise ValueError(f"loop job runs physflow inside a PBS or Slurm job; scheduler {self.scheduler} has none")
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


#: What tells a process it runs inside a batch job, by scheduler.
JOB_ID_ENV = {"pbs": "PBS_JOBID", "slurm": "SLURM_JOB_ID"}


def check_loop_here(site: SiteSpec, environ: dict[str, str] | None = None) -> None:
    """Refuse to start a ``loop: job`` site's pools outside a batch job: they would run on the
    login node (a SiteError on field ``loop`` saying how to run it)."""
    env = os.environ if environ is None else environ
    if site.loop == "job" and not env.get(JOB_ID_ENV[site.scheduler]):
        raise SiteError(f"site {site.name} has loop: job, but this is not inside a {site.scheduler} job "
                        f"(no ${JOB_ID_ENV[site.scheduler]}): submit a batch script that runs physflow submit, or "
                        "use loop: login", field="loop")


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


@dataclass(frozen=True)
class Packing:
    """How the nodes of an MPI pool hold a campaign's tasks (all of one size): ``per_node`` at once
    on each node; where they are packed (``per_node`` > 1, or GPUs asked), slot ``i`` of a node is
    bound to ``cores[i]`` and sees devices ``gpus[i]`` (empty: no binding, every device), and
    ``bind`` says which launcher's options do it.

    Why physflow does this: Parsl's MPIExecutor hands out whole nodes, so a 4-rank simulation
    takes a 64-core Polaris node alone (Parsl issue #3927), and several MPI jobs on one node
    would all land on GPU 0 (Parsl issue #2900). Listing each node ``per_node`` times in the
    block's node file lets Parsl start that many tasks on it; the payload takes a free slot there
    (``dispatch.payload.take_slot``) and binds its ranks to the slot's cores.
    """

    per_node: int
    cores: tuple[tuple[int, ...], ...] = ()
    gpus: tuple[str, ...] = ()
    bind: str = "none"

    @property
    def packed(self) -> bool:
        """Whether a task takes a slot of its node (bound to its cores, or given its devices)."""
        return self.bind != "none" or bool(self.gpus)


def bind_style(site: SiteSpec, pool: PoolSpec) -> str:
    """The launcher flavour of ``pool``'s binding options (``PoolSpec.bind``, auto resolved)."""
    if pool.bind != "auto":
        return pool.bind
    if pool.launcher == "srun":
        return "slurm"
    if pool.launcher == "mpiexec":
        return "hydra" if site.scheduler == "local" else "pals" if site.scheduler == "pbs" else "none"
    return "none"


def node_cores(site: SiteSpec, pool: PoolSpec, model_served: bool = False) -> list[int] | None:
    """The cores a task of ``pool`` may be bound to on one node: on a local site the cores the
    simulations have (all of this machine's, less the model server's when physflow serves one and
    ``llm.cores`` pins it), elsewhere 0 to ``cores_per_node`` - 1; None where the site does not say."""
    if site.scheduler == "local":
        split = split_cores(site) if model_served else None
        return split[1] if split else machine_cores()
    return list(range(pool.cores_per_node)) if pool.cores_per_node else None


def pack_mpi(site: SiteSpec, pool_name: str, ranks: int, nodes: int, gpus: int = 0,
             model_served: bool = False) -> Packing:
    """How ``pool_name`` packs tasks of ``ranks`` ranks on ``nodes`` nodes that use ``gpus``
    devices on each node (``Packing``). Tasks over several nodes are never packed (Parsl would
    hand one task the same node twice); a one-node task is packed as many times as the node's
    cores (``cores_per_rank`` a rank) and accelerators hold, or ``tasks_per_node`` times. A
    ``tasks_per_node`` beyond what the cores hold packs without binding (the ranks share cores:
    the user asked for it). SiteError on field ``simulation.resources.gpus`` for GPUs the pool lacks.
    """
    pool = site.pool(pool_name)
    devices = list(pool.accelerators)
    if gpus > len(devices):
        have = f"{len(devices)} ({', '.join(devices)})" if devices else "none"
        raise SiteError(f"{gpus} GPUs a node asked, but pool {pool_name} of site {site.name} lists {have} in "
                        "accelerators", field="simulation.resources.gpus")
    if nodes > 1:
        return Packing(1, gpus=(",".join(devices[:gpus]),) if gpus else ())
    need = ranks * pool.cores_per_rank
    cores = node_cores(site, pool, model_served)
    fits = [len(cores) // need] if cores else []
    fits += [len(devices) // gpus] if gpus else []
    per_node = pool.tasks_per_node if pool.tasks_per_node != "auto" else max(1, min(fits, default=1))
    style = bind_style(site, pool)
    # Slurm chooses a step's cores itself (srun --exact); the other launchers are told ours.
    told = style not in ("slurm", "none") and cores is not None and per_node * need <= len(cores)
    bound = per_node > 1 and (style == "slurm" or told)
    slot_cores = tuple(tuple(cores[i * need:(i + 1) * need]) for i in range(per_node)) if bound and told else ()
    slot_gpus = tuple(",".join(devices[i * gpus:(i + 1) * gpus]) for i in range(per_node)) if gpus else ()
    return Packing(per_node, slot_cores, slot_gpus, style if bound else "none")


def simulation_slots(site: SiteSpec, mpi: bool, nodes: int = 1, packing: Packing | None = None) -> int | None:
    """Simulations ``site`` runs at once, counted from its pools: an MPI pool's blocks times the
    tasks a block holds (``nodes``-node tasks, ``packing.per_node`` a node, at most ``max_tasks``),
    or the serial pool's workers; None where the site leaves it to the nodes (``auto`` workers on
    a cluster without ``cores_per_node``). What ``budget.max_concurrent`` can get, and what a
    run's busy fraction divides by."""
    if mpi:
        pool = site.pool(site.mpi_pool())
        per_block = (pool.nodes_per_block // nodes) * (packing.per_node if packing else 1)
        if pool.max_tasks != "auto":
            per_block = min(per_block, pool.max_tasks)
        return per_block * pool.max_blocks
    pool = site.pool(site.cpu_pool())
    workers: int | None
    if pool.workers_per_node != "auto":
        workers = pool.workers_per_node
    elif pool.accelerators:
        workers = len(pool.accelerators)
    elif site.scheduler == "local":
        workers = os.cpu_count() or 1
    else:
        workers = pool.cores_per_node
    return None if workers is None else workers * pool.nodes_per_block * pool.max_blocks


def concurrency_note(site: SiteSpec, max_concurrent: int, slots: int | None, mpi: bool,
                     packing: Packing | None = None) -> str | None:
    """One line when ``budget.max_concurrent`` asks for more simulations at once than ``site``
    gives (``slots``), saying what limits it and what to change; None when it fits."""
    if slots is None or max_concurrent <= slots:
        return None
    if mpi:
        name = site.mpi_pool()
        pool = site.pool(name)
        per_node = packing.per_node if packing else 1
        why = (f"pool {name} has {pool.max_blocks} block(s) of {pool.nodes_per_block} node(s), "
               f"{per_node} simulation(s) a node")
        change = (f"pools.{name}.nodes_per_block or max_blocks (a cluster), tasks_per_node, or fewer ranks "
                  "a simulation")
    else:
        name = site.cpu_pool()
        pool = site.pool(name)
        why = f"pool {name} has {slots} worker(s)"
        change = f"pools.{name}.workers_per_node or max_blocks"
    return (f"budget.max_concurrent is {max_concurrent}, but site {site.name} runs at most {slots} simulation(s) "
            f"at once ({why}): {max_concurrent - slots} would wait; change {change}, or lower max_concurrent. "
            f"The report's busy fraction counts the {slots} slot(s) that exist")


def check_gpus(site: SiteSpec, pool_name: str, gpus: int) -> None:
    """Refuse a task that needs ``gpus`` devices in one worker of a pool whose workers see fewer."""
    have = site.pool(pool_name).gpus_per_worker()
    if gpus > have:
        hint = (f"its workers see {have} each (accelerators {site.pools[pool_name].accelerators}); a pool "
                f"with accelerators: ['{','.join(map(str, range(gpus)))}'] gives one worker {gpus}") if have else \
            "it has no accelerators"
        raise SiteError(f"{gpus} GPUs asked of pool {pool_name} of site {site.name}, but {hint}",
                        field="llm.tensor_parallel")


def check_pipeline(site: SiteSpec, pool_name: str, stages: int) -> None:
    """Refuse a vLLM model split into ``stages`` pipeline stages (one a node, joined by Ray) on
    a pool whose block has fewer nodes, or on a local site (Ray over nodes needs a cluster)."""
    if stages <= 1:
        return
    if site.scheduler in ("local", "globus"):
        raise SiteError(f"pipeline_parallel {stages} splits the model over {stages} nodes; site {site.name} "
                        f"({site.scheduler}) serves on this machine or an endpoint: use a PBS or Slurm site",
                        field="llm.pipeline_parallel")
    nodes = site.pool(pool_name).nodes_per_block
    if stages > nodes:
        raise SiteError(f"pipeline_parallel {stages} needs {stages} nodes in one block of pool {pool_name} of site "
                        f"{site.name}, which has {nodes} (set pools.{pool_name}.nodes_per_block)",
                        field="llm.pipeline_parallel")


def machine_cores() -> list[int]:
    """The cores this process may run on (its affinity, which a cgroup or ``taskset`` may narrow
    below ``os.cpu_count()``): what a local site's pools and model server can be given."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return sorted(getaffinity(0)) if getaffinity else list(range(os.cpu_count() or 1))


def split_cores(site: SiteSpec, available: list[int] | None = None) -> tuple[list[int], list[int]] | None:
    """``(model server's cores, simulation pools' cores)`` for ``site``'s ``llm.cores`` on this
    machine (``available``: its cores, default ``machine_cores()``), or None when they share
    every core. Refuses, as a SiteError on field ``llm.cores``, a core set that cannot be pinned:
    on a cluster site (the cores of its nodes are not this machine's), without
    ``os.sched_setaffinity`` (macOS), naming a core this machine lacks, or taking every core.

    ``auto`` is the last quarter of the cores, at least 1 and at most 4: llama.cpp gains little
    beyond 4 threads on a CPU (memory bandwidth bounds it), and simulations keep the majority.
    """
    text = site.llm.cores
    if text == "none":
        return None
    if site.scheduler != "local":
        raise SiteError(f"cores pins cores of this machine; site {site.name}'s model server runs on its "
                        f"{site.scheduler} nodes: leave llm.cores none there", field="llm.cores")
    if not hasattr(os, "sched_setaffinity"):
        raise SiteError("pinning cores needs Linux (os.sched_setaffinity); use cores: none and "
                        "simulation_priority: nice on this machine", field="llm.cores")
    have = machine_cores() if available is None else sorted(available)
    if text == "auto":
        if len(have) < 2:
            raise SiteError(f"cores auto needs 2 cores or more; this machine has {core_list(have)} only: use "
                            "cores: none", field="llm.cores")
        model = have[-min(4, max(1, len(have) // 4)):]
    else:
        model = parse_cores(text)
        missing = [c for c in model if c not in have]
        if missing:
            raise SiteError(f"core {core_list(missing)} is not one of this machine's cores ({core_list(have)})",
                            field="llm.cores")
    rest = [c for c in have if c not in model]
    if not rest:
        raise SiteError(f"cores {text} takes every core of this machine ({core_list(have)}); leave at least one "
                        "for the simulations, or use cores: none", field="llm.cores")
    for name, pool in site.pools.items():
        listed = {c for part in pool.cpu_affinity.split(":")[1:] for c in parse_cores(part)}
        if listed & set(model):
            raise SiteError(f"pool {name}'s cpu_affinity lists core {core_list(sorted(listed & set(model)))}, which "
                            f"llm.cores {text} gives the model server", field=f"pools.{name}.cpu_affinity")
    return model, rest


def model_cores(site: SiteSpec) -> list[int]:
    """The cores ``site`` pins the model server to on this machine; [] where it shares them all."""
    split = split_cores(site)
    return split[0] if split else []


def check_simulation_priority(site: SiteSpec) -> None:
    """Refuse ``simulation_priority: idle`` where there is no SCHED_IDLE (macOS): a SiteError on
    field ``llm.simulation_priority``."""
    if site.llm.simulation_priority == "idle" and not hasattr(os, "SCHED_IDLE"):
        raise SiteError("simulation_priority idle needs Linux (SCHED_IDLE); use nice",
                        field="llm.simulation_priority")
