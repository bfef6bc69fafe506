"""Everything ``physflow validate`` checks before anything starts.

Types and bounds (physflow.spec.workflow), then what only the rest of physflow knows: the adapter exists and
accepts the keys given, the objective's metric is one the adapter reports, named files exist,
the site exists and its pools can hold the simulation's request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from physflow.errors import PhysflowError
from physflow.sim_adapters import get_adapter
from physflow.sim_adapters.base import Adapter
from physflow.site_configs.loader import builtin_sites, load_site
from physflow.site_configs.site import SiteSpec, check_gpus, check_mpi_request
from physflow.spec.workflow import LoadedWorkflow, load_workflow, path_kind, user_path


@dataclass
class Checked:
    workflow: LoadedWorkflow
    adapter: Adapter
    site: SiteSpec


def check_workflow(path: str | Path, site: str | None = None, values: Mapping[str, str] | None = None,
                   site_spec: SiteSpec | None = None) -> Checked:
    """``site`` overrides the workflow's ``site:`` (a name, or a site YAML path relative to the
    current folder); ``values`` fill the site's placeholders (``--set``); ``site_spec`` is an
    already resolved site (the one a run used, on resume)."""
    workflow = load_workflow(path)
    spec = workflow.spec
    if site:
        own = site not in builtin_sites() and site.endswith((".yaml", ".yml"))
        spec.site = str(user_path(site).resolve()) if own else site
    files = [("objective.target", spec.objective.target), ("llm.script", spec.llm.script)]
    files += [(f"agents.{role}.script", agent.script) for role, agent in spec.agents.items()]
    for field, value in files:
        if value and path_kind(workflow.resolve(value)) != "file":
            raise workflow.error(field, f"file not found: {value}")
    for i, entry in enumerate(spec.knowledge):
        if path_kind(workflow.resolve(entry)) is None:
            raise workflow.error(f"knowledge.{i}", f"no such file or folder: {entry}")
    adapter = get_adapter(workflow)
    metrics = adapter.metric_names()
    if metrics is not None and spec.objective.metric not in metrics:
        raise workflow.error("objective.metric",
                             f"adapter {adapter.name} does not report {spec.objective.metric!r} "
                             f"(it reports: {', '.join(sorted(metrics))})")
    try:
        if site_spec is None:
            site_spec = load_site(spec.site, workflow.directory, values)
        res = spec.simulation.resources
        if adapter.uses_mpi:
            check_mpi_request(site_spec, site_spec.mpi_pool(), res.nodes, res.ranks)
        if spec.has_team and spec.llm.provider == "vllm" and not spec.llm.base_url:
            from physflow.serving.plans import serving_plan

            check_gpus(site_spec, serving_plan(spec.llm, site_spec)[1], spec.llm.tensor_parallel)
    except PhysflowError as exc:
        if getattr(exc, "file", None):  # an error inside the site's own YAML
            raise
        field = getattr(exc, "field", None) or "site"
        raise workflow.error(field, getattr(exc, "message", str(exc))) from None
    return Checked(workflow, adapter, site_spec)


def check_run_dir(run_dir: Path) -> Checked:
    """Re-check the workflow a run used (its resolved copy), with the run's original folder."""
    import json

    info = json.loads((run_dir / "run.json").read_text())
    # The site as it was resolved at submit: placeholders filled then need not be set again.
    site = SiteSpec.model_validate(info["site"]) if "site" in info else None
    checked = check_workflow(run_dir / "workflow.yaml", site_spec=site)
    checked.workflow.path = Path(info["source"])  # {workflow_dir} and relative paths as at submit
    return checked
