"""The user's view through the CLI: help, init, a detached campaign followed by watch, results
as CSV, the report with its figures, and the progress panel on a terminal."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from physflow.cli import main
from physflow.ui.watch import live_progress, watch
from tests.conftest import physflow
from tests.ui.conftest import heat_folder, submit_detached


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


@pytest.mark.parametrize("command", [(), *_commands(main)], ids=lambda c: " ".join(c) or "physflow")
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"physflow {' '.join(command)} --help has no example"


def test_main_help_documents_exit_codes():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "0 ok, 1 campaign failed or cancelled, 2 bad input" in out


@pytest.mark.parametrize("adapter", ["heat2d", "nbody_pm", "executable", "python"])
def test_init_scaffolds_a_commented_workflow_that_validates(adapter, tmp_path):
    folder = tmp_path / f"my-{adapter}"
    proc = physflow("init", str(folder), "--adapter", adapter)
    assert proc.returncode == 0, proc.stderr
    text = (folder / "workflow.yaml").read_text()
    assert f"adapter: {adapter}" in text and text.count("#") > 15  # commented
    assert str(folder / "workflow.yaml") in proc.stdout.splitlines()
    check = physflow("validate", "workflow.yaml", cwd=folder, env={"PYTHONPATH": str(folder)})
    assert (check.returncode, check.stdout.strip()) == (0, "ok"), check.stderr
    again = physflow("init", str(folder), "--adapter", adapter)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_init_refuses_an_unknown_adapter(tmp_path):
    proc = physflow("init", str(tmp_path / "x"), "--adapter", "fortran77")
    assert proc.returncode == 2 and "fortran77" in proc.stderr


def test_detached_campaign_is_followed_by_watch_and_read_as_csv_and_report(tmp_path):
    run = submit_detached(tmp_path, sims=6, slots=2, team=True)
    pid = int((run / "orchestrator.lock").read_text().split()[1])
    # Its own session: a hang-up of the submitting terminal's session does not reach it.
    assert os.getsid(pid) == pid != os.getsid(0)
    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "running"

    once = physflow("watch", str(run), "--once", "--json")
    assert once.returncode == 0 and json.loads(once.stdout)["state"] == "running"

    followed = physflow("watch", str(run), "--interval", "0.2", timeout=300)
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.strip().splitlines()
    assert len(lines) >= 2 and "state=running" in lines[0]
    last = re.search(r"state=finished tasks=finished:(\d) best=chi2=[\d.e+]+@t000\d "
                     r"hypotheses=H1:supported,H2:refuted tokens=[1-9]\d* eta=-$", lines[-1])
    assert last, lines[-1]
    assert any("H1:pending" in line for line in lines)  # the verdict arrived while it was watched

    rows = list(csv.DictReader(io.StringIO(physflow("results", str(run), "--csv").stdout)))
    assert len(rows) == int(last.group(1)) >= 3 and all(r["status"] == "finished" for r in rows)
    assert all(0.05 <= float(r["kappa"]) <= 1.0 and float(r["chi2"]) > 0 for r in rows)
    as_json = json.loads(physflow("results", str(run), "--json").stdout)
    assert [float(r["chi2"]) for r in rows] == pytest.approx([r["metrics"]["chi2"] for r in as_json])

    rep = physflow("report", str(run), "--json")
    assert rep.returncode == 0, rep.stderr
    paths = json.loads(rep.stdout)
    names = {Path(p).stem for p in paths["plots"]}
    assert {"objective", "parameters", "timeline", "tokens"} <= names
    md = Path(paths["markdown"]).read_text()
    # the prediction's region: the box of the simulation the claim named
    assert re.search(r"\| H1 \| The field is matched near kappa 0.4 m\^2/s\. \| chi2 < 1e\+06 for kappa in "
                     r"\[[\d.]+, [\d.]+\], power in \[[\d.]+, [\d.]+\] \| best chi2 = ", md)
    # the verdict computed from the numbers, the critic's explanation beside it, the author, the tasks
    assert re.search(r"\| supported \| \d simulation\(s\) in the region: chi2 = [^|]* — critic: chi2 near 1 at "
                     r"kappa 0.4 \| planner \| t\d{4}(, t\d{4})* \|", md)
    assert "**Steering.** The planner stated 2 of 2 hypotheses" in md
    assert "![" in md and "Utilization" in md and "| planner |" in md
    html = Path(paths["html"]).read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(names)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<table>" in html and "plots/" not in html  # self-contained

    # The progress panel on a terminal, nothing when not a terminal.
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    with live_progress(run, term, interval=0.05):
        time.sleep(0.2)
    assert "physflow: heat-ui" in term.getvalue() and f"finished {len(rows)}" in term.getvalue()
    pipe = io.StringIO()
    with live_progress(run, pipe):
        pass
    assert pipe.getvalue() == ""
    panel = Terminal()
    assert watch(run, once=False, as_json=False, interval=0.1, out=panel) == "finished"
    assert "latest simulations" in panel.getvalue()


def test_detach_refuses_bad_input_at_once_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("physflow: 1\nname: x\ngoal: g\nsimulation: {adapter: heat2d}\nobjective: {metric: chi2}\n")
    proc = physflow("submit", str(bad), "--detach")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.yaml:4" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_foreground_submit_shows_a_live_panel_on_a_terminal(tmp_path):
    """stderr on a pseudo-terminal gets the rich panel; stdout (a pipe) stays the run directory."""
    import pty
    import subprocess
    import sys
    import threading

    wf = heat_folder(tmp_path, sims=3, slots=2)
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = subprocess.run([sys.executable, "-m", "physflow", "submit", str(wf), "--run-dir", str(tmp_path / "run")],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=300,
                          cwd=tmp_path)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "run")
    assert "physflow: heat-ui" in screen and "╭" in screen and "latest simulations" in screen
    assert "finished 3" in screen  # the panel's last redraw shows the end
