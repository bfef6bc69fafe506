"""The agent team: a planner that states hypotheses and proposes simulations, a critic that judges
them against results. Agents are AutoGen AgentChat AssistantAgents declared from the workflow
spec; the campaign loop (an explicit state machine) decides who speaks when.

Every model output is untrusted: structured replies are parsed by pydantic, proposals are
checked against the adapter's parameter schema, and anything wrong goes back to the agent as
a message. After a few failed attempts the caller takes the optimizer's suggestion instead, so
a weak model slows the science down but never stalls the allocation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_core.model_context import BufferedChatCompletionContext
from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel, Field, ValidationError, create_model

from physflow.agents.tools import CampaignView, make_tools
from physflow.errors import ProposalError
from physflow.workflows.spec import ParameterSpec, WorkflowSpec

PLANNER_SYSTEM = (
    "You are the planner of a simulation campaign. State one falsifiable hypothesis about how the "
    "parameters affect the objective, what you predict the simulations will show, and propose "
    "simulations that test it. Every parameter value must lie within its bounds. Reply only with JSON."
)
CRITIC_SYSTEM = (
    "You are the critic of a simulation campaign. Judge whether the results support or refute the "
    "hypothesis, citing the numbers. Say inconclusive when they do not decide it. Reply only with JSON."
)


class Verdict(BaseModel):
    verdict: Literal["supported", "refuted", "inconclusive"]
    evidence: str = Field(description="the numbers from the results that decide the verdict", max_length=600)
    advice: str = Field("", description="what the planner should try next", max_length=400)


def proposal_model(parameters: dict[str, ParameterSpec], max_simulations: int) -> type[BaseModel]:
    """The planner's structured output, with the parameters (and their bounds) spelled out."""
    fields: dict[str, Any] = {}
    for name, p in parameters.items():
        units = f" [{p.units}]" if p.units else ""
        fields[name] = (float, Field(description=f"{p.description or name}{units}, between {p.min} and {p.max}"))
    simulation = create_model("Simulation", **fields)
    return create_model(
        "Proposal",
        hypothesis=(str, Field(description="a falsifiable statement about the parameters and the objective",
                               min_length=1, max_length=400)),
        prediction=(str, Field(description="what the simulations will show if the hypothesis holds",
                               max_length=400)),
        simulations=(list[simulation], Field(min_length=1, max_length=max_simulations)),  # type: ignore[valid-type]
    )


@dataclass
class PlanOutcome:
    hypothesis: str = ""
    prediction: str = ""
    simulations: list[dict[str, float]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.simulations)


