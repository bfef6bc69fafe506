"""API keys come from the environment and go nowhere else: not the run directory, not the logs."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ChatCompletions, physflow
from tests.reliability.campaigns import SIM, record_figures

pytestmark = pytest.mark.reliability

WORKFLOW = """\
physflow: 1
name: keyed
goal: find x
llm: {{provider: openai, base_url: "{url}", model: local-test-model, api_key_env: PHYSFLOW_TEST_API_KEY}}
agents:
  domain_expert: {{enabled: false}}
  coder: {{enabled: false}}
  critic: {{enabled: false}}
simulation:
  adapter: executable
  command: "{{python}} {{workflow_dir}}/sim.py {{task_id}} {{x}}"
  parameters: {{x: {{min: 0, max: 1}}}}
objective: {{metric: loss}}
budget: {{max_simulations: 4, max_concurrent: 2, max_rounds: 2, wall_time: 5m, backfill: none}}
"""

PLAN = {"hypothesis": "the loss stays below 1 everywhere", "bound": "below", "value": 1.0,
        "simulations": ["A"]}


class OpenAIChat(ChatCompletions):
    """The one route of the OpenAI API a campaign uses, answering every turn with PLAN; it records the
    Authorization header and the tools offered of every request."""

    key = ""
    seen: list[str] = []
    tools: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        OpenAIChat.seen.append(self.headers.get("Authorization", ""))
        OpenAIChat.tools.update(t["function"]["name"] for t in body.get("tools", []))
        if self.headers.get("Authorization") != f"Bearer {OpenAIChat.key}":
            self.send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
            return
        self.reply(body["model"], json.dumps(PLAN), 50, 30)


def submit_against(handler: type[BaseHTTPRequestHandler], tmp_path: Path, key: str, workflow: str):
    """``physflow submit`` of ``workflow`` (its ``{url}`` filled) against a local server of ``handler``,
    the key in the environment; returns (the run folder, the finished process)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "wf.yaml").write_text(workflow.format(url=f"http://127.0.0.1:{server.server_address[1]}/v1"))
        (tmp_path / "sim.py").write_text(SIM)
        run = tmp_path / "run"
        return run, physflow("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(run), cwd=tmp_path,
                             env={"PHYSFLOW_TEST_API_KEY": key, "SIM_SECONDS": "0.05"})
    finally:
        server.shutdown()


def test_the_api_key_appears_in_no_file_of_the_run(tmp_path: Path):
    key = "sk-physflow-" + secrets.token_hex(16)
    OpenAIChat.key, OpenAIChat.seen, OpenAIChat.tools = key, [], set()
    run, proc = submit_against(OpenAIChat, tmp_path, key, WORKFLOW)
    assert proc.returncode == 0, proc.stderr
    assert OpenAIChat.seen and all(h == f"Bearer {key}" for h in OpenAIChat.seen)  # the key was used ...
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert rows and all(r["hypothesis"] == "H1" for r in rows)  # the model's hypothesis, through the server
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    assert [e["author"] for e in events if e["event"] == "hypothesis"] == ["planner"]

    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # run dir, parsl/ logs, task folders, ...
    assert any(p.parent.name == "parsl" or "parsl" in p.parts for p in files)
    leaks = [str(p) for p in files if key.encode() in p.read_bytes()]
    assert leaks == [] and key not in proc.stdout + proc.stderr, leaks  # ... and written nowhere
    record_figures("secrets", {"files_scanned": len(files), "requests_with_key": len(OpenAIChat.seen),
                               "leaks": len(leaks)})


class EchoingOpenAI(OpenAIChat):
    """A server that refuses every request and quotes the key it was sent in its error body, as
    some gateways do; it records every request body (what physflow sends back to the model)."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        EchoingOpenAI.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self.send(400, {"error": {"message": f"Incorrect API key provided: {key}",
                                  "type": "invalid_request_error", "code": "invalid_api_key"}})


def test_a_key_echoed_by_the_server_reaches_no_file_and_is_not_sent_back(tmp_path: Path):
    key = "sk-physflow-" + secrets.token_hex(16)
    EchoingOpenAI.bodies = []
    run, proc = submit_against(EchoingOpenAI, tmp_path, key, WORKFLOW.replace("max_rounds: 2", "max_rounds: 1"))
    assert proc.returncode == 0, proc.stderr  # the optimizer ran the round the model could not plan
    assert len(EchoingOpenAI.bodies) >= 2  # the model was asked again after the error
    assert not any(key.encode() in body for body in EchoingOpenAI.bodies)  # the echo never went back
    transcript = (run / "transcript.jsonl").read_text()
    assert "Incorrect API key provided: [redacted]" in transcript
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaks == [] and key not in proc.stdout + proc.stderr, leaks
