"""The run store: a durable journal first, HDF5 after, one writer, readers never blocked."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import psutil
import pytest

from physflow.errors import RunDirError
from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.task import Array
from physflow.workflows import h5writer
from physflow.workflows.store import Committer, RunStore, read_journal, replay


def _finalize(task: TaskRecord, outcome: dict) -> dict:
    task.status = "finished" if outcome["returncode"] == 0 else "failed"
    task.metrics = {"loss": outcome.get("loss", float("nan"))}
    task.error = outcome.get("stderr_tail") or None
    return {"profile": Array(np.arange(3.0), "m")} if task.status == "finished" else {}


def test_results_are_journaled_then_stored(tmp_path):
    store = RunStore.create(tmp_path / "run")
    store.open_for_writing()
    seen = []
    committer = Committer(store, _finalize, on_committed=seen.append)
    committer.event("campaign_started", name="demo", pid=1)
    tasks = [TaskRecord(id=f"t{i}", params={"x": float(i)}, hypothesis="H1") for i in range(20)]
    for t in tasks:
        committer.event("proposed", task=t.id, params=t.params, hypothesis="H1", source="planner")
        committer.event("submitted", task=t.id)
    threads = [threading.Thread(target=committer.result, args=(t, {"returncode": int(t.id == "t3"), "loss": 0.5,
                                                                     "started": 1.0, "finished": 2.0}))
               for t in tasks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    committer.close()
    store.close()
    assert sorted(t.id for t in seen) == sorted(t.id for t in tasks)
    state = replay(read_journal(store.journal_path))
    assert state.tasks["t3"].status == "failed" and state.tasks["t4"].status == "finished"
    assert state.tasks["t4"].metrics == {"loss": 0.5}
    with h5py.File(store.h5_path) as f:
        assert len(f["tasks"]) == 20
        g = f["tasks/t4"]
        assert g.attrs["status"] == "finished" and g.attrs["hypothesis"] == "H1"
        assert g["params"].attrs["x"] == 4.0 and g["metrics"].attrs["loss"] == 0.5
        assert g["profile"].attrs["units"] == "m" and list(g["profile"][...]) == [0.0, 1.0, 2.0]
        assert json.loads(g.attrs["params_json"]) == {"x": 4.0}


def test_hdf5_is_written_by_a_process_of_its_own(tmp_path):
    """HDF5 holds the GIL: campaign.h5 is written by the store's writer process, which answers
    a failed write with its exception and dies with the orchestrator that started it."""
    store = RunStore.create(tmp_path / "run")
    store.open_for_writing()
    writer = store._h5_writer._proc
    assert writer.pid != os.getpid() and writer.poll() is None
    task = TaskRecord(id="t0", params={"x": 1.0}, status="finished", metrics={"loss": 0.5})
    store.write_hdf5([(task, {"profile": Array(np.arange(3.0), "m")})])
    with h5py.File(store.h5_path, "r") as f:
        assert f["tasks/t0/metrics"].attrs["loss"] == 0.5 and list(f["tasks/t0/profile"][...]) == [0, 1, 2]
    store.h5_path.unlink()
    store.h5_path.mkdir()  # a write that fails in the writer fails here, and the writer goes on
    with pytest.raises(OSError):
        store.write_hdf5([(task, {})])
    store.h5_path.rmdir()
    store.write_hdf5([(task, {})])
    store.close()
    assert writer.poll() == 0 and h5py.File(store.h5_path, "r")["tasks/t0"].attrs["status"] == "finished"

    # an orchestrator killed with SIGKILL takes its writer along (PR_SET_PDEATHSIG mid-write, else its
    # closed pipe): it never writes once a resume may hold the run
    code = ("import sys; from pathlib import Path; from physflow.workflows.store import RunStore\n"
            f"s = RunStore.create(Path({str(tmp_path / 'run2')!r})); s.open_for_writing()\n"
            "print(s._h5_writer._proc.pid, flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_campaign_h5_index_is_its_groups_through_writes_removals_rewrites_and_a_hand_edit(tmp_path):
    """``/index`` holds one record per group, the group's own: after new tasks, a rewritten task,
    a removed one, and (rebuilt from the groups) after the file was changed by hand or written
    before the index existed. ``as_written`` tells a file physflow put in place from one changed since."""
    h5 = tmp_path / "campaign.h5"

    def task(i: int, loss: float, status: str = "finished") -> TaskRecord:
        return TaskRecord(id=f"t{i}", params={"x": float(i)}, status=status, metrics={"loss": loss})

    def groups_as_index() -> dict:
        with h5py.File(h5, "r") as f:
            return {tid: h5writer.group_record(g) for tid, g in f["tasks"].items()}

    def index() -> dict:
        with h5py.File(h5, "r") as f:
            return h5writer.read_index(f)

    h5writer.write_file(h5, [(task(i, i / 10), {"profile": Array(np.arange(3.0), "m")}) for i in range(5)])
    h5writer.write_file(h5, [(task(2, float("nan"), "failed"), {}), (task(7, 0.7), {})], remove=["t3"])
    assert h5writer.as_written(h5)
    assert set(index()) == {"t0", "t1", "t2", "t4", "t7"}
    assert index()["t2"]["status"] == "failed" and index()["t0"]["arrays"] == ["profile"]
    assert index().keys() == groups_as_index().keys()
    for tid, record in groups_as_index().items():
        assert json.dumps(record) == json.dumps(index()[tid]), tid  # NaN too
    with h5py.File(h5, "a") as f:  # changed by hand: no longer what physflow wrote
        f["tasks/t1/metrics"].attrs["loss"] = 42.0
        del f["index"]  # (as a file written before the index)
    assert not h5writer.as_written(h5)
    h5writer.write_file(h5, [(task(8, 0.8), {})])
    assert h5writer.as_written(h5) and index()["t1"]["metrics"] == {"loss": 42.0} and "t8" in index()
    assert index().keys() == groups_as_index().keys()


def test_non_finite_metrics_stay_valid_json(tmp_path):
    store = RunStore.create(tmp_path / "run")
    store.open_for_writing()
    committer = Committer(store, _finalize)
    committer.event("proposed", task="t0", params={"x": 1.0})
    committer.result(TaskRecord(id="t0", params={"x": 1.0}), {"returncode": 0, "loss": float("inf")})
    committer.close()
    lines = store.journal_path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert np.isnan(replay(read_journal(store.journal_path)).tasks["t0"].metrics["loss"])


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"event": "proposed", "task": "t0", "params": {"x": 1}}\n{"event": "finished", "ta')
    events = read_journal(path)
    assert len(events) == 1 and replay(events).tasks["t0"].status == "proposed"


def _hold_lock(run_dir, ready, release):
    store = RunStore(run_dir)
    store.open_for_writing()
    ready.set()
    release.wait(30)


def test_second_orchestrator_is_refused_and_dead_ones_release(tmp_path):
    run = tmp_path / "run"
    RunStore.create(run)
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(run, ready, release))
    holder.start()
    assert ready.wait(30)
    assert RunStore(run).is_live()
    with pytest.raises(RunDirError, match="in use by a running orchestrator"):
        RunStore(run).open_for_writing()
    holder.kill()  # SIGKILL: the lock file stays, the lock does not
    holder.join()
    assert not RunStore(run).is_live()
    store = RunStore(run)
    store.open_for_writing()
    store.close()


def test_campaign_h5_is_one_row_per_simulation_for_physflow_ask(tmp_path):
    from physflow.agents.catalog import Catalog
    from physflow.workflows.store import campaign_tables

    store = RunStore.create(tmp_path / "run")
    store.write_hdf5([(TaskRecord(id="t0", params={"x": 1.0}, status="finished", metrics={"loss": 0.5}),
                       {"profile": Array(np.arange(3.0), "m")}),
                      (TaskRecord(id="t1", params={"x": 2.0}, status="failed"), {})])
    for how in ("index", "groups"):
        if how == "groups":  # a file changed since the writer put it in place: its groups are read
            h5writer.written_path(store.h5_path).unlink()
        catalog = Catalog.load([store.h5_path], file_tables=[campaign_tables])
        table = catalog.table("campaign/tasks")
        assert list(table.columns) == ["task", "status", "x", "loss"], how
        assert list(table.columns["status"].values) == ["finished", "failed"]
        assert list(table.columns["x"].values) == [1.0, 2.0] and table.columns["loss"].values[0] == 0.5
        assert np.isnan(table.columns["loss"].values[1])
        assert "tasks/<task>/{profile}" in table.note
        # the table covers the task groups and the index: neither walked nor listed again
        assert list(catalog.tables) == ["campaign/tasks"] and catalog.arrays == [], (how, list(catalog.tables))
    assert "campaign/tasks" not in Catalog.load([store.h5_path]).tables  # the store's reader, not the catalog's


def test_replay_attaches_the_optimizer_s_simulations_to_the_hypothesis_stated_after_them():
    """Simulations proposed under H1 while the planner was stating it belong to H1 once it is stated;
    a claim or picks damaged in the journal are dropped, never taken as numbers."""
    events = [
        {"event": "round", "round": 1},
        {"event": "proposed", "task": "t0000", "params": {"x": 0.2}, "hypothesis": "H1", "source": "backfill"},
        {"event": "hypothesis", "id": "H1", "statement": "s", "claim": {"metric": "loss", "bound": "below",
                                                                     "value": 1.0, "region": {"x": [0, 1]}},
         "author": "planner", "picks": [{"place": 0, "shown": 4, "ran": True}, "junk"], "share": 0.1},
        {"event": "proposed", "task": "t0001", "params": {"x": 0.4}, "hypothesis": "H1", "source": "optimizer"},
        {"event": "hypothesis", "id": "H2", "statement": "s2", "claim": "below everything", "picks": "many"},
        {"event": "model_replies", "turns": 9, "invalid": 2},
    ]
    st = replay(events)
    assert st.hypotheses["H1"].tasks == ["t0000", "t0001"]
    assert st.hypotheses["H1"].claim == {"metric": "loss", "bound": "below", "value": 1.0, "region": {"x": [0.0, 1.0]}}
    assert st.hypotheses["H2"].claim is None and st.hypotheses["H2"].author == "planner"
    assert st.steering == [{"round": 0, "share": 0.1, "earned": 0, "pick_quality": 0,
                            "picks": [{"place": 0, "shown": 4, "ran": True}]}]
    assert (st.model_turns, st.model_invalid) == (9, 2)


def test_slots_are_what_the_site_held_never_more_than_max_concurrent(tmp_path):
    """The busy fraction divides by the simulations the pools could run at once (run.json's
    ``slots``, written at submit), not by a ``max_concurrent`` the site never gave."""
    store = RunStore.create(tmp_path / "run")
    spec = {"budget": {"max_concurrent": 3}}
    assert store.slots(spec) == 3  # no run.json: the budget's
    (store.run_dir / "run.json").write_text(json.dumps({"source": "wf.yaml", "slots": 2}))
    assert store.slots(spec) == 2
    (store.run_dir / "run.json").write_text(json.dumps({"source": "wf.yaml", "slots": 8}))
    assert store.slots(spec) == 3
    for damaged in ('{"slots": "2"}', '{"slots": 0}', "[]", "{"):
        (store.run_dir / "run.json").write_text(damaged)
        assert store.slots(spec) == 3, damaged


def test_a_follower_reads_only_what_the_journal_gained_and_starts_over_when_it_is_replaced(tmp_path):
    """``physflow watch`` and the dashboard look at a live run every second: each look folds the
    lines appended since the last (a line still being written waits for its newline), and it agrees
    with a replay from the start; a journal cut shorter or replaced is read again from its start."""
    store = RunStore(tmp_path)
    journal = tmp_path / "journal.jsonl"

    def line(event: dict) -> bytes:
        return (json.dumps(event) + "\n").encode()

    journal.write_bytes(line({"event": "campaign_started", "t": 1.0, "name": "f"})
                        + line({"event": "proposed", "task": "t0001", "params": {"x": 0.1}, "t": 2.0}))
    follower = store.follower()
    assert set(follower.state().tasks) == {"t0001"}
    whole = line({"event": "proposed", "task": "t0002", "params": {"x": 0.2}, "hypothesis": None, "t": 3.0})
    with open(journal, "ab") as fh:
        fh.write(whole[:20])  # a line being written
        fh.flush()
        assert set(follower.state().tasks) == {"t0001"}
        fh.write(whole[20:] + b"not an event\n" + line({"event": "finished", "task": "t0002", "t": 4.0,
                                                        "metrics": {"y": 1.5}}))
    st = follower.state()
    assert st.tasks["t0002"].status == "finished" and st.tasks["t0002"].metrics == {"y": 1.5}
    assert [d.line for d in st.damage] == [4]
    fresh = store.state()
    assert {k: v.status for k, v in fresh.tasks.items()} == {k: v.status for k, v in st.tasks.items()}
    assert [d.line for d in fresh.damage] == [4]

    replaced = tmp_path / "other.jsonl"
    replaced.write_bytes(line({"event": "campaign_started", "t": 1.0, "name": "g"}))
    replaced.replace(journal)  # a new file under the journal's name (a repair writes one and renames it)
    st = follower.state()
    assert st.name == "g" and not st.tasks and not st.damage
