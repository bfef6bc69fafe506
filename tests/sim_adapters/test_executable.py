"""The executable and python adapters: any program or function, parameters in, metrics out."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from physflow.dispatch.payload import execute
from physflow.errors import AdapterError, ProposalError, SpecError
from physflow.sim_adapters import get_adapter
from physflow.vocabulary.workflow import load_workflow

SIM = """\
import argparse, json, sys
p = argparse.ArgumentParser()
p.add_argument("--alpha", type=float); p.add_argument("--beta", type=float); p.add_argument("--label")
a = p.parse_args()
if a.alpha > 0.9:
    print("alpha too large for this model", file=sys.stderr); sys.exit(3)
json.dump({"loss": (a.alpha - 0.3) ** 2 + (a.beta - 1) ** 2, "series": [a.alpha, a.beta], "label": a.label},
          open("result.json", "w"))
"""

WORKFLOW = """\
physflow: 1
name: exe
goal: minimise the loss
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py --alpha {alpha} --beta {beta} --label {label}"
  fixed: {label: "x; touch PWNED $(id) `id`"}
  outputs: {format: json, path: result.json}
  parameters: {alpha: {min: 0, max: 1}, beta: {min: -2, max: 2}}
objective: {metric: loss}
"""


@pytest.fixture
def exe(tmp_path):
    (tmp_path / "sim.py").write_text(SIM)
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    return get_adapter(load_workflow(tmp_path / "wf.yaml")), tmp_path


def test_parameters_are_single_arguments_never_shell(exe):
    adapter, folder = exe
    spec = adapter.build_task("t0", {"alpha": 0.5, "beta": -1.0}, folder / "t0")
    assert spec.argv[0] == sys.executable
    assert spec.argv[1] == f"{folder}/sim.py"
    assert spec.argv[-1] == "x; touch PWNED $(id) `id`"  # one argument, verbatim
    outcome = execute(spec.to_dict())
    assert outcome["returncode"] == 0, outcome
    assert not (folder / "t0" / "PWNED").exists() and not list(folder.rglob("PWNED"))
    result = json.loads((folder / "t0" / "result.json").read_text())
    assert result["label"] == "x; touch PWNED $(id) `id`"
    out = adapter.parse_outputs(folder / "t0", outcome)
    assert out.metrics == {"loss": pytest.approx(0.04 + 4.0)}
    assert list(out.arrays["series"].values) == [0.5, -1.0]


def test_failing_program_reports_exit_code_and_stderr(exe):
    adapter, folder = exe
    outcome = execute(adapter.build_task("t1", {"alpha": 0.95, "beta": 0.0}, folder / "t1").to_dict())
    assert outcome["returncode"] == 3
    assert "alpha too large" in outcome["stderr_tail"]
    with pytest.raises(AdapterError, match="did not write result.json"):
        adapter.parse_outputs(folder / "t1", outcome)


def test_walltime_kills_the_program(tmp_path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("--label {label}", "")
                                      .replace('fixed: {label: "x; touch PWNED $(id) `id`"}',
                                               "walltime: 1s"))
    (tmp_path / "sim.py").write_text("import time; time.sleep(60)")
    adapter = get_adapter(load_workflow(tmp_path / "wf.yaml"))
    outcome = execute(adapter.build_task("t", {"alpha": 0.1, "beta": 0.1}, tmp_path / "t").to_dict())
    assert outcome["timed_out"] and outcome["returncode"] == 124
    assert outcome["finished"] - outcome["started"] < 10


@pytest.mark.parametrize("params,words", [
    ({"alpha": 1.5, "beta": 0}, "alpha=1.5 is outside [0.0, 1.0]"),
    ({"alpha": float("nan"), "beta": 0}, "not finite"),
    ({"alpha": "0.5", "beta": 0}, "not a number"),
    ({"alpha": 0.5}, "beta is missing"),
    ({"alpha": 0.5, "beta": 0, "gamma": 1}, "unknown parameter(s) gamma"),
    ([0.5, 0], "must be an object"),
])
def test_proposals_are_rejected_never_clipped(exe, params, words):
    adapter, _ = exe
    with pytest.raises(ProposalError) as err:
        adapter.validate_params(params)
    assert words in str(err.value)


def test_unknown_placeholder_is_a_spec_error(tmp_path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("{beta} --label", "{gamma} --label"))
    with pytest.raises(SpecError) as err:
        get_adapter(load_workflow(tmp_path / "wf.yaml"))
    assert err.value.field == "simulation.command" and "{gamma}" in err.value.message and err.value.line == 6


def test_python_adapter_runs_a_function(tmp_path, monkeypatch):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""\
        import numpy as np
        def run(alpha, beta, scale=1.0):
            return {"loss": scale * (alpha - beta) ** 2, "profile": np.linspace(0, alpha, 4)}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "wf.yaml").write_text(textwrap.dedent("""\
        physflow: 1
        name: py
        goal: g
        simulation:
          adapter: python
          function: mymodel.run
          fixed: {scale: 2.0}
          parameters: {alpha: {min: 0, max: 1}, beta: {min: 0, max: 1}}
        objective: {metric: loss}
        """))
    adapter = get_adapter(load_workflow(tmp_path / "wf.yaml"))
    outcome = execute(adapter.build_task("t", {"alpha": 0.5, "beta": 0.25}, tmp_path / "t").to_dict())
    out = adapter.parse_outputs(tmp_path / "t", outcome)
    assert out.metrics["loss"] == pytest.approx(0.125)
    assert out.arrays["profile"].values[-1] == pytest.approx(0.5)
    (tmp_path / "wf.yaml").write_text((tmp_path / "wf.yaml").read_text().replace("mymodel.run", "mymodel.nope"))
    with pytest.raises(SpecError, match="has no function nope"):
        get_adapter(load_workflow(tmp_path / "wf.yaml"))
