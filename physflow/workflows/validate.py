"""Everything ``physflow validate`` checks before anything starts.

Types and bounds (physflow.vocabulary.workflow), then what only the rest of physflow knows: the
adapter exists and accepts the keys given, the objective's metric is one the adapter reports,
named files exist, the site exists and its pools can hold the simulation's request. Checking
changes nothing it is given: it returns what it found (the workflow as it will run, its adapter
built once, its site resolved) for the command to use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from physflow.errors import PhysflowError
from physflow.serving.plans import serving_plan
from physflow.sim_adapters import get_adapter
from physflow.sim_adapters.base import Adapter
from physflow.site_configs.loader import builtin_sites, load_site
from physflow.site_configs.site import (
    Packing,
    SiteSpec,
    check_gpus,
    check_mpi_request,
    check_pipeline,
    concurrency_note,
    pack_mpi,
    simulation_slots,
)
from physflow.vocabulary.workflow import LoadedWorkflow, load_workflow, path_kind, real_path, user_path
from physflow.workflows.store import RunStore


@dataclass(frozen=True)
class Checked:
    """A workflow as it will run: its adapter, its site, how the site's MPI nodes hold its
    simulations (``packing``, None for serial ones) and how many run at once (``slots``: at most
    ``budget.max_concurrent``; None where the site leaves it to its nodes)."""

    workflow: LoadedWorkflow
    adapter: Adapter
    site: SiteSpec
    packing: Packing | None = None
    slots: int | None = None

    def notes(self) -> list[str]:
        """What the user should know before it runs (printed by validate and submit, never fatal)."""
        budget = self.workflow.spec.budget.max_concurrent
        note = concurrency_note(self.site, budget, self.slots, self.adapter.uses_mpi, self.packing)
        return [note] if note else []


def with_site(workflow: LoadedWorkflow, site: str) -> LoadedWorkflow:
    """``workflow`` run on ``site`` instead of its own ``site:`` (a built-in name, or a site YAML
    path relative to the current folder, recorded absolute)."""
    own = site not in builtin_sites() and site.endswith((".yaml", ".yml"))
    spec = workflow.spec.model_copy(update={"site": str(real_path(user_path(site))) if own else site})
    return workflow.model_copy(update={"spec": spec})


def check_files(workflow: LoadedWorkflow) -> None:
    """Every file and folder the workflow names exists (a located error for the first that does not)."""
    spec = workflow.spec
    files = [("objective.target", spec.objective.target), ("llm.script", spec.llm.script)]
    files += [(f"agents.{role}.script", agent.script) for role, agent in spec.agents.items()]
    for field, value in files:
        if value and path_kind(workflow.resolve(value)) != "file":
            raise workflow.error(field, f"file not found: {value}")
    for i, entry in enumerate(spec.knowledge):
        if path_kind(workflow.resolve(entry)) is None:
            raise workflow.error(f"knowledge.{i}", f"no such file or folder: {entry}")


def check_site(workflow: LoadedWorkflow, adapter: Adapter, values: Mapping[str, str] | None,
               site_spec: SiteSpec | None) -> SiteSpec:
    """The site resolved (unless given), and checked to hold the simulation's request and, for a
    vLLM model physflow serves, its GPUs; a problem of the request is located in the workflow."""
    spec = workflow.spec
    try:
        site = site_spec if site_spec is not None else load_site(spec.site, workflow.directory, values)
        res = spec.simulation.resources
        if adapter.uses_mpi:
            check_mpi_request(site, site.mpi_pool(), res.nodes, res.ranks)
        if spec.has_team and spec.llm.provider == "vllm" and not spec.llm.base_url:
            pool = serving_plan(spec.llm, site)[1]
            check_gpus(site, pool, spec.llm.tensor_parallel)
            check_pipeline(site, pool, spec.llm.pipeline_parallel)
    except PhysflowError as exc:
        if getattr(exc, "file", None):  # an error inside the site's own YAML
            raise
        field = getattr(exc, "field", None) or "site"
        raise workflow.error(field, getattr(exc, "message", str(exc))) from None
    return site


def plan_slots(workflow: LoadedWorkflow, adapter: Adapter, site: SiteSpec) -> tuple[Packing | None, int | None]:
    """How ``site``'s nodes hold the workflow's simulations and how many run at once (``Checked``);
    GPUs the MPI pool lacks are an error located at ``simulation.resources.gpus``."""
    spec, res = workflow.spec, workflow.spec.simulation.resources
    try:
        served = spec.has_team and serving_plan(spec.llm, site) is not None
        packing = pack_mpi(site, site.mpi_pool(), res.ranks, res.nodes, res.gpus, served) if adapter.uses_mpi \
            else None
        return packing, simulation_slots(site, adapter.uses_mpi, res.nodes, packing)
    except PhysflowError as exc:
        raise workflow.error(getattr(exc, "field", None) or "site", getattr(exc, "message", str(exc))) from None


def check_workflow(workflow: LoadedWorkflow | str | Path, site: str | None = None,
                   values: Mapping[str, str] | None = None, site_spec: SiteSpec | None = None) -> Checked:
    """``workflow``: a loaded workflow or its file; ``site`` overrides its ``site:``; ``values``
    fill the site's placeholders (``--set``); ``site_spec`` is an already resolved site (the one a
    run used, on resume)."""
    if not isinstance(workflow, LoadedWorkflow):
        workflow = load_workflow(workflow)
    if site:
        workflow = with_site(workflow, site)
    check_files(workflow)
    adapter = get_adapter(workflow)
    metrics = adapter.metric_names()
    if metrics is not None and workflow.spec.objective.metric not in metrics:
        raise workflow.error("objective.metric",
                             f"adapter {adapter.name} does not report {workflow.spec.objective.metric!r} "
                             f"(it reports: {', '.join(sorted(metrics))})")
    site = check_site(workflow, adapter, values, site_spec)
    return Checked(workflow, adapter, site, *plan_slots(workflow, adapter, site))


def check_run_dir(store: RunStore) -> Checked:
    """Re-check the workflow a run was submitted with (its resolved copy, with the site as it was
    resolved then: placeholders filled at submit need not be set again)."""
    workflow, site = store.submitted_workflow()
    return check_workflow(workflow, site_spec=site)
