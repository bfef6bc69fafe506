"""``physflow qualify``: what the configured model knows, measured before it steers an allocation.

Six categories. Three are physics (cosmology, diffusion, molecular dynamics): a bank of questions
written for physflow, each with its answer and the source that states it, multiple choice with a
balanced answer key (the correct letter is spread evenly over A-D, so a model that always says "A"
scores chance) and short numeric answers checked within a relative tolerance. Three are the
campaign's own mechanics, built from the workflow itself: a valid proposal for its parameters
(``proposal``), the right tool for a described task (``tool``), and the advisor's pick among
shuffled candidates by their predicted objective (``steering``, scored as the campaign scores its
picks: ``vocabulary.steering.pick_score``).

Every question is one structured reply (a pydantic model: a grammar on the llama.cpp server). A
reply that cannot be parsed, or is invalid, counts wrong and is recorded as given; it never stops
the test.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from autogen_core.models import ChatCompletionClient, SystemMessage, UserMessage
from pydantic import BaseModel, ValidationError, create_model

from physflow.agents.advisor import LETTERS, pick_model, pick_question, picked, shuffled
from physflow.agents.team import proposal_model
from physflow.agents.tools import Toolbox
from physflow.vocabulary.steering import Candidate, pick_score, rank_by_prediction
from physflow.vocabulary.workflow import QUALIFY_CATEGORIES, TOOL_NAMES, ParameterSpec, WorkflowSpec

#: The question bank: one YAML file per physics domain (package data).
BANK = Path(__file__).with_name("qualify_bank")
PHYSICS: tuple[str, ...] = ("cosmology", "diffusion", "molecular_dynamics")
#: Options of every multiple-choice question: chance is 1 in 4.
MCQ_OPTIONS = 4
#: Questions the workflow's mechanics get (before --limit).
PROPOSAL_QUESTIONS = 6
STEERING_QUESTIONS = 12
#: Candidates per steering question, as the advisor shows them.
STEERING_CANDIDATES = 4
#: Characters of an invalid reply kept in the record.
KEPT_REPLY = 300

SYSTEM = ("You are taking a short test before steering a physics simulation campaign. Answer each question "
          "with one JSON object, exactly in the form the question asks for, and nothing else.")


@dataclass(frozen=True)
class BankItem:
    """One physics question of the bank. ``answer``: the correct option's text (mcq) or the value
    in the units the question names (numeric, right within ``tolerance``, relative)."""

    id: str
    domain: str
    kind: Literal["mcq", "numeric"]
    question: str
    answer: str | float
    source: str
    options: tuple[str, ...] = ()
    tolerance: float = 0.0


def _item(raw: Any, domain: str, where: str) -> BankItem:
    """One bank entry, checked: a broken bank is a bug in physflow, so a ValueError names it."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: not a mapping")
    keys = {"id", "kind", "question", "answer", "source", "options", "tolerance"}
    if set(raw) - keys or not {"id", "kind", "question", "answer", "source"} <= set(raw):
        raise ValueError(f"{where}: keys must be id, kind, question, answer, source (+ options or tolerance)")
    kind = raw["kind"]
    if kind == "mcq":
        options = tuple(str(o) for o in raw.get("options") or ())
        if len(options) != MCQ_OPTIONS or len(set(options)) != MCQ_OPTIONS or raw["answer"] not in options:
            raise ValueError(f"{where}: an mcq has {MCQ_OPTIONS} distinct options, its answer one of them")
        return BankItem(str(raw["id"]), domain, "mcq", str(raw["question"]), str(raw["answer"]),
                        str(raw["source"]), options)
    if kind == "numeric":
        answer, tolerance = raw["answer"], raw.get("tolerance")
        if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer) \
                or answer == 0 or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise ValueError(f"{where}: a numeric answer is a finite non-zero number with a relative "
                             "tolerance in (0, 1)")
        return BankItem(str(raw["id"]), domain, "numeric", str(raw["question"]), float(answer),
                        str(raw["source"]), tolerance=float(tolerance))
    raise ValueError(f"{where}: kind must be mcq or numeric")


