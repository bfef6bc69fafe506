"""Which dispatcher a site gets: the one place that picks a backend by the site's scheduler."""

from __future__ import annotations

from pathlib import Path

from physflow.dispatch.base import Dispatcher
from physflow.site_configs.site import Packing, SiteSpec


def open_dispatcher(site: SiteSpec, parsl_dir: Path, max_concurrent: int, nodes_needed: int = 1,
                    mpi: bool = True, service_pool: str | None = None, packing: Packing | None = None) -> Dispatcher:
    """The backend the site names: Globus Compute for ``scheduler: globus``, else Parsl pools
    (``parsl_dir``: Parsl's run_dir). Each backend module is imported only when a site asks
    for it."""
    if site.scheduler == "globus":
        from physflow.dispatch.globus_backend import GlobusDispatcher

        return GlobusDispatcher(site, max_concurrent, nodes_needed, mpi, service_pool)
    from physflow.dispatch.parsl_backend import ParslDispatcher

    return ParslDispatcher(site, parsl_dir, max_concurrent, nodes_needed, mpi, service_pool=service_pool,
                           packing=packing)
