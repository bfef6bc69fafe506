"""``physflow qualify``: the question bank is sound, and a model is scored as it answers, on every
provider (replay, openai against a local server, the embedded llama.cpp model)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from physflow.agents.advisor import LETTERS
from physflow.agents.models import make_client
from physflow.agents.qualify import PHYSICS, build_questions, chance_band, load_bank, take_test
from physflow.vocabulary.workflow import QUALIFY_CATEGORIES, LLMSpec, WorkflowSpec, load_workflow
from tests.conftest import ChatCompletions, physflow, write_script

WORKFLOW = """\
physflow: 1
name: qualified
goal: Which kappa and power reproduce the observed temperature field?
llm: {llm}
simulation:
  adapter: executable
  command: "{{python}} {{workflow_dir}}/sim.py {{kappa}} {{power}}"
  parameters:
    kappa: {{min: 0.05, max: 1.0, units: m^2/s, description: thermal diffusivity}}
    power: {{min: 5.0, max: 60.0, units: K/s}}
objective: {{metric: chi2, goal: minimize}}
"""


def spec_of(tmp_path: Path, llm: str = "{provider: replay, script: model.jsonl}") -> WorkflowSpec:
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW.format(llm=llm))
    return load_workflow(path).spec


def right_replies(spec: WorkflowSpec, **kwargs) -> list[dict]:
    """A replay script that answers every question of the test right (from the test's own key)."""
    return [{"content": q.key} for q in build_questions(spec, **kwargs)]


# --- the bank ---------------------------------------------------------------------------------

def test_the_bank_has_at_least_60_questions_20_per_domain_each_with_its_answer_and_source():
    bank = load_bank()
    assert len(bank) >= 60
    per_domain = Counter(item.domain for item in bank)
    assert set(per_domain) == set(PHYSICS) and min(per_domain.values()) >= 20, per_domain
    assert len({item.id for item in bank}) == len(bank)  # ids unique
    for item in bank:
        assert item.question.strip() and len(item.source) > 10, item.id
        assert re.search(r"\(\d{4}\)|\d{4}\)|, \d{4}", item.source) or "Ch." in item.source or "§" in item.source, \
            (item.id, item.source)  # a book with its year or a paper with volume and year
        if item.kind == "mcq":
            assert len(item.options) == 4 and len(set(item.options)) == 4 and item.answer in item.options, item.id
        else:
            assert isinstance(item.answer, float) and item.answer != 0 and 0 < item.tolerance <= 0.05, item.id
    kinds = Counter(item.kind for item in bank)
    assert kinds["mcq"] >= 30 and kinds["numeric"] >= 20  # both kinds, in every domain
    assert all({i.kind for i in bank if i.domain == d} == {"mcq", "numeric"} for d in PHYSICS)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_answer_key_is_balanced_and_each_letter_shows_the_bank_answer(tmp_path, seed):
    spec = spec_of(tmp_path)
    bank = {item.id: item for item in load_bank()}
    questions = build_questions(spec, PHYSICS, seed=seed)
    for domain in PHYSICS:
        letters = Counter(q.key["answer"] for q in questions if q.category == domain and "answer" in q.key)
        assert set(letters) == set("ABCD") and max(letters.values()) - min(letters.values()) <= 1, (domain, letters)
    for q in questions:
        item = bank[q.id]
        if item.kind == "mcq":
            shown = dict(re.findall(r"^([A-D]): (.*)$", q.prompt, re.M))
            assert shown[q.key["answer"]] == item.answer and sorted(shown.values()) == sorted(item.options)
    # the seed decides the shuffle, and the same seed gives the same test
    again = build_questions(spec, PHYSICS, seed=seed)
    assert [q.prompt for q in again] == [q.prompt for q in questions]
    other = build_questions(spec, PHYSICS, seed=seed + 100)
    assert [q.prompt for q in other] != [q.prompt for q in questions]


def test_the_mechanics_are_built_from_this_workflow(tmp_path):
    spec = spec_of(tmp_path)
    questions = build_questions(spec, ["proposal", "tool", "steering"])
    count = Counter(q.category for q in questions)
    assert count["proposal"] >= 3 and count["tool"] >= 6 and count["steering"] >= 12
    proposal = next(q for q in questions if q.category == "proposal")
    assert "kappa in [0.05, 1] m^2/s" in proposal.prompt and "power in [5, 60] K/s" in proposal.prompt
    steering = [q for q in questions if q.category == "steering"]
    assert all(len(re.findall(r"^[A-D]: kappa=", q.prompt, re.M)) == 4 for q in steering)
    assert all("lowest predicted chi2" in q.prompt for q in steering)
    assert len({q.key["choice"] for q in steering}) >= 3  # the best is not always in one place
    assert {q.key["tool"] for q in questions if q.category == "tool"} == {
        "suggest_parameters", "query_results", "propose_simulations", "run_analysis_code", "search_knowledge",
        "make_plot"}


# --- scoring, with AutoGen's replay model ------------------------------------------------------

def test_a_model_that_answers_everything_right_scores_one(tmp_path):
    spec = spec_of(tmp_path)
    script = write_script(tmp_path / "right.jsonl", right_replies(spec, seed=5))
    client = make_client(LLMSpec(provider="replay", script=str(script)))
    record = asyncio.run(take_test(client, build_questions(spec, seed=5), "replay:right", 5, "test", "now"))
    assert set(record.categories) == set(QUALIFY_CATEGORIES)
    assert all(c.score == 1.0 and c.correct == c.total and c.invalid == 0 for c in record.categories.values())
    assert record.overall == 1.0 and record.steering == 1.0 and record.top1 == 1.0
    assert "knows its physics" in record.interpretation()
    assert "decides how many slots the planner gets" in record.interpretation()


def test_wrong_and_garbage_replies_score_low_are_counted_and_never_stop_the_test(tmp_path):
    spec = spec_of(tmp_path)
    questions = build_questions(spec, seed=2, limit=4)
    replies: list = []
    seen: Counter = Counter()
    for q in questions:
        n = seen[q.category]
        seen[q.category] += 1
        if q.category in PHYSICS and "answer" in q.key:  # the wrong letter
            replies.append({"content": {"answer": LETTERS[(LETTERS.index(q.key["answer"]) + 1) % 4]}})
        elif q.category in PHYSICS:  # ten times the right value
            replies.append({"content": {"value": q.key["value"] * 10}})
        elif q.category == "proposal":  # out of bounds, a made-up parameter, not JSON
            replies.append([{"content": {**q.key, "simulations": [{"kappa": 5.0, "power": 30.0}]}},
                            {"content": {**q.key, "simulations": [{"kappa": 0.5, "power": 30.0, "x": 1.0}]}},
                            "I propose kappa=0.5"][n % 3])
        elif q.category == "tool":  # a tool call, and a tool that does not exist
            replies.append([{"tool": "query_results", "arguments": {}}, {"content": {"tool": "rm_rf"}}][n % 2])
        else:  # the surrogate's worst candidate, then a letter that is not shown
            worst = max(re.findall(r"^([A-D]): .* predicted chi2 ([0-9.e+-]+)", q.prompt, re.M),
                        key=lambda m: float(m[1]))[0]
            replies.append({"content": {"choice": worst}} if n else {"content": {"choice": "K"}})
    script = write_script(tmp_path / "wrong.jsonl", replies[:-1])  # and the script runs out before the end
    client = make_client(LLMSpec(provider="replay", script=str(script)))
    record = asyncio.run(take_test(client, questions, "replay:wrong", 2, "test", "now"))
    assert len(record.answers) == len(questions)
    assert all(c.correct == 0 for c in record.categories.values()), record.categories
    assert record.overall == 0.0 and record.steering < 0  # the worst pick is below chance
    assert record.categories["proposal"].invalid == 2  # the made-up parameter and the prose
    assert record.categories["tool"].invalid == 4  # a tool call, or a tool that does not exist
    assert record.categories["steering"].invalid == 2  # the letter not shown, and the script's end
    out_of_bounds = next(a for a in record.answers if a.category == "proposal" and a.error is None)
    assert out_of_bounds.given == [{"kappa": 5.0, "power": 30.0}] and not out_of_bounds.correct
    prose = next(a for a in record.answers if a.given == "I propose kappa=0.5")
    assert prose.error.startswith("invalid reply")
    assert "a tool call" in next(a.error for a in record.answers if a.category == "tool" and a.error)
    assert "No more mock responses" in record.answers[-1].error
    assert "knows little physics" in record.interpretation()
    assert "cannot be told from chance" in record.interpretation()


# --- the command --------------------------------------------------------------------------------

def test_qualify_with_replay_prints_the_table_writes_qualify_json_and_keeps_the_record(tmp_path):
    spec = spec_of(tmp_path)
    write_script(tmp_path / "model.jsonl", right_replies(spec, seed=4, limit=2))
    env = {"PHYSFLOW_MODEL_CACHE": str(tmp_path / "cache" / "models")}
    run = tmp_path / "q"
    proc = physflow("qualify", str(tmp_path / "wf.yaml"), "--run-dir", str(run), "--limit", "2", "--seed", "4",
                    cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(run)
    for category in QUALIFY_CATEGORIES:
        assert re.search(rf"^{category}\s+2/2\s+1\.00\s+0\.\d\d", proc.stdout, re.M), proc.stdout
    assert re.search(r"^overall\s+1\.00$", proc.stdout, re.M)
    assert "knows its physics" in proc.stdout
    data = json.loads((run / "qualify.json").read_text())
    assert data["overall"] == 1.0 and data["model"] == "replay:model.jsonl" and data["seed"] == 4
    assert len(data["questions"]) == 12 and all(q["correct"] and q["id"] for q in data["questions"])
    kept = list((tmp_path / "cache" / "qualify").glob("replay_model.jsonl-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["steering"] == 1.0

    # the record is read back for this model (a campaign's prior for its picks) and for no other
    from physflow.workflows.qualify_records import load_record

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHYSFLOW_MODEL_CACHE", env["PHYSFLOW_MODEL_CACHE"])
        record = load_record(LLMSpec(provider="replay", script=str(tmp_path / "model.jsonl")))
        assert record is not None and record.steering == 1.0 and record.categories["tool"].total == 2
        assert load_record(LLMSpec(provider="replay", script=str(tmp_path / "other.jsonl"))) is None

    as_json = physflow("qualify", str(tmp_path / "wf.yaml"), "--run-dir", str(tmp_path / "q2"), "--limit", "1",
                       "--json", cwd=tmp_path, env=env, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    assert printed["run_dir"] == str(tmp_path / "q2") and set(printed["categories"]) == set(QUALIFY_CATEGORIES)


@pytest.mark.parametrize("llm, message", [
    ("{provider: replay, script: model.jsonl, qualify: {min_score: 1.5}}",
     r"llm\.qualify\.min_score: .*less than or equal to 1"),
    ("{provider: replay, script: model.jsonl, qualify: {min_score: 0.5, categories: [astrology]}}",
     r"llm\.qualify\.categories\.0: .*'cosmology'"),
    ("{provider: replay, script: model.jsonl, qualify: {min_score: 0.5, cutoff: 2}}", r"llm\.qualify\.cutoff"),
    ("{provider: replay, script: missing.jsonl}", r"cannot read replay script"),
    ("{provider: vllm, model: m}", r"llm\.provider: physflow qualify needs a running vLLM server"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, llm, message):
    (tmp_path / "wf.yaml").write_text(WORKFLOW.format(llm=llm))
    (tmp_path / "model.jsonl").write_text("")
    proc = physflow("qualify", str(tmp_path / "wf.yaml"), "--run-dir", str(tmp_path / "q"), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and re.search(message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "q" / "qualify.json").exists()


# --- the openai provider, against a local OpenAI-compatible server -----------------------------

class KnowingServer(ChatCompletions):
    """The chat completions route of an OpenAI-compatible server whose model knows the answer to
    every question it was told (prompt -> reply); it records what each request asked for."""

    answers: dict[str, dict] = {}
    formats: list = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        KnowingServer.formats.append(body.get("response_format"))
        prompt = body["messages"][-1]["content"]
        self.reply(body["model"], json.dumps(KnowingServer.answers.get(prompt, {"no": "idea"})))


def test_qualify_reaches_an_openai_compatible_server_with_one_structured_reply_per_question(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), KnowingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        spec = spec_of(tmp_path, f'{{provider: openai, base_url: "{url}", model: knowing, api_key_env: QK}}')
        questions = build_questions(spec, seed=0, limit=2)
        # it knows everything but the physics of the first domain asked
        KnowingServer.answers = {q.prompt: q.key for q in questions if q.category != "cosmology"}
        KnowingServer.formats = []
        proc = physflow("qualify", str(tmp_path / "wf.yaml"), "--run-dir", str(tmp_path / "q"), "--limit", "2",
                        cwd=tmp_path, env={"QK": "sk-local", "PHYSFLOW_MODEL_CACHE": str(tmp_path / "c" / "m")},
                        timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "q" / "qualify.json").read_text())
    assert data["model"] == "openai:knowing"
    assert data["categories"]["cosmology"]["correct"] == 0 and data["categories"]["cosmology"]["invalid"] == 2
    assert all(data["categories"][c]["score"] == 1.0 for c in QUALIFY_CATEGORIES if c != "cosmology")
    assert len(KnowingServer.formats) == len(questions)
    assert all(f and f["type"] == "json_schema" for f in KnowingServer.formats)  # the reply's schema was sent


# --- the embedded model -------------------------------------------------------------------------

@pytest.mark.slow
def test_qualify_runs_the_embedded_model(tmp_path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW.format(llm="{provider: embedded, model: smollm2-135m}"))
    run = tmp_path / "q"
    proc = physflow("qualify", str(tmp_path / "wf.yaml"), "--run-dir", str(run), "--limit", "1", cwd=tmp_path,
                    env={"PHYSFLOW_MODEL_CACHE": str(tmp_path / "c" / "models")}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run)
    data = json.loads((run / "qualify.json").read_text())
    assert data["model"] == "embedded:smollm2-135m-instruct" and len(data["questions"]) == 6
    # the real model answered every question (tokens counted); the grammar kept its replies parsable
    assert all(q["tokens"] > 0 and not (q["error"] or "").startswith("no reply") for q in data["questions"])
    assert sum(q["error"] is None for q in data["questions"]) >= 4
    assert (run / "llm" / "server.log").is_file()
    assert (tmp_path / "c" / "qualify").is_dir()


def test_one_record_per_model_its_aliases_share_it_and_other_endpoints_do_not(tmp_path, monkeypatch):
    from physflow.workflows.qualify_records import load_record, record_path

    monkeypatch.setenv("PHYSFLOW_MODEL_CACHE", str(tmp_path / "models"))
    short, full = LLMSpec(model="smollm2-135m"), LLMSpec(model="smollm2-135m-instruct")
    assert record_path(short) == record_path(full) and record_path(full).parent == tmp_path / "qualify"
    one = LLMSpec(provider="openai", base_url="http://a/v1", model="m")
    other = LLMSpec(provider="openai", base_url="http://b/v1", model="m")
    assert record_path(one) != record_path(other) and record_path(one).name.startswith("openai_m-")
    assert load_record(one) is None
    record_path(one).parent.mkdir(parents=True)
    record_path(one).write_text("{not json")
    assert load_record(one) is None  # a damaged record is no record


def test_a_steering_score_within_the_noise_of_random_picks_earns_no_slots():
    # random picks among 4 score 1, 1/3, -1/3, -1 (sd 0.745): at 12 questions the mean's 2-sigma band is 0.43
    assert abs(chance_band(12) - 2 * 0.7454 / 12 ** 0.5) < 1e-3
    assert chance_band(48) < chance_band(12) / 1.9


def test_qualify_exits_1_below_the_workflows_min_score_and_asks_only_its_categories(tmp_path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW.format(
        llm="{provider: replay, script: model.jsonl, qualify: {min_score: 0.9, categories: [tool]}}"))
    write_script(tmp_path / "model.jsonl", ["not JSON"] * 12)
    proc = physflow("qualify", str(tmp_path / "wf.yaml"), "--run-dir", str(tmp_path / "q"), cwd=tmp_path,
                    env={"PHYSFLOW_MODEL_CACHE": str(tmp_path / "c" / "m")}, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"^tool\s+0/12\s+0\.00\s+0\.17\s+12$", proc.stdout, re.M), proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "q")
    assert "below llm.qualify.min_score 0.9: physflow submit would refuse this model" in proc.stderr
    assert set(json.loads((tmp_path / "q" / "qualify.json").read_text())["categories"]) == {"tool"}
