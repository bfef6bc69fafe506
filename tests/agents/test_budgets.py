"""Token budgets are enforced: a spent campaign budget silences the agents (the optimizer goes on),
a spent per-agent budget silences that agent alone; both are reported."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import physflow, write_script

WORKFLOW = """\
physflow: 1
name: budgets
goal: find the x that minimises the loss
llm: {{provider: replay, script: planner.jsonl, max_tokens_total: {total}}}
agents:
  domain_expert: {{enabled: false}}
  coder: {{enabled: false}}
  critic: {{script: critic.jsonl, max_tokens: {critic}}}
simulation:
  adapter: executable
  command: "{{python}} {{workflow_dir}}/sim.py {{x}}"
  outputs: {{format: json, path: result.json}}
  parameters: {{x: {{min: 0, max: 1}}}}
objective: {{metric: loss}}
budget: {{max_simulations: 6, max_concurrent: 2, max_rounds: 3, wall_time: 5m, backfill: none}}
"""

SIM = "import json, sys\njson.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n"
PROPOSAL = {"hypothesis": "The loss stays below 1 over the whole range.", "bound": "below", "value": 1.0,
            "simulations": ["A"]}
VERDICT = {"verdict": "supported", "evidence": "loss 0 at x = 0.3", "advice": "", "analysis": ""}


def campaign(tmp_path: Path, total: int, critic: int) -> tuple[list[dict], list[dict], dict]:
    (tmp_path / "wf.yaml").write_text(WORKFLOW.format(total=total, critic=critic))
    (tmp_path / "sim.py").write_text(SIM)
    write_script(tmp_path / "planner.jsonl", [{"content": PROPOSAL}] * 3)
    write_script(tmp_path / "critic.jsonl", [{"content": VERDICT}] * 3)
    run = tmp_path / "run"
    proc = physflow("submit", "wf.yaml", "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    authors = [e["author"] for e in events if e["event"] == "hypothesis"]
    return rows, transcript, {**json.loads(physflow("status", str(run), "--json").stdout), "authors": authors}


def test_spent_campaign_budget_silences_the_agents_and_the_optimizer_goes_on(tmp_path: Path):
    rows, transcript, status = campaign(tmp_path, total=1, critic=100_000)
    planner_turns = [t for t in transcript if t["type"] == "task" and t.get("to") == "planner"]
    assert len(planner_turns) == 1  # its first turn spent the budget; no second turn was asked
    assert len(rows) == 6 and [r["hypothesis"] for r in rows] == ["H1"] * 4 + ["H2"] * 2
    assert status["authors"] == ["planner", "optimizer"]  # H2: the surrogate's claim, the model silenced
    assert any(t["type"] == "fallback" and "token budget spent" in t["content"] for t in transcript)
    assert 0 < status["tokens"]
    assert "| total |" in (tmp_path / "run" / "report.md").read_text()


def test_spent_agent_budget_silences_that_agent_only(tmp_path: Path):
    rows, transcript, status = campaign(tmp_path, total=1_000_000, critic=1)
    critic_turns = [t for t in transcript if t["type"] == "task" and t.get("to") == "critic"]
    planner_turns = [t for t in transcript if t["type"] == "task" and t.get("to") == "planner"]
    assert len(critic_turns) == 1 and len(planner_turns) >= 2
    assert status["authors"] == ["planner", "planner"] and len(rows) == 6
