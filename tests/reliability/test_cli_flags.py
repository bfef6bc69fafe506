"""Flags out of range or at odds with each other are one line and exit 2, never a busy loop or silence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import physflow

pytestmark = pytest.mark.reliability


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """The smallest run folder readers accept: a journal that has begun."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "journal.jsonl").write_text(json.dumps({"event": "campaign_started", "t": 1.0, "name": "x"}) + "\n")
    (run / "transcript.jsonl").write_text(json.dumps({"t": 1.0, "agent": "planner", "type": "task",
                                                      "content": "hello"}) + "\n[1, 2]\n")
    return run


@pytest.mark.parametrize("args", [
    ["dashboard", "{run}", "--port", "99999"], ["dashboard", "{run}", "--port", "-1"],
    ["dashboard", "{run}", "--poll", "-1"], ["watch", "{run}", "--interval", "-1"],
    ["watch", "{run}", "--interval", "0"], ["results", "{run}", "--json", "--csv"],
    ["transcript", "{run}", "--agent", "nosuch"],
], ids=lambda a: " ".join(a[2:]) or a[0])
def test_a_bad_flag_is_one_line_and_exit_2(run: Path, args: list[str]):
    out = physflow(*[a.format(run=run) for a in args], timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr


def test_a_damaged_transcript_line_is_skipped(run: Path):
    out = physflow("transcript", str(run), "--json")
    assert out.returncode == 0 and [json.loads(line)["content"] for line in out.stdout.splitlines()] == ["hello"]
