"""``physflow ask``: a science question answered from local data by the coder, checked by physflow.

The same kind of team as a campaign, without simulations. The coder reads a description of the
data's tables, may look at rows (query_catalog) and try code (run_analysis_code), and replies
with an Answer: the answer in words, the code that computes it, and its caveats. The answer's
numbers are only ever the output of that code when physflow runs it itself, in a fresh sandbox
kernel with the data files bound read-only; a failure goes back to the coder. The critic then
reads question, answer, code and output and names the caveats the answer leaves out.

The flow is a small explicit state machine::

    coding -> verifying -> reviewing -> answered
      ^          |
      +----------+  the code failed or printed nothing (MAX_ATTEMPTS coder turns in all)
    coding -> unanswered  once the attempts are spent

"unanswered" still ends in an answer: that no verified result was produced, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_core.model_context import BufferedChatCompletionContext
from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel, Field

from physflow.agents.catalog import Catalog
from physflow.agents.claims import marked, unproduced_numbers
from physflow.agents.sandbox import UNSAFE, Sandbox
from physflow.agents.team import Transcript, take_turn
from physflow.agents.tools import Toolbox

MAX_ATTEMPTS = 3
#: Output of the final code kept for the answer (characters); the transcript keeps it all.
MAX_OUTPUT_SHOWN = 6000


class Answer(BaseModel):
    answer: str = Field(description="the answer in words, stating the numbers the code prints", max_length=2000)
    code: str = Field(description="self-contained Python that reads the files through DATA, computes the answer "
                                  "and prints every number the answer states", max_length=8000)
    caveats: list[str] = Field([], description="what limits the answer: a needed column that is missing and "
                                               "what was used instead, assumptions, small samples", max_length=8)


class CaveatReview(BaseModel):
    missing: list[str] = Field([], description="caveats the answer should state but does not; empty if none",
                               max_length=5)


CODER = (
    "You are the coder of a science team. Answer the question from the data files only. Look at the tables with "
    "query_catalog; you may try code with run_analysis_code. Then reply with JSON: answer, code, caveats. The code "
    "must be self-contained Python (numpy, h5py, csv) that reads the files through DATA (a dict: data name -> file "
    "path) and prints every number the answer states; physflow runs it again to check. If a column the question "
    "needs is missing, say so in caveats and use the closest quantity that exists, saying which. Never invent data.")
CRITIC = (
    "You are the critic of a science team. Read the question, the answer, its code and the code's real output. "
    "List the caveats the answer should state but does not: a needed column missing or replaced by another, a "
    "selection that is empty or very small, units, an assumption the code makes. Reply only with JSON.")
RUN_CODE = (
    "Run Python code in the sandbox (numpy, h5py, csv; state persists between calls). DATA maps each data name to "
    "its file's path (read-only); write files only in the current folder. Print what you want to see.")


@dataclass
class AskResult:
    """What physflow answers: only ``output`` is a measured result; ``verified`` says whether
    code produced it."""

    question: str
    answer: str
    code: str
    output: str
    caveats: list[str]
    tokens: dict[str, int] = field(default_factory=dict)
    verified: bool = False
    isolation: str = ""
    data: dict[str, str] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    def as_json(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "code": self.code, "output": self.output,
                "caveats": self.caveats, "tokens": self.total_tokens, "verified": self.verified}

    def markdown(self) -> str:
        caveats = "".join(f"- {c}\n" for c in self.caveats) or "none\n"
        tokens = ", ".join(f"{k} {v}" for k, v in self.tokens.items())
        data = "".join(f"- `{name}`: {path}\n" for name, path in self.data.items())
        return (f"# Question\n\n{self.question}\n\n## Answer\n\n{self.answer}\n\n"
                f"## Code\n\n```python\n{self.code.rstrip()}\n```\n\n"
                f"## Output\n\n" + ("physflow ran the code itself in a fresh sandbox kernel"
                                    f" (isolation: {self.isolation or 'none'}); this is what it printed.\n\n"
                                    if self.code else "")
                + f"```\n{self.output.rstrip() or '(none)'}\n```\n\n## Caveats\n\n{caveats}\n"
                f"## Data\n\n{data}\nTokens: {self.total_tokens}" + (f" ({tokens})" if tokens else "") + "\n")


class QuestionFlow:
    """One question over one catalog: the coder answers, physflow runs its code, the critic
    reviews the caveats. ``run()`` walks the states named in the module docstring."""

    def __init__(self, question: str, catalog: Catalog, client: ChatCompletionClient, sandbox: Sandbox,
                 transcript: Transcript) -> None:
        self.question, self.catalog, self.sandbox, self.transcript = question, catalog, sandbox, transcript
        toolbox = Toolbox(None, sandbox=sandbox, catalog=catalog)
        self.coder = AssistantAgent(
            "coder", model_client=client, system_message=CODER, output_content_type=Answer,
            tools=toolbox.tools(["query_catalog", "run_analysis_code"], {"run_analysis_code": RUN_CODE}),
            model_context=BufferedChatCompletionContext(buffer_size=12), max_tool_iterations=3)
        self.critic = AssistantAgent(
            "critic", model_client=client, system_message=CRITIC, output_content_type=CaveatReview,
            model_context=BufferedChatCompletionContext(buffer_size=4))
        self.tokens: dict[str, int] = {}
        self.attempts = 0
        self.draft: Answer | None = None
        self.answer = ""  # the draft's answer, its unsupported numbers marked
        self.output = ""
        self.failure = "the coder gave no answer"
        self.caveats: list[str] = []
        self.isolation_noted = False
        self.task = (f"Question: {question}\n\n{catalog.describe()}\n\nIn your code, DATA = "
                     f"{json.dumps({n: f'<path of {n}>' for n in catalog.files})}. "
                     "Reply with the JSON object: answer, code, caveats.")

    async def run(self) -> AskResult:
        steps = {"coding": self.write_code, "verifying": self.verify, "reviewing": self.review}
        state = "coding"
        while state in steps:
            self.transcript.note("physflow", "state", state)
            state = await steps[state]()
        self.transcript.note("physflow", "state", state)
        if state == "answered":
            assert self.draft is not None
            return self._result(self.answer.strip(), self.draft.code, self.output,
                                [c.strip() for c in self.draft.caveats if c.strip()] + self.caveats, True)
        code = self.draft.code if self.draft else ""
        return self._result(f"No verified result was produced: {self.failure}", code, self.output,
                            [f"after {self.attempts} attempt(s) the coder's code did not produce a result, so "
                             "no number from it is reported"], False)

    def _result(self, answer: str, code: str, output: str, caveats: list[str], verified: bool) -> AskResult:
        return AskResult(self.question, answer, code, output, caveats, dict(self.tokens), verified,
                         self.sandbox.isolation, self.catalog.paths)

    async def _turn(self, agent: AssistantAgent, task: str) -> tuple[Any, str | None]:
        turn = await take_turn(agent, task, self.transcript)
        self.tokens[agent.name] = self.tokens.get(agent.name, 0) + turn.tokens
        return turn.reply, turn.error

    # -- the states ------------------------------------------------------------------------------
    async def write_code(self) -> str:
        """coding: one coder turn -> verifying, or coding again with the error, or unanswered."""
        if self.attempts >= MAX_ATTEMPTS:
            return "unanswered"
        self.attempts += 1
        reply, error = await self._turn(self.coder, self.task)
        if reply is None:
            self.failure = f"the coder's reply was not a usable answer ({error})"
            self.task = (f"Your reply was rejected: {error}. "
                         "Reply again with the JSON object only: answer, code, caveats.")
            return "coding"
        self.draft = reply
        self.answer = reply.answer
        if not reply.code.strip():
            self.failure = "the coder's answer came without code"
            self.task = "Your answer has no code. Reply again with code that computes and prints the numbers."
            return "coding"
        return "verifying"

    async def verify(self) -> str:
        """verifying: physflow runs the answer's code in a fresh kernel -> reviewing, or coding."""
        assert self.draft is not None
        self.sandbox.close()  # a fresh kernel: the code must stand on its own, not on earlier tool calls
        result = self.sandbox.run(self.draft.code)  # starts the kernel (and its DATA prelude)
        if not self.isolation_noted:
            self.transcript.note("physflow", "sandbox", f"isolation: {self.sandbox.isolation}",
                                 warning=self.sandbox.warning)
            self.isolation_noted = True
        text = result.as_text()
        self.transcript.note("physflow", "verification", text, code=self.draft.code, ok=result.ok)
        self.output = _clip(result.stdout if result.ok else text)
        if result.ok and result.stdout.strip():
            return "reviewing"
        if result.ok:
            self.failure = "the code printed nothing"
            self.task = ("physflow ran your code in a fresh sandbox and it printed nothing. Print every number the "
                         "answer states. Reply again with the JSON object: answer, code, caveats.")
        else:
            self.failure = "the code failed when physflow ran it: " + (result.error.strip().splitlines() or ["?"])[-1]
            self.task = (f"physflow ran your code in a fresh sandbox and it failed:\n{text[-1500:]}\n"
                         "Fix the code; reply again with the whole JSON object: answer, code, caveats.")
        return "coding"

    async def review(self) -> str:
        """reviewing: numbers the output does not back are flagged; the critic adds caveats -> answered."""
        assert self.draft is not None
        unsupported = unproduced_numbers(self.draft.answer, self.output, self.question)
        if unsupported:
            written = list(dict.fromkeys(s.text for s in unsupported))
            self.caveats.append(f"not produced by the code: {', '.join(written)} (the answer states these "
                                "numbers but the code's output does not contain them)")
            self.transcript.note("physflow", "unsupported_numbers", written)
            self.answer = marked(self.draft.answer, unsupported)
        caveats = "; ".join(self.draft.caveats) or "none"
        reply, error = await self._turn(self.critic, (
            f"Question: {self.question}\nAnswer: {self.draft.answer}\nCaveats given: {caveats}\n"
            f"Code:\n{self.draft.code}\nOutput:\n{self.output[-3000:]}\n"
            "Which caveats does the answer leave out? Reply with JSON."))
        if reply is not None:
            self.caveats += [f"critic: {c.strip()}" for c in reply.missing if c.strip()]
        return "answered"


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_SHOWN:
        return text
    return text[:MAX_OUTPUT_SHOWN] + f"\n[output cut at {MAX_OUTPUT_SHOWN} characters of {len(text)}]"


async def answer_question(question: str, catalog: Catalog, client: ChatCompletionClient, run_dir: Path,
                          unsafe: bool = False) -> AskResult:
    """Answer ``question`` from ``catalog`` in ``run_dir`` (transcript.jsonl, answer.md, scratch/).
    ``unsafe``: where no kernel isolation exists, run the code with audit hooks only (else refuse)."""
    transcript = Transcript(run_dir / "transcript.jsonl")
    sandbox = Sandbox(run_dir, data=[f.path for f in catalog.files.values()], unsafe=unsafe)
    # The kernel starts when code first runs: a tool call of the coder's, or physflow's own run.
    sandbox.prelude = "DATA = " + repr(catalog.paths)
    try:
        transcript.note("physflow", "question", question, data=catalog.paths, sandbox="unsafe" if unsafe else "strict")
        result = await QuestionFlow(question, catalog, client, sandbox, transcript).run()
    finally:
        sandbox.close()
        transcript.close()
    text = result.markdown()
    if sandbox.isolation == UNSAFE:
        text = f"**sandbox: unsafe** - {sandbox.warning.removeprefix('sandbox: unsafe - ')}\n\n" + text
    (run_dir / "answer.md").write_text(text, encoding="utf-8")
    return result