class Transcript:
    """Every agent message, tool call and token count, one JSON line each."""

    def __init__(self, path: Any, on_tokens: Callable[[str, int], None] | None = None) -> None:
        self._fh = open(path, "a", encoding="utf-8")
        self.on_tokens = on_tokens

    def note(self, agent: str, kind: str, content: Any, **extra: Any) -> None:
        self._write({"t": time.time(), "agent": agent, "type": kind, "content": content, **extra})

    def messages(self, agent: str, messages: list[BaseAgentEvent | BaseChatMessage]) -> int:
        """Log a run's messages; return the tokens they used."""
        used = 0
        for m in messages:
            usage = getattr(m, "models_usage", None)
            prompt = usage.prompt_tokens if usage else 0
            completion = usage.completion_tokens if usage else 0
            used += prompt + completion
            content = m.content
            if isinstance(content, BaseModel):
                content = content.model_dump()
            elif isinstance(content, list):
                content = [c.model_dump() if isinstance(c, BaseModel) else str(c) for c in content]
            self._write({"t": time.time(), "agent": agent, "source": m.source, "type": type(m).__name__,
                         "content": content, "prompt_tokens": prompt, "completion_tokens": completion})
        if used and self.on_tokens:
            self.on_tokens(agent, used)
        return used

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class ScienceTeam:
    """The planner and the critic, built from the workflow spec."""

    def __init__(self, spec: WorkflowSpec, clients: dict[str, ChatCompletionClient], view: CampaignView,
                 validate: Callable[[Any], dict[str, float]], parameters: dict[str, ParameterSpec],
                 transcript: Transcript, max_attempts: int = 3) -> None:
        self.spec = spec
        self.validate = validate
        self.transcript = transcript
        self.max_attempts = max_attempts
        self.tokens_used = 0
        self.turns = 0
        tools = make_tools(view)
        self.Proposal = proposal_model(parameters, max(1, min(8, spec.budget.max_simulations)))
        self.planner = AssistantAgent(
            "planner", model_client=clients["planner"], tools=list(tools.values()),
            system_message=self._system("planner", PLANNER_SYSTEM), output_content_type=self.Proposal,
            model_context=BufferedChatCompletionContext(buffer_size=8), max_tool_iterations=2)
        self.critic = None
        if spec.agent_enabled("critic"):
            self.critic = AssistantAgent(
                "critic", model_client=clients["critic"], tools=[tools["query_results"]],
                system_message=self._system("critic", CRITIC_SYSTEM), output_content_type=Verdict,
                model_context=BufferedChatCompletionContext(buffer_size=6), max_tool_iterations=1)

    def _system(self, role: str, default: str) -> str:
        agent = self.spec.agents.get(role)  # type: ignore[call-overload]
        return agent.system_message if agent and agent.system_message else default

    @property
    def budget_left(self) -> int:
        return self.spec.llm.max_tokens_total - self.tokens_used

    async def _run(self, agent: AssistantAgent, task: str) -> tuple[Any, str | None]:
        """One agent turn: (structured content, None) or (None, error text for the agent)."""
        self.turns += 1
        self.transcript.note("physflow", "task", task, to=agent.name)
        try:
            result = await agent.run(task=task)
        except ValidationError as exc:
            error = "invalid JSON reply: " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors()[:6])
            self.transcript.note(agent.name, "error", error)
            return None, error
        except Exception as exc:  # noqa: BLE001 - model output must never crash the campaign
            error = f"{type(exc).__name__}: {str(exc)[:500]}"
            self.transcript.note(agent.name, "error", error)
            return None, error
        self.tokens_used += self.transcript.messages(agent.name, list(result.messages))
        final = result.messages[-1] if result.messages else None
        content = getattr(final, "content", None)
        if isinstance(content, BaseModel):
            return content, None
        return None, f"the reply was not the requested JSON object: {str(content)[:300]}"

    async def propose(self, prompt: str, capacity: int) -> PlanOutcome:
        """Ask the planner for a hypothesis and up to ``capacity`` valid simulations."""
        outcome = PlanOutcome()
        task = prompt + f"\nPropose at most {capacity} simulation(s)."
        for _ in range(self.max_attempts):
            if self.budget_left <= 0:
                outcome.errors.append("token budget spent")
                break
            proposal, error = await self._run(self.planner, task)
            if proposal is None:
                outcome.errors.append(error or "no reply")
                task = f"Your last reply was rejected: {error}. Reply again with the JSON object only."
                continue
            outcome.hypothesis = proposal.hypothesis.strip()
            outcome.prediction = proposal.prediction.strip()
            for i, sim in enumerate(proposal.simulations[:capacity]):
                try:
                    outcome.simulations.append(self.validate(sim.model_dump()))
                except ProposalError as exc:
                    outcome.rejected.append(f"simulation {i + 1}: {exc}")
            if outcome.ok and outcome.hypothesis:
                return outcome
            problems = "; ".join(outcome.rejected) or "the hypothesis is empty"
            outcome.errors.append(problems)
            outcome.simulations.clear()
            self.transcript.note("physflow", "rejected", problems, to="planner")
            task = (f"Your proposal was rejected: {problems}. Every value must lie within its bounds. "
                    "Propose again (JSON only).")
        return outcome

    async def judge(self, prompt: str) -> Verdict | None:
        """The critic's verdict on one hypothesis, or None when it cannot give one."""
        if self.critic is None or self.budget_left <= 0:
            return None
        task = prompt
        for _ in range(2):
            verdict, error = await self._run(self.critic, task)
            if verdict is not None:
                return verdict
            task = f"Your last reply was rejected: {error}. Reply again with the JSON object only."
        return None
