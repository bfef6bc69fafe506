"""Site YAML -> executors. The one place that turns site knowledge (data) into a Parsl Config.

A site names its scheduler (local, pbs, slurm, globus), what every batch job needs (account,
queue, walltime, extra scheduler lines, module loads) and its pools: ``mpi`` pools become Parsl
``MPIExecutor``s with a ``SimpleLauncher`` (one worker pool per block that calls the MPI launcher),
``htex`` pools become ``HighThroughputExecutor``s, GPU pools among them through
``accelerators`` (one worker per entry, each entry what the worker sees as its devices).
Nothing else in physflow names a machine.

Values that differ per user (account, queue, project filesystems) are placeholders in the YAML:
``${account}`` or ``${queue:-debug}`` (with a default). ``--set account=VALUE`` fills one, else
the environment variable ``PHYSFLOW_ACCOUNT``, else the default; anything left unfilled is one
error naming every missing placeholder and how to set it. Upper-case ``${HOME}``-style names are
not placeholders: they reach the batch job's shell untouched.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from physflow.errors import SiteError, SpecError
from physflow.spec.workflow import Location, Strict, line_of, parse_model, path_kind, user_path

#: ``${name}`` or ``${name:-default}``; lower-case names only, so ``${HOME}`` stays shell syntax.
PLACEHOLDER = re.compile(r"\$\{([a-z][a-z0-9_]*)(?::-([^}]*))?\}")
WALLTIME = re.compile(r"\d+:[0-5]\d:[0-5]\d")


def placeholder_variable(name: str) -> str:
    """The environment variable that fills placeholder ``${name}``: ``PHYSFLOW_NAME``."""
    return "PHYSFLOW_" + name.upper()


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

    @model_validator(mode="after")
    def _consistent(self) -> PoolSpec:
        if self.init_blocks > self.max_blocks:
            raise ValueError(f"init_blocks ({self.init_blocks}) exceeds max_blocks ({self.max_blocks})")
        if self.accelerators and self.kind != "htex":
            raise ValueError("accelerators belong to htex pools (an MPI task binds its own GPUs)")
        return self

    def gpus_per_worker(self) -> int:
        """Devices one worker sees (0 for a CPU pool): what a multi-GPU task may use."""
        return min((len(a.split(",")) for a in self.accelerators), default=0)


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


def builtin_sites() -> dict[str, Path]:
    """Site names shipped with physflow -> their YAML files."""
    folder = resources.files("physflow.site_configs")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def site_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A built-in site's YAML, or the user's own site YAML given by path."""
    sites = builtin_sites()
    if name_or_path in sites:
        return sites[name_or_path]
    p = user_path(name_or_path)
    if not p.is_absolute() and relative_to is not None:
        p = relative_to / p
    if p.suffix in (".yaml", ".yml") and path_kind(p) == "file":
        return p.resolve()
    raise SiteError(f"unknown site {name_or_path!r} (built-in: {', '.join(sorted(sites))}; or a path to a site YAML)")


