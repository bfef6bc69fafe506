"""A full campaign with the embedded llama.cpp model: the real server, real tokens, real MPI."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request

import pytest

from tests.conftest import EXAMPLES, physflow


@pytest.mark.slow
def test_embedded_model_campaign_end_to_end(tmp_path):
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    text = (EXAMPLES / "heat2d.yaml").read_text()
    # no backfill: the budget waits for the model's proposals (with backfill a 135M model's first
    # turn can outlast the whole budget, and the turn is stopped unanswered)
    text = text.replace("max_simulations: 24", "max_simulations: 10").replace("max_rounds: 6", "max_rounds: 3")
    text = text.replace("backfill: optimizer", "backfill: none")
    (tmp_path / "wf.yaml").write_text(text)
    run = tmp_path / "run"
    proc = physflow("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(run), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run)
    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "finished"
    assert status["tokens"] > 0  # the model really answered
    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    assert any(t["agent"] == "planner" and t.get("completion_tokens", 0) > 0 for t in transcript)
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert 1 <= len(rows) <= 10 and any(r["status"] == "finished" for r in rows)
    # the server physflow started is stopped at the end: nothing listens on its port any more
    url = json.loads((run / "run.json").read_text())["llm_base_url"]
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/models", timeout=5)


@pytest.mark.slow
def test_the_default_embedded_model_runs_a_campaign(tmp_path):
    """A workflow that names no model gets Qwen2.5-Coder-1.5B, served from its joined parts: it states
    the hypotheses (grammar-constrained claims, checked against the bounds), picks among the optimizer's
    candidates once the surrogate predicts, and every simulation runs under a hypothesis judged by the numbers."""
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    text = (EXAMPLES / "heat2d.yaml").read_text().replace("  model: smollm2-135m-instruct\n", "")
    text = text.replace("max_simulations: 24", "max_simulations: 6").replace("max_rounds: 6", "max_rounds: 3")
    text = text.replace("max_concurrent: 2", "max_concurrent: 1").replace("backfill: optimizer", "backfill: none")
    text += "agents: {domain_expert: {enabled: false}, critic: {enabled: false}, coder: {enabled: false}}\n"
    (tmp_path / "wf.yaml").write_text(text)
    run = tmp_path / "run"
    proc = physflow("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(run), cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert "model embedded:qwen2.5-coder-1.5b-instruct" in proc.stderr
    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    assert any(t["agent"] == "planner" and t.get("completion_tokens", 0) > 0 for t in transcript)
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert rows and all(r["source"] in ("planner", "optimizer") and r["hypothesis"] for r in rows), rows
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    hypotheses = [e for e in events if e["event"] == "hypothesis"]
    assert len(hypotheses) >= 2 and any(h["author"] == "planner" for h in hypotheses), hypotheses
    for h in hypotheses:
        assert all(p["place"] is None or 0 <= p["place"] < p["shown"] for p in h["picks"])
    assert "**Steering.**" in (run / "report.md").read_text()


def _tool_calls(transcript: list[dict]) -> set[str]:
    """Names of the tools the agents really called (requests, and physflow running the coder's code)."""
    names = set()
    for t in transcript:
        if t.get("type") == "ToolCallRequestEvent":
            names.update(re.findall(r"name='(\w+)'", " ".join(map(str, t["content"]))))
        elif t.get("type") == "tool_result" and t.get("tool"):
            names.add(t["tool"])
    return names


@pytest.mark.slow
def test_embedded_small_model_cosmology_campaign_is_sent_back_and_never_stalls(tmp_path):
    """The demo's cosmology problem with the 135M model and no backfill: its claims (measured: values
    beyond the bounds, the template's words copied) are sent back with the reason, physflow's own
    hypothesis stands in, every simulation runs under one, and the coder is asked the goal at the end."""
    for folder in ("data", "knowledge"):
        shutil.copytree(EXAMPLES / folder, tmp_path / folder)
    text = (EXAMPLES / "cosmology.yaml").read_text()
    text = text.replace("provider: embedded\n", "provider: embedded\n  model: smollm2-135m\n")
    text = text.replace("tolerance: 0.1", "tolerance: 0.001")
    text = re.sub(r"budget: \{.*\}", "budget: {max_simulations: 6, max_concurrent: 2, max_rounds: 2, "
                  "wall_time: 15m, backfill: none}", text)
    (tmp_path / "wf.yaml").write_text(text)
    run = tmp_path / "run"
    proc = physflow("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(run), cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    spoke = {t["agent"] for t in transcript if t.get("completion_tokens", 0) > 0}
    assert {"planner", "coder"} <= spoke, spoke
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    hypotheses = [e for e in events if e["event"] == "hypothesis"]
    assert hypotheses and all(e["author"] in ("planner", "optimizer") for e in hypotheses)
    if any(e["author"] == "planner" for e in hypotheses):  # a valid claim is reviewed against passages physflow found
        assert "domain_expert" in spoke and "search_knowledge" in _tool_calls(transcript)
    if any(e["author"] == "optimizer" for e in hypotheses):  # the model's claims went back with the reason
        assert any(t["type"] == "rejected" and t.get("to") == "planner" for t in transcript)
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert rows and all(r["source"] != "backfill" and r["hypothesis"] for r in rows)
    assert any(t["type"] == "task" and t.get("to") == "coder" and "Which combination of omega_m and sigma8"
               in str(t["content"]) for t in transcript)  # the workflow's conclusion: asked at the end


def test_approval_without_terminal_is_refused(tmp_path):
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    text = (EXAMPLES / "heat2d.yaml").read_text().replace("approval: auto", "approval: plan")
    (tmp_path / "wf.yaml").write_text(text)
    proc = physflow("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(tmp_path / "run"), stdin="")
    assert proc.returncode == 2
    assert "no terminal" in proc.stderr and "--yes" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
