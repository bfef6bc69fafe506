"""``llm.qualify.min_score``: submit qualifies the model first and refuses a campaign below it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from physflow.agents.advisor import LETTERS
from physflow.agents.qualify import build_questions
from physflow.vocabulary.workflow import load_workflow
from tests.conftest import physflow, results_of, write_script
from tests.reliability.campaigns import SIM, planner_rounds

WORKFLOW = """\
physflow: 1
name: gated
goal: find the x with the smallest loss
llm:
  provider: replay
  script: planner.jsonl
  qualify: {min_score: 0.5, categories: [steering, tool], script: qualify.jsonl}
agents: {domain_expert: {enabled: false}, coder: {enabled: false}, critic: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {task_id} {x}"
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 2, max_concurrent: 2, max_rounds: 1, wall_time: 5m, backfill: none}
"""


def cache(tmp_path: Path) -> dict[str, str]:
    """The environment that keeps the model's record out of the user's cache."""
    return {"SIM_SECONDS": "0.05", "PHYSFLOW_MODEL_CACHE": str(tmp_path / "cache" / "models")}


def gated_folder(tmp_path: Path, right: bool) -> Path:
    """The workflow, its simulation and planner, and a qualify script that answers every question
    of the gate right, or picks a letter one past the right one (always wrong)."""
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    write_script(tmp_path / "planner.jsonl", planner_rounds(1))
    questions = build_questions(load_workflow(tmp_path / "wf.yaml").spec, ["steering", "tool"])
    replies = []
    for q in questions:
        if right:
            replies.append({"content": q.key})
        elif "choice" in q.key:
            replies.append({"content": {"choice": LETTERS[(LETTERS.index(q.key["choice"]) + 1) % 4]}})
        else:
            replies.append({"content": {"tool": "make_plot" if q.key["tool"] != "make_plot" else "query_results"}})
    write_script(tmp_path / "qualify.jsonl", replies)
    return tmp_path / "wf.yaml"


def test_a_model_below_min_score_is_refused_before_any_simulation(tmp_path):
    wf = gated_folder(tmp_path, right=False)
    run = tmp_path / "run"
    proc = physflow("submit", str(wf), "--run-dir", str(run), cwd=tmp_path, env=cache(tmp_path), timeout=300)
    assert proc.returncode == 1, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "scored 0.00 on qualify, below llm.qualify.min_score 0.5" in error[0], error
    assert proc.stdout.strip().splitlines()[-1] == str(run)
    data = json.loads((run / "qualify.json").read_text())  # the run folder keeps the scores
    assert set(data["categories"]) == {"steering", "tool"} and data["overall"] == 0.0
    assert not (tmp_path / "executions.log").exists()  # nothing ran
    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "failed" and "refused" in status["reason"]
    # resume asks again (the model may have been fixed) and refuses again: no campaign starts unqualified
    again = physflow("resume", str(run), cwd=tmp_path, env=cache(tmp_path), timeout=300)
    assert again.returncode == 1 and "below llm.qualify.min_score" in again.stderr
    assert not (tmp_path / "executions.log").exists()


def test_a_qualified_model_runs_its_campaign_and_the_run_keeps_its_scores(tmp_path):
    wf = gated_folder(tmp_path, right=True)
    run = tmp_path / "run"
    proc = physflow("submit", str(wf), "--run-dir", str(run), cwd=tmp_path, env=cache(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "qualify: overall 1.00 (tool 1.00, steering 1.00)" in proc.stderr
    assert json.loads((run / "qualify.json").read_text())["overall"] == 1.0
    assert len(list((tmp_path / "cache" / "qualify").glob("replay_qualify.jsonl-*.json"))) == 1
    rows = results_of(run)
    assert len(rows) == 2 and all(r["hypothesis"] == "H1" for r in rows)
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    (h1,) = [e for e in events if e["event"] == "hypothesis"]
    assert h1["author"] == "planner" and h1["share"] == pytest.approx(0.3)  # its steering score, 1.0, is the prior
