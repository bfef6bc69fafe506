"""The planner as the optimizer's advisor: picks scored against the surrogate, shares earned, claims
checked and judged from the numbers (AutoGen's replay model scripts the planner)."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from physflow.agents.models import PacedReplayClient
from physflow.agents.team import ScienceTeam, Transcript
from physflow.agents.tools import Toolbox
from physflow.optimizer import Optimizer
from physflow.vocabulary.steering import Candidate, Claim, judge_claim, pick_quality, pick_score, rank_by_prediction
from physflow.vocabulary.workflow import ParameterSpec, WorkflowSpec
from physflow.workflows.campaign import compose_batch, surrogate_claim
from tests.conftest import X_REPLAY

PARAMETERS = {"om": ParameterSpec(min=0.1, max=0.5), "s8": ParameterSpec(min=0.5, max=1.1)}
SPEC = WorkflowSpec.model_validate({
    "physflow": 1, "name": "advisor", "goal": "find om and s8", "llm": {"provider": "replay", "script": "x"},
    "agents": {"domain_expert": {"enabled": False}, "critic": {"enabled": False}, "coder": {"enabled": False}},
    "simulation": {"adapter": "python", "function": "m:f", "parameters": {"om": {"min": 0.1, "max": 0.5},
                                                                         "s8": {"min": 0.5, "max": 1.1}}},
    "objective": {"metric": "chi2"}})


def team(tmp_path, replies: list[str]) -> ScienceTeam:
    client = PacedReplayClient(replies)  # AutoGen's replay client, as the replay provider makes it
    return ScienceTeam(SPEC, {"planner": client}, Toolbox(None), PARAMETERS, Transcript(tmp_path / "t.jsonl"))


def candidates() -> list[Candidate]:
    """Six candidates whose predicted chi2 falls with their index (the last is the best)."""
    return [Candidate({"om": 0.1 + 0.05 * i, "s8": 0.8}, mean=10.0 - i, sd=0.5, rank=i) for i in range(6)]


def test_a_pick_is_scored_against_the_surrogate_ranking_of_what_was_shown(tmp_path):
    t = team(tmp_path, ['{"choice": "Z"}', '{"choice": "A"}', '{"choice": "B"}'])
    rng = random.Random(3)
    picks = asyncio.run(t.pick(candidates(), "minimize", "chi2", 2, rng))
    assert len(picks) == 2 and t.invalid == 1  # "Z" names no candidate: sent back once, counted
    assert "choice: Input should be 'A', 'B', 'C' or 'D'" in picks[0].error
    again = random.Random(3)
    shown = again.sample(range(6), 4)
    places = rank_by_prediction([candidates()[i] for i in shown], "minimize")
    assert picks[0].candidate == shown[0] and picks[0].place == places[0] and picks[0].shown == 4
    assert picks[1].candidate != picks[0].candidate  # a picked candidate is not offered again
    log = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    asked = [e["content"] for e in log if e["type"] == "task"]
    assert all("Which candidate has the lowest predicted chi2?" in q for q in asked)


def test_the_share_is_earned_chance_earns_nothing_and_the_best_picks_earn_the_most():
    assert pick_score(0, 4) == 1.0 and pick_score(3, 4) == -1.0 and pick_score(1, 3) == 0.0
    assert pick_quality([]) == 0.0  # no measurement, no qualification: no slots
    assert pick_quality([-1.0] * 10) == 0.0  # worse than chance never takes the optimizer's slots
    assert pick_quality([1.0]) == 1 / 3  # one lucky pick earns little (two pseudo-picks at the prior)
    assert pick_quality([1.0] * 20) > 0.9
    assert pick_quality([], prior=0.6) == 0.6  # the qualification's steering score stands until measured


def test_the_batch_runs_the_earned_picks_first_then_the_optimizer_order():
    from physflow.agents.team import PickRecord
    cands = candidates()
    picks = [PickRecord(4, 0, 4), PickRecord(2, 1, 4)]
    batch = compose_batch(cands, picks, earned=1, capacity=3)
    assert [(c.rank, s) for c, s in batch] == [(4, "planner"), (0, "optimizer"), (1, "optimizer")]
    assert [(c.rank, s) for c, s in compose_batch(cands, picks, earned=0, capacity=2)] == [(0, "optimizer"),
                                                                                         (1, "optimizer")]


def test_a_claim_names_the_rounds_simulations_and_is_never_clipped(tmp_path):
    """The claim's region is the box of the simulations it names by letter; a letter past the batch
    and a region of the model's own are sent back with the reason."""
    batch = [{"om": 0.3, "s8": 0.8}, {"om": 0.4, "s8": 0.6}, {"om": 0.2, "s8": 0.9}]
    t = team(tmp_path, [
        json.dumps({"hypothesis": "h", "bound": "below", "value": 2.0, "simulations": ["D"]}),
        json.dumps({"hypothesis": "h", "bound": "below", "value": 2.0, "simulations": ["A"],
                    "region": {"s8": [0.4, 1.0]}}),
        json.dumps({"hypothesis": "s8 near 0.8 fits", "bound": "below", "value": 2.0, "simulations": ["C", "A"]}),
    ])
    outcome = asyncio.run(t.hypothesize("prompt", "chi2", batch))
    assert outcome.ok and outcome.claim == Claim("chi2", "below", 2.0, {"om": (0.2, 0.3), "s8": (0.8, 0.9)})
    assert "simulations.0: Input should be 'A', 'B' or 'C'" in outcome.errors[0]
    assert "region: Extra inputs are not permitted" in outcome.errors[1]
    assert t.invalid == 2


