"""Typed models of the workflow YAML (version 1), with errors that name file, line and field.

The YAML is parsed into nodes first so that every key keeps its line number; pydantic then
validates the plain data, and each validation error is mapped back to the line of the deepest
key it names. Unknown keys are errors: a typo must never be silently ignored on an allocation.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from physflow.errors import SpecError

#: The embedded model when a workflow names none (serving.embedded lists them all).
EMBEDDED_MODEL = "qwen2.5-coder-1.5b-instruct"
#: The agents' roles, the keys of ``agents:``; ``physflow.agents.team.ROLES`` says what each does.
AgentRole = Literal["planner", "domain_expert", "coder", "critic"]
AGENT_ROLES: tuple[AgentRole, ...] = get_args(AgentRole)

Location = tuple[Any, ...]


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class WorkflowPart(Strict):
    """Base of the workflow's models: values are taken as the YAML typed them, never coerced
    (``max_simulations: true`` is not 1, ``"5"`` is not 5). Site models stay lax: a placeholder
    fills a number as text (``nodes_per_block: ${nodes:-2}``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


#: The longest duration a workflow may give (s): one year.
MAX_DURATION = 365 * 86400.0


def parse_duration(value: Any) -> float:
    """Turn ``90``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1h30m"`` into seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30m, 2h, 1h30m")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int of hundreds of digits
            seconds = math.inf
    else:
        text = str(value).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None:
            raise ValueError(f"cannot read {value!r} as a duration (examples: 90s, 30m, 2h, 1h30m)")
        h, m, s = (float(p) if p else 0.0 for p in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("a duration must be positive and finite")
    if seconds > MAX_DURATION:
        # timers and waits take no more (threading.TIMEOUT_MAX, epoll's milliseconds), nor does an allocation
        raise ValueError(f"a duration must be at most a year ({MAX_DURATION:.0f} s)")
    return seconds


class ParameterSpec(WorkflowPart):
    """One parameter the agents may choose: a closed interval [min, max] in the given units."""

    min: float
    max: float
    units: str | None = None
    log: bool = Field(False, description="sample on a log scale (both bounds must be > 0)")
    description: str | None = None

    @model_validator(mode="after")
    def _finite_ordered(self) -> ParameterSpec:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("bounds must be finite numbers")
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be smaller than max ({self.max})")
        if self.log and self.min <= 0:
            raise ValueError("log-scaled parameters need min > 0")
        return self


#: What ``physflow qualify`` asks a model about: three physics domains, and the campaign's own
#: mechanics (a valid proposal, the right tool, the best of shuffled candidates).
QualifyCategory = Literal["cosmology", "diffusion", "molecular_dynamics", "proposal", "tool", "steering"]
QUALIFY_CATEGORIES: tuple[QualifyCategory, ...] = get_args(QualifyCategory)


class QualifySpec(WorkflowPart):
    """``llm.qualify``: ``physflow submit`` runs ``physflow qualify`` first and refuses to start a
    campaign whose model scores below ``min_score`` (the mean of the categories' scores, 0 to 1)."""

    min_score: float = Field(ge=0, le=1, description="the lowest overall qualify score (0 to 1) a campaign "
                                                     "starts with")
    categories: list[QualifyCategory] | None = Field(None, min_length=1, description="the categories asked "
                                                     "(default: all)")
    script: str | None = Field(None, description="replay provider: the script qualification reads "
                                                 "(default: llm.script)")


class LLMSpec(WorkflowPart):
    provider: Literal["embedded", "openai", "vllm", "replay"] = "embedded"
    model: str = EMBEDDED_MODEL
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    script: str | None = Field(None, description="replay provider: JSONL file of scripted model responses")
    delay: float = Field(0.0, ge=0, description="replay provider: seconds each scripted turn takes")
    max_tokens_total: int = Field(200_000, gt=0)
    max_tokens_per_turn: int = Field(768, gt=0)
    temperature: float = Field(0.3, ge=0, le=2)
    pool: str | None = Field(None, description="embedded, vllm: the site pool that serves the model "
                                               "(default: the site's llm.serve_on)")
    tensor_parallel: int = Field(1, ge=1, le=64, description="vllm: GPUs the model is split over "
                                                             "(--tensor-parallel-size)")
    serve_args: list[str] = Field([], description="vllm: extra arguments to vllm serve, "
                                                  "e.g. [--max-model-len, '32768']")
    pipeline_parallel: int = Field(1, ge=1, le=64, description="vllm: nodes the model's layers are split over "
                                                               "(--pipeline-parallel-size, through Ray; "
                                                               "docs/sites.md)")
    tool_parser: str | None = Field(None, pattern=r"^[a-z0-9_-]{1,40}$",
                                    description="vllm: --tool-call-parser (default: the site's, else the model "
                                                "family's; none: off)")
    qualify: QualifySpec | None = Field(None, description="qualify the model before a campaign starts "
                                                          "(physflow qualify)")

    @model_validator(mode="after")
    def _provider_needs(self) -> LLMSpec:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider openai needs base_url")
        if self.provider == "replay" and not self.script:
            raise ValueError("provider replay needs script (a JSONL file of responses)")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError("api_key_env is the *name* of an environment variable, not the key")
        return self


#: The campaign's tools an agent may be given (``agents.<role>.tools``); ``physflow.agents.tools``
#: implements them (and query_catalog, which serves physflow ask outside campaigns).
ToolName = Literal["suggest_parameters", "query_results", "propose_simulations", "run_analysis_code",
                   "search_knowledge", "make_plot"]
TOOL_NAMES: tuple[ToolName, ...] = get_args(ToolName)


class AgentSpec(WorkflowPart):
    enabled: bool = True
    model: str | None = None
    script: str | None = Field(None, description="replay provider: this role's own script of responses")
    system_message: str | None = None
    tools: list[ToolName] | None = Field(None, description="replaces the role's default tools")
    max_tokens: int | None = Field(None, gt=0, description="this agent's share of the token budget")


class Resources(WorkflowPart):
    ranks: int = Field(1, ge=1, le=10_000_000)
    nodes: int = Field(1, ge=1, le=1_000_000)
    gpus: int = Field(0, ge=0, le=1024, description="GPUs the simulation uses on each of its nodes (the MPI "
                                                    "pool's accelerators; packed tasks get their own)")


class OutputsSpec(WorkflowPart):
    format: Literal["json"] = "json"
    path: str = "result.json"

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError("outputs.path must stay inside the task's working directory")
        return value


class SimulationSpec(WorkflowPart):
    adapter: str
    resources: Resources = Resources()
    fixed: dict[str, Any] = {}
    parameters: dict[str, ParameterSpec]
    walltime: float | None = Field(None, description="per-task limit in seconds (or 30m, 2h)")
    # executable adapter
    command: str | None = None
    mpi: bool | None = None
    outputs: OutputsSpec | None = None
    inputs: dict[str, str] | None = Field(
        None, description="executable adapter: input file name in the task dir -> template file; "
                          "{{ name }} in a template is replaced by a parameter or fixed value")
    # python adapter
    function: str | None = None

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime_seconds(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("parameters")
    @classmethod
    def _some_parameters(cls, value: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        if not value:
            raise ValueError("at least one parameter is needed for agents to choose")
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"parameter name {name!r} must be an identifier")
        return value


class ObjectiveSpec(WorkflowPart):
    metric: str
    target: str | None = None
    goal: Literal["minimize", "maximize"] = "minimize"
    tolerance: float | None = None

    @field_validator("tolerance")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("the tolerance must be a finite number (it is compared with the objective)")
        return value


class BudgetSpec(WorkflowPart):
    max_simulations: int = Field(32, ge=1, le=10_000_000)
    max_concurrent: int = Field(2, ge=1, le=1_000_000)
    max_rounds: int = Field(8, ge=1, le=1_000_000)
    wall_time: float = 1800.0
    backfill: Literal["optimizer", "none"] = "optimizer"
    planner_share: Literal["auto"] | float = Field(
        "auto", description="share of each round's simulations the planner's picks run: auto (earned from "
                            "its measured pick quality, at most 0.3) or a number from 0 to 1 (forced)")

    @field_validator("planner_share")
    @classmethod
    def _share(cls, value: Any) -> Any:
        if value != "auto" and not (isinstance(value, float) and 0.0 <= value <= 1.0):
            raise ValueError("planner_share is auto or a number from 0 to 1")
        return value

    @field_validator("wall_time", mode="before")
    @classmethod
    def _wall_seconds(cls, value: Any) -> float:
        return parse_duration(value)


class WorkflowSpec(WorkflowPart):
    physflow: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    goal: str = Field(min_length=1)
    site: str = "local"
    llm: LLMSpec = LLMSpec()
    agents: dict[AgentRole, AgentSpec] = {}
    simulation: SimulationSpec
    objective: ObjectiveSpec
    budget: BudgetSpec = BudgetSpec()
    approval: Literal["auto", "plan", "every-batch"] = "auto"
    knowledge: list[str] = Field([], description="folders or files of local texts for search_knowledge")
    conclusion: str | None = Field(
        None, max_length=2000, description="what the coder computes from the results when the campaign ends, "
                                           "to answer the goal (default: the objective's dependence on each parameter)")
    sandbox: Literal["strict", "unsafe"] = Field(
        "strict", description="strict: model-written code runs only behind kernel walls (bwrap, or Landlock + "
                              "seccomp) and is refused where there are none; unsafe: there, run it with rlimits "
                              "and audit hooks only (the report's first line says so)")

    def agent_enabled(self, role: str) -> bool:
        spec = self.agents.get(role)  # type: ignore[call-overload]
        return spec.enabled if spec else True

    @property
    def has_team(self) -> bool:
        """Whether agents take part: the team forms around the planner; without it the optimizer
        steers alone and no model is started."""
        return self.agent_enabled("planner")


class LoadedWorkflow(BaseModel):
    """A validated spec together with where it came from (for relative paths and errors)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: WorkflowSpec
    path: Path  # the file read (errors name it)
    lines: dict[Location, int]
    #: The file this one stands for, where that is another: a run directory's resolved copy
    #: stands for the workflow submitted, whose folder its relative paths and {workflow_dir} mean.
    source: Path | None = None

    @property
    def directory(self) -> Path:
        """The folder the workflow's relative paths are relative to."""
        return (self.source or self.path).parent

    def resolve(self, relative: str) -> Path:
        """A path named in the YAML, relative to the YAML's folder."""
        p = user_path(relative)
        return p if p.is_absolute() else real_path(self.directory / p)

    def resolved(self) -> dict[str, Any]:
        """The spec as plain data, with defaults filled and the file paths it names made absolute
        (what a run directory records as the workflow that ran)."""
        data = self.spec.model_dump(mode="json")
        if data["objective"].get("target"):
            data["objective"]["target"] = str(self.resolve(data["objective"]["target"]))
        if data["llm"].get("script"):
            data["llm"]["script"] = str(self.resolve(data["llm"]["script"]))
        if (data["llm"].get("qualify") or {}).get("script"):
            data["llm"]["qualify"]["script"] = str(self.resolve(data["llm"]["qualify"]["script"]))
        for agent in data["agents"].values():
            if agent.get("script"):
                agent["script"] = str(self.resolve(agent["script"]))
        for name, template in (data["simulation"].get("inputs") or {}).items():
            data["simulation"]["inputs"][name] = str(self.resolve(template))
        if data["site"].endswith((".yaml", ".yml")):
            data["site"] = str(self.resolve(data["site"]))
        return data

    def error(self, field: str, message: str) -> SpecError:
        """A SpecError located at ``field`` (dotted path) of this file."""
        loc = tuple(int(p) if p.isdigit() else p for p in field.split("."))
        return SpecError(message, str(self.path), line_of(self.lines, loc), field)


def user_path(text: str) -> Path:
    """``text`` with a leading ``~`` or ``~user`` expanded where that user exists.

    ``Path.expanduser`` raises on an unknown ``~user`` (a RuntimeError out of a YAML value such
    as ``site: ~0``); ``os.path.expanduser`` leaves it as written, so it is then a path that does
    not exist and gets the usual located error.
    """
    return Path(os.path.expanduser(text))


def real_path(path: str | Path) -> Path:
    """``path`` made absolute with its links followed as far as they lead. ``Path.resolve`` raises
    RuntimeError on a symlink loop; this stops at the loop and leaves it to the open that follows,
    which says "Too many levels of symbolic links" in the usual one-line error."""
    return Path(os.path.realpath(path))


def path_kind(path: Path) -> Literal["file", "folder"] | None:
    """What ``path`` names: a regular file, a folder, or nothing usable (missing, a device, or a
    name the OS refuses, e.g. longer than 255 bytes, where ``Path.is_file`` would raise)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else None


#: Bounds on a YAML file a user hands over (a workflow, a site): its size, the values it may
#: expand to (aliases repeat what an anchor holds: nine anchors of nine aliases are 9^9 values),
#: and its depth. Real workflows are a few kilobytes, a few hundred values, a few levels deep.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


def read_input_file(path: Path, limit: int = MAX_YAML_BYTES) -> str:
    """The text of the regular file ``path``, or a SpecError naming it: missing, a symlink loop,
    not a regular file (a FIFO would block the read forever, /dev/zero would never end), larger
    than ``limit`` bytes, or not UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting
    except FileNotFoundError:
        raise SpecError("file not found", str(path)) from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read file: {getattr(exc, 'strerror', None) or exc}", str(path)) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpecError("not a regular file (a workflow or site is a YAML file, not a FIFO, device or folder)",
                            str(path))
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise SpecError(f"larger than {limit:,} bytes, far more than any workflow or site needs", str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte {exc.start})", str(path)) from None


def load_yaml_with_lines(path: Path, text: str | None = None) -> tuple[Any, dict[Location, int]]:
    """Parse YAML into plain data plus a map from key path to 1-based line number, within the
    bounds above (MAX_YAML_VALUES, MAX_YAML_DEPTH); scalars must be plain (text, numbers,
    booleans, null): a ``!!binary`` or a timestamp is not a workflow value."""
    text = read_input_file(path) if text is None else text
    try:
        loader = yaml.SafeLoader(text)  # checks the characters first: a NUL byte fails here
    except yaml.reader.ReaderError as exc:
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise SpecError(f"invalid YAML: character {char} is not allowed (position {exc.position})", str(path)) from None
    lines: dict[Location, int] = {}
    built = [0]

    def bounded(n: yaml.Node, loc: Location) -> None:
        built[0] += 1
        where = ".".join(map(str, loc)) or None
        if built[0] > MAX_YAML_VALUES:
            raise SpecError(f"more than {MAX_YAML_VALUES:,} values (YAML aliases that repeat an anchor expand "
                            "to this many)", str(path), n.start_mark.line + 1, where)
        if len(loc) > MAX_YAML_DEPTH:
            raise SpecError(f"nested deeper than {MAX_YAML_DEPTH} levels", str(path), n.start_mark.line + 1, where)

    def scalar(n: yaml.Node, loc: Location) -> Any:
        try:
            value = loader.construct_object(n, deep=True)
        except ValueError as exc:  # e.g. an integer of thousands of digits (Python's conversion limit)
            raise SpecError(f"cannot read this value: {str(exc).split(':')[0]}", str(path), n.start_mark.line + 1,
                            ".".join(map(str, loc)) or None) from None
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise SpecError(f"a {type(value).__name__} value ({n.tag}) is not allowed: write plain text or numbers",
                            str(path), n.start_mark.line + 1, ".".join(map(str, loc)) or None)
        return value

    try:
        node = loader.get_single_node()

        def build(n: yaml.Node, loc: Location) -> Any:
            bounded(n, loc)
            lines.setdefault(loc, n.start_mark.line + 1)
            if isinstance(n, yaml.MappingNode):
                out: dict[Any, Any] = {}
                for key_node, value_node in n.value:
                    key = scalar(key_node, loc) if isinstance(key_node, yaml.ScalarNode) else None
                    if not isinstance(key, (str, int, float, bool)) or key is None or "\x00" in str(key):
                        raise SpecError("keys must be plain names", str(path), key_node.start_mark.line + 1,
                                        ".".join(map(str, loc)) or None)
                    if key in out:
                        raise SpecError(f"duplicate key {key!r}", str(path), key_node.start_mark.line + 1,
                                        ".".join(map(str, loc + (key,))))
                    lines[loc + (key,)] = key_node.start_mark.line + 1
                    out[key] = build(value_node, loc + (key,))
                return out
            if isinstance(n, yaml.SequenceNode):
                return [build(v, loc + (i,)) for i, v in enumerate(n.value)]
            value = scalar(n, loc)
            if isinstance(value, str) and "\x00" in value:
                # a "\0" escape: no path, command or name can hold one, and os calls raise on it
                raise SpecError("a NUL character (\\0) is not allowed in a value", str(path), n.start_mark.line + 1,
                                ".".join(map(str, loc)) or None)
            return value

        data = None if node is None else build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"invalid YAML: {exc.problem or exc.context}", str(path), line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", str(path)) from None
    except RecursionError:  # the YAML parser recurses into each level before build() can count it
        raise SpecError(f"nested deeper than {MAX_YAML_DEPTH} levels", str(path)) from None
    finally:
        loader.dispose()
    return data, lines


def line_of(lines: dict[Location, int], loc: Location) -> int | None:
    """The line of the deepest prefix of ``loc`` that exists in the file."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def first_error(exc: ValidationError, path: Path, lines: dict[Location, int]) -> SpecError:
    """The first pydantic error as a SpecError at the right line."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    field = ".".join(str(p) for p in loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    return SpecError(message, str(path), line_of(lines, loc), field or None)


def parse_model(model: type[BaseModel], path: Path, text: str | None = None,
                fill: Callable[[Any, dict[Location, int]], Any] | None = None) -> tuple[Any, dict[Location, int]]:
    """Load a YAML file into ``model``; any problem becomes a located SpecError.

    ``fill(data, lines)`` may rewrite the parsed data before validation (a site's placeholders).
    """
    data, lines = load_yaml_with_lines(path, text)
    if not isinstance(data, dict):
        raise SpecError("the file must be a YAML mapping", str(path), 1)
    if fill is not None:
        data = fill(data, lines)
    try:
        return model.model_validate(data), lines
    except ValidationError as exc:
        raise first_error(exc, path, lines) from None


def load_workflow(path: str | Path, source: Path | None = None) -> LoadedWorkflow:
    """Parse and type-check a workflow YAML (no cross-checks against adapters or sites);
    ``source``: the file it stands for (see ``LoadedWorkflow.source``)."""
    path = real_path(user_path(str(path)))
    spec, lines = parse_model(WorkflowSpec, path)
    return LoadedWorkflow(spec=spec, path=path, lines=lines, source=source)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the workflow YAML, for editors."""
    schema = WorkflowSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "physflow workflow (version 1)"
    return schema