def load_bank(folder: Path = BANK) -> list[BankItem]:
    """Every physics question, domain by domain (the file name is the domain)."""
    items: list[BankItem] = []
    for domain in PHYSICS:
        path = folder / f"{domain}.yaml"
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        items += [_item(raw, domain, f"{path.name}[{i}]") for i, raw in enumerate(entries)]
    ids = [i.id for i in items]
    if len(ids) != len(set(ids)):
        raise ValueError(f"question ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return items


@dataclass
class Question:
    """One question as the model sees it, and how its reply is graded.

    ``reply``: the pydantic model of the reply (the grammar). ``key``: a reply that is right (what
    the record shows as expected). ``grade``: the parsed reply -> (what it answered, right?, score);
    the score is 1 or 0, except for steering, where it is the pick's ``pick_score``. ``chance``:
    the score a random answer expects."""

    id: str
    category: str
    prompt: str
    reply: type[BaseModel]
    key: dict[str, Any]
    grade: Callable[[BaseModel], tuple[Any, bool, float]]
    chance: float


def _mcq_reply() -> type[BaseModel]:
    letters = tuple(LETTERS[:MCQ_OPTIONS])
    return create_model("Choice", answer=(Literal[letters], ...))  # type: ignore[valid-type]


NumericReply = create_model("Value", value=(float, ...))


def _physics(items: Sequence[BankItem], rng: random.Random) -> list[Question]:
    """``items`` (one domain) as questions. The correct option's position cycles through A-D in a
    shuffled order, so every letter is the answer equally often (within one)."""
    mcqs = [i for i in items if i.kind == "mcq"]
    positions = [n % MCQ_OPTIONS for n in range(len(mcqs))]
    rng.shuffle(positions)
    place = {item.id: p for item, p in zip(mcqs, positions, strict=True)}
    questions = []
    for item in items:
        if item.kind == "mcq":
            others = [o for o in item.options if o != item.answer]
            rng.shuffle(others)
            options = others[:place[item.id]] + [str(item.answer)] + others[place[item.id]:]
            letter = LETTERS[place[item.id]]
            text = item.question + "\n" + "\n".join(f"{LETTERS[k]}: {o}" for k, o in enumerate(options)) \
                + '\nReply with JSON: {"answer": "<letter>"}.'
            questions.append(Question(item.id, item.domain, text, _mcq_reply(), {"answer": letter},
                                      lambda r, key=letter: (r.answer, r.answer == key, float(r.answer == key)),
                                      1 / MCQ_OPTIONS))
        else:
            answer, tolerance = float(item.answer), item.tolerance

            def grade(r: BaseModel, answer: float = answer, tolerance: float = tolerance) -> tuple[Any, bool, float]:
                value = r.value  # type: ignore[attr-defined]
                right = math.isfinite(value) and abs(value - answer) <= tolerance * abs(answer)
                return value, right, float(right)

            text = item.question + '\nReply with JSON: {"value": <number>}.'
            questions.append(Question(item.id, item.domain, text, NumericReply, {"value": answer}, grade, 0.0))
    return questions


def _draw(p: ParameterSpec, rng: random.Random) -> float:
    """A value inside ``p``'s bounds (log-uniform for a log-scaled parameter)."""
    if p.log:
        return math.exp(rng.uniform(math.log(p.min), math.log(p.max)))
    return rng.uniform(p.min, p.max)


def _middle(p: ParameterSpec) -> float:
    return math.sqrt(p.min * p.max) if p.log else (p.min + p.max) / 2


def _bounds_text(parameters: dict[str, ParameterSpec]) -> str:
    return "\n".join(f"- {name} in [{p.min:g}, {p.max:g}]" + (f" {p.units}" if p.units else "")
                     + (f": {p.description}" if p.description else "") for name, p in parameters.items())


def _proposals(spec: WorkflowSpec, rng: random.Random) -> list[Question]:
    """Ask for 1-3 simulations under one hypothesis, half of the time after a few earlier results;
    right when the reply parses as the planner's proposal and every value lies within bounds."""
    parameters, metric = spec.simulation.parameters, spec.objective.metric
    questions = []
    for n in range(PROPOSAL_QUESTIONS):
        count = 1 + n % 3
        earlier = ""
        if n >= PROPOSAL_QUESTIONS // 2:
            rows = [{**{k: round(_draw(p, rng), 4) for k, p in parameters.items()},
                     metric: round(rng.uniform(0.5, 50), 3)} for _ in range(3)]
            earlier = "Simulations so far:\n" + "\n".join(json.dumps(r) for r in rows) + "\n"
        example = {"hypothesis": "...", "prediction": "...",
                   "simulations": [{k: "<number>" for k in parameters}]}
        text = (f"Campaign goal: {spec.goal.strip()}\nObjective: {spec.objective.goal} {metric}.\n"
                f"Parameters you choose (closed bounds):\n{_bounds_text(parameters)}\n{earlier}"
                f"Propose {count} simulation(s) to run next under one falsifiable hypothesis. Every simulation "
                f"sets every parameter above to a number within its bounds. Reply with JSON: {json.dumps(example)}.")

        def grade(r: BaseModel) -> tuple[Any, bool, float]:
            sims = [s.model_dump() for s in r.simulations]  # type: ignore[attr-defined]
            right = all(math.isfinite(v) and parameters[k].min <= v <= parameters[k].max
                        for s in sims for k, v in s.items())
            return sims, right, float(right)

        key = {"hypothesis": f"{metric} is best near the middle of the bounds", "prediction": f"{metric} improves",
               "simulations": [{k: _middle(p) for k, p in parameters.items()}] * count}
        questions.append(Question(f"proposal-{n + 1}", "proposal", text, proposal_model(parameters, count), key,
                                  grade, 0.0))
    return questions


#: Two tasks per tool, each of which only that tool does ({p}: a parameter, {m}: the objective's metric).
TOOL_TASKS: dict[str, tuple[str, str]] = {
    "suggest_parameters": ("You are unsure which values to try next: get three promising parameter sets from "
                           "the optimizer fitted to the finished simulations.",
                           "Ask the surrogate model for the two parameter sets it expects to improve {m} most."),
    "query_results": ("List the five finished simulations with the best {m} so far.",
                      "See which simulations have failed so far."),
    "propose_simulations": ("Stage two simulations with the values of {p} you chose, so that they are checked "
                            "against the bounds and run.",
                            "Submit the parameter sets of your hypothesis to be run."),
    "run_analysis_code": ("Compute the Pearson correlation between {p} and {m} over all finished simulations "
                          "with a short numpy script.",
                          "Fit a power law of {m} against {p} with Python code over campaign.h5."),
    "search_knowledge": ("Find what the campaign's reference papers say about {p}, with a passage to cite.",
                         "Look up in the local notes which value of {p} the literature reports."),
    "make_plot": ("Draw a scatter plot of {m} against {p} and save it as a figure.",
                  "Make a figure of {p} against {m}, coloured by {m}, titled 'progress'."),
}


def _tools(spec: WorkflowSpec, rng: random.Random) -> list[Question]:
    """Which tool does a described task: the tools as the agents read them, chance 1 in 6."""
    tools = Toolbox(None).tools(list(TOOL_NAMES))
    listing = "\n".join(f"- {t.name}: {' '.join(t.description.split())}" for t in tools)
    reply = create_model("ToolChoice", tool=(Literal[TOOL_NAMES], ...))  # type: ignore[valid-type]
    first, metric = next(iter(spec.simulation.parameters)), spec.objective.metric
    questions = []
    for name in TOOL_NAMES:
        for n, task in enumerate(TOOL_TASKS[name], 1):
            text = (f"The campaign's tools:\n{listing}\nTask: {task.format(p=first, m=metric)}\n"
                    'Which one tool does this task? Reply with JSON: {"tool": "<tool name>"}.')
            questions.append(Question(f"tool-{name}-{n}", "tool", text, reply, {"tool": name},
                                      lambda r, name=name: (r.tool, r.tool == name, float(r.tool == name)),
                                      1 / len(TOOL_NAMES)))
    return questions


def _candidates(parameters: dict[str, ParameterSpec], rng: random.Random) -> list[Candidate]:
    """Four candidates inside the bounds with predicted means (all different as shown, 4 figures)
    and sds of 5-60 % of the mean, on a scale drawn from 0.1 to 100 (the metric's units)."""
    scale = 10 ** rng.uniform(-1, 2)
    while True:
        means = [scale * rng.uniform(0.3, 3.0) for _ in range(STEERING_CANDIDATES)]
        if len({f"{m:.4g}" for m in means}) == STEERING_CANDIDATES:
            break
    return [Candidate({k: _draw(p, rng) for k, p in parameters.items()}, m, m * rng.uniform(0.05, 0.6), rank)
            for rank, m in enumerate(means)]


def _steering(spec: WorkflowSpec, rng: random.Random) -> list[Question]:
    """The advisor's pick question over shuffled candidates: scored by ``pick_score`` (1 for the
    surrogate's best, 0 for chance); a reply that names no candidate scores 0, what a random pick
    earns on average."""
    metric, goal = spec.objective.metric, spec.objective.goal
    questions = []
    for n in range(STEERING_QUESTIONS):
        shown = shuffled(_candidates(spec.simulation.parameters, rng), rng)
        places = rank_by_prediction(shown, goal)

        def grade(r: BaseModel, places: list[int] = places) -> tuple[Any, bool, float]:
            index = picked(r)
            return LETTERS[index], places[index] == 0, pick_score(places[index], len(places))

        questions.append(Question(f"steering-{n + 1}", "steering", pick_question(shown, metric, goal),
                                  pick_model(len(shown)), {"choice": LETTERS[places.index(0)]}, grade, 0.0))
    return questions


def build_questions(spec: WorkflowSpec, categories: Iterable[str] | None = None, seed: int = 0,
                    limit: int | None = None, bank: Sequence[BankItem] | None = None) -> list[Question]:
    """The test for ``spec``'s campaign: the chosen categories (all by default), each in a seeded
    order and cut to its first ``limit`` questions. The same arguments give the same questions."""
    chosen = [c for c in QUALIFY_CATEGORIES if categories is None or c in set(categories)]
    items = list(bank) if bank is not None else load_bank()
    questions: list[Question] = []
    for category in chosen:
        rng = random.Random(f"physflow-qualify:{seed}:{category}")
        if category in PHYSICS:
            mine = [i for i in items if i.domain == category]
            rng.shuffle(mine)
            asked = _physics(mine[:limit], rng)
        else:
            made = {"proposal": _proposals, "tool": _tools, "steering": _steering}[category](spec, rng)
            if category == "tool":
                rng.shuffle(made)
            asked = made[:limit]
        questions += asked
    return questions


@dataclass
class Answer:
    """What the model did with one question."""

    id: str
    category: str
    given: Any  # the parsed answer, or the raw reply (cut) when it could not be used
    correct: bool
    score: float
    expected: dict[str, Any]
    error: str | None = None
    seconds: float = 0.0
    tokens: int = 0


def _json_text(content: str) -> str:
    """The JSON object in a reply: as sent, or inside a ```json fence or prose (larger models
    fence JSON when no grammar holds them to it)."""
    start, end = content.find("{"), content.rfind("}")
    return content[start:end + 1] if 0 <= start < end else content


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid reply: {where + ': ' if where else ''}{first['msg']}"


async def ask(client: ChatCompletionClient, question: Question) -> Answer:
    """One question, one structured reply. Whatever goes wrong (the client raises, the reply is a
    tool call, not JSON, or not the reply asked for) is an Answer that counts wrong, with why."""
    started = time.monotonic()
    answer = Answer(question.id, question.category, None, False, 0.0, question.key)
    try:
        messages = [SystemMessage(content=SYSTEM), UserMessage(content=question.prompt, source="user")]
        result = await client.create(messages, json_output=question.reply)
    except Exception as exc:  # noqa: BLE001 - a model that cannot answer scores 0 for this question
        answer.error = f"no reply: {type(exc).__name__}: {' '.join(str(exc).split())[:KEPT_REPLY]}"
        answer.seconds = time.monotonic() - started
        return answer
    answer.seconds = time.monotonic() - started
    answer.tokens = result.usage.prompt_tokens + result.usage.completion_tokens
    content = result.content
    if not isinstance(content, str):
        answer.given, answer.error = str(content)[:KEPT_REPLY], "a tool call, not a reply"
        return answer
    try:
        reply = question.reply.model_validate_json(_json_text(content))
        answer.given, answer.correct, answer.score = question.grade(reply)
    except ValidationError as exc:
        answer.given, answer.error = content[:KEPT_REPLY], _reason(exc)
    return answer


@dataclass
class CategoryScore:
    """One category's result: ``score`` is the fraction right (steering: the mean pick score, 1 =
    always the surrogate's best, 0 = chance, negative = worse than chance); ``chance`` what random
    answers score; ``invalid`` replies that could not be used (counted wrong)."""

    correct: int
    total: int
    score: float
    chance: float
    invalid: int = 0


def score_categories(questions: Sequence[Question], answers: Sequence[Answer]) -> dict[str, CategoryScore]:
    """Per category, in the order asked."""
    out: dict[str, CategoryScore] = {}
    for category in dict.fromkeys(q.category for q in questions):
        mine = [(q, a) for q, a in zip(questions, answers, strict=True) if q.category == category]
        out[category] = CategoryScore(sum(a.correct for _, a in mine), len(mine),
                                      sum(a.score for _, a in mine) / len(mine),
                                      sum(q.chance for q, _ in mine) / len(mine),
                                      sum(a.error is not None for _, a in mine))
    return out


#: Physics accuracy above which the model's physics is trusted, and below which it is not.
KNOWS_PHYSICS = 0.8
KNOWS_LITTLE = 0.6
#: Steering score at or below which picks are taken as no better than chance, however many asked.
PICKS_NO_BETTER = 0.1


def chance_band(asked: int, shown: int = STEERING_CANDIDATES) -> float:
    """Twice the standard error of the mean pick score of ``asked`` random picks among ``shown``:
    a steering score inside it cannot be told from chance (12 questions of 4: 0.43)."""
    spread = math.sqrt(sum(pick_score(place, shown) ** 2 for place in range(shown)) / shown)
    return 2 * spread / math.sqrt(max(asked, 1))


@dataclass
class QualifyRecord:
    """A model's qualification: who was asked what, when, and how it did.

    ``overall``: the mean of the categories' scores, steering floored at 0 (what
    ``llm.qualify.min_score`` is compared with); ``steering``: the mean pick score, the prior a
    campaign gives the model's picks (``vocabulary.steering.pick_quality``)."""

    model: str
    seed: int
    when: str
    version: str
    categories: dict[str, CategoryScore]
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def overall(self) -> float:
        scores = [max(0.0, c.score) for c in self.categories.values()]
        return sum(scores) / len(scores) if scores else 0.0

    @property
    def steering(self) -> float | None:
        s = self.categories.get("steering")
        return s.score if s else None

    @property
    def top1(self) -> float | None:
        """Steering: how often the pick was the surrogate's best (chance 1 / 4)."""
        s = self.categories.get("steering")
        return s.correct / s.total if s and s.total else None

    def physics(self) -> tuple[int, int, float] | None:
        """Physics over the domains asked: right, asked, and what chance would get right."""
        domains = [c for name, c in self.categories.items() if name in PHYSICS]
        if not domains:
            return None
        total = sum(c.total for c in domains)
        return sum(c.correct for c in domains), total, sum(c.chance * c.total for c in domains)

    def interpretation(self) -> str:
        """What the scores mean for a campaign, in plain words."""
        said = []
        physics = self.physics()
        if physics:
            right, total, chance = physics
            tally = f"{right}/{total} right; chance alone would get {chance:.1f}"
            if right / total < KNOWS_LITTLE:
                said.append(f"this model knows little physics ({tally}): let the optimizer's numbers and the "
                            "coder's code carry the campaign, and take its hypotheses as guesses to test")
            elif right / total < KNOWS_PHYSICS:
                said.append(f"this model knows some physics ({tally}): check its hypotheses against the numbers")
            else:
                said.append(f"this model knows its physics ({tally})")
        proposal = self.categories.get("proposal")
        if proposal and proposal.correct < proposal.total:
            said.append(f"{proposal.total - proposal.correct} of {proposal.total} proposals were invalid: physflow "
                        "rejects them and asks again, which costs turns")
        if self.steering is not None:
            band = chance_band(self.categories["steering"].total)
            if self.steering <= max(PICKS_NO_BETTER, band):
                said.append(f"its picks among the optimizer's candidates cannot be told from chance (steering "
                            f"{self.steering:.2f}, chance 0 ± {band:.2f} at {self.categories['steering'].total} "
                            "questions): the optimizer keeps the slots")
            else:
                said.append(f"its steering score ({self.steering:.2f}) decides how many slots the planner gets")
        return ("; ".join(said) + ".") if said else "no category was asked."

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "seed": self.seed, "when": self.when, "physflow": self.version,
                "seconds": round(self.seconds, 2), "overall": self.overall, "steering": self.steering,
                "steering_top1": self.top1, "interpretation": self.interpretation(),
                "categories": {k: asdict(v) for k, v in self.categories.items()},
                "questions": [asdict(a) for a in self.answers]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QualifyRecord:
        """A record as ``to_json`` wrote it (KeyError or TypeError when it is not one)."""
        return cls(str(data["model"]), int(data["seed"]), str(data["when"]), str(data["physflow"]),
                   {k: CategoryScore(**v) for k, v in data["categories"].items()},
                   [Answer(**a) for a in data.get("questions", [])], float(data.get("seconds", 0.0)))


async def take_test(client: ChatCompletionClient, questions: Sequence[Question], model: str, seed: int,
                    version: str, when: str, progress: Callable[[int, int, Answer], None] | None = None
                    ) -> QualifyRecord:
    """Ask every question in turn (one model, one reply at a time) and score the categories."""
    started = time.monotonic()
    answers = []
    for n, question in enumerate(questions, 1):
        answers.append(await ask(client, question))
        if progress:
            progress(n, len(questions), answers[-1])
    return QualifyRecord(model, seed, when, version, score_categories(questions, answers), answers,
                         time.monotonic() - started)