def test_verdicts_follow_the_numbers_with_the_simulations_spread():
    claim = Claim("chi2", "below", 2.0, {"s8": (0.78, 0.86)})
    inside = [({"om": 0.3, "s8": 0.8}, 1.2), ({"om": 0.3, "s8": 0.85}, 1.9)]
    assert judge_claim(claim, inside + [({"om": 0.3, "s8": 1.0}, 50.0)], 0.1).verdict == "supported"
    assert judge_claim(claim, inside + [({"s8": 0.79, "om": 0.2}, 2.15)], 0.1).verdict == "inconclusive"
    refuted = judge_claim(claim, inside + [({"s8": 0.79, "om": 0.2}, 2.5)], 0.1)
    assert refuted.verdict == "refuted" and "the worst by 0.5" in refuted.evidence and refuted.tested == 3
    assert judge_claim(claim, [({"om": 0.3, "s8": 1.0}, 1.0)], 0.1).verdict == "inconclusive"  # none inside
    assert judge_claim(Claim("n", "above", 5.0), [({}, 7.0), ({}, math.nan)], 0.0).verdict == "supported"


def test_the_surrogate_predicts_near_the_truth_and_states_its_own_claim():
    opt = Optimizer(PARAMETERS, "minimize", seed=1)

    def chi2(p):
        return 400 * (p["s8"] * (p["om"] / 0.3) ** 0.5 - 0.8) ** 2 + 0.5

    assert not opt.advice(3).predicted  # no results: no predictions
    for _ in range(7):
        for p in opt.suggest(2):
            opt.observe(p, chi2(p))
    advice = opt.advice(5)
    assert advice.predicted and advice.fitted_on == 14 and [c.rank for c in advice.candidates] == list(range(5))
    best = min(advice.candidates, key=lambda c: c.mean)
    assert abs(best.mean - chi2(best.params)) < 3 * best.sd + 0.5
    assert set(advice.lengths) == {"om", "s8"} and advice.spread is not None and advice.spread >= 0
    statement, claim = surrogate_claim(advice, advice.candidates, "chi2", "minimize")
    assert claim is not None and all(claim.contains(c.params) for c in advice.candidates)
    assert "the model stated none" in statement


QUALIFIED = X_REPLAY.format(budget="{max_simulations: 2, max_concurrent: 2, max_rounds: 1, wall_time: 5m, "
                                   "backfill: none}")


