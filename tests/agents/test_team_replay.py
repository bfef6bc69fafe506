"""The whole team with scripted models: every role, every tool and every error path of model output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import X_REPLAY, physflow, submit_folder, write_script

WORKFLOW = """\
physflow: 1
name: team-replay
goal: Which kappa and power reproduce the observed field?
llm: {provider: replay, script: planner.jsonl}
agents:
  planner: {tools: [query_results, suggest_parameters]}
  domain_expert: {script: expert.jsonl}
  critic: {script: critic.jsonl}
  coder: {script: coder.jsonl}
knowledge: [notes]
conclusion: Print the kappa of the best finished simulation.
simulation:
  adapter: heat2d
  resources: {ranks: 2, nodes: 1}
  fixed: {n: 96, t_end: 0.05}
  parameters:
    kappa: {min: 0.05, max: 1.0, units: m^2/s}
    power: {min: 5, max: 60, units: K/s}
objective: {metric: chi2, target: data/heat2d_target.h5}
budget: {max_simulations: 6, max_concurrent: 2, max_rounds: 3, wall_time: 5m, backfill: none}
"""

H1 = {"hypothesis": "Diffusivity near 0.4 m^2/s matches the field.", "bound": "below", "value": 1e6,
      "simulations": ["A"]}


def test_every_role_and_tool_and_error_path(heat_workflow, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "heat.md").write_text(
        "# Thermal diffusivity\n\nMetals have thermal diffusivity between 1e-5 and 1e-4 m^2/s;\n"
        "this plate model is in scaled units where kappa of order 0.1 to 1 is expected.\n\n"
        "# Sources\n\nThe heating rate scales the amplitude of the field linearly.\n")
    write_script(tmp_path / "planner.jsonl", [
        {"tool": "no_such_tool", "arguments": {}},                                    # hallucinated tool
        '{"hypothesis": "cut off at max_to',                                          # truncated JSON
        {"content": {**H1, "simulations": ["A", "F"]}},                                 # no such simulation
        {"content": H1},
        {"content": {**H1, "hypothesis": "Diffusivity 0.35-0.42 m^2/s at power near 30 K/s."}},  # restated
        {"tool": "suggest_parameters", "arguments": {"n": "many"}},                   # malformed arguments
        {"content": {**H1, "value": "low"}},
        {"content": {**H1, "hypothesis": ""}},
        {"content": {**H1, "region": {"kappa": [-1, 0.5]}}},                          # a key of its own
    ])
    write_script(tmp_path / "expert.jsonl", [
        {"content": {"sound": False, "concerns": "kappa 0.3 is far from the expected range; test nearer 0.4",
                     "citations": ["heat.md:3", "Smith et al. 2031"]}},                # one invented
    ])
    write_script(tmp_path / "critic.jsonl", [
        {"tool": "make_plot", "arguments": {"x": "kappa", "y": "chi2", "color": "power"}},
        {"tool": "query_results", "arguments": {"limit": 3}},
        {"content": {"verdict": "supported", "evidence": "chi2 ~ 1 at kappa 0.42", "advice": "stop soon",
                     "analysis": "mean chi2 of the finished simulations"}},
    ])
    write_script(tmp_path / "coder.jsonl", [
        {"content": {"purpose": "mean chi2", "code": "import os\nos.system('echo escaped')"}},   # violation
        {"content": {"purpose": "mean chi2", "code": "import numpy as np\nprint('mean chi2 =', round(float("
                     "np.mean([r['metrics']['chi2'] for r in results if r['status'] == 'finished'])), 3))"}},
        {"content": {"purpose": "the answer", "code": "best = min((r for r in results if r['status'] == 'finished'), "
                     "key=lambda r: r['metrics']['chi2'])\nprint('best kappa =', round(best['params']['kappa'], 4))"}},
    ])
    run = tmp_path / "run"
    proc = physflow("submit", str(heat_workflow(WORKFLOW)), "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 6 and all(r["status"] == "finished" for r in rows)
    assert [r["hypothesis"] for r in rows] == ["H1"] * 4 + ["H2"] * 2  # every simulation under a hypothesis
    assert {r["source"] for r in rows} == {"optimizer"}  # too few results for a surrogate: no picks

    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    text = json.dumps(transcript)
    calls = {c for t in transcript if t["type"] == "ToolCallRequestEvent" for c in t["content"]}
    for tool in ("no_such_tool", "suggest_parameters", "make_plot", "query_results"):
        assert any(f"name='{tool}'" in c for c in calls), tool
    searched = [t for t in transcript if t["type"] == "tool_result" and t.get("tool") == "search_knowledge"]
    assert searched and "[heat.md:" in searched[0]["content"]  # physflow searched for the expert
    assert "simulations.1: Input should be 'A', 'B', 'C' or 'D'" in text   # sent back
    assert "region: Extra inputs are not permitted" in text
    assert "heat.md:3" in text                                           # a cited knowledge passage
    coder_runs = [t for t in transcript if t["type"] == "tool_result" and t["tool"] == "run_analysis_code"]
    assert "SANDBOX VIOLATION" in coder_runs[0]["content"] and "mean chi2 =" in coder_runs[1]["content"]
    assert any(t["type"] == "sandbox" and "isolation" in t["content"] for t in transcript)
    planner_errors = [t for t in transcript if t["agent"] == "planner" and t["type"] == "error"]
    assert len(planner_errors) >= 2 and any(t["type"] == "fallback" for t in transcript)
    assert {t["agent"] for t in transcript} >= {"planner", "domain_expert", "critic", "coder"}

    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    hyp = next(e for e in events if e["event"] == "hypothesis")
    assert hyp["statement"] == "Diffusivity 0.35-0.42 m^2/s at power near 30 K/s."  # restated after the review
    assert hyp["review"]["sound"] is False and hyp["review"]["citations"] == ["heat.md:3"]
    assert hyp["unverified_citations"] == ["Smith et al. 2031"]  # not returned by search_knowledge

    shown = physflow("transcript", str(run), "--agent", "critic").stdout
    assert "tool call" in shown and "make_plot" in shown and "planner" not in shown
    assert "tokens: critic" in shown
    verdict = next(e for e in events if e["event"] == "verdict")
    assert verdict["verdict"] == "supported" and "mean chi2 =" in verdict["analysis"]
    assert verdict["reasoning"] == "chi2 ~ 1 at kappa 0.42" and verdict["critic_refused"] is None
    tokens = {e["agent"] for e in events if e["event"] == "tokens"}
    assert tokens >= {"planner", "domain_expert", "critic", "coder"}
    assert (run / "plots" / "chi2_vs_kappa_by_power.png").stat().st_size > 1000
    # the campaign's answer: the coder's code over every result, run in the sandbox, stated with the code
    conclusion = next(e for e in events if e["event"] == "conclusion")
    best = min((r for r in rows), key=lambda r: r["metrics"]["chi2"])
    assert conclusion["ok"] and conclusion["output"].strip() == f"best kappa = {round(best['params']['kappa'], 4)}"
    report = (run / "report.md").read_text()
    assert "## Conclusion" in report and conclusion["output"].strip() in report and "key=lambda r" in report


CORPUS_WORKFLOW = X_REPLAY.format(budget="{max_simulations: 24, max_concurrent: 2, max_rounds: 12, wall_time: 5m, "
                                         "backfill: none}")

CORPUS_SIM = "import json, sys\njson.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n"


def _claim(**fields) -> str:
    """One planner reply as raw text (json.dumps writes NaN and Infinity as the bare words a model might)."""
    return json.dumps({"content": json.dumps({"hypothesis": "h", "bound": "below", "value": 0.01,
                                              "simulations": ["A"], **fields})})


def test_a_corpus_of_malformed_model_outputs_never_runs_a_bad_simulation(tmp_path):
    """What test_every_role_and_tool_and_error_path does not cover: non-finite and non-numeric
    values, shell text, wrong shapes, huge replies, JSON cut mid-number, letters that name no candidate.
    The first six go to round 1 and 2 (no surrogate yet, so no pick asks for a letter); their reasons are
    checked one by one; what follows meets picks and claims in whatever order the campaign asks."""
    sentinel = tmp_path / "pwned"
    corpus = [
        _claim(value=float("nan")), _claim(value=float("inf")), _claim(value="0.5"),
        _claim(region={"x": [0.0, 1.0]}), _claim(value=True), _claim(simulations=[]),
        json.dumps({"content": '{"hypothesis": "h", "bound": "below", "value": 1e999, "simulations": ["A"]}'}),
        _claim(value=f"$(touch {sentinel})"), _claim(simulations="A"), _claim(simulations=[{"low": 0}]),
        _claim(bound="sideways"), _claim(simulations="everywhere"), _claim(simulations=[0.0, 1.0]),
        json.dumps({"content": 42}), json.dumps({"content": []}), json.dumps(""), json.dumps({"content": None}),
        json.dumps({"content": '{"choice": "Z"}'}), json.dumps({"content": '{"choice": 1}'}),
        json.dumps({"tool": "rm -rf /", "arguments": {"path": "/"}}),
        json.dumps('{"hypothesis": "h", "bound": "below", "value": 0.'),                # cut at max_tokens
        _claim(hypothesis="\u0000\u202e" + "very long " * 20_000),
        _claim(simulations=["A"] * 5000),                                                # a huge reply
        _claim(),
    ]
    (tmp_path / "planner.jsonl").write_text("\n".join(corpus) + "\n")
    run, proc = submit_folder(tmp_path, {"wf.yaml": CORPUS_WORKFLOW, "sim.py": CORPUS_SIM})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and not sentinel.exists()

    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert 0 < len(rows) <= 24
    for r in rows:  # nothing out of bounds, non-finite or non-numeric ever ran
        x = r["params"]["x"]
        assert set(r["params"]) == {"x"} and isinstance(x, float) and 0 <= x <= 1, r
        assert r["status"] == "finished", r
        assert r["hypothesis"], r

    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    text = json.dumps([t for t in transcript if t["type"] in ("rejected", "error")])
    for reason in ("value must be a finite number", "value: Input should be a valid number",
                   "region: Extra inputs are not permitted", "simulations: List should have at least 1 item"):
        assert reason in text, reason
    assert sum(t["type"] == "fallback" for t in transcript) >= 3
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    for e in events:  # a claim kept from the model is finite and inside the bounds, whatever came before
        if e["event"] == "hypothesis" and e["author"] == "planner":
            (lo, hi), = e["claim"]["region"].values()  # the box of the simulation it named
            assert {k: v for k, v in e["claim"].items() if k != "region"} == {"metric": "loss", "bound": "below",
                                                                                 "value": 0.01}
            assert 0 <= lo == hi <= 1
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "finished"


ROUNDS_WORKFLOW = X_REPLAY.format(budget="{max_simulations: 16, max_concurrent: SLOTS, max_rounds: ROUNDS, "
                                         "wall_time: 5m, backfill: none}")
SLOW_SIM = ("import json, sys, time\ntime.sleep(0.5)\n"
            "json.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n")


@pytest.mark.parametrize("slots", [2, 1, 6])
def test_a_rounds_optimizer_points_are_drawn_as_slots_free_never_queued_behind_others(tmp_path, slots):
    """A round holds the optimizer's candidates and starts each when a slot falls free, as offered
    while no result came in since, else drawn afresh from every result so far: so no simulation of
    the optimizer's ever waits in the queue while others finish (a batch fixed when its round
    starts ran its last point several results after choosing it). Every simulation is under a
    round's hypothesis, and a hypothesis is judged only once its round has run all it held. A
    round holds twice the slots even where that is more than the planner is shown (6 slots: 12)."""
    claim = json.dumps({"hypothesis": "h", "bound": "below", "value": 0.01, "simulations": ["A", "B"]})
    write_script(tmp_path / "planner.jsonl", [{"content": claim}, {"content": '{"choice": "A"}'}] * 12)
    rounds = {1: 8, 2: 4, 6: 2}[slots]  # a round holds twice the slots (of 16)
    workflow = ROUNDS_WORKFLOW.replace("SLOTS", str(slots)).replace("ROUNDS", str(rounds))
    run, proc = submit_folder(tmp_path, {"wf.yaml": workflow, "sim.py": SLOW_SIM})
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    proposed = {e["task"]: e for e in events if e["event"] == "proposed"}
    assert len(proposed) == 16 and all(e["hypothesis"] for e in proposed.values())
    assert {e["source"] for e in proposed.values()} <= {"optimizer", "planner"}
    waited = []
    for tid, e in proposed.items():
        if e["source"] != "optimizer":
            continue
        i = events.index(e)
        j = next(k for k in range(i, len(events)) if events[k]["event"] == "submitted" and events[k]["task"] == tid)
        if any(x["event"] in ("finished", "failed") for x in events[i:j]):
            waited.append(tid)
    assert not waited, f"optimizer points queued behind running simulations: {waited}"
    assert len([e for e in events if e["event"] == "round"]) == rounds
    assert sum(e["hypothesis"] == "H1" for e in proposed.values()) == min(16, 2 * slots)
    for h in (e for e in events if e["event"] == "verdict"):
        mine = [tid for tid, e in proposed.items() if e["hypothesis"] == h["id"]]
        judged_at = events.index(h)
        assert all(any(x["event"] == "finished" and x["task"] == tid for x in events[:judged_at]) for tid in mine)
    stated = [e for e in events if e["event"] == "hypothesis" and e["author"] == "planner"]
    assert stated
    for h in stated:  # the simulations a claim names ran (pinned: never replaced by fresh points) ...
        if h["fitted_on"] < 4:  # ... unless they were the optimizer's start-up design (startup: 4 results)
            assert h["pinned"] == 0, h
            continue
        region = h["claim"]["region"]
        inside = [tid for tid, e in proposed.items() if e["hypothesis"] == h["id"]
                  and all(lo <= e["params"][k] <= hi for k, (lo, hi) in region.items())]
        assert inside, (h["id"], region, [e["params"] for e in proposed.values() if e["hypothesis"] == h["id"]])
