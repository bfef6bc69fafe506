"""TEMPORARY (replaced by the dispatch branch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from physflow.site_configs.builder import SiteSpec


def open_dispatcher(site: SiteSpec, parsl_dir: Path, max_concurrent: int, nodes_needed: int = 1,
                    mpi: bool = True, service_pool: str | None = None) -> Any:
    """The backend the site names: Globus Compute for ``scheduler: globus``, else Parsl pools
    (``parsl_dir``: Parsl's run_dir). Both have the same submit/submit_service/on_close/close."""
    if site.scheduler == "globus":
        from physflow.dispatch.globus_backend import GlobusDispatcher

        return GlobusDispatcher(site, max_concurrent, nodes_needed, mpi, service_pool)
    from physflow.dispatch.parsl_backend import ParslDispatcher

    return ParslDispatcher(site, parsl_dir, max_concurrent, nodes_needed, mpi, service_pool=service_pool)
