"""Shared fixtures: workflow files written into a temporary folder, and the physflow CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "workflows" / "examples"


#: The smallest workflow that runs: the optimizer alone, an executable ``sim.py`` beside it that
#: writes ``result.json`` with a ``loss``, two simulations.
TINY_WORKFLOW = """\
physflow: 1
name: tiny
goal: find x
agents: {planner: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {x}"
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 2, max_concurrent: 2, wall_time: 5m}
"""


#: A heat2d campaign steered by AutoGen's replay model: the planner's script planner.jsonl, the
#: critic's critic.jsonl, no expert and no coder; eight simulations in four rounds, no backfill.
HEAT_REPLAY = """\
physflow: 1
name: heat-replay
goal: Which kappa and power reproduce the observed field?
llm: {provider: replay, script: planner.jsonl}
agents:
  critic: {script: critic.jsonl}
  domain_expert: {enabled: false}
  coder: {enabled: false}
simulation:
  adapter: heat2d
  resources: {ranks: 2, nodes: 1}
  fixed: {n: 96, t_end: 0.05}
  parameters:
    kappa: {min: 0.05, max: 1.0, units: m^2/s}
    power: {min: 5, max: 60, units: K/s}
objective: {metric: chi2, target: data/heat2d_target.h5}
budget: {max_simulations: 8, max_concurrent: 2, max_rounds: 4, wall_time: 5m, backfill: none}
"""

#: The executable ``sim.py {x}``, its replay planner taking 60 s a turn, the optimizer's backfill
#: beside it and a tolerance any result reaches: the first result stops the planner's first turn.
X_STOPPED = """\
physflow: 1
name: stopped-turn
goal: find x
llm: {provider: replay, script: planner.jsonl, delay: 60}
agents: {domain_expert: {enabled: false}, coder: {enabled: false}, critic: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {x}"
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss, tolerance: 10.0}
budget: {max_simulations: 6, max_concurrent: 2, wall_time: 5m, backfill: optimizer}
"""


#: The executable ``sim.py {x}`` steered by a replay planner alone (planner.jsonl); set ``budget``.
X_REPLAY = """\
physflow: 1
name: x-replay
goal: find x
llm: {{provider: replay, script: planner.jsonl}}
agents: {{domain_expert: {{enabled: false}}, coder: {{enabled: false}}, critic: {{enabled: false}}}}
simulation:
  adapter: executable
  command: "{{python}} {{workflow_dir}}/sim.py {{x}}"
  parameters: {{x: {{min: 0, max: 1}}}}
objective: {{metric: loss}}
budget: {budget}
"""


@pytest.fixture
def heat_workflow(tmp_path: Path):
    """Write a heat2d workflow (with the shipped target) into tmp_path; returns a writer."""
    (tmp_path / "data").mkdir()
    shutil.copy(EXAMPLES / "data" / "heat2d_target.h5", tmp_path / "data" / "heat2d_target.h5")

    def write(body: str, name: str = "wf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return path

    return write


def physflow(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
             stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "physflow", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, input=stdin)


def submit_folder(folder: Path, files: dict[str, str] | None = None) -> tuple[Path, subprocess.CompletedProcess]:
    """Write ``files`` (name -> text) into ``folder`` and submit its wf.yaml into ``folder/run``."""
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    run = folder / "run"
    return run, physflow("submit", str(folder / "wf.yaml"), "--run-dir", str(run), cwd=folder)


def results_of(run: Path) -> list[dict]:
    """``physflow results RUN --json``: one dict per task."""
    return json.loads(physflow("results", str(run), "--json").stdout)


def write_script(path: Path, lines: list) -> Path:
    """A replay model script: one JSON value per line."""
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


class ChatCompletions(BaseHTTPRequestHandler):
    """The base of the tests' OpenAI-compatible servers: ``reply`` answers a chat completion with
    ``content``, ``send`` any JSON payload; subclasses decide what to answer in ``do_POST``."""

    def reply(self, model: str, content: str, prompt_tokens: int = 40, completion_tokens: int = 8) -> None:
        self.send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}})

    def send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass
