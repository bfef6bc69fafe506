"""Hostile input: mutated workflow and site YAML, escaping paths, shell metacharacters.

Every input physflow refuses is refused with one line (``error: FILE:LINE: field: message``) and
exit code 2, never a traceback; the inputs it accepts are accepted whole. Parameters of the
``executable`` adapter reach the program as single arguments, never through a shell.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from physflow.cli import main
from tests.conftest import physflow
from tests.reliability.campaigns import record_figures

pytestmark = pytest.mark.reliability

WORKFLOW = {
    "physflow": 1, "name": "hostile", "goal": "find x", "site": "local",
    "llm": {"provider": "replay", "script": "planner.jsonl", "max_tokens_total": 1000},
    "agents": {"coder": {"enabled": False}, "critic": {"script": "planner.jsonl"}},
    "simulation": {"adapter": "executable", "command": "{python} {workflow_dir}/sim.py {x} {label}",
                   "resources": {"ranks": 1, "nodes": 1}, "fixed": {"label": "a"}, "walltime": "30s",
                   "inputs": {"in.txt": "template.txt"}, "outputs": {"format": "json", "path": "result.json"},
                   "parameters": {"x": {"min": 0, "max": 1, "units": "m"}, "y": {"min": 1e-3, "max": 1, "log": True}}},
    "objective": {"metric": "loss", "goal": "minimize", "tolerance": 0.01},
    "budget": {"max_simulations": 8, "max_concurrent": 2, "max_rounds": 3, "wall_time": "5m", "backfill": "optimizer"},
    "approval": "auto",
    "knowledge": ["notes"],
}

SITE = {"name": "mine", "description": "a test site", "scheduler": "local",
        "pools": {"mpi": {"kind": "mpi", "launcher": "mpiexec", "nodes_per_block": 1, "max_blocks": 1},
                  "cpu": {"kind": "htex", "workers_per_node": 2, "max_blocks": 1}},
        "llm": {"serve_on": "local"}, "parsl_log_level": "info"}

ESCAPES = ["../../etc/passwd", "/etc/passwd", "/etc/shadow", "../" * 12 + "etc/hostname", "/", "..", "~root/x",
           "/proc/self/environ", "\x00", "a\nb", "/dev/zero"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"),
                                                                      1e308, -1e308, 5e-324, 0, -1]),
    st.text(max_size=40), st.sampled_from(ESCAPES), st.sampled_from(["30m", "1h30m", "-5s", "0", "2h", "1e9h"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(tree, prefix=()):
    """Every key path in a nested dict."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))


@st.composite
def mutated(draw, base: dict) -> bytes:
    """``base`` after 1-3 mutations of its structure, dumped to YAML, maybe then damaged as text."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc)) if isinstance(doc, dict) else []
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["replace", "delete", "extra", "escape"]))
        if how == "replace":
            parent[path[-1]] = draw(values)
        elif how == "delete":
            del parent[path[-1]]
        elif how == "extra":
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
        else:
            parent[path[-1]] = draw(st.sampled_from(ESCAPES))
    text = yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "truncate", "insert", "junk"]))
    if damage == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif damage == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([b":", b"\t", b"- ", b"{", b"'", b"&a *a", b"!!python/object:os.system",
                                                 b"\n  bad: [", b"\xff\xfe", b"%YAML 9.9\n"])) + text[at:]
    elif damage == "junk":
        text = draw(st.binary(max_size=200))
    return text


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "planner.jsonl").write_text('{"content": "ok"}\n')
    (tmp_path / "template.txt").write_text("x = {{ x }}\n")
    (tmp_path / "sim.py").write_text("print('unused')\n")
    (tmp_path / "notes").mkdir(exist_ok=True)
    return tmp_path


def _check_one_line(result, outcomes: Counter) -> None:
    """Exit 0 with "ok", or exit 2 with one line on stderr; never a traceback."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.stderr, result.exc_info)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    if result.exit_code == 0:
        assert result.output.strip() == "ok"
        outcomes["accepted"] += 1
    else:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
        outcomes["refused"] += 1


