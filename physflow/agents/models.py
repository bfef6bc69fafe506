"""Model clients: one OpenAI-compatible code path, plus a scripted replay for tests.

``embedded`` talks to the llama.cpp server physflow starts (``serving.plans``); ``openai``
and ``vllm`` to any OpenAI-compatible endpoint; ``replay`` to AutoGen's
ReplayChatCompletionClient fed from a JSONL script.

The llama.cpp server lacks three things AutoGen relies on: the ``json_schema`` response format
(HTTP 500), tool calls when ``tool_choice`` is ``auto`` (tools are only called when named), and
it returns a legacy ``function_call`` field AutoGen rejects. ``LlamaCppBridgeClient`` bridges all
three without weakening anything: structured output becomes ``json_object`` with the same
schema as a grammar; a turn with tools becomes one grammar-constrained choice between "call this
tool with these arguments" and "answer", turned back into AutoGen FunctionCalls; tool history is
sent as plain text so no tool fields reach the server at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from autogen_ext.models.openai import OpenAIChatCompletionClient
from autogen_ext.models.replay import ReplayChatCompletionClient
from pydantic import BaseModel

from physflow.errors import SpecError
from physflow.secrets import remember
from physflow.vocabulary.workflow import LLMSpec

LOCAL_MODEL_INFO = ModelInfo(vision=False, function_calling=True, json_output=True, family=ModelFamily.UNKNOWN,
                             structured_output=True, multiple_system_messages=True)


#: Length bounds a grammar may carry. llama.cpp turns maxLength N into N nested optional rules:
#: a 4000-character bound made a grammar the server refused (and died on), and a few hundred
#: slow every sampled token. Longer bounds are left to validation of the reply (pydantic), which
#: still rejects an over-long field and sends the error back to the agent.
GRAMMAR_MAX_LENGTH = 64


def grammar_schema(schema: Any) -> Any:
    """``schema`` without the string/array length bounds a grammar cannot afford (see above)."""
    if isinstance(schema, dict):
        return {k: grammar_schema(v) for k, v in schema.items()
                if not (k in ("maxLength", "maxItems") and isinstance(v, int) and v > GRAMMAR_MAX_LENGTH)}
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    return schema


def strict_json(text: str) -> str:
    """``text`` as strict JSON when its only fault is a raw control character inside a string.

    llama-cpp-python's JSON-schema grammar lets a string hold raw control characters (its
    ``char`` rule is ``[^"\\]``), so a model writing code puts real line breaks in it; JSON
    forbids them and the reply would be rejected for its form, not its content. Read leniently,
    written back strictly: no value changes. Anything else wrong is left for the agent to hear."""
    try:
        json.loads(text)
        return text
    except ValueError:
        pass
    try:
        return json.dumps(json.loads(text, strict=False))
    except ValueError:
        return text


def _schema_of(tool: Tool | ToolSchema) -> ToolSchema:
    return tool.schema if isinstance(tool, Tool) else tool


def tool_choice_schema(tools: Sequence[ToolSchema], answer: dict[str, Any] | None) -> dict[str, Any]:
    """One JSON object that is either a call of one of ``tools`` or the final ``answer`` (a call
    only, when ``answer`` is None: the caller named the tool or required one)."""
    defs: dict[str, Any] = {}
    options: list[dict[str, Any]] = []
    for t in tools:
        params = dict(t.get("parameters") or {"type": "object", "properties": {}})
        defs.update(params.pop("$defs", {}))
        options.append({"type": "object", "properties": {"tool": {"const": t["name"]}, "arguments": params},
                        "required": ["tool", "arguments"]})
    if answer is not None:
        answer = dict(answer)
        defs.update(answer.pop("$defs", {}))  # "$ref"s point at the root: hoist the definitions there
        options.append({"type": "object", "properties": {"answer": answer}, "required": ["answer"]})
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    return schema


def _as_text(messages: Sequence[LLMMessage]) -> list[LLMMessage]:
    """Tool calls and tool results as plain text: the server's chat templates know no tool roles."""
    out: list[LLMMessage] = []
    for m in messages:
        if isinstance(m, AssistantMessage) and isinstance(m.content, list):
            calls = [{"tool": c.name, "arguments": json.loads(c.arguments or "{}")} for c in m.content]
            out.append(AssistantMessage(content=json.dumps(calls[0] if len(calls) == 1 else calls), source=m.source))
        elif isinstance(m, FunctionExecutionResultMessage):
            text = "\n".join(f"Result of {r.name}: {r.content}" for r in m.content)
            out.append(UserMessage(content=text, source="tools"))
        else:
            out.append(m)
    return out


class LlamaCppBridgeClient(OpenAIChatCompletionClient):
    """OpenAIChatCompletionClient for a llama.cpp server (see the module docstring)."""

    @staticmethod
    def response_format(schema: dict[str, Any]) -> dict[str, Any]:
        """How the server is asked to keep a reply to ``schema``: llama.cpp's ``json_object`` with
        a schema, which it turns into a grammar."""
        return {"type": "json_object", "schema": grammar_schema(schema)}

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        schemas = [_schema_of(t) for t in tools] if tool_choice != "none" else []
        if isinstance(tool_choice, Tool):
            schemas = [tool_choice.schema]
        if isinstance(json_output, type) and issubclass(json_output, BaseModel):
            answer: dict[str, Any] = json_output.model_json_schema()
        else:
            answer = {"type": "string"}
        if schemas:
            listing = "\n".join(f"- {s['name']}: {s.get('description', '')}" for s in schemas)
            forced = isinstance(tool_choice, Tool) or tool_choice == "required"
            hint = SystemMessage(content=(
                "Call one tool now by replying {\"tool\": NAME, \"arguments\": {...}}. Tools:\n" + listing if forced
                else "You may call one tool by replying {\"tool\": NAME, \"arguments\": {...}}, or give your final "
                "reply as {\"answer\": ...}. Tools:\n" + listing))
            schema = tool_choice_schema(schemas, None if forced else answer)
            msgs = [hint, *_as_text(messages)]
        elif json_output is not None and json_output is not False:
            schema = answer if answer.get("type") != "string" else {"type": "object"}
            msgs = _as_text(messages)
        else:
            return await super().create(_as_text(messages), extra_create_args=extra_create_args,
                                        cancellation_token=cancellation_token)
        args = {**extra_create_args, "response_format": self.response_format(schema)}
        result = await super().create(msgs, extra_create_args=args, cancellation_token=cancellation_token)
        if isinstance(result.content, str):
            result = result.model_copy(update={"content": strict_json(result.content)})
        if not schemas or not isinstance(result.content, str):
            return result
        try:
            choice = json.loads(result.content)
        except ValueError:
            return result  # cut off at max_tokens: the agent sees the broken text and the error
        if isinstance(choice, dict) and "tool" in choice:
            call = FunctionCall(id=f"call_{uuid.uuid4().hex[:12]}", name=str(choice["tool"]),
                                arguments=json.dumps(choice.get("arguments", {})))
            return CreateResult(finish_reason="function_calls", content=[call], usage=result.usage, cached=False)
        if isinstance(choice, dict) and "answer" in choice:
            value = choice["answer"]
            text = value if isinstance(value, str) else json.dumps(value)
            return CreateResult(finish_reason="stop", content=text, usage=result.usage, cached=False)
        return result


class VllmGuidedClient(LlamaCppBridgeClient):
    """The same bridge for a vLLM server: every structured turn (a reply type, or a choice
    between tools and an answer) is one reply that vLLM's guided decoding keeps to the JSON
    Schema (OpenAI's ``json_schema`` response format, which vLLM enforces with its structured
    outputs backend; ``guided_json`` was removed in vLLM 0.12).

    Why not vLLM's own tool calls: they depend on a ``--tool-call-parser`` that matches the
    model's chat format (vllm issue #11903), and with ``tool_choice: auto`` vLLM may return no
    tool call at all (vllm issue #21840); a schema-guided reply cannot both call a tool and keep to
    a reply type. Here the choice is part of the schema, so a small or unfamiliar model still
    answers in a form physflow can read, whatever parser the server was started with.
    """

    @staticmethod
    def response_format(schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


class OpenAICompatibleClient(OpenAIChatCompletionClient):
    """AutoGen's OpenAI client for a turn that has both tools and a structured reply.

    For a pydantic reply type AutoGen calls the OpenAI SDK's ``parse``, which refuses every tool
    that is not ``strict`` (strict tools may have no defaults and no free-form objects, which
    ``suggest_parameters(n=2)`` and ``propose_simulations`` need). A turn with tools therefore
    asks in plain mode, with the reply's JSON Schema in a system message: the model may call a
    tool or answer, and the answer is still parsed against the same pydantic model (an invalid
    one goes back to the agent). Turns without tools keep the server-enforced schema. A vLLM
    server needs this anyway: a schema-guided reply could never contain a tool call.
    """

    @staticmethod
    def _plain(messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema], tool_choice: Any,
               json_output: Any) -> tuple[Sequence[LLMMessage], Any]:
        if not (tools and tool_choice != "none" and isinstance(json_output, type)
                and issubclass(json_output, BaseModel)):
            return messages, json_output
        hint = SystemMessage(content="When you give your final reply (not a tool call), reply with one JSON object "
                             "and nothing else, matching this JSON Schema:\n"
                             + json.dumps(json_output.model_json_schema()))
        return [*messages, hint], None

    async def create(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],
                     tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                     json_output: bool | type[BaseModel] | None = None, **kwargs: Any) -> CreateResult:
        messages, json_output = self._plain(messages, tools, tool_choice, json_output)
        return await super().create(messages, tools=tools, tool_choice=tool_choice, json_output=json_output,
                                    **kwargs)

    def create_stream(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],
                      tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                      json_output: bool | type[BaseModel] | None = None, **kwargs: Any):  # type: ignore[override]
        messages, json_output = self._plain(messages, tools, tool_choice, json_output)
        return super().create_stream(messages, tools=tools, tool_choice=tool_choice, json_output=json_output,
                                     **kwargs)


