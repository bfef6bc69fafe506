"""The llama.cpp bridge: what reaches the embedded model's grammar stays small enough to use."""

from __future__ import annotations

import json

from llama_cpp.llama_grammar import LlamaGrammar

from physflow.agents.models import grammar_schema, tool_choice_schema
from physflow.agents.team import OUTPUTS, proposal_model
from physflow.vocabulary.workflow import ParameterSpec


def test_long_length_bounds_leave_the_grammar_but_short_ones_stay():
    schema = {"type": "object", "properties": {"code": {"type": "string", "maxLength": 4000},
                                               "tag": {"type": "string", "maxLength": 8}}}
    out = grammar_schema(schema)
    assert "maxLength" not in out["properties"]["code"] and out["properties"]["tag"]["maxLength"] == 8
    assert schema["properties"]["code"]["maxLength"] == 4000  # the validated schema is not touched


def test_every_reply_the_team_asks_for_makes_a_compact_grammar():
    # A 4000-character bound once produced a 35 kB grammar that the llama.cpp server refused and
    # died on; every structured reply (alone, and as the answer beside a tool call) stays small.
    planner = proposal_model({"omega_m": ParameterSpec(min=0.1, max=0.5)}, 8)
    tool = {"name": "suggest_parameters", "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}}
    for model in (planner, *OUTPUTS.values()):
        for schema in (model.model_json_schema(), tool_choice_schema([tool], model.model_json_schema())):
            grammar = LlamaGrammar.from_json_schema(json.dumps(grammar_schema(schema)))._grammar
            assert len(grammar) < 6000, (model.__name__, len(grammar))


def _recording_server(reply: str):
    """An HTTP server speaking the one route of vLLM's OpenAI API the client uses, answering
    ``reply`` and keeping each request body (vLLM itself cannot run here: no GPU)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            model = bodies[-1]["model"]
            out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model, "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, bodies


def test_vllm_turns_are_one_schema_guided_reply_never_a_native_tool_call():
    """vLLM's own tool calls hang on a parser matching the model (vllm #11903) and may not come
    with tool_choice auto (#21840): physflow asks the choice as a json_schema response format,
    which vLLM's guided decoding enforces, and sends no ``tools`` at all."""
    import asyncio

    from autogen_core import FunctionCall
    from autogen_core.models import UserMessage
    from autogen_core.tools import FunctionTool

    from physflow.agents.models import make_client
    from physflow.vocabulary.workflow import LLMSpec

    def suggest_parameters(n: int = 2) -> str:
        """Ask the optimizer for n points."""
        return ""

    server, bodies = _recording_server('{"tool": "suggest_parameters", "arguments": {"n": 3}}')
    try:
        client = make_client(LLMSpec(provider="vllm", model="Qwen/Qwen2.5-72B-Instruct"),
                             base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="k")
        planner = proposal_model({"omega_m": ParameterSpec(min=0.1, max=0.5)}, 4)
        result = asyncio.run(client.create([UserMessage(content="next?", source="user")],
                                           tools=[FunctionTool(suggest_parameters, "Ask the optimizer.")],
                                           json_output=planner))
    finally:
        server.shutdown()
    (body,) = bodies
    assert "tools" not in body and "tool_choice" not in body
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "reply"
    options = fmt["json_schema"]["schema"]["anyOf"]
    assert options[0]["properties"]["tool"] == {"const": "suggest_parameters"}
    assert "answer" in options[-1]["properties"]  # the planner's reply, as the other choice
    assert isinstance(result.content, list) and isinstance(result.content[0], FunctionCall)
    assert json.loads(result.content[0].arguments) == {"n": 3}