# PHYSFLOW_HOSTILE_EXAMPLES raises the count for a long local hunt (CI uses the default).
HYPOTHESIS = settings(max_examples=int(os.environ.get("PHYSFLOW_HOSTILE_EXAMPLES", "200")), deadline=None,
                      derandomize=False, database=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                             HealthCheck.data_too_large])


def test_the_valid_examples_are_valid(tmp_path: Path):
    folder = _folder(tmp_path)
    (folder / "wf.yaml").write_text(yaml.safe_dump(WORKFLOW))
    (folder / "site.yaml").write_text(yaml.safe_dump(SITE))
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(folder / "wf.yaml")]).output == "ok\n"
    assert runner.invoke(main, ["validate", str(folder / "wf.yaml"), "--site", str(folder / "site.yaml")]).output \
        == "ok\n"


def test_mutated_workflows_fail_with_one_line(tmp_path: Path):
    folder = _folder(tmp_path)
    runner = CliRunner()
    outcomes: Counter = Counter()

    @HYPOTHESIS
    @given(text=mutated(WORKFLOW))
    def check(text: bytes) -> None:
        (folder / "wf.yaml").write_bytes(text)
        _check_one_line(runner.invoke(main, ["validate", str(folder / "wf.yaml")]), outcomes)

    check()
    record_figures("hostile_workflow_yaml", {"inputs": sum(outcomes.values()), **outcomes})
    assert outcomes["refused"] >= 100


def test_mutated_site_files_fail_with_one_line(tmp_path: Path):
    folder = _folder(tmp_path)
    (folder / "wf.yaml").write_text(yaml.safe_dump(WORKFLOW))
    runner = CliRunner()
    outcomes: Counter = Counter()

    @HYPOTHESIS
    @given(text=mutated(SITE))
    def check(text: bytes) -> None:
        (folder / "site.yaml").write_bytes(text)
        _check_one_line(runner.invoke(main, ["validate", str(folder / "wf.yaml"), "--site",
                                             str(folder / "site.yaml")]), outcomes)

    check()
    record_figures("hostile_site_yaml", {"inputs": sum(outcomes.values()), **outcomes})
    assert outcomes["refused"] >= 80


