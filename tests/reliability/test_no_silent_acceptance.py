"""What was silently accepted is refused in one line, or said: a value that would inject a batch
script line, a half-written placeholder, a user's file written over, a boolean taken for a count, a
tolerance at infinity, a NaN objective taken for a result, a campaign of failures called finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_WORKFLOW, physflow, results_of, submit_folder

pytestmark = pytest.mark.reliability



def one_line_refusal(out) -> str:
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    return out.stderr


def test_a_newline_in_a_set_value_never_reaches_a_batch_script(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    out = physflow("validate", str(tmp_path / "wf.yaml"), "--site", "pbs", "--set", "account=proj\n#PBS -l evil")
    assert "newline" in one_line_refusal(out)


def test_an_unclosed_placeholder_is_located(tmp_path: Path):
    (tmp_path / "site.yaml").write_text("name: mine\nscheduler: pbs\naccount: ${account\npools: {cpu: {kind: htex}}\n")
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    out = physflow("validate", str(tmp_path / "wf.yaml"), "--site", str(tmp_path / "site.yaml"))
    assert f"{tmp_path / 'site.yaml'}:3: account: a ${{name}} placeholder that is not closed" in one_line_refusal(out)


def test_init_never_writes_over_a_users_file(tmp_path: Path):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "sim.py").write_text("my own simulation\n")
    out = physflow("init", str(tmp_path / "study"), "--adapter", "executable")
    assert "sim.py already exists" in one_line_refusal(out)
    assert (tmp_path / "study" / "sim.py").read_text() == "my own simulation\n"
    assert not (tmp_path / "study" / "workflow.yaml").exists()


@pytest.mark.parametrize(("old", "new", "says"), [
    ("max_simulations: 2", "max_simulations: true", "budget.max_simulations: Input should be a valid integer"),
    ("objective: {metric: loss}", "objective: {metric: loss, tolerance: .inf}", "objective.tolerance: the tolerance"),
])
def test_a_value_of_the_wrong_kind_is_refused(tmp_path: Path, old: str, new: str, says: str):
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW.replace(old, new))
    assert says in one_line_refusal(physflow("validate", str(tmp_path / "wf.yaml")))


def test_a_non_finite_objective_is_a_failed_simulation_and_all_failed_is_a_failed_campaign(tmp_path: Path):
    sim = ("import json, sys\nx = float(sys.argv[1])\n"
           "open('result.json', 'w').write('{\"loss\": NaN}' if x < 0.5 else '{\"loss\": 1e400}')\n")
    run, proc = submit_folder(tmp_path, {"wf.yaml": TINY_WORKFLOW, "sim.py": sim})
    assert proc.returncode == 1, proc.stderr
    rows = results_of(run)
    assert len(rows) == 2 and all(r["status"] == "failed" and "not a finite number" in r["error"] for r in rows)
    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "failed" and status["reason"].startswith("every simulation failed (2)")


@pytest.mark.parametrize("command", [["submit", "{wf}", "--yes", "--run-dir", "/proc/physflow-nope/run"],
                                     ["init", "/proc/physflow-nope/study"]])
def test_a_folder_that_cannot_be_made_is_one_line(tmp_path: Path, command: list[str]):
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    out = physflow(*[c.format(wf=tmp_path / "wf.yaml") for c in command])
    assert "/proc/physflow-nope" in one_line_refusal(out)


def test_a_symlink_loop_as_run_dir_is_one_line(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    out = physflow("submit", str(tmp_path / "wf.yaml"), "--yes", "--run-dir", str(tmp_path / "a" / "run"))
    one_line_refusal(out)


SIM = "import json, sys\njson.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n"


def test_a_run_without_its_workflow_or_with_a_broken_run_json_is_one_line(tmp_path: Path):
    run, proc = submit_folder(tmp_path, {"wf.yaml": TINY_WORKFLOW, "sim.py": SIM})
    assert proc.returncode == 0, proc.stderr
    (run / "workflow.yaml").rename(run / "workflow.yaml.away")
    for args in (["report"], ["watch", "--once"]):
        assert "workflow.yaml" in one_line_refusal(physflow(args[0], str(run), *args[1:]))
    (run / "workflow.yaml.away").rename(run / "workflow.yaml")
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    (run / "journal.jsonl").write_text("".join(line for line in lines if '"campaign_ended"' not in line))
    (run / "run.json").write_text('{"workflow_dir": ')
    assert "run.json: missing or damaged" in one_line_refusal(physflow("resume", str(run)))


@pytest.mark.parametrize("affinity", ["list:;;;", "list:", "sideways", "list:0,a"])
def test_a_cpu_affinity_parsl_cannot_read_is_located(tmp_path: Path, affinity: str):
    (tmp_path / "site.yaml").write_text(f'name: mine\npools:\n  cpu: {{kind: htex, cpu_affinity: "{affinity}"}}\n')
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    out = physflow("validate", str(tmp_path / "wf.yaml"), "--site", str(tmp_path / "site.yaml"))
    assert "site.yaml:3: pools.cpu.cpu_affinity: cpu_affinity" in one_line_refusal(out)


def test_resume_refuses_a_workflow_edited_after_the_run_started(tmp_path: Path):
    run, proc = submit_folder(tmp_path, {"wf.yaml": TINY_WORKFLOW.replace("max_simulations: 2", "max_simulations: 4"),
                                         "sim.py": SIM})
    assert proc.returncode == 0, proc.stderr
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    (run / "journal.jsonl").write_text("".join(line for line in lines if '"campaign_ended"' not in line))
    text = (run / "workflow.yaml").read_text()
    (run / "workflow.yaml").write_text(text.replace("max: 1.0", "max: 100.0"))  # bounds 0-1 -> 0-100
    assert "was changed after the run started" in one_line_refusal(physflow("resume", str(run)))
    (run / "workflow.yaml").write_text(text)
    assert physflow("resume", str(run)).returncode == 0


def test_thousands_of_ranks_on_the_local_site_are_refused(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW.replace(
        'command: "{python} {workflow_dir}/sim.py {x}"', 'command: "{python} {workflow_dir}/sim.py {x}"\n  mpi: true\n'
        "  resources: {ranks: 5000, nodes: 1}"))
    assert "simulation.resources.ranks: 5000 ranks on this machine" in one_line_refusal(
        physflow("validate", str(tmp_path / "wf.yaml")))
