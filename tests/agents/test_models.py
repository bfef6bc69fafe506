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
