"""Everything ``physflow validate`` checks before anything starts.

Types and bounds (spec.py), then what only the rest of physflow knows: the adapter exists and
accepts the keys given, the objective's metric is one the adapter reports, named files exist,
the site exists and its pools can hold the simulation's request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from physflow.errors import SiteError
from physflow.sim_adapters.base import Adapter, get_adapter
from physflow.site_configs.builder import SiteSpec, load_site
from physflow.workflows.spec import LoadedWorkflow, load_workflow


@dataclass
class Checked:
    workflow: LoadedWorkflow
    adapter: Adapter
    site: SiteSpec


def check_workflow(path: str | Path, site: str | None = None) -> Checked:
    workflow = load_workflow(path)
    spec = workflow.spec
    if site:
        spec.site = site
    files = [("objective.target", spec.objective.target), ("llm.script", spec.llm.script)]
    files += [(f"agents.{role}.script", agent.script) for role, agent in spec.agents.items()]
    for field, value in files:
        if value and not workflow.resolve(value).is_file():
            raise workflow.error(field, f"file not found: {value}")
    adapter = get_adapter(workflow)
    metrics = adapter.metric_names()
    if metrics is not None and spec.objective.metric not in metrics:
        raise workflow.error("objective.metric",
                             f"adapter {adapter.name} does not report {spec.objective.metric!r} "
                             f"(it reports: {', '.join(sorted(metrics))})")
    try:
        site_spec = load_site(spec.site, workflow.directory)
    except SiteError as exc:
        if exc.file:  # an error inside the site's own YAML
            raise
        raise workflow.error("site", exc.message) from None
    res = spec.simulation.resources
    if adapter.uses_mpi:
        try:
            pool = site_spec.pools[site_spec.mpi_pool()]
        except SiteError as exc:
            raise workflow.error("site", exc.message) from None
        if res.nodes > pool.nodes_per_block:
            raise workflow.error("simulation.resources.nodes",
                                 f"{res.nodes} nodes do not fit a block of site {site_spec.name} "
                                 f"({pool.nodes_per_block} nodes per block); Parsl would wait forever")
    return Checked(workflow, adapter, site_spec)


def check_run_dir(run_dir: Path) -> Checked:
    """Re-check the workflow a run used (its resolved copy), with the run's original folder."""
    import json

    info = json.loads((run_dir / "run.json").read_text())
    checked = check_workflow(run_dir / "workflow.yaml")
    checked.workflow.path = Path(info["source"])  # {workflow_dir} and relative paths as at submit
    return checked