def site_description(name_or_path: str) -> str:
    """A site's description without filling its placeholders (for listings)."""
    data = yaml.safe_load(site_path(name_or_path).read_text(encoding="utf-8"))
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def parse_assignments(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["account=abc", "queue=debug"]`` (the CLI's repeated ``--set``) -> a dict."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", key.strip()):
            raise SiteError(f"--set {item!r}: expected name=value with a lower-case placeholder name, "
                            "e.g. --set account=myproject")
        values[key.strip()] = value
    return values


def _placeholder_filler(path: Path, values: Mapping[str, str]) -> Callable[[Any, dict[Location, int]], Any]:
    """Replace every ``${name}`` / ``${name:-default}`` in the site's strings; --set, then the
    environment, then the default. All missing names are reported at once, at the first's line."""

    def fill(data: Any, lines: dict[Location, int]) -> Any:
        used: set[str] = set()
        missing: dict[str, Location] = {}

        def one(match: re.Match[str], loc: Location) -> str:
            name, default = match.group(1), match.group(2)
            used.add(name)
            if name in values:
                return values[name]
            if (env := os.environ.get(placeholder_variable(name))) is not None:
                return env
            if default is not None:
                return default
            missing.setdefault(name, loc)
            return match.group(0)

        def walk(node: Any, loc: Location) -> Any:
            if isinstance(node, dict):
                return {k: walk(v, loc + (k,)) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v, loc + (i,)) for i, v in enumerate(node)]
            if isinstance(node, str):
                return PLACEHOLDER.sub(lambda m: one(m, loc), node)
            return node

        filled = walk(data, ())
        if missing:
            first = next(iter(missing.values()))
            how = " ".join(f"--set {n}=VALUE" for n in missing)
            env = ", ".join(placeholder_variable(n) for n in missing)
            raise SiteError(f"{', '.join('${' + n + '}' for n in missing)} not set: pass {how} or export {env}",
                            str(path), line_of(lines, first), ".".join(map(str, first)))
        unknown = sorted(set(values) - used)
        if unknown:
            raise SiteError(f"--set {', '.join(unknown)}: no such placeholder in this site "
                            f"(it has: {', '.join(sorted(used)) or 'none'})", str(path))
        return filled

    return fill


def load_site(name_or_path: str, relative_to: Path | None = None,
              values: Mapping[str, str] | None = None) -> SiteSpec:
    """Parse a site YAML with its placeholders filled from ``values`` (``--set``) and the
    environment; errors name the file, line and field."""
    path = site_path(name_or_path, relative_to)
    try:
        site, _ = parse_model(SiteSpec, path, fill=_placeholder_filler(path, values or {}))
    except SiteError:
        raise
    except SpecError as exc:  # the same located message, typed as a site problem
        raise SiteError(exc.message, exc.file, exc.line, exc.field) from None
    for name, pool in site.pools.items():
        if pool.kind == "mpi" and pool.launcher != "mpiexec" and site.scheduler == "local":
            raise SiteError(f"pool {name}: a local site launches MPI with mpiexec", str(path), None,
                            f"pools.{name}.launcher")
    return site


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (scheduler lines, worker_init) as ``|`` blocks, as a person would."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def site_yaml(site: SiteSpec) -> str:
    """The resolved site as YAML (every default written out); loads back as the same site."""
    return yaml.dump(site.model_dump(), Dumper=_BlockDumper, sort_keys=False)


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


def check_gpus(site: SiteSpec, pool_name: str, gpus: int) -> None:
    """Refuse a task that needs ``gpus`` devices in one worker of a pool whose workers see fewer."""
    have = site.pool(pool_name).gpus_per_worker()
    if gpus > have:
        hint = (f"its workers see {have} each (accelerators {site.pools[pool_name].accelerators}); a pool "
                f"with accelerators: ['{','.join(map(str, range(gpus)))}'] gives one worker {gpus}") if have else \
            "it has no accelerators"
        raise SiteError(f"{gpus} GPUs asked of pool {pool_name} of site {site.name}, but {hint}",
                        field="llm.tensor_parallel")


def _bin_dir() -> str:
    return str(Path(sys.executable).parent)


def block_worker_init(site: SiteSpec, pool_name: str) -> str:
    """The shell lines each block of ``pool_name`` runs before its workers start.

    The site's lines first (module loads), then physflow's own environment first on PATH (so the
    workers run the same Python and Parsl as the submitting process; this is what needs the
    environment on a filesystem the compute nodes see), then the pool's lines. A local MPI pool
    also gets a node file listing this machine, which Parsl's MPI mode requires.
    """
    pool = site.pool(pool_name)
    lines = [site.worker_init.strip(), f"export PATH={_bin_dir()}:$PATH", pool.worker_init.strip()]
    if site.scheduler == "local" and pool.kind == "mpi":
        lines.insert(0, 'export PBS_NODEFILE="$(mktemp)"; '
                        f"printf 'localhost\\n%.0s' $(seq {pool.nodes_per_block}) > \"$PBS_NODEFILE\"")
    return "\n".join(line for line in lines if line)


def build_provider(site: SiteSpec, pool_name: str) -> Any:
    """The Parsl provider (with its launcher) that gets blocks for ``pool_name`` of ``site``.

    MPI pools use a ``SimpleLauncher``: one worker pool per block, on its first node, that
    prefixes each task with the MPI launcher over the block's nodes. Serial and GPU pools start one
    worker pool per node: ``mpiexec`` on PBS (``--cpu-bind``, as ALCF documents), ``srun`` on
    Slurm, plain processes locally.
    """
    provider, arguments = provider_arguments(site, pool_name)
    return provider(**arguments)


def provider_arguments(site: SiteSpec, pool_name: str) -> tuple[type, dict[str, Any]]:
    """``build_provider``'s class and constructor arguments. Kept apart because Parsl providers
    rewrite some arguments as they store them (SlurmProvider appends ``#SBATCH`` lines to
    ``scheduler_options``), so a Globus Compute endpoint config needs the arguments themselves."""
    from parsl.launchers import MpiExecLauncher, SimpleLauncher, SingleNodeLauncher, SrunLauncher
    from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

    pool = site.pool(pool_name)
    blocks = dict(init_blocks=pool.init_blocks, min_blocks=0, max_blocks=pool.max_blocks,
                  worker_init=block_worker_init(site, pool_name))
    queue, walltime = pool.queue or site.queue, pool.walltime or site.walltime
    options = "\n".join(o.strip() for o in (site.scheduler_options, pool.scheduler_options) if o.strip())
    if site.scheduler == "local":
        launcher = SimpleLauncher() if pool.kind == "mpi" else SingleNodeLauncher()
        return LocalProvider, dict(launcher=launcher, nodes_per_block=1, **blocks)
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
    """Where workers reach the interchange: loopback locally, the named interface's address on a
    cluster, else None (Parsl then offers every address of this machine and workers probe them)."""
    if site.interface:
        from parsl.addresses import address_by_interface

        try:
            return address_by_interface(site.interface)
        except OSError as exc:
            raise SiteError(f"site {site.name}: network interface {site.interface!r} not usable here "
                            f"({exc}); run on the site's login node or change interface") from None
    return "127.0.0.1" if site.scheduler == "local" else None


def build_parsl_config(site: SiteSpec, run_dir: Path, max_concurrent: int, nodes_needed: int = 1,
                       kinds: frozenset[str] = frozenset({"mpi", "htex"}), *, pools: frozenset[str] | None = None):
    """A Parsl Config for ``site``, writing its files under ``run_dir`` (the run's parsl/ folder).

    Only pools of the given ``kinds`` (and, if given, with these names) are started: a campaign
    of MPI simulations holds no idle serial workers, one of Python functions starts no MPI pool,
    and on a site each started pool is a batch job that costs allocation hours.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, MPIExecutor

    from physflow.site_configs.parsl_logging import ParslFileLogging

    run_dir.mkdir(parents=True, exist_ok=True)
    # HTEX starts its interchange (and, locally, its workers) from the submitting process's PATH.
    bin_dir = _bin_dir()
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    local = site.scheduler == "local"
    address = _address(site)
    executors = []
    for name, pool in site.pools.items():
        if pool.kind not in kinds or (pools is not None and name not in pools):
            continue
        # Traffic stays on this machine locally; on a cluster it crosses a shared network.
        common = dict(label=name, address=address, encrypted=not local, provider=build_provider(site, name))
        if pool.kind == "mpi":
            check_mpi_request(site, name, nodes_needed, max(nodes_needed, 1))
            tasks = max_concurrent if pool.max_tasks == "auto" else pool.max_tasks
            executors.append(MPIExecutor(mpi_launcher=pool.launcher, max_workers_per_block=tasks, **common))
        else:
            workers = pool.workers_per_node
            if workers == "auto":  # one per core of this machine; on a cluster, Parsl counts each node's
                workers = (os.cpu_count() or 1) if local else None
            executors.append(HighThroughputExecutor(
                max_workers_per_node=workers, available_accelerators=pool.accelerators,
                cpu_affinity=pool.cpu_affinity, **common))
    from physflow.dispatch.retry import TRANSIENT_RETRIES, retry_cost

    scaling = any(site.pools[e.label].max_blocks > site.pools[e.label].init_blocks for e in executors)
    return Config(executors=executors, run_dir=str(run_dir), strategy="simple" if scaling else "none",
                  retries=TRANSIENT_RETRIES, retry_handler=retry_cost,  # worker loss only, never bad input
                  initialize_logging=ParslFileLogging(level=getattr(logging, site.parsl_log_level.upper())))
