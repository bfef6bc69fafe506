"""Site YAML -> executors. The one place that turns site knowledge (data) into a Parsl Config.

A site names its scheduler and its pools: ``mpi`` pools become Parsl ``MPIExecutor``s with a
``SimpleLauncher`` (one worker pool per block that calls the MPI launcher), ``htex`` pools become
``HighThroughputExecutor``s. Nothing else in physflow names a machine.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from physflow.errors import SiteError
from physflow.workflows.spec import Strict, parse_model


class PoolSpec(Strict):
    kind: Literal["mpi", "htex"]
    launcher: Literal["mpiexec", "srun", "aprun"] = "mpiexec"
    nodes_per_block: int = Field(1, ge=1)
    max_blocks: int = Field(1, ge=1)
    workers_per_node: int | Literal["auto"] = "auto"
    max_tasks: int | Literal["auto"] = Field("auto", description="MPI tasks at once per block")
    worker_init: str = ""


class SiteLLM(Strict):
    serve_on: str = "local"


class SiteSpec(Strict):
    name: str
    description: str = ""
    scheduler: Literal["local"] = "local"
    pools: dict[str, PoolSpec]
    llm: SiteLLM = SiteLLM()
    parsl_log_level: Literal["debug", "info", "warning"] = Field(
        "info", description="level of parsl/parsl.log; debug writes several lines per task, which costs "
                            "dispatch throughput on campaigns of many short tasks")

    def mpi_pool(self) -> str:
        for name, pool in self.pools.items():
            if pool.kind == "mpi":
                return name
        raise SiteError(f"site {self.name} has no mpi pool for MPI simulations")

    def cpu_pool(self) -> str:
        for name, pool in self.pools.items():
            if pool.kind == "htex":
                return name
        raise SiteError(f"site {self.name} has no htex pool for serial tasks")


def builtin_sites() -> dict[str, Path]:
    """Site names shipped with physflow -> their YAML files."""
    folder = resources.files("physflow.site_configs")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def site_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A built-in site's YAML, or the user's own site YAML given by path."""
    sites = builtin_sites()
    if name_or_path in sites:
        return sites[name_or_path]
    p = Path(name_or_path).expanduser()
    if not p.is_absolute() and relative_to is not None:
        p = relative_to / p
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    raise SiteError(f"unknown site {name_or_path!r} (built-in: {', '.join(sorted(sites))}; or a path to a site YAML)")


def load_site(name_or_path: str, relative_to: Path | None = None) -> SiteSpec:
    path = site_path(name_or_path, relative_to)
    site, _ = parse_model(SiteSpec, path)
    for name, pool in site.pools.items():
        if pool.kind == "mpi" and pool.launcher != "mpiexec" and site.scheduler == "local":
            raise SiteError(f"pool {name}: a local site launches MPI with mpiexec", str(path), None,
                            f"pools.{name}.launcher")
    return site


def build_parsl_config(site: SiteSpec, run_dir: Path, max_concurrent: int, nodes_needed: int = 1,
                       kinds: frozenset[str] = frozenset({"mpi", "htex"})):
    """A Parsl Config for ``site``, writing its files under ``run_dir`` (the run's parsl/ folder).

    Only pools of the given ``kinds`` are started: a campaign of MPI simulations holds no idle
    serial workers, and one of Python functions starts no MPI pool.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, MPIExecutor
    from parsl.launchers import SimpleLauncher
    from parsl.logconfigs.file import FileLogging
    from parsl.providers import LocalProvider

    run_dir.mkdir(parents=True, exist_ok=True)
    # HTEX starts its interchange and workers from the submitting process's PATH.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    executors = []
    for name, pool in site.pools.items():
        if pool.kind not in kinds:
            continue
        if pool.kind == "mpi":
            if nodes_needed > pool.nodes_per_block:
                raise SiteError(f"a simulation asks for {nodes_needed} nodes but pool {name} of site {site.name} "
                                f"has {pool.nodes_per_block} per block (Parsl would wait forever)")
            nodefile = run_dir / f"{name}.nodefile"
            nodefile.write_text("localhost\n" * pool.nodes_per_block)
            init = f"export PBS_NODEFILE={nodefile}; export PATH={bin_dir}:$PATH; {pool.worker_init}"
            tasks = max_concurrent if pool.max_tasks == "auto" else pool.max_tasks
            executors.append(MPIExecutor(
                label=name, address="127.0.0.1", mpi_launcher=pool.launcher, max_workers_per_block=tasks,
                provider=LocalProvider(launcher=SimpleLauncher(), worker_init=init, init_blocks=1,
                                       min_blocks=0, max_blocks=pool.max_blocks, nodes_per_block=1)))
        else:
            workers = (os.cpu_count() or 1) if pool.workers_per_node == "auto" else pool.workers_per_node
            executors.append(HighThroughputExecutor(
                label=name, address="127.0.0.1", max_workers_per_node=workers, encrypted=False,
                provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=pool.max_blocks,
                                       worker_init=f"export PATH={bin_dir}:$PATH; {pool.worker_init}")))
    return Config(executors=executors, run_dir=str(run_dir), strategy="none",
                  initialize_logging=FileLogging(level=getattr(logging, site.parsl_log_level.upper())))
