"""``physflow fsck``: a damaged run is found out and mended from its journal; readers never see half a task."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from physflow.workflows import h5writer
from tests.conftest import physflow
from tests.reliability.campaigns import SIM, WORKFLOW, submit

pytestmark = pytest.mark.reliability


def fsck(run: Path, *args: str) -> tuple[int, dict]:
    out = physflow("fsck", str(run), "--json", *args)
    assert out.stderr == "", out.stderr
    return out.returncode, json.loads(out.stdout)


def test_a_clean_run_is_clean(run: Path):
    assert fsck(run) == (0, {"clean": True, "problems": [], "repaired": []})
    assert physflow("fsck", str(run)).stdout.strip() == "clean"


def test_deleted_half_written_and_forged_groups_and_a_torn_journal_line_are_repaired(run: Path):
    """The journal accounts for the whole run: what disagrees with it is rewritten from it (after a
    backup of campaign.h5 as it was)."""
    with h5py.File(run / "campaign.h5", "a") as f:
        del f["tasks/t0003"]                              # a group that never got written
        del f["tasks/t0004/metrics"]                      # a group cut short
        f["tasks/t0005"].attrs["status"] = "failed"       # a status that disagrees
        f["tasks/t0006/metrics"].attrs["loss"] = 42.0     # numbers that disagree
        del f["tasks/t0007/profile"]                      # an array lost
    journal_before = (run / "journal.jsonl").read_bytes()
    with open(run / "journal.jsonl", "ab") as fh:
        fh.write(b'{"event": "finished", "t": 1795760000.0, "task": "t00')   # killed mid-write

    code, found = fsck(run)
    assert code == 1 and not found["clean"] and found["repaired"] == []
    where = {p["task"]: p["what"] for p in found["problems"]}
    assert where["t0003"] == "finished in the journal, no group in campaign.h5"
    assert where["t0004"].startswith("half-written group")
    assert where["t0005"] == "status 'failed' in campaign.h5 but 'finished' in the journal"
    assert where["t0006"] == "metrics differ from the journal"
    assert where["t0007"] == "arrays missing: profile"
    assert any("last line torn" in p["what"] and p["task"] is None for p in found["problems"])
    text = physflow("fsck", str(run))
    assert text.returncode == 1 and "6 problem(s)" in text.stdout and "--repair" in text.stdout.splitlines()[-1]

    code, fixed = fsck(run, "--repair")
    assert code == 0 and fixed["clean"] and len(fixed["repaired"]) == len(found["problems"])
    assert (run / "journal.jsonl").read_bytes() == journal_before
    assert [p.read_bytes() for p in run.glob("journal.jsonl.torn-*")] == [b'{"event": "finished", "t": 1795760000.0, '
                                                                          b'"task": "t00']
    rows = {r["id"]: r for r in json.loads(physflow("results", str(run), "--json").stdout)}
    [backup] = run.glob("campaign.h5.before-repair-*")
    with h5py.File(backup, "r") as f:  # what the repair changed, as it was
        assert "t0003" not in f["tasks"] and f["tasks/t0006/metrics"].attrs["loss"] == 42.0
    with h5py.File(run / "campaign.h5", "r") as f:
        assert len(f["tasks"]) == 12
        for tid in ("t0003", "t0004", "t0005", "t0006", "t0007"):
            g = f[f"tasks/{tid}"]
            x = rows[tid]["params"]["x"]
            assert g.attrs["status"] == "finished" and g["metrics"].attrs["loss"] == rows[tid]["metrics"]["loss"]
            np.testing.assert_array_equal(g["profile"][...], [x, x * x])  # parsed again from tasks/<id>/
    assert fsck(run) == (0, {"clean": True, "problems": [], "repaired": []})


def test_a_group_the_journal_does_not_know_is_kept_and_no_group_is_rewritten(run: Path):
    """A result the journal has not finished means the journal lost events: the group is never
    deleted, and groups that disagree are not rewritten from a journal that forgot things (a
    missing group is still added)."""
    with h5py.File(run / "campaign.h5", "a") as f:
        del f["tasks/t0003"]
        f["tasks/t0006/metrics"].attrs["loss"] = 42.0
        f.create_group("tasks/t0099")
    code, fixed = fsck(run, "--repair")
    assert code == 1 and not fixed["clean"]
    where = {p["task"]: p["what"] for p in fixed["problems"]}
    assert where == {"t0006": "metrics differ from the journal",
                     "t0099": "group in campaign.h5 for a task the journal has not finished"}
    assert [p["task"] for p in fixed["repaired"]] == ["t0003"]
    with h5py.File(run / "campaign.h5", "r") as f:
        assert {"t0003", "t0099"} <= set(f["tasks"]) and f["tasks/t0006/metrics"].attrs["loss"] == 42.0


def test_the_index_stands_in_for_the_groups_only_while_the_file_is_what_physflow_wrote(run: Path):
    """fsck reads campaign.h5's index (one dataset, not a group per task) while the file is the
    one physflow put in place; a file changed since is read group by group, and --deep always
    reads the groups: a change that forges the file's size and time is found only by --deep."""
    h5 = run / "campaign.h5"
    assert h5writer.as_written(h5)
    assert fsck(run) == fsck(run, "--deep") == (0, {"clean": True, "problems": [], "repaired": []})
    before = h5.stat()
    with h5py.File(h5, "r+") as f:
        f["tasks/t0006/metrics"].attrs["loss"] = 42.0
    found = fsck(run)  # changed since: its groups are read
    assert found[0] == 1 and [(p["task"], p["what"]) for p in found[1]["problems"]] == [
        ("t0006", "metrics differ from the journal")]
    assert h5.stat().st_size == before.st_size
    os.utime(h5, ns=(before.st_atime_ns, before.st_mtime_ns))  # the change's traces forged away
    assert h5writer.as_written(h5) and fsck(run)[0] == 0
    assert fsck(run, "--deep")[1]["problems"] == found[1]["problems"]
    code, fixed = fsck(run, "--repair", "--deep")
    assert code == 0 and fixed["clean"] and [p["task"] for p in fixed["repaired"]] == ["t0006"]
    assert fsck(run) == fsck(run, "--deep") == (0, fixed | {"repaired": []})


