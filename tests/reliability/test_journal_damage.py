"""One bad journal line never erases finished results: it is reported and skipped, repairs add only
what the journal proves, and a run whose journal lost events is not resumed over its results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import pytest

from physflow.workflows.store import RunStore
from tests.conftest import physflow

pytestmark = pytest.mark.reliability


def insert_line(run: Path, number: int, text: bytes) -> None:
    """What ``sed -i 'NUMBERi TEXT'`` does to the journal."""
    lines = (run / "journal.jsonl").read_bytes().split(b"\n")
    lines.insert(number - 1, text)
    (run / "journal.jsonl").write_bytes(b"\n".join(lines))


def fingerprint(run: Path) -> dict[str, str]:
    """Every file of the run's results (campaign.h5, the task folders) by content."""
    files = [run / "campaign.h5", *sorted((run / "tasks").rglob("*"))]
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def groups(run: Path) -> set[str]:
    with h5py.File(run / "campaign.h5", "r") as f:
        return set(f["tasks"])


def test_a_garbage_line_is_skipped_and_nothing_finished_is_lost(run: Path):
    insert_line(run, 5, b"garbage line")
    before = fingerprint(run)
    rows = json.loads((out := physflow("results", str(run), "--json")).stdout)
    assert len(rows) == 12 and all(r["status"] == "finished" for r in rows)
    assert "journal.jsonl: line 5 is not JSON" in out.stderr and "Traceback" not in out.stderr
    status = json.loads(physflow("status", str(run), "--json").stdout)
    assert status["state"] == "finished" and status["tasks"] == {"finished": 12}

    found = json.loads(physflow("fsck", str(run), "--json").stdout)
    assert not found["clean"] and any(p["what"].startswith("journal.jsonl: line 5 is not JSON")
                                      for p in found["problems"])
    fixed = physflow("fsck", str(run), "--repair", "--json")
    assert fixed.returncode == 1 and not json.loads(fixed.stdout)["clean"]
    assert groups(run) == {r["id"] for r in rows}  # not one group deleted

    resumed = physflow("resume", str(run))
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1
    assert "resume refused, the journal lost events it had: journal.jsonl: line 5" in resumed.stderr
    assert fingerprint(run) == before  # nothing re-run, nothing overwritten


def test_an_emptied_journal_is_never_taken_for_an_empty_run(run: Path):
    (run / "journal.jsonl").write_bytes(b"")
    before = fingerprint(run)
    fixed = physflow("fsck", str(run), "--repair", "--json")
    report = json.loads(fixed.stdout)
    assert fixed.returncode == 1 and not report["clean"]
    assert sum("the journal has not finished" in p["what"] for p in report["problems"]) == 12
    assert fingerprint(run) == before and len(groups(run)) == 12
    resumed = physflow("resume", str(run))
    assert resumed.returncode == 2 and "campaign.h5 holds results of 12 task(s) the journal has not finished" \
        in resumed.stderr
    assert fingerprint(run) == before


def test_a_deleted_event_is_found_by_what_the_journal_no_longer_accounts_for(run: Path):
    lines = (run / "journal.jsonl").read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if not (b'"event": "finished"' in line and b'"task": "t0003"' in line)]
    assert len(kept) == len(lines) - 1
    (run / "journal.jsonl").write_bytes(b"".join(kept))
    before = fingerprint(run)
    resumed = physflow("resume", str(run))
    assert resumed.returncode == 2 and "(t0003)" in resumed.stderr
    physflow("fsck", str(run), "--repair")
    assert "t0003" in groups(run) and fingerprint(run) == before


@pytest.mark.parametrize("line", [b"\xff\xfe\x00\x01 binary", b"[1, 2, 3]", b'{"event": "proposed"}',
                                  b'{"event": "tokens", "agent": "planner", "tokens": "many"}',
                                  b"[" * 20000 + b"]" * 20000, b'{"event": "round", "round": ' + b"9" * 5000 + b"}"],
                         ids=["binary", "json-list", "event-without-task", "tokens-not-a-number", "deep", "huge-int"])
def test_no_reader_fails_on_a_damaged_line(run: Path, line: bytes):
    insert_line(run, 7, line)
    for args in (["status"], ["status", "--json"], ["results"], ["results", "--csv"], ["report"],
                 ["watch", "--once"], ["fsck"], ["transcript"]):
        out = physflow(*args[:1], str(run), *args[1:])
        assert "Traceback" not in out.stderr, (args, out.stderr[-800:])
        assert out.returncode in (0, 1, 2), (args, out.returncode)
    assert len(json.loads(physflow("results", str(run), "--json").stdout)) == 12


def test_a_new_task_never_takes_a_folder_that_exists(tmp_path: Path):
    store = RunStore.create(tmp_path / "run")
    (store.task_dir("t0002")).mkdir()  # a folder whose task the journal lost
    assert store.next_task_id({"t0000": None, "t0001": None}) == "t0003"
    assert store.next_task_id({"t0000": None, "t0001": None, "t0003": None}) == "t0004"


def test_task_ids_sort_in_the_order_they_were_made():
    from physflow.vocabulary.records import task_order

    ids = ["t10000", "t9999", "t0001", "t123456", "t0000"]
    assert sorted(ids, key=task_order) == ["t0000", "t0001", "t9999", "t10000", "t123456"]
