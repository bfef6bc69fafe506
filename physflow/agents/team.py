"""The agent team: planner, domain expert, coder and critic, declared from the workflow spec.

Each role is an AutoGen AgentChat AssistantAgent: a name, a model client, a system message, a
list of tools and a structured reply type. The campaign loop is the explicit state machine that
decides who speaks when: the planner proposes (the domain expert reviews it, the planner may
revise once), the critic judges each hypothesis once its simulations are done and may ask the
coder for an analysis, which runs in the sandbox and goes back into the record.

Every model output is untrusted: replies are parsed by pydantic, proposals are checked against
the adapter's parameter schema, and anything wrong goes back to the agent as a message. After a
few failed attempts the caller takes the optimizer's suggestion instead, so a weak model slows
the science down but never stalls the allocation.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import keyword
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_core import CancellationToken
from autogen_core.model_context import BufferedChatCompletionContext
from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError, WithJsonSchema, create_model

from physflow.agents.advisor import LETTERS, pick_model, pick_question, picked
from physflow.agents.knowledge import passage_text
from physflow.agents.models import strict_json
from physflow.agents.tools import Toolbox
from physflow.errors import ProposalError
from physflow.secrets import redact
from physflow.vocabulary.steering import Candidate, Claim, Goal, rank_by_prediction
from physflow.vocabulary.workflow import AgentRole, ParameterSpec, ToolName, WorkflowSpec


class Review(BaseModel):
    sound: bool = Field(description="true if the hypothesis and simulations make physical sense")
    concerns: str = Field("", description="what is physically wrong or risky, if anything", max_length=500)
    citations: list[str] = Field([], description="the [source] (file:line) of each passage shown that bears on it",
                                 max_length=5)


@functools.lru_cache(maxsize=64)
def review_model(sources: tuple[str, ...]) -> type[BaseModel]:
    """The domain expert's review of a hypothesis shown with passages from ``sources``: in the
    grammar its citations are one or two of those sources (left free, the 1.5B model cited none);
    validation still takes any text, so a provider without grammar may invent one, which
    ``Toolbox.was_retrieved`` catches and the record names."""
    if not sources:
        return Review
    grammar = {"type": "array", "items": {"enum": list(sources)}, "minItems": 1, "maxItems": min(2, len(sources))}
    cited = Annotated[list[str], WithJsonSchema(grammar)]
    return create_model("Review", __base__=_CitingReview, citations=(cited, Field(
        [], description="the [source] of each passage shown that bears on it", max_length=5)))


def _cites(schema: dict[str, Any]) -> None:
    schema["required"] = [*schema.get("required", []), "citations"]


class _CitingReview(Review):
    model_config = ConfigDict(json_schema_extra=_cites)  # the grammar asks for the citations


class Verdict(BaseModel):
    verdict: Literal["supported", "refuted", "inconclusive"]
    evidence: str = Field(description="the numbers from the results that decide the verdict", max_length=1500)
    advice: str = Field("", description="what the planner should try next", max_length=1000)
    # 1000 as ``advice``: at 300 the 1.5B critic's request to the coder ran over in 2 of 49 model
    # turns (bench/agent_value.py seeds 0-3, both in seed 0), each a reply sent back and a turn again
    analysis: str = Field("", description="in a sentence or two, an analysis of the results the coder should "
                                          "run, only if one is needed to decide what to test next; else empty",
                          max_length=1000)


class AnalysisCode(BaseModel):
    purpose: str = Field(description="what the code computes", max_length=300)
    code: str = Field(description="Python code; print the numbers that answer the request", max_length=4000)


@dataclass
class Role:
    system: str
    tools: list[ToolName]
    context: int  # messages of history the agent keeps


#: What each of the spec's ``AGENT_ROLES`` does, in their order (the spec names the roles, for
#: the workflow YAML; the team gives them their instructions and tools).
ROLES: dict[AgentRole, Role] = {
    "planner": Role(
        "You are the planner of a simulation campaign, advising its optimizer. You read what the optimizer "
        "and its surrogate model know, pick among the optimizer's candidates when asked, and state for each "
        "batch of simulations one falsifiable hypothesis: where in parameter space the objective lies below "
        "(or above) a value you give. The simulations will test it. Reply only with JSON.",
        [], 6),
    "domain_expert": Role(
        "You are the domain expert of a simulation campaign. Check that a proposed hypothesis and its "
        "simulations make physical sense, against the passages of the knowledge base you are shown; cite "
        "those that bear on it by their [source]. Reply only with JSON.",
        [], 6),
    "coder": Role(
        "You are the coder of a simulation campaign. Write short Python (numpy, h5py) that computes what is "
        "asked from the campaign's results; the variable `results` holds them as a list of dicts with keys "
        "id, status, params, metrics. Print the numbers. Reply with your code in one ```python block.",
        [], 6),
    "critic": Role(
        "You are the critic of a simulation campaign. physflow computes each hypothesis's verdict from the "
        "numbers (the prediction against what the simulations measured); you give that verdict, explain it "
        "in the evidence, citing the numbers, and advise what the planner should test next. Reply only with JSON.",
        ["query_results", "make_plot"], 6),
}
OUTPUTS: dict[str, type[BaseModel]] = {"domain_expert": Review, "critic": Verdict}
#: What the coder's prelude defines besides the arrays named after parameters and metrics.
_PRELUDE_NAMES = {"json", "np", "results", "finished", "columns", "_column"}
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def failing_lines(code: str, output: str) -> str:
    """The lines of ``code`` a traceback in ``output`` names (``File "<analysis>", line N``),
    quoted, so a fix starts from the line that failed: the traceback alone names only its
    number, and a small model handed it back the same code three times."""
    lines = code.splitlines()
    named = dict.fromkeys(int(n) for n in re.findall(r'File "<analysis>", line (\d+)', output))
    quoted = [f"line {n}: {lines[n - 1].strip()}" for n in named if 0 < n <= len(lines)]
    return "".join(f"The failing {q}\n" for q in quoted[-3:])


def code_reply(text: str) -> AnalysisCode:
    """The coder's code from its reply: the longest fenced ```python block, else the ``code`` of
    a JSON object (a scripted model's form); ValueError saying what is missing.

    Code is asked for as code, not inside JSON: the 1.5B model wrote ``print(f'...\\nS8')`` into a
    JSON string as ``\\n``, which JSON reads as a line break inside a Python string literal, and
    repeated the same code on every fix."""
    blocks = [b for b in _FENCE.findall(text) if b.strip()]
    if blocks:
        return AnalysisCode(purpose="", code=max(blocks, key=len).strip() + "\n")
    try:
        data = json.loads(strict_json(text.strip()))
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("code"), str) and data["code"].strip():
        return AnalysisCode(purpose=str(data.get("purpose", ""))[:300], code=data["code"])
    if "```" in text:
        raise ValueError("the code block is not closed (cut off?): write shorter code, in one ```python block")
    raise ValueError("no code found: reply with your code in one ```python block")


def role_tools(spec: WorkflowSpec, role: str) -> list[str]:
    """The tools ``role`` gets: the workflow's own list for it, else the role's defaults."""
    agent = spec.agents.get(role)  # type: ignore[call-overload]
    return list(agent.tools) if agent and agent.tools is not None else list(ROLES[role].tools)


def proposal_model(parameters: dict[str, ParameterSpec], max_simulations: int) -> type[BaseModel]:
    """The planner's structured output, with the parameters (and their bounds) spelled out."""
    fields: dict[str, Any] = {}
    for name, p in parameters.items():
        units = f" [{p.units}]" if p.units else ""
        # strict: a model's true or "0.5" is sent back as an error, never coerced into 1.0 or 0.5
        fields[name] = (float, Field(strict=True, description=f"{p.description or name}{units}, between {p.min} "
                                                              f"and {p.max}"))
    # extra keys forbidden: a parameter the model made up is an error it hears about, not dropped
    simulation = create_model("Simulation", __config__=ConfigDict(extra="forbid"), **fields)
    return create_model(
        "Proposal",
        hypothesis=(str, Field(description="a falsifiable statement about the parameters and the objective",
                               min_length=1, max_length=400)),
        prediction=(str, Field(description="what the simulations will show if the hypothesis holds",
                               max_length=400)),
        simulations=(list[simulation], Field(min_length=1, max_length=max_simulations)),  # type: ignore[valid-type]
    )


@functools.cache
def claim_model(n: int) -> type[BaseModel]:
    """The planner's hypothesis for a batch of ``n`` simulations, lettered as the prompt shows
    them: a statement and its falsifiable claim (``vocabulary.steering.Claim``): the simulations it
    is about, by letter, and a value the objective stays below or above for them.

    Letters rather than parameter ranges: asked for ranges, the 1.5B model copied an earlier
    hypothesis's ranges (holding none of the round's simulations) and drew ranges past the
    bounds, 6 of 9 replies rejected in one demo; a letter names one of this round's simulations
    by construction, and a grammar keeps the reply to the letters."""
    letters = tuple(LETTERS[:n])
    return create_model(
        "Claim", __config__=ConfigDict(extra="forbid"),  # a key the model made up is sent back, not dropped
        hypothesis=(str, Field(description="a falsifiable statement about the parameters and the objective",
                               min_length=1, max_length=400)),
        simulations=(list[Literal[letters]], Field(  # type: ignore[valid-type]
            min_length=1, max_length=n, description="the letters of the simulations the prediction is about")),
        bound=(Literal["below", "above"], Field(description="the objective lies below or above value")),
        value=(StrictFloat, Field(description="the predicted bound on the objective")),
    )


@dataclass
class PickRecord:
    """One pick: which candidate (its index in the optimizer's order), its place in the
    surrogate's ranking of the ``shown`` candidates (0 = best), or the error when the reply was
    unusable."""

    candidate: int | None
    place: int | None
    shown: int
    error: str = ""


@dataclass
class ClaimOutcome:
    """The planner's hypothesis for a batch, checked; or the errors that were sent back."""

    statement: str = ""
    claim: Claim | None = None
    errors: list[str] = field(default_factory=list)
    review: Review | None = None
    unverified_citations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.claim is not None and bool(self.statement)


def check_claim(reply: BaseModel, metric: str, batch: list[dict[str, float]]) -> Claim:
    """The reply as a ``Claim`` whose region is the box of the simulations it names (lettered in
    ``batch``'s order), or ProposalError saying what is wrong: a letter past the batch, or a
    value that is not a finite number. Nothing is clipped."""
    chosen = sorted({LETTERS.index(letter) for letter in reply.simulations})  # type: ignore[attr-defined]
    if not batch or chosen[-1] >= len(batch):
        raise ProposalError(f"simulations must be letters among {', '.join(LETTERS[:len(batch)]) or 'none'}")
    value = reply.value  # type: ignore[attr-defined]
    if not math.isfinite(value):
        raise ProposalError("value must be a finite number")
    points = [batch[i] for i in chosen]
    region = {name: (min(p[name] for p in points), max(p[name] for p in points)) for name in points[0]}
    return Claim(metric, reply.bound, float(value), region)  # type: ignore[attr-defined]


class Transcript:
    """Every agent message, tool call and token count, one JSON line each."""

    def __init__(self, path: Any, on_tokens: Callable[[str, int], None] | None = None) -> None:
        self._fh = open(path, "a", encoding="utf-8")
        self.on_tokens = on_tokens

    def note(self, agent: str, kind: str, content: Any, **extra: Any) -> None:
        self._write({"t": time.time(), "agent": agent, "type": kind, "content": content, **extra})

    def message(self, agent: str, m: BaseAgentEvent | BaseChatMessage) -> int:
        """Log one message or event of a run as it happens; return the tokens it used."""
        usage = getattr(m, "models_usage", None)
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        content = m.content
        if isinstance(content, BaseModel):
            content = content.model_dump()
        elif isinstance(content, list):
            content = [c.model_dump() if isinstance(c, BaseModel) else str(c) for c in content]
        self._write({"t": time.time(), "agent": agent, "source": m.source, "type": type(m).__name__,
                     "content": content, "prompt_tokens": prompt, "completion_tokens": completion})
        return prompt + completion

    def spent(self, agent: str, tokens: int) -> None:
        """Report the tokens one agent turn used (journaled by the campaign)."""
        if tokens:
            self._write({"t": time.time(), "agent": agent, "type": "tokens", "content": tokens})
            if self.on_tokens:
                self.on_tokens(agent, tokens)

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(redact(json.dumps(record, default=str)) + "\n")  # a key echoed by a server stays out
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@dataclass
class Turn:
    """What one agent turn gave: its structured reply, or the error text to send back; and the
    tokens it used (prompt + completion), counted even when the reply could not be parsed."""

    reply: BaseModel | None
    error: str | None
    tokens: int


async def take_turn(agent: AssistantAgent, task: str, transcript: Transcript,
                    parse: Callable[[str], BaseModel] | None = None) -> Turn:
    """Run one turn of ``agent`` on ``task``, logging every message, tool call and token; a text
    reply is read by ``parse`` (which raises ValueError with the reason), a structured one is
    already parsed.

    Model output never raises out of here: an unparsable reply or a failing client becomes
    ``Turn.error``, a message the caller can send back to the agent.
    """
    role = agent.name
    transcript.note("physflow", "task", task, to=role)
    client = agent._model_client  # noqa: SLF001 - its usage counts the turn that failed to parse
    usage_before = client.total_usage()
    used = 0
    final: Any = None
    try:
        # Streamed, so every tool call and result reaches the transcript even when the turn
        # ends in a reply that cannot be parsed.
        async for item in agent.run_stream(task=task):
            if isinstance(item, TaskResult):
                final = item.messages[-1] if item.messages else None
            else:
                used += transcript.message(role, item)
    except asyncio.CancelledError:  # the campaign stopped the turn: what it spent still counts
        transcript.spent(role, used)
        raise
    except ValidationError as exc:
        error = "invalid JSON reply: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors()[:6])
    except Exception as exc:  # noqa: BLE001 - model output must never crash the caller
        error = f"{type(exc).__name__}: {str(exc)[:500]}"
    else:
        error = None
    if error is not None:
        error = redact(error)  # it goes back to the model in the retry prompt
        usage = client.total_usage()
        used = max(used, usage.prompt_tokens + usage.completion_tokens
                   - usage_before.prompt_tokens - usage_before.completion_tokens)
        transcript.note(role, "error", error)
    transcript.spent(role, used)
    if error is not None:
        return Turn(None, error, used)
    content = getattr(final, "content", None)
    if isinstance(content, BaseModel):
        return Turn(content, None, used)
    if parse is not None and isinstance(content, str):
        try:
            return Turn(parse(content), None, used)
        except ValueError as exc:  # pydantic's ValidationError is one too
            error = redact(str(exc)[:500])
            transcript.note(role, "error", error)
            return Turn(None, error, used)
    return Turn(None, f"the reply was not the requested JSON object: {str(content)[:300]}", used)


class ScienceTeam:
    """The four roles, built from the workflow spec (roles may be disabled or reconfigured)."""

    def __init__(self, spec: WorkflowSpec, clients: dict[str, ChatCompletionClient], toolbox: Toolbox,
                 parameters: dict[str, ParameterSpec], transcript: Transcript, max_attempts: int = 3) -> None:
        self.spec = spec
        self.toolbox = toolbox
        self.transcript = transcript
        self.max_attempts = max_attempts
        self.tokens: dict[str, int] = {}
        self.tokens_before = 0
        self.turns = 0
        self.invalid = 0  # model replies rejected (unparsable, or failing a check) and sent back
        self.stated: ClaimOutcome | None = None  # the hypothesis of the planner's latest turn, once checked
        self.parameters = parameters
        self._made: dict[str, dict[str, Any]] = {}  # the roles that speak -> how their agents are made
        for role, defaults in ROLES.items():
            if role not in clients or not spec.agent_enabled(role):
                continue
            agent = spec.agents.get(role)  # type: ignore[call-overload]
            tools = toolbox.tools(role_tools(spec, role))
            self._made[role] = dict(
                model_client=clients[role], tools=tools,
                system_message=agent.system_message if agent and agent.system_message else defaults.system,
                max_tool_iterations=2)
        # each role's agent by the reply it gives (made when first asked: the planner has one per
        # form of pick and of claim)
        self._by_output: dict[tuple[str, type[BaseModel] | None], AssistantAgent] = {}

    def _agent(self, role: str, output: type[BaseModel] | None) -> AssistantAgent:
        return AssistantAgent(role, output_content_type=output, **self._made[role],
                              model_context=BufferedChatCompletionContext(buffer_size=ROLES[role].context))

    # -- budgets -------------------------------------------------------------------------------
    @property
    def tokens_used(self) -> int:
        return self.tokens_before + sum(self.tokens.values())

    @property
    def budget_left(self) -> int:
        return self.spec.llm.max_tokens_total - self.tokens_used

    def can_speak(self, role: str) -> bool:
        """Enabled, and within both its own token limit and the campaign's."""
        if role not in self._made or self.budget_left <= 0:
            return False
        agent = self.spec.agents.get(role)  # type: ignore[call-overload]
        return not (agent and agent.max_tokens is not None and self.tokens.get(role, 0) >= agent.max_tokens)

    async def _run(self, role: str, task: str, output: type[BaseModel] | None = None,
                   fresh: bool = True) -> tuple[Any, str | None]:
        """One agent turn: (structured content, None) or (None, error text for the agent).

        The reply is ``output`` (the critic, coder and expert have one form each: ``OUTPUTS``). A
        ``fresh`` turn starts from an empty context: each question carries everything it needs, so
        that no earlier answer sways the next (a small model copies its last answer's position) and
        the prompt stays short. A correction is not fresh: the agent sees its rejected reply and the
        reason, and the model server reuses the conversation's processed prefix instead of reading
        it again."""
        self.turns += 1
        output = output or OUTPUTS.get(role)  # the coder's is text: its code (code_reply)
        if (role, output) not in self._by_output:
            self._by_output[(role, output)] = self._agent(role, output)
        agent = self._by_output[(role, output)]
        if fresh:
            await agent.on_reset(CancellationToken())
        turn = await take_turn(agent, task, self.transcript, code_reply if output is None else None)
        self.tokens[role] = self.tokens.get(role, 0) + turn.tokens
        return turn.reply, turn.error

    async def _structured(self, role: str, task: str, attempts: int = 2, fresh: bool = True,
                          output: type[BaseModel] | None = None) -> BaseModel | None:
        """The role's reply to ``task`` (in a fresh context, or the conversation so far; in the
        form ``output``, else the role's own); an unusable one is sent back once with the reason."""
        for attempt in range(attempts):
            if not self.can_speak(role):
                return None
            reply, error = await self._run(role, task, output, fresh=fresh and attempt == 0)
            if reply is not None:
                return reply
            self.invalid += 1
            task = f"Your last reply was rejected: {error}. Reply again with the JSON object only."
        return None

    # -- the planner (the optimizer's advisor) and the domain expert -------------------------------
    async def pick(self, candidates: list[Candidate], goal: Goal, metric: str, n: int, rng: random.Random,
                   show: int = 4) -> list[PickRecord]:
        """``n`` picks, one decision each: up to ``show`` of the remaining candidates in a random
        order, one letter back, scored against the surrogate's ranking of those shown. A reply
        that is not one of the letters is sent back once with the reason, then counted invalid."""
        remaining, out = list(range(len(candidates))), []
        for _ in range(n):
            if len(remaining) < 2 or not self.can_speak("planner"):
                break
            chosen = rng.sample(remaining, min(show, len(remaining)))
            shown = [candidates[i] for i in chosen]
            places = rank_by_prediction(shown, goal)
            question = task = pick_question(shown, metric, goal)
            record = PickRecord(None, None, len(shown))
            for _ in range(2):
                reply, error = await self._run("planner", task, pick_model(len(shown)))
                if reply is not None:
                    k = picked(reply)
                    record = PickRecord(chosen[k], places[k], len(shown), record.error)
                    break
                self.invalid += 1
                record.error = error or "no reply"
                task = f"Your last reply was rejected: {error}\n\n{question}"
            out.append(record)
            if record.candidate is not None:
                remaining.remove(record.candidate)
        return out

    async def hypothesize(self, prompt: str, metric: str, batch: list[dict[str, float]]) -> ClaimOutcome:
        """The planner's hypothesis for ``batch``, checked (``check_claim``), errors sent back, at
        most ``max_attempts`` turns; then the domain expert's review, and one revision on an
        objection that names a concern."""
        outcome, task = ClaimOutcome(), prompt
        self.stated = outcome  # read if the turn is stopped during the review: the claim stands
        for attempt in range(self.max_attempts):
            if not self.can_speak("planner"):
                outcome.errors.append("token budget spent")
                break
            reply, error = await self._run("planner", task, claim_model(len(batch)), fresh=attempt == 0)
            if reply is not None:
                try:
                    self._state(outcome, reply, metric, batch)
                    break
                except ProposalError as exc:
                    error = str(exc)
            self.invalid += 1
            outcome.errors.append(error or "no reply")
            self.transcript.note("physflow", "rejected", error, to="planner")
            task = f"Your hypothesis was rejected: {error}. Reply with the corrected JSON."
        if outcome.ok and self.can_speak("domain_expert"):
            await self._review(outcome, metric, batch)
        return outcome

    def _state(self, outcome: ClaimOutcome, reply: BaseModel, metric: str, batch: list[dict[str, float]]) -> None:
        """Take ``reply`` as the outcome's hypothesis once it passes ``check_claim`` (which raises
        ProposalError and leaves the outcome as it was)."""
        outcome.claim = check_claim(reply, metric, batch)
        outcome.statement = reply.hypothesis.strip()  # type: ignore[attr-defined]

    def passages(self, query: str, k: int = 2) -> tuple[str, tuple[str, ...]]:
        """The knowledge folder's ``k`` best passages for ``query``, each headed by its [source],
        and their sources; searched by physflow for the domain expert: one search named by the
        hypothesis itself is surer than a small model's tool call (whose query was the question it
        was asked) and costs no model turn. Transcribed as a search_knowledge call."""
        found = self.toolbox.passages(query, k)
        if not found:
            return "", ()
        text = passage_text(found)
        self.transcript.note("physflow", "tool_result", text, tool="search_knowledge", query=query, to="domain_expert")
        return text, tuple(c.source for c in found)

    async def _review(self, outcome: ClaimOutcome, metric: str, batch: list[dict[str, float]]) -> None:
        """The domain expert checks the hypothesis against the knowledge folder before it runs; on
        an objection with a concern the planner may restate it once (checked like the first)."""
        claim = outcome.claim.text()  # type: ignore[union-attr]
        found, sources = self.passages(f"{outcome.statement} {claim} {' '.join(self.parameters)}")
        shown = f"Passages from the knowledge base:\n{found}\n" if found else ""
        simulations = "; ".join(", ".join(f"{k}={v:.4g}" for k, v in params.items()) for params in batch)
        review = await self._structured("domain_expert", (
            f"Hypothesis: {outcome.statement}\nClaim: {claim}\nSimulations: {simulations}\n{shown}"
            "Is this physically sound? Give your review as JSON."), output=review_model(sources))
        outcome.review = review  # type: ignore[assignment]
        if review is None:
            return
        # A citation must name a passage search_knowledge returned; others are not kept as
        # evidence, and the record says which were dropped.
        cited = review.citations  # type: ignore[attr-defined]
        outcome.unverified_citations = [c for c in cited if not self.toolbox.was_retrieved(c)]
        review.citations = [c for c in cited if self.toolbox.was_retrieved(c)]  # type: ignore[attr-defined]
        if outcome.unverified_citations:
            self.transcript.note("physflow", "unverified_citations", outcome.unverified_citations, to="domain_expert")
        if review.sound or not review.concerns.strip():  # type: ignore[attr-defined]
            return  # an objection that names no concern gives the planner nothing to revise
        concerns = review.concerns  # type: ignore[attr-defined]
        self.transcript.note("physflow", "review", concerns, to="planner")
        # in the conversation of the planner's statement: it sees what it said
        reply, _ = await self._run("planner", f"The domain expert objects: {concerns}\n"
                                   "Restate your hypothesis, or keep it (JSON only).", claim_model(len(batch)),
                                   fresh=False)
        if reply is None:
            return
        try:
            self._state(outcome, reply, metric, batch)
        except ProposalError as exc:
            self.invalid += 1
            self.transcript.note("physflow", "rejected", f"{exc}; the first statement stands", to="planner")

    # -- the critic and the coder --------------------------------------------------------------
    async def judge(self, prompt: str) -> Verdict | None:
        """The critic's verdict on one hypothesis, or None when it cannot give one."""
        return await self._structured("critic", prompt)  # type: ignore[return-value]

    async def analyse(self, request: str, results: list[dict[str, Any]], attempts: int = 2) -> Analysis | None:
        """The coder writes code for ``request``; it runs in the sandbox; the code and what it
        printed come back (``ok``: it ran without error). A failure goes back with its error, in
        the conversation, up to ``attempts`` runs in all."""
        if not self.can_speak("coder") or self.toolbox.sandbox is None:
            return None
        finished = [r for r in results if r.get("status") == "finished"]
        names = list(dict.fromkeys(k for r in finished for part in ("params", "metrics") for k in r.get(part) or {}))
        exposed = [n for n in names if n.isidentifier() and not keyword.iskeyword(n) and not hasattr(builtins, n)
                   and n not in _PRELUDE_NAMES]
        self.toolbox.sandbox.set_prelude(
            "import json\nimport numpy as np\nresults = json.loads(" + repr(json.dumps(results, default=str)) + ")\n"
            "finished = [r for r in results if r.get('status') == 'finished']\n"
            "def _column(name):\n"
            "    values = [{**(r.get('params') or {}), **(r.get('metrics') or {})}.get(name) for r in finished]\n"
            "    return np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in values])\n"
            f"columns = {{name: _column(name) for name in {names!r}}}\n"
            f"globals().update({{name: columns[name] for name in {exposed!r}}})\n")
        # Named arrays and one real record: told only the keys, a small model redefined `results`
        # as `[...]` and read r['chi2_hmf'] where the metric is r['metrics']['chi2_hmf'].
        sample = next(iter(finished), results[0] if results else None)
        shown = {k: sample[k] for k in ("id", "status", "params", "metrics") if k in sample} if sample else None
        shape = (f"Defined for you, do not redefine them: numpy arrays over the {len(finished)} finished "
                 f"simulations, one entry per simulation: {', '.join(exposed)}. Work with these arrays "
                 f"(e.g. {exposed[-1]}[i] is simulation i's value; also columns['name']). numpy is imported as np. "
                 f"The records are in `results` ({len(results)} dicts like {json.dumps(shown, default=str)}; "
                 f"`finished`: those finished).\n") if shown and exposed else (
            f"`results` holds {len(results)} dicts like {json.dumps(shown, default=str)}.\n" if shown
            else "`results` is an empty list.\n")
        task = f"Analysis requested: {request}\n{shape}Reply with your code in one ```python block."
        run = None
        for attempt in range(attempts):
            code = await self._structured("coder", task, fresh=attempt == 0)  # a fix sees the code it fixes
            if code is None:
                return run
            output = self.toolbox.run_analysis_code(code.code)  # type: ignore[attr-defined]
            self.transcript.note("coder", "tool_result", output, tool="run_analysis_code",
                                 code=code.code)  # type: ignore[attr-defined]
            failed = output.startswith(("error:", "SANDBOX")) or "\nerror: " in output
            run = Analysis(code.code, output, not failed)  # type: ignore[attr-defined]
            if not failed:
                return run
            task = (f"Your code failed:\n{output[-1500:]}\n{failing_lines(code.code, output)}"  # type: ignore[attr-defined]
                    "Reply with the whole corrected code in one ```python block.")
        return run


@dataclass
class Analysis:
    """The coder's code as it ran in the sandbox, what it printed, and whether it ran cleanly."""

    code: str
    output: str
    ok: bool
