"""A large run as the store writes it, read back by every command: the large-run benchmark's
run directory is whole, and the report draws it binned (a curve of simulations running, hexagons
of parameters) rather than a lane per slot and a marker per simulation."""

from __future__ import annotations

import json
import re

from bench.large_run import make_run
from physflow.workflows.report import MAX_MARKERS, MAX_TABLE_ROWS
from tests.conftest import physflow


def test_a_run_of_many_tasks_is_listed_checked_and_reported_binned(tmp_path):
    tasks = MAX_MARKERS + 200
    make_run(tmp_path / "run", tasks, group=500)
    run = tmp_path / "run"
    rows = json.loads(physflow("results", str(run), "--json", cwd=tmp_path).stdout)
    assert len(rows) == tasks and all(r["status"] == "finished" for r in rows)
    line = physflow("watch", str(run), "--once", cwd=tmp_path).stdout.strip()
    assert line.endswith(f"hypotheses_total={tasks // 16}") and line.count(":inconclusive") == 10
    fsck = physflow("fsck", str(run), "--json", cwd=tmp_path)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    report = physflow("report", str(run), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (run / "report.md").read_text()
    assert "over 1000 slot(s)" in text  # the budget's max_concurrent: no site said fewer
    assert f"The {MAX_TABLE_ROWS} best of {tasks} simulations" in text
    assert len(re.findall(r"^\| t\d+ \|", text, re.MULTILINE)) == MAX_TABLE_ROWS
    assert (run / "plots" / "timeline.png").stat().st_size > 0 and (run / "plots" / "parameters.png").is_file()
