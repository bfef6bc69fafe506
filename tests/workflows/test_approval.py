"""approval: every-batch asks on a real terminal (a pty): y runs, e edits in $EDITOR, n stops."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import physflow, write_script

WORKFLOW = """\
physflow: 1
name: approve-me
goal: find the x that minimises the loss
llm: {provider: replay, script: planner.jsonl}
agents:
  domain_expert: {enabled: false}
  coder: {enabled: false}
  critic: {enabled: false}
simulation:
  adapter: executable
  command: "{python} {workflow_dir}/sim.py {x}"
  outputs: {format: json, path: result.json}
  parameters: {x: {min: 0, max: 1}}
objective: {metric: loss}
budget: {max_simulations: 6, max_concurrent: 2, max_rounds: 3, wall_time: 5m, backfill: none}
approval: every-batch
"""

SIM = "import json, sys\njson.dump({'loss': (float(sys.argv[1]) - 0.3) ** 2}, open('result.json', 'w'))\n"

# The "editor": replaces the proposed batch by x = 0.3 and x = 0.25 (what a user would type).
EDITOR = """\
import sys
open(sys.argv[1], "w").write('{"x": 0.3}\\n{"x": 0.25}\\n')
"""


def read_until(fd: int, needle: str | None, timeout: float = 120) -> str:
    """Read the terminal until ``needle`` appears (None: until the program closes it); returns
    everything read."""
    seen, deadline = "", time.monotonic() + timeout
    while needle is None or needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} on the terminal; saw:\n{seen[-2000:]}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk.decode(errors="replace")
    return seen


@contextlib.contextmanager
def submit_on_a_terminal(folder: Path, run: Path):
    """``physflow submit`` on a pty in ``folder`` (EDITOR = folder/editor.py), as a user runs it.

    Yields the terminal's file descriptor and a one-item list that receives the exit code.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(folder)
        os.environ["EDITOR"] = f"{sys.executable} {folder / 'editor.py'}"
        os.execv(sys.executable, [sys.executable, "-m", "physflow", "submit", "wf.yaml", "--run-dir", str(run)])
    code: list[int] = []
    try:
        yield fd, code
    finally:
        os.close(fd)  # a failed assertion leaves the child waiting: closing its terminal ends it
        code.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


def test_every_batch_approval_on_a_terminal_edit_then_stop(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    (tmp_path / "editor.py").write_text(EDITOR)
    hypothesis = {"hypothesis": "The loss is smallest near x = 0.1.", "bound": "below", "value": 1.0,
                  "simulations": ["A"]}
    write_script(tmp_path / "planner.jsonl", [
        {"content": hypothesis}, {"content": {**hypothesis, "hypothesis": "x near 0.5 is worse."}},
    ])
    run = tmp_path / "run"
    with submit_on_a_terminal(tmp_path, run) as (fd, code):
        first = read_until(fd, "Run this batch?")
        assert "Hypothesis H1: The loss is smallest near x = 0.1." in first and '{"x": 0.' in first
        os.write(fd, b"e\n")
        second = read_until(fd, "Run this batch?")
        assert "Hypothesis H2" in second
        os.write(fd, b"n\n")
        read_until(fd, None)
    assert code == [1]  # cancelled: the user stopped it

    rows = json.loads(physflow("results", str(run), "--json").stdout)
    ran = {r["params"]["x"]: r["source"] for r in rows}
    assert ran == {0.3: "user", 0.25: "user"}  # the edited batch, not the proposal
    assert json.loads(physflow("status", str(run), "--json").stdout)["state"] == "cancelled"
    approvals = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()
                 if '"approval"' in line]
    assert [(a["approved"], a["edited"]) for a in approvals] == [(True, True), (False, False)]


def test_edited_batch_outside_the_bounds_is_asked_again(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("every-batch", "plan"))
    (tmp_path / "sim.py").write_text(SIM)
    (tmp_path / "editor.py").write_text(textwrap.dedent("""\
        import sys
        open(sys.argv[1], "w").write('{"x": 7}\\n')
        """))
    write_script(tmp_path / "planner.jsonl", [
        {"content": {"hypothesis": "x near 0.3", "bound": "below", "value": 1.0, "simulations": ["A"]}},
    ])
    run = tmp_path / "run"
    with submit_on_a_terminal(tmp_path, run) as (fd, code):
        read_until(fd, "Run this batch?")
        os.write(fd, b"e\n")
        again = read_until(fd, "Run this batch?")
        assert "The edited batch was rejected: x=7 is outside [0.0, 1.0]" in again
        os.write(fd, b"y\n")
        read_until(fd, None)
    assert code == [0]
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert 0 <= rows[0]["params"]["x"] <= 1 and rows[0]["source"] == "optimizer"  # the batch as proposed