def test_a_truncated_or_missing_file_is_rebuilt_whole(run: Path):
    whole = (run / "campaign.h5").read_bytes()
    (run / "campaign.h5").write_bytes(whole[: len(whole) // 3])
    code, found = fsck(run)
    assert code == 1 and found["problems"][0]["what"].startswith("campaign.h5 is unreadable")
    code, fixed = fsck(run, "--repair")
    assert code == 0 and fixed["clean"]
    assert len(list(run.glob("campaign.h5.torn-*"))) == 1  # kept for a post-mortem
    with h5py.File(run / "campaign.h5", "r") as f:
        assert len(f["tasks"]) == 12 and all("profile" in f[f"tasks/{t}"] for t in f["tasks"])
    (run / "campaign.h5").unlink()
    assert fsck(run)[0] == 1
    assert fsck(run, "--repair")[0] == 0


def test_a_corrupt_line_inside_the_journal_is_reported_not_guessed_at(run: Path):
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    lines[5] = "#" * (len(lines[5]) - 1) + "\n"  # e.g. a bad disk block
    (run / "journal.jsonl").write_text("".join(lines))
    code, found = fsck(run, "--repair")
    assert code == 1 and any("line 6 is not JSON" in p["what"] for p in found["problems"])
    rows = json.loads(physflow("results", str(run), "--json").stdout)
    assert len(rows) >= 11  # the events after it still count: only the one line's event is lost


def test_fsck_of_a_missing_run_is_one_line_exit_2(tmp_path: Path):
    out = physflow("fsck", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not a physflow run directory" in out.stderr


def test_readers_never_fail_and_never_see_half_a_task_while_the_campaign_writes(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    run = tmp_path / "run"
    proc = submit(tmp_path, run, env={"SIM_SECONDS": "0.3"})
    polls = h5_reads = 0
    seen_finished: set[str] = set()
    refused = None
    while proc.poll() is None:
        if not (run / "journal.jsonl").exists():
            time.sleep(0.05)
            continue
        out = physflow("results", str(run), "--json")
        assert out.returncode == 0 and out.stderr == "", out.stderr
        rows = json.loads(out.stdout)
        for r in rows:
            if r["status"] == "finished":  # a finished task is whole: metrics and timings
                assert "loss" in r["metrics"] and r["started"] <= r["finished"], r
                seen_finished.add(r["id"])
        status = physflow("status", str(run), "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["state"] in ("running", "finished")
        if (run / "campaign.h5").exists():  # an HDF5 reader holding the file never blocks the writer
            with h5py.File(run / "campaign.h5", "r") as f:
                for tid in f["tasks"]:
                    g = f[f"tasks/{tid}"]
                    assert {"params", "metrics", "profile"} <= set(g) and g.attrs["status"] == "finished"
                h5_reads += 1
                time.sleep(0.3)
        if refused is None and proc.poll() is None:
            refused = physflow("fsck", str(run), "--repair")
        polls += 1
    assert proc.returncode == 0
    assert refused is not None and refused.returncode == 2 and "in use by a running orchestrator" in refused.stderr
    assert polls >= 3 and h5_reads >= 1 and len(seen_finished) >= 1
    assert physflow("fsck", str(run)).returncode == 0
