"""Site YAML -> a Globus Compute endpoint's ``config.yaml`` (``physflow endpoint-config SITE``).

A Globus Compute endpoint started on a cluster's login node gets its blocks from the batch
scheduler just as physflow's own Parsl pools do, so its config is built from the same site YAML
through the same ``build_provider`` arguments: an MPI pool becomes a ``GlobusMPIEngine`` (Parsl's
MPIExecutor underneath), a serial or GPU pool a ``GlobusComputeEngine`` (HTEX underneath). The
provider object is written as the type-tagged mapping the endpoint's own loader
(``globus_compute_endpoint.endpoint.config.utils.load_config_yaml``) turns back into that object,
so what the endpoint runs is what physflow would have run itself.
"""

from __future__ import annotations

import inspect
from typing import Any

from physflow.dispatch.parsl_config import provider_arguments
from physflow.site_configs.loader import block_yaml
from physflow.site_configs.site import Packing, SiteSpec, pack_mpi


def default_pool(site: SiteSpec) -> str:
    """The pool an endpoint serves when none is named: the MPI pool if the site has one (a
    GlobusMPIEngine also runs one-rank serial tasks), else the serial pool."""
    return next((name for name, pool in site.pools.items() if pool.kind == "mpi"), None) or site.cpu_pool()


def tagged_launcher(launcher: Any) -> dict[str, Any]:
    """A Parsl launcher as ``{type: ClassName, arg: value, ...}``.

    Launchers keep each constructor argument unchanged as a same-named attribute (Parsl's reprs
    rely on that), so the arguments are read back from the object; those at their default are
    left out to keep the file short.
    """
    out: dict[str, Any] = {"type": type(launcher).__name__}
    for name, param in inspect.signature(type(launcher).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(launcher, name):
            continue
        value = getattr(launcher, name)
        if param.default is param.empty or value != param.default:
            out[name] = value
    return out


def tagged_provider(site: SiteSpec, pool_name: str, packing: Packing | None = None) -> dict[str, Any]:
    """``build_provider(site, pool_name)`` as the type-tagged mapping the endpoint's loader builds
    it from: the very arguments physflow's own pool would be given, not what the provider made of
    them."""
    from parsl.launchers.base import Launcher

    provider, arguments = provider_arguments(site, pool_name, packing=packing)
    out: dict[str, Any] = {"type": provider.__name__}
    for name, value in arguments.items():
        if value is not None:
            out[name] = tagged_launcher(value) if isinstance(value, Launcher) else value
    return out


def _engine_address(site: SiteSpec) -> str | dict[str, str] | None:
    """Where the engine's workers reach its interchange, resolved where the endpoint runs: a
    named interface (hsn0 on Polaris and Aurora), loopback on a local site, else Parsl's default."""
    if site.interface:
        return {"type": "address_by_interface", "ifname": site.interface}
    return "127.0.0.1" if site.scheduler == "local" else None


def endpoint_config(site: SiteSpec, pool_name: str | None = None, ranks: int | None = None,
                    gpus: int = 0) -> dict[str, Any]:
    """The endpoint config (as loaded from YAML) whose engine serves ``pool_name`` of ``site``;
    ``ranks`` (and ``gpus``): the size of one-node MPI simulations it will run, packed on its
    nodes as physflow's own pool would pack them (``site.pack_mpi``)."""
    name = pool_name or default_pool(site)
    pool = site.pool(name)
    engine: dict[str, Any]
    packing = pack_mpi(site, name, ranks, 1, gpus) if pool.kind == "mpi" and ranks else None
    if pool.kind == "mpi":
        # MPI tasks at once per block; with "auto" one per node (or the packed count), the
        # smallest task a block holds.
        per_node = packing.per_node if packing else 1
        tasks = pool.max_tasks if pool.max_tasks != "auto" else pool.nodes_per_block * per_node
        engine = {"type": "GlobusMPIEngine", "mpi_launcher": pool.launcher, "max_workers_per_block": tasks}
    else:
        engine = {"type": "GlobusComputeEngine"}
        if pool.workers_per_node != "auto":
            engine["max_workers_per_node"] = pool.workers_per_node
        if pool.accelerators:
            engine["available_accelerators"] = list(pool.accelerators)
        if pool.cpu_affinity != "none":
            engine["cpu_affinity"] = pool.cpu_affinity
    address = _engine_address(site)
    if address is not None:
        engine["address"] = address
    engine["provider"] = tagged_provider(site, name, packing)
    return {"display_name": f"physflow-{site.name}-{name}", "engine": engine}


def endpoint_config_yaml(site: SiteSpec, pool_name: str | None = None, source: str = "", ranks: int | None = None,
                         gpus: int = 0) -> str:
    """``endpoint_config`` as the text of an endpoint's ``config.yaml``, with a header saying
    where it came from and where it goes."""
    name = pool_name or default_pool(site)
    header = (f"# Globus Compute endpoint config for pool {name} of site {source or site.name}, written by\n"
              "# physflow endpoint-config. Install it as ~/.globus_compute/<endpoint>/config.yaml on the\n"
              "# machine that runs the endpoint, in the environment physflow runs in.\n")
    return header + block_yaml(endpoint_config(site, name, ranks, gpus))
