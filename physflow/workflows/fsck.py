"""``physflow fsck``: do the journal and campaign.h5 of a stopped run agree, and if not, mend them.

The journal is the truth; campaign.h5 is a view of it. Every task the journal calls finished or
failed must have its group in campaign.h5, whole (attributes, params, metrics, the arrays the
journal lists), with the same status and numbers; campaign.h5 holds nothing the journal does not.

A repair never deletes, and it trusts the journal only as far as the journal accounts for the run.
It always adds what the journal proves is missing (a group never written, arrays parsed again
from the task folders) and moves a torn last journal line or an unreadable file aside. It rewrites
a group that disagrees only when the journal is whole — no damaged line, and no result or task
folder it does not know of; otherwise the journal has lost events and a disagreeing group may
hold what it lost, so it is left as it is. Before it changes campaign.h5 it copies the file to
``campaign.h5.before-repair-<time>``. Then it checks again: what still disagrees is reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py

from physflow.errors import PhysflowError
from physflow.sim_adapters import get_adapter
from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.task import Array
from physflow.workflows import h5writer
from physflow.workflows.store import JOURNAL, RunStore, heal_journal, torn_journal_tail

ArraysOf = Callable[[TaskRecord], dict[str, Array]]


@dataclass
class Problem:
    """One disagreement: where (``task`` id, or None for a whole file) and what."""

    what: str
    task: str | None = None
    #: Evidence that the journal lost events (then no group is rewritten from it).
    lost: bool = False


@dataclass
class FsckReport:
    problems: list[Problem] = field(default_factory=list)
    repaired: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"clean": self.clean, "problems": [{"what": p.what, "task": p.task} for p in self.problems],
                "repaired": [{"what": p.what, "task": p.task} for p in self.repaired]}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal mappings of numbers, where NaN equals NaN (a non-finite metric is journaled as null)."""
    if set(a) != set(b):
        return False
    for key, x in a.items():
        y = b[key]
        x = math.nan if x is None else float(x)
        y = math.nan if y is None else float(y)
        if not (x == y or (math.isnan(x) and math.isnan(y))):
            return False
    return True


HALF_WRITTEN = "half-written group (params, metrics or status missing)"


def _record_problem(record: dict[str, Any], task: TaskRecord) -> str | None:
    """What is wrong with a group as ``record`` says it is (its index row, ``h5writer.index_record``,
    or the group read itself, ``h5writer.group_record``), or None."""
    if record["status"] is None:
        return HALF_WRITTEN
    if record["status"] != task.status:
        return f"status {record['status']!r} in campaign.h5 but {task.status!r} in the journal"
    if not _same(record["params"], task.params):
        return "params differ from the journal"
    if not _same(record["metrics"], task.metrics):
        return "metrics differ from the journal"
    missing = [name for name in task.arrays if name not in record["arrays"]]
    if missing:
        return f"arrays missing: {', '.join(missing)}"
    return None


def check(store: RunStore, deep: bool = False) -> list[Problem]:
    """Every disagreement between the journal and campaign.h5 of a run (read only).

    The groups are read from campaign.h5's index (``h5writer.INDEX``: 1 s for 100,000 tasks
    where their groups take ~70 s) when the file is the one physflow's writer last put in place
    (``h5writer.as_written``); a file changed since, one without an index, or ``deep``: every
    group itself."""
    problems = []
    torn = torn_journal_tail(store.journal_path)
    if torn:
        problems.append(Problem(f"{JOURNAL}: last line torn by a crash ({torn} bytes, ignored by readers)"))
    state = store.state()
    problems += [Problem(f"{d}; readers skip it, and the event it held is lost", lost=True) for d in state.damage]
    done = {t.id: t for t in state.tasks.values() if t.status in ("finished", "failed")}
    if not store.h5_path.exists():
        if done:
            problems.append(Problem(f"campaign.h5 is missing ({len(done)} done tasks in the journal)"))
        return problems
    try:
        trusted = not deep and h5writer.as_written(store.h5_path)
        with h5py.File(store.h5_path, "r") as f:
            groups = f["tasks"] if "tasks" in f else {}
            names = set(groups)  # one listing, not a lookup per task
            index = (h5writer.read_index(f) if trusted else None) or {}
            for tid, task in sorted(done.items()):
                if tid not in names:
                    problems.append(Problem(f"{task.status} in the journal, no group in campaign.h5", tid))
                elif (why := _record_problem(index[tid] if tid in index else h5writer.group_record(groups[tid]),
                                             task)) is not None:
                    problems.append(Problem(why, tid))
            for tid in sorted(names - set(done)):
                problems.append(Problem("group in campaign.h5 for a task the journal has not finished", tid,
                                        lost=True))
    except (OSError, KeyError, ValueError) as exc:
        problems.append(Problem(f"campaign.h5 is unreadable ({type(exc).__name__}: {str(exc)[:120]})"))
    return problems


def repair(store: RunStore, problems: list[Problem], arrays_of: ArraysOf) -> None:
    """Mend what ``check`` found, from the journal, as far as the journal proves it (see the module
    docstring); the caller holds the run's lock."""
    if any(p.what.startswith(f"{JOURNAL}: last line torn") for p in problems):
        heal_journal(store.journal_path)
    if any(p.what.startswith("campaign.h5 is unreadable") for p in problems):
        store.set_aside_hdf5()
    done = {t.id: t for t in store.state().tasks.values() if t.status in ("finished", "failed")}
    if not store.h5_path.exists():  # missing or set aside (kept): rebuilt from the journal
        store.rewrite_hdf5(list(done.values()), arrays_of)
        return
    whole = not any(p.lost for p in problems)
    stored = store.stored_task_ids() or set()
    rewrite = [done[p.task] for p in problems if p.task in done and (whole or p.task not in stored)]
    if rewrite:
        store.back_up_hdf5("before-repair")
        store.rewrite_hdf5(rewrite, arrays_of)


def fsck(store: RunStore, mend: bool = False, arrays_of: Callable[[], ArraysOf] | None = None,
         deep: bool = False) -> FsckReport:
    """Check a stopped run (taking its lock, so never one an orchestrator is writing); with
    ``mend``, repair and check again. ``arrays_of`` makes the array parser, only if needed;
    ``deep`` reads every group even where the index may be trusted (``check``)."""
    store.lock()
    try:
        report = FsckReport(problems=check(store, deep))
        if mend and report.problems:
            parse = arrays_of() if arrays_of else (lambda task: {})
            repair(store, report.problems, parse)
            after = check(store, deep)
            left = {(p.what, p.task) for p in after}
            report.repaired = [p for p in report.problems if (p.what, p.task) not in left]
            report.problems = after
        return report
    finally:
        store.close()


def run_arrays(store: RunStore) -> ArraysOf:
    """Arrays of a finished task, parsed again from its folder by the run's own adapter (built
    from the workflow the run was submitted with; its site is not needed); none when that workflow
    can no longer be loaded (its groups are still rebuilt, without arrays)."""
    try:
        adapter = get_adapter(store.submitted_workflow()[0])
    except (PhysflowError, OSError, ValueError):
        return lambda task: {}
    return lambda task: adapter.stored_arrays(store.task_dir(task.id))