class PacedReplayClient(ReplayChatCompletionClient):
    """A replay model whose every turn takes ``delay`` seconds, like a real model's would."""

    def __init__(self, chat_completions: Sequence[str | CreateResult], delay: float = 0.0) -> None:
        super().__init__(chat_completions, model_info=LOCAL_MODEL_INFO)
        self.delay = delay

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:  # type: ignore[override]
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().create(messages, **kwargs)


def load_replay_script(path: Path) -> list[str | CreateResult]:
    """A JSONL script: a string line is a text reply; ``{"tool": ..., "arguments": ...}`` a tool
    call; ``{"content": ...}`` a reply whose content (any JSON) is sent as text."""
    responses: list[str | CreateResult] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecError(f"cannot read replay script: {exc}", str(path)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"not JSON: {exc}", str(path), number) from None
        if isinstance(item, dict) and "tool" in item:
            call = FunctionCall(id=f"call_{number}", name=str(item["tool"]),
                                arguments=json.dumps(item.get("arguments", {})))
            usage = RequestUsage(prompt_tokens=0, completion_tokens=len(line) // 4)
            responses.append(CreateResult(finish_reason="function_calls", content=[call], usage=usage, cached=False))
        elif isinstance(item, dict) and "content" in item:
            content = item["content"]
            responses.append(content if isinstance(content, str) else json.dumps(content))
        elif isinstance(item, str):
            responses.append(item)
        else:
            raise SpecError("each line is a string, {\"tool\": ...} or {\"content\": ...}", str(path), number)
    return responses


def make_client(llm: LLMSpec, *, base_url: str | None = None, script_dir: Path | None = None,
                model: str | None = None, api_key: str | None = None) -> ChatCompletionClient:
    """The model client for one agent. ``base_url`` and ``api_key``: where physflow serves the
    model itself, and the key it made for that server."""
    name = model or llm.model
    common = {"temperature": llm.temperature, "max_tokens": llm.max_tokens_per_turn}
    if llm.provider == "replay":
        script = Path(llm.script or "")
        if not script.is_absolute() and script_dir is not None:
            script = script_dir / script
        return PacedReplayClient(load_replay_script(script), delay=llm.delay)
    if llm.provider in ("embedded", "vllm") and base_url is None:
        raise RuntimeError(f"the {llm.provider} model is not being served")
    if llm.provider == "embedded":
        return LlamaCppBridgeClient(model=name, base_url=base_url, api_key=api_key or "physflow-local",
                                    model_info=LOCAL_MODEL_INFO, **common)
    remember(api_key)  # the per-campaign key of a server physflow started
    if llm.provider == "vllm" and api_key:
        return VllmGuidedClient(model=name, base_url=base_url, api_key=api_key, model_info=LOCAL_MODEL_INFO,
                                **common)
    key = os.environ.get(llm.api_key_env, "") if llm.api_key_env else "physflow-none"
    if llm.api_key_env and not key:
        raise SpecError(f"environment variable {llm.api_key_env} (llm.api_key_env) is not set")
    remember(key if llm.api_key_env else None)
    kind = VllmGuidedClient if llm.provider == "vllm" else OpenAICompatibleClient
    return kind(model=name, base_url=base_url or llm.base_url, api_key=key, model_info=LOCAL_MODEL_INFO, **common)