def _set(doc: dict, dotted: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    return doc


@pytest.mark.parametrize(("field", "value"), [
    ("simulation.outputs.path", "../../etc/passwd"),       # the file physflow reads a run's results from
    ("simulation.outputs.path", "/etc/passwd"),
    ("simulation.inputs", {"../escape.txt": "template.txt"}),  # a file physflow writes for the run
    ("simulation.inputs", {"/tmp/escape.txt": "template.txt"}),
    ("simulation.parameters.x", {"min": float("nan"), "max": 1}),
    ("simulation.parameters.x", {"min": 0, "max": float("inf")}),
    ("budget.max_simulations", float("inf")),
    ("budget.max_concurrent", "2; rm -rf /"),
    ("budget.wall_time", "-5s"),
    ("objective.target", "../../no/such/target.h5"),
    ("llm.script", "/etc"),                                 # exists, but is no file
    ("simulation.inputs", {"in.txt": "\0"}),               # a NUL byte: os calls raise ValueError on it
    ("knowledge", ["notes\0/x"]),
    ("goal", "find\0x"),
    ("objective.target", "a" * 300),                        # the OS refuses the name (ENAMETOOLONG)
    ("site", "~0"),                                         # ~user of no user: Path.expanduser raises
    ("knowledge", ["no/such/folder"]),
    ("simulation.walltime", 10**400),                      # float() of it overflows
    ("budget.wall_time", "99999999h"),
], ids=lambda v: v if isinstance(v, str) else repr(v)[:30])
def test_hostile_values_through_a_real_process(tmp_path: Path, field: str, value):
    """The same contract end to end: a real ``physflow`` process, its real stderr and exit code."""
    folder = _folder(tmp_path)
    (folder / "wf.yaml").write_text(yaml.safe_dump(_set(WORKFLOW, field, value)))
    out = physflow("validate", str(folder / "wf.yaml"))
    assert out.returncode == 2, out.stdout
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {folder / 'wf.yaml'}:"), out.stderr
    assert "Traceback" not in out.stderr


def test_binary_junk_and_a_missing_file_through_a_real_process(tmp_path: Path):
    (tmp_path / "junk.yaml").write_bytes(bytes(range(256)) * 4)
    for path in (tmp_path / "junk.yaml", tmp_path / "missing.yaml"):
        out = physflow("validate", str(path))
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    out = physflow("validate", str(tmp_path))  # a folder: click's own usage error (exit 2, usage lines)
    assert out.returncode == 2 and "is a directory" in out.stderr and "Traceback" not in out.stderr


INJECTION = """\
physflow: 1
name: injection
goal: find x
agents: {planner: {enabled: false}}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/args.py {label} {x} {task_id}"
  mpi: true
  resources: {ranks: 1, nodes: 1}
  inputs: {input.txt: template.txt}
  fixed:
    label: %s
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 2, max_concurrent: 2, wall_time: 5m}
"""

HOSTILE_LABEL = "; rm -rf {folder}/precious; touch {folder}/pwned1 $(touch {folder}/pwned2) `touch {folder}/pwned3`\n" \
                "touch {folder}/pwned4 && echo 'quoted' \"double\" | cat > {folder}/pwned5 & \\\\ $HOME *"

ARGS = """\
import json, sys
json.dump({"loss": float(sys.argv[2]), "argc": len(sys.argv)}, open("result.json", "w"))
open("argv.json", "w").write(json.dumps(sys.argv[1:]))
"""


def test_shell_metacharacters_never_reach_a_shell(tmp_path: Path):
    folder = tmp_path / "a folder; $(touch pwned0) `x`"   # even the workflow's folder name is hostile
    folder.mkdir()
    (folder / "precious").write_text("still here")
    label = HOSTILE_LABEL.format(folder=folder)
    (folder / "wf.yaml").write_text(INJECTION % json.dumps(label))
    (folder / "args.py").write_text(ARGS)
    (folder / "template.txt").write_text("label = {{ label }}\n")
    # Parsl puts run-directory paths into shell commands unquoted: such a run directory is refused.
    refused = physflow("submit", str(folder / "wf.yaml"), "--run-dir", str(folder / "run"), cwd=folder)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "contains ' '" in refused.stderr and not (folder / "run").exists()
    run = tmp_path / "run"
    out = physflow("submit", str(folder / "wf.yaml"), "--run-dir", str(run), cwd=folder)
    assert out.returncode == 0, out.stderr
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) == 2 and all(r["status"] == "finished" and r["metrics"]["argc"] == 4 for r in rows)
    for r in rows:
        argv = json.loads((run / "tasks" / r["id"] / "argv.json").read_text())
        assert argv == [label, repr(r["params"]["x"]), r["id"]]  # verbatim, one argument each
        assert (run / "tasks" / r["id"] / "input.txt").read_text() == f"label = {label}\n"
    created = sorted(p.name for p in tmp_path.rglob("pwned*"))
    assert created == [] and (folder / "precious").read_text() == "still here"
    assert not any(Path.cwd().glob("pwned*"))


def test_yaml_tags_cannot_run_code(tmp_path: Path):
    sentinel = tmp_path / "pwned"
    for text in (f"!!python/object/apply:os.system ['touch {sentinel}']\n",
                 f"physflow: 1\ngoal: !!python/object/apply:os.system ['touch {sentinel}']\n"):
        (tmp_path / "wf.yaml").write_text(text)
        result = CliRunner().invoke(main, ["validate", str(tmp_path / "wf.yaml")])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert not sentinel.exists()
