"""physflow validate: good files pass; every bad file gives one located line and exit 2."""

from __future__ import annotations

import json

import pytest

from physflow.errors import SpecError
from physflow.vocabulary.workflow import json_schema, parse_duration
from physflow.workflows.validate import check_workflow
from tests.conftest import EXAMPLES, physflow

GOOD = """\
physflow: 1
name: demo
goal: find kappa
site: local
llm: {provider: embedded}
simulation:
  adapter: heat2d
  resources: {ranks: 2, nodes: 1}
  parameters:
    kappa: {min: 0.05, max: 1.0}
    power: {min: 5, max: 60}
objective: {metric: chi2, target: data/heat2d_target.h5, tolerance: 1.5}
budget: {max_simulations: 4, max_concurrent: 2, wall_time: 10m}
"""


def test_shipped_example_validates():
    check_workflow(EXAMPLES / "heat2d.yaml")


def test_good_workflow_fills_defaults(heat_workflow):
    checked = check_workflow(heat_workflow(GOOD))
    spec = checked.workflow.spec
    assert spec.llm.model == "qwen2.5-coder-1.5b-instruct"  # the embedded default
    assert spec.budget.wall_time == 600.0
    assert spec.budget.backfill == "optimizer"
    assert spec.approval == "auto"


@pytest.mark.parametrize("old,new,line,field,words", [
    ("  resources: {ranks: 2, nodes: 1}\n", "  resources: {ranks: 2, nodes: 1}\n  colour: red\n", 9,
     "simulation.colour", "unknown key"),
    ("kappa: {min: 0.05, max: 1.0}", "kappa: {min: 1.0, max: 0.05}", 10, "simulation.parameters.kappa",
     "smaller"),
    ("kappa: {min: 0.05, max: 1.0}", "kappa: {min: 0.05, max: .inf}", 10, "simulation.parameters.kappa",
     "finite"),
    ("adapter: heat2d", "adapter: nosuch", 7, "simulation.adapter", "unknown adapter"),
    ("metric: chi2", "metric: chi3", 12, "objective.metric", "does not report"),
    ("target: data/heat2d_target.h5", "target: data/missing.h5", 12, "objective.target", "file not found"),
    ("site: local", "site: nowhere", 4, "site", "unknown site"),
    ("max_concurrent: 2", "max_concurrent: two", 13, "budget.max_concurrent", "integer"),
    ("wall_time: 10m", "wall_time: soon", 13, "budget.wall_time", "duration"),
    ("nodes: 1}", "nodes: 4}", 8, "simulation.resources.nodes", "do not fit"),
    ("physflow: 1", "physflow: 2", 1, "physflow", "1"),
    ("llm: {provider: embedded}", "llm: {provider: openai}", 5, "llm", "base_url"),
])
def test_bad_workflow_names_file_line_field(heat_workflow, old, new, line, field, words):
    path = heat_workflow(GOOD.replace(old, new))
    with pytest.raises(SpecError) as err:
        check_workflow(path)
    assert err.value.line == line, err.value.one_line()
    assert err.value.field == field
    assert words in err.value.message
    assert err.value.one_line().startswith(f"{path}:{line}: {field}: ")


def test_invalid_yaml_and_duplicate_keys(heat_workflow):
    with pytest.raises(SpecError) as err:
        check_workflow(heat_workflow(GOOD.replace("goal: find kappa", "goal: [unclosed")))
    assert "invalid YAML" in err.value.message and err.value.line
    with pytest.raises(SpecError) as err:
        check_workflow(heat_workflow(GOOD + "name: again\n"))
    assert err.value.field == "name" and "duplicate" in err.value.message


def test_cli_validate_prints_one_line_and_exits_2(heat_workflow):
    ok = physflow("validate", str(heat_workflow(GOOD)))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok"
    path = heat_workflow(GOOD.replace("max: 60", "max: 60, step: 2"))
    bad = physflow("validate", str(path))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip() == f"error: {path}:11: simulation.parameters.power.step: unknown key"
    missing = physflow("validate", str(path.parent / "nope.yaml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr and "Traceback" not in missing.stderr


def test_schema_is_json_schema_of_the_spec():
    out = physflow("schema")
    schema = json.loads(out.stdout)
    assert schema == json.loads(json.dumps(json_schema()))
    assert set(schema["required"]) >= {"physflow", "name", "goal", "simulation", "objective"}
    assert schema["additionalProperties"] is False


def test_durations():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration(90) == 90
    for bad in ("", "-5", "soon", 0, True):
        with pytest.raises(ValueError):
            parse_duration(bad)
