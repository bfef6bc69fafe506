"""The agent-value benchmark reads a real run: a replay campaign through the CLI (real Parsl, real
mpiexec), whose planner states one claim after a rejection, then gives garbage until physflow's
stand-in claim runs, and whose critic is refused."""

from __future__ import annotations

from bench.agent_value import agent_figures, kept_runs, table
from bench.campaign_runs import model_turns, transcript
from tests.conftest import HEAT_REPLAY, X_STOPPED, physflow, write_script

WORKFLOW = HEAT_REPLAY.replace("max_rounds: 4", "max_rounds: 2")

CLAIM = {"hypothesis": "chi2 stays tiny everywhere.", "bound": "below", "value": 1e-9}


def test_agent_figures_count_turns_invalid_outputs_hypotheses_and_refusals(heat_workflow, tmp_path):
    write_script(tmp_path / "planner.jsonl", [
        {"content": {**CLAIM, "simulations": ["Q"]}},  # round 1: no such simulation, rejected
        {"content": {**CLAIM, "simulations": ["A", "B"]}},  # stated
        "not JSON", "not JSON either", '{"hypothesis": "cut off',  # round 2: three bad turns
    ])
    write_script(tmp_path / "critic.jsonl", [
        {"content": {"verdict": "supported", "evidence": "it fits", "advice": ""}}])  # the numbers refute H1
    run = tmp_path / "kept" / "physflow-1.5b-0" / "run"  # where --keep puts a method's run on seed 0
    proc = physflow("submit", str(heat_workflow(WORKFLOW)), "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    turns = model_turns(transcript(run))
    planner = [t for t in turns if t.role == "planner"]
    assert [t.invalid for t in planner] == [True, False, True, True, True]
    assert all(t.end >= t.start and not t.cancelled for t in turns)
    assert [t.role for t in turns if t.role != "planner"] == ["critic"]  # H2 has no claim: no critic turn

    f = agent_figures(run)
    assert (f.calls, f.invalid) == (6, 4)
    assert (f.stated, f.stand_ins, f.judged, f.supported, f.refused) == (1, 1, 1, 0, 1)  # judged: the model's
    assert f.planner_sims == 0 and f.places == [] and f.pick_errors == 0  # no surrogate yet: no picks
    assert len(f.turn_s) == 5 and f.stopped_turns == 0

    outcomes, figures = kept_runs(tmp_path / "kept", ["optimizer", "physflow-1.5b"])
    [o] = outcomes
    assert (o.method, o.seed, o.budget, o.started, o.sources, o.reason) == (
        "physflow-1.5b", 0, 8, 8, {"optimizer": 8}, "simulation budget spent")
    assert len(o.values) == 8 and o.best_value == min(o.values) and o.wall_s > 0
    assert figures == {("physflow-1.5b", 0): f}
    text = table(outcomes, figures, ["optimizer", "physflow-1.5b"], tol=min(o.values))
    assert "4/6 = 66.7%" in text and "1 / 1 / 0 (+1)" in text and "0/8 = 0.00" in text
    row = next(line for line in text.splitlines() if line.startswith("sims to tol: median"))
    assert [c.strip() for c in row.split("|")][1] == str(o.to_tolerance(min(o.values)))


def test_a_planner_turn_stopped_at_the_tolerance_is_neither_a_call_nor_timed(tmp_path):
    """The planner (60 s a turn) is still stating H1 when the first result reaches the tolerance."""
    write_script(tmp_path / "planner.jsonl", [{"content": {**CLAIM, "simulations": ["A"]}}])
    (tmp_path / "sim.py").write_text(
        "import json, sys\njson.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n")
    (tmp_path / "wf.yaml").write_text(X_STOPPED)
    run = tmp_path / "run"
    proc = physflow("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [turn] = model_turns(transcript(run))
    assert turn.role == "planner" and turn.cancelled and not turn.invalid
    f = agent_figures(run)
    assert (f.calls, f.invalid, f.stopped_turns, f.turn_s) == (0, 0, 1, [])
    assert (f.stated, f.stand_ins, f.judged) == (0, 1, 0) and f.planner_sims == 0