def test_a_model_s_qualification_is_the_prior_of_its_share(tmp_path):
    """The steering score ``physflow qualify`` kept for this model starts its share before any pick
    is measured (0.3 x 1.0 here); without a record, or with a score inside the noise of 12 random
    picks (0.43), the share starts at 0."""
    from physflow.agents.qualify import CategoryScore, QualifyRecord
    from physflow.vocabulary.workflow import load_workflow
    from physflow.workflows.qualify_records import keep_record, qualify_llm
    from tests.conftest import physflow, write_script

    (tmp_path / "wf.yaml").write_text(QUALIFIED)
    (tmp_path / "sim.py").write_text(
        "import json, sys\njson.dump({'loss': float(sys.argv[1])}, open('result.json', 'w'))\n")
    claim = {"hypothesis": "h", "bound": "below", "value": 2.0, "simulations": ["A"]}
    write_script(tmp_path / "planner.jsonl", [{"content": claim}])
    env = {"PHYSFLOW_MODEL_CACHE": str(tmp_path / "cache" / "models")}
    shares = []
    for i, steering in enumerate((None, 1.0, 0.3)):  # not qualified; 12 of 12 best; within chance's noise
        if steering is not None:
            record = QualifyRecord("replay:planner.jsonl", 0, "2026-12-06T00:00:00Z", "test",
                                   {"steering": CategoryScore(12 if steering == 1.0 else 4, 12, steering, 0.0)})
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("PHYSFLOW_MODEL_CACHE", env["PHYSFLOW_MODEL_CACHE"])
                keep_record(qualify_llm(load_workflow(tmp_path / "wf.yaml")), record)
        run = tmp_path / f"run{i}"
        proc = physflow("submit", str(tmp_path / "wf.yaml"), "--run-dir", str(run), cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
        shares.append(next(e for e in events if e["event"] == "hypothesis")["share"])
    assert shares == [0.0, pytest.approx(0.3), 0.0]


def test_the_coder_reads_named_arrays_and_answers_in_a_fenced_block(tmp_path):
    """The coder gets numpy arrays named after the parameters and metrics of the finished
    simulations; its code comes back as a fenced block (a JSON string would have turned a
    printed \\n into a line break inside a Python literal); a failing run goes back with its error."""
    from physflow.agents.sandbox import Sandbox, SandboxLimits

    run = tmp_path / "run"
    run.mkdir()
    results = [{"id": f"t{i}", "status": "finished", "params": {"om": 0.1 * i, "s8": 0.8},
                "metrics": {"chi2": float(i), "sum": 1.0}} for i in range(1, 4)]
    results.append({"id": "t9", "status": "failed", "params": {"om": 0.5, "s8": 0.8}, "metrics": {}})
    replies = ["Here it is:\n```python\nprint(undefined_name)\n```",
               "```python\nprint('fit', np.polyfit(om, chi2, 1)[0].round(3), len(finished), columns['sum'][0])\n"
               "print('a\\nb')\n```\nDone."]
    spec = SPEC.model_copy(update={"agents": {}})
    with Sandbox(run, SandboxLimits(wall_seconds=20, memory_bytes=2 << 30, cpu_seconds=60)) as box:
        t = ScienceTeam(spec, {"coder": PacedReplayClient(replies)}, Toolbox(None, sandbox=box), PARAMETERS,
                        Transcript(tmp_path / "t.jsonl"))
        analysis = asyncio.run(t.analyse("slope of chi2 against om", results, attempts=2))
    assert analysis is not None and analysis.ok, analysis
    assert analysis.output.split("\n")[:3] == ["fit 10.0 3 1.0", "a", "b"]  # `sum` stays the builtin
    log = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    asked = [e["content"] for e in log if e["type"] == "task"]
    assert "numpy arrays over the 3 finished simulations, one entry per simulation: om, s8, chi2. " in asked[0]
    assert "NameError" in asked[1] and "The failing line 1: print(undefined_name)" in asked[1]
