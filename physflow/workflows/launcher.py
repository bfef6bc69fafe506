"""Everything a campaign runs on, started in order and stopped in reverse: the composition root.

``submit`` and ``resume`` (and the benchmarks) launch a campaign here; ``physflow ask`` serves
its model here. The pools start first, because the model server is one of their tasks (a GPU
node's on a site); then the model clients, the agents' tools (with a sandbox only if some role
runs code) and the team; then the loop. On the way out the dispatcher stops the model server
before its pools, and the sandbox goes with the campaign.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from physflow.agents.models import make_client
from physflow.agents.qualify import chance_band
from physflow.agents.team import ROLES, ScienceTeam, Transcript, role_tools
from physflow.agents.tools import Toolbox
from physflow.dispatch.backends import open_dispatcher
from physflow.errors import PhysflowError
from physflow.serving.plans import embedded_plan, serving_plan
from physflow.serving.service import ModelService
from physflow.site_configs.site import model_cores
from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.workflow import LLMSpec, LoadedWorkflow
from physflow.workflows.campaign import Approver, Campaign
from physflow.workflows.qualify_records import load_record, qualify_llm
from physflow.workflows.store import CampaignState, JournalFollower, RunStore
from physflow.workflows.validate import Checked

#: Where the launcher says what it is doing (the CLI prints it on stderr).
Say = Callable[[str], None]


def _quiet(text: str) -> None:
    """The default ``Say``: a launch that nobody watches says nothing."""


@dataclass
class Outcome:
    """How a campaign ended, for the one-line summary."""

    state: str
    stop_reason: str
    simulations: int
    best: TaskRecord | None
    report: Path
    seconds: float


def model_clients(workflow: LoadedWorkflow, base_url: str | None, api_key: str | None = None) -> dict[str, Any]:
    """One client per enabled role (roles may name their own model, or their own replay script).

    Roles that share one replay script share one client, so the script is read in call order.
    """
    spec = workflow.spec
    clients: dict[str, Any] = {}
    by_script: dict[str, Any] = {}
    if not spec.has_team:
        return clients
    for role in ROLES:
        if not spec.agent_enabled(role):
            continue
        agent = spec.agents.get(role)  # type: ignore[call-overload]
        llm = spec.llm
        if llm.provider == "replay":
            script = (agent.script if agent and agent.script else None) or llm.script or ""
            if script not in by_script:
                by_script[script] = make_client(llm.model_copy(update={"script": script}),
                                                script_dir=workflow.directory)
            clients[role] = by_script[script]
        else:
            clients[role] = make_client(llm, base_url=base_url, script_dir=workflow.directory,
                                        model=agent.model if agent else None, api_key=api_key)
    return clients


def form_team(campaign: Campaign, clients: dict[str, Any], stack: contextlib.ExitStack) -> ScienceTeam:
    """The agents of ``campaign``, with their tools: a sandbox only if some enabled role may run
    code (closed with ``stack``), the knowledge folder if the workflow names one."""
    from physflow.agents.knowledge import KnowledgeBase
    from physflow.agents.sandbox import Sandbox

    spec, transcript, sandbox = campaign.spec, campaign.transcript, None
    knowledge = KnowledgeBase([campaign.workflow.resolve(p) for p in spec.knowledge]) if spec.knowledge else None
    if knowledge is not None and knowledge.skipped:  # a damaged or encrypted PDF: said, never fatal
        transcript.note("physflow", "knowledge", f"{len(knowledge.skipped)} file(s) not indexed",
                        warning="; ".join(knowledge.skipped))
    if any(role == "coder" or "run_analysis_code" in role_tools(spec, role) for role in clients):
        try:
            sandbox = stack.enter_context(Sandbox(campaign.store.run_dir, unsafe=spec.sandbox == "unsafe"))
            transcript.note("physflow", "sandbox", f"isolation: {sandbox.isolation}", warning=sandbox.warning)
        except PhysflowError as exc:
            transcript.note("physflow", "sandbox", f"no sandbox: {exc}; analysis code is disabled")
    toolbox = Toolbox(campaign, validate=campaign.adapter.validate_params, sandbox=sandbox, knowledge=knowledge,
                      plots_dir=campaign.store.run_dir / "plots")
    # The planner's share starts from what its qualification measured of its picks (none: 0).
    try:
        record = load_record(qualify_llm(campaign.workflow))
    except PhysflowError:  # a vLLM model served only during campaigns was never qualified alone
        record = None
    if record is not None and record.steering is not None:
        # a score within the noise of random picks is no evidence: it earns nothing
        asked = record.categories["steering"].total
        campaign.pick_prior = record.steering if record.steering > chance_band(asked) else 0.0
        transcript.note("physflow", "qualification", f"the model's steering score {record.steering:.2f} over "
                        f"{asked} picks ({record.when}) gives its pick quality the prior {campaign.pick_prior:.2f}",
                        to="planner")
    return ScienceTeam(spec, clients, toolbox, campaign.adapter.parameters, transcript)


@contextlib.contextmanager
def launched(checked: Checked, store: RunStore, approver: Approver | None = None, say: Say = _quiet,
             campaign_class: type[Campaign] = Campaign) -> Iterator[Campaign]:
    """The campaign of ``checked`` in ``store``, its pools started, its model served and its team
    formed; everything it runs on is stopped when the block ends (the store stays open).
    ``campaign_class``: the loop, or a subclass that observes it (the benchmarks')."""
    wf, spec, run_dir = checked.workflow, checked.workflow.spec, store.run_dir
    serving = serving_plan(spec.llm, checked.site, model_cores(checked.site)) if spec.has_team else None
    with contextlib.ExitStack() as stack:
        dispatcher = open_dispatcher(checked.site, run_dir / "parsl", spec.budget.max_concurrent,
                                     spec.simulation.resources.nodes, checked.adapter.uses_mpi,
                                     service_pool=serving[1] if serving else None, packing=checked.packing)
        stack.callback(dispatcher.close)  # stops the model server first, then the pools
        base_url, api_key = spec.llm.base_url, None
        if serving:
            say(f"starting the model server on pool {serving[1]} ...")
            service = ModelService(serving[0], run_dir / "llm", dispatcher.submit_service)
            dispatcher.on_close(service.stop)
            service.start()
            base_url, api_key = service.base_url, service.api_key
            store.record_model_url(base_url)
        clients = model_clients(wf, base_url, api_key)
        transcript = stack.enter_context(contextlib.closing(Transcript(run_dir / "transcript.jsonl")))
        campaign = campaign_class(wf, checked.adapter, store, checked.site, dispatcher, transcript, approver)
        if "planner" in clients:
            campaign.team = form_team(campaign, clients, stack)
        yield campaign


def run_campaign(checked: Checked, store: RunStore, approver: Approver | None = None,
                 previous: CampaignState | None = None,
                 progress: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                 say: Say = _quiet, follower: JournalFollower | None = None) -> Outcome:
    """Launch, run (or resume, from ``previous``) and report a campaign; closes the store.

    ``progress()`` is entered while the loop runs (the live panel on a terminal); ``follower``:
    the one ``previous`` came from, so the report reads only what the journal gained since."""
    from physflow.workflows.report import write_report

    started = time.time()
    try:
        with launched(checked, store, approver, say) as campaign, progress():
            state = asyncio.run(campaign.run(previous))
    finally:
        store.close()
    report = write_report(store.run_dir, follower)
    return Outcome(state, campaign.stop_reason, len(campaign.tasks), campaign.best(), report, time.time() - started)


def question_client(llm: LLMSpec) -> Any | None:
    """The model client of ``physflow ask``, made now (its settings checked before anything is
    written), or None for the embedded model, which ``question_model`` serves first."""
    return None if llm.provider == "embedded" else make_client(llm, script_dir=Path.cwd())


@contextlib.contextmanager
def question_model(llm: LLMSpec, run_dir: Path, client: Any | None, say: Say = _quiet) -> Iterator[Any]:
    """``client``, or for the embedded model (None) a client of its server, started for the
    block. No site here: the server's task runs in a thread of this process."""
    if client is not None:
        yield client
        return
    say("starting the embedded model server ...")
    with ThreadPoolExecutor(1, thread_name_prefix="physflow-llm") as threads, \
            ModelService(embedded_plan(llm.model), run_dir / "llm", threads.submit) as service:
        yield make_client(llm, base_url=service.base_url, api_key=service.api_key)
