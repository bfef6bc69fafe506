"""The run directory: an fsync'd append-only journal (the truth) and an HDF5 view of it.

Every event of a campaign (proposed, submitted, finished, failed, hypothesis, verdict, ...) is a
JSON line in ``journal.jsonl``, written and fsync'd before anything else sees it. Arrays go to
``campaign.h5`` right after, by the committer's HDF5 stage through a writer process of its own
(``h5writer``: HDF5 holds the GIL, and this interpreter runs the loop). Readers
(``physflow results``, ``status``) replay the journal, so they never contend with the writer for
the HDF5 file, and a torn last line from a crash is simply ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from physflow.errors import RunDirError, SpecError
from physflow.site_configs.site import SiteSpec
from physflow.vocabulary.ranking import finite_or_none
from physflow.vocabulary.records import Hypothesis, TaskRecord, task_order
from physflow.vocabulary.steering import Claim
from physflow.vocabulary.tables import Column, H5Group, Table
from physflow.vocabulary.task import Array
from physflow.vocabulary.workflow import LoadedWorkflow, load_workflow, load_yaml_with_lines
from physflow.workflows import h5writer

JOURNAL = "journal.jsonl"
HDF5 = "campaign.h5"
LOCK = "orchestrator.lock"
#: The spec that ran (defaults filled, paths absolute), and where it came from and ran (JSON).
WORKFLOW = "workflow.yaml"
RUN_INFO = "run.json"
#: The model's qualification (``physflow qualify``; ``submit`` with ``llm.qualify``).
QUALIFY = "qualify.json"


@dataclass
class CampaignState:
    """Everything a journal says: rebuilt by ``replay`` for readers and for resume."""

    name: str = ""
    state: str = "running"
    reason: str = ""
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    hypotheses: dict[str, Hypothesis] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    #: True while the last round's planner turn has given nothing yet (no hypothesis, no proposal):
    #: an orchestrator killed mid-turn did not use that round, so resume gives it back.
    round_unanswered: bool = False
    #: How many times each task was submitted (resume resubmits an in-flight task once only).
    submits: dict[str, int] = field(default_factory=dict)
    #: Lines of the journal that are not events (skipped): the journal lost what they held.
    damage: list[Damage] = field(default_factory=list)
    #: Each round's steering: the planner's share then, the picks it made (place among the shown,
    #: whether it ran) and its measured pick quality; the critic verdicts the numbers refused.
    steering: list[dict[str, Any]] = field(default_factory=list)
    critic_refused: int = 0
    #: Model turns and the replies among them sent back as invalid (unparsable or failing a check).
    model_turns: int = 0
    model_invalid: int = 0
    #: The coder's answer to the goal at the end: request, code, output, ok (journal "conclusion").
    conclusion: dict[str, Any] | None = None


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot journal {type(value).__name__}")


class Journal:
    """Append-only JSON lines, fsync'd per group commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def append(self, events: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(e, default=_json_default, allow_nan=False) + "\n" for e in events)
        if lines:
            self._fh.write(lines)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):  # what a full disk kept in the buffer was reported already
            self._fh.close()


def torn_journal_tail(path: Path) -> int:
    """Bytes after the journal's last complete line: a crash cut the last write short. Readers
    ignore them, but an append after them would glue the next event onto the torn line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return 0
    return len(data) - (data.rfind(b"\n") + 1)


def heal_journal(path: Path) -> int:
    """Move a torn last line (see ``torn_journal_tail``) to ``journal.jsonl.torn-<time>``; returns
    how many bytes were moved. The events before it are untouched."""
    torn = torn_journal_tail(path)
    if torn:
        with open(path, "r+b") as fh:
            fh.seek(-torn, os.SEEK_END)
            tail = fh.read()
            fh.seek(-torn, os.SEEK_END)
            fh.truncate()
            os.fsync(fh.fileno())
        path.with_name(f"{JOURNAL}.torn-{int(time.time())}").write_bytes(tail)
    return torn


@dataclass(frozen=True)
class Damage:
    """A line of the journal that is not an event (1-based line number, and why): skipped by every
    reader, never taken for the end of the journal."""

    line: int
    why: str

    def __str__(self) -> str:
        return f"{JOURNAL}: line {self.line} is {self.why}"


#: What replay reads of each kind of event: key -> type. An event without one of them (or with a
#: value of another type) is damage, not an event.
EVENT_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "campaign_ended": {"state": str},
    "hypothesis": {"id": str, "statement": str},
    "verdict": {"id": str, "verdict": str},
    "round": {"round": int},
    "tokens": {"agent": str, "tokens": int},
    "model_replies": {"turns": int, "invalid": int},
    "proposed": {"task": str, "params": dict},
    **{kind: {"task": str} for kind in ("submitted", "finished", "failed", "cancelled", "requeued")},
}


def _not_an_event(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the event, "") for a line that is one, else (None, why not)."""
    try:
        event = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError as exc:  # also an integer past Python's digit limit
        return None, f"not JSON ({str(exc).split(':')[0]})"
    if not isinstance(event, dict):
        return None, f"a JSON {type(event).__name__}, not an event object"
    kind = event.get("event")
    if not isinstance(kind, str):
        return None, "an object without an event kind"
    for key, kinds in EVENT_KEYS.get(kind, {}).items():
        value = event.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            return None, f"a {kind} event without a valid {key}"
    return event, ""


@dataclass
class Cursor:
    """How far a reader has read a journal: bytes and lines, whole lines only."""

    offset: int = 0
    line: int = 0


def iter_journal(path: Path, damage: list[Damage], cursor: Cursor | None = None) -> Iterator[dict[str, Any]]:
    """The journal's events one at a time (from ``cursor`` on, advancing it), appending each line
    that is not one to ``damage``.

    A line that is not an event (garbage, binary, a JSON list, an event missing what replay
    needs) is reported with its number and skipped: the events after it still count. A torn last
    line (no newline: a crash mid-write, or a line still being written) is not damage; it is left
    out (the cursor stays before it) and ``heal_journal`` moves it aside. Read line by line, so
    that replaying a run of 100,000 tasks never holds all its events.
    """
    cursor = cursor if cursor is not None else Cursor()
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after the last line is read
    except FileNotFoundError:
        raise RunDirError(f"{path.parent}: not a physflow run directory (no {JOURNAL})") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read the journal: {exc.strerror or exc}") from None
    with fh:
        try:
            fh.seek(cursor.offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    return  # the torn last line
                cursor.offset += len(raw)
                cursor.line += 1
                event, why = _not_an_event(raw[:-1])
                if event is None:
                    damage.append(Damage(cursor.line, why))
                else:
                    yield event
        except OSError as exc:
            raise RunDirError(f"{path}: cannot read the journal: {exc.strerror or exc}") from None


def scan_journal(path: Path) -> tuple[list[dict[str, Any]], list[Damage]]:
    """Every event of the journal, and every line that is not one (``iter_journal``)."""
    damage: list[Damage] = []
    events = list(iter_journal(path, damage))
    return events, damage


def write_qualify(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``qualify.json`` into ``run_dir`` whole or not at all (a reader never sees half)."""
    path = run_dir / QUALIFY
    tmp = path.with_name(QUALIFY + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_json_default))
    os.replace(tmp, path)
    return path


def read_qualify(run_dir: Path) -> dict[str, Any] | None:
    """``qualify.json`` of ``run_dir``, or None when there is none (or it is damaged)."""
    try:
        data = json.loads((run_dir / QUALIFY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_journal(path: Path) -> list[dict[str, Any]]:
    """All complete events (see ``scan_journal``; damaged lines are skipped)."""
    return scan_journal(path)[0]


def _claim(raw: Any) -> dict[str, Any] | None:
    """A hypothesis event's claim as journaled, or None when it is absent or not a claim (a damaged
    journal must not stop a resume: the hypothesis then has no verdict from the numbers)."""
    try:
        return Claim.from_dict(raw).to_dict() if isinstance(raw, dict) else None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def _steering(e: dict[str, Any]) -> dict[str, Any]:
    """A round's steering record from its hypothesis event, keeping only well-formed picks."""
    picks = [p for p in e["picks"] if isinstance(p, dict) and isinstance(p.get("shown"), int)
             and (p.get("place") is None or isinstance(p.get("place"), int))]
    numbers = {k: e.get(k) if isinstance(e.get(k), (int, float)) else 0 for k in ("round", "share", "earned",
                                                                              "pick_quality")}
    return {**numbers, "picks": picks}


def replay(events: Iterable[dict[str, Any]]) -> CampaignState:
    """Fold journal events into the campaign's state."""
    return Replay().add(events)


class Replay:
    """The fold of journal events into a ``CampaignState``, kept open so that a journal followed
    as it grows (``JournalFollower``) folds only its new events."""

    def __init__(self) -> None:
        self.state = CampaignState()
        self._proposed_under: dict[Any, list[str]] = {}  # hypothesis id -> its tasks so far, in order

    def add(self, events: Iterable[dict[str, Any]]) -> CampaignState:
        """Fold ``events`` into the state (the same object every time) and return it."""
        for e in events:
            self._add(e)
        return self.state

    def _add(self, e: dict[str, Any]) -> None:
        st, proposed_under = self.state, self._proposed_under
        kind, t = e.get("event"), e.get("t")
        task = st.tasks.get(e.get("task", ""))
        if kind in ("campaign_started", "campaign_resumed"):
            st.name, st.started, st.pid, st.state = e.get("name", st.name), st.started or t, e.get("pid"), "running"
            st.reason, st.ended = "", None
        elif kind == "campaign_ended":
            st.state, st.reason, st.ended = e["state"], e.get("reason", ""), t
        elif kind == "hypothesis":
            st.round_unanswered = False
            h = st.hypotheses[e["id"]] = Hypothesis(
                e["id"], e["statement"], e.get("prediction", ""), e.get("round", 0), claim=_claim(e.get("claim")),
                author=str(e.get("author", "planner")))
            if isinstance(e.get("picks"), list):
                st.steering.append(_steering(e))
            # the optimizer's simulations started while the planner stated it were proposed under its id
            # (kept by id as they come: a scan of every task per hypothesis was quadratic in the run)
            h.tasks = [tid for tid in dict.fromkeys(proposed_under.get(h.id, ())) if st.tasks[tid].hypothesis == h.id]
        elif kind == "verdict" and e["id"] in st.hypotheses:
            h = st.hypotheses[e["id"]]
            h.verdict, h.evidence, h.advice = e["verdict"], e.get("evidence", ""), e.get("advice", "")
            h.analysis, h.reasoning = e.get("analysis", ""), e.get("reasoning", "")
            st.critic_refused += bool(e.get("critic_refused"))
        elif kind == "model_replies":  # a resumed run adds its own
            st.model_turns += e.get("turns", 0)
            st.model_invalid += e.get("invalid", 0)
        elif kind == "conclusion":
            st.conclusion = {k: e.get(k) for k in ("request", "code", "output", "ok")}
        elif kind == "round":
            st.rounds = max(st.rounds, e["round"])
            st.round_unanswered = True
        elif kind == "tokens":
            st.tokens[e["agent"]] = st.tokens.get(e["agent"], 0) + e["tokens"]
        elif kind == "proposed":
            # (an earlier round's held slot drawn meanwhile is no answer from the planner either)
            st.round_unanswered = st.round_unanswered and (
                e.get("source") == "backfill" or e.get("hypothesis") != f"H{st.rounds}")
            st.tasks[e["task"]] = TaskRecord(id=e["task"], params=e["params"], hypothesis=e.get("hypothesis"),
                                             source=e.get("source", "planner"), created=t)
            if e.get("hypothesis") is not None:
                proposed_under.setdefault(e["hypothesis"], []).append(e["task"])
            if e.get("hypothesis") in st.hypotheses:
                st.hypotheses[e["hypothesis"]].tasks.append(e["task"])
        elif task is None:
            return
        elif kind == "submitted":
            task.status, task.submitted = "submitted", t
            st.submits[task.id] = st.submits.get(task.id, 0) + 1
        elif kind in ("finished", "failed"):
            task.status = kind
            for key in ("started", "finished", "received", "host", "error"):
                setattr(task, key, e.get(key))
            task.stored = t
            task.metrics = {k: (float("nan") if v is None else v) for k, v in e.get("metrics", {}).items()}
            task.arrays = e.get("arrays", [])
        elif kind == "cancelled":
            task.status = "cancelled"
        elif kind == "requeued":
            task.status = "proposed"


class JournalFollower:
    """A run's state kept up to date by reading only what its journal gained since the last look:
    ``physflow watch`` and the dashboard poll a live run every second, and replaying a journal of
    100,000 tasks from its start took seconds each time. A journal replaced or cut shorter
    (``fsck --repair``) is read again from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._start(None)

    def _start(self, ident: tuple[int, int] | None) -> None:
        self._ident, self._cursor, self._replay, self.damage = ident, Cursor(), Replay(), []

    def state(self) -> CampaignState:
        """The state as of the journal's last whole line now (the same object, updated)."""
        try:
            st = os.stat(self.path)
        except OSError:
            st = None  # iter_journal says why, in one line
        ident = (st.st_dev, st.st_ino) if st else None
        if ident != self._ident or (st and st.st_size < self._cursor.offset):
            self._start(ident)
        state = self._replay.add(iter_journal(self.path, self.damage, self._cursor))
        state.damage = self.damage
        return state


def campaign_tables(root: H5Group) -> list[Table]:
    """A campaign.h5 as ``physflow ask`` shows it: one row per simulation (``<name>/tasks``), its
    status, parameters and metrics as columns; [] for any other file. Read from ``/index`` while
    the file is the one the writer put in place (``h5writer.as_written``: 100,000 rows in seconds),
    else from the groups ``h5writer.write_task_hdf5`` writes; either way the table covers
    ``tasks`` and ``index``, which the catalog then does not walk group by group."""
    f = root.file
    tasks = f.get("tasks")
    if not isinstance(tasks, h5py.Group):
        return []
    index = h5writer.read_index(f) if h5writer.as_written(Path(f.filename)) else None
    if index is None:
        index = {tid: h5writer.group_record(g) for tid, g in tasks.items() if isinstance(g, h5py.Group)}
    rows = sorted(index.items(), key=lambda row: task_order(row[0]))
    if not rows:
        return []
    columns = {"task": Column("task", np.array([tid for tid, _ in rows], dtype=str)),
               "status": Column("status", np.array([str(r["status"] or "") for _, r in rows], dtype=str))}
    for group in ("params", "metrics"):
        names = list(dict.fromkeys(name for _, r in rows for name in r[group]))
        for n in names:
            if n not in columns:
                values = [float(r[group].get(n, np.nan)) for _, r in rows]
                columns[n] = Column(n, np.array(values, dtype=float), note=f"from tasks/<id>/{group} attributes")
    arrays = sorted({name for _, r in rows for name in r["arrays"]})
    read = (f"for task, g in h5py.File({root.source})['tasks'].items(): "
            "g.attrs['status'], dict(g['params'].attrs), dict(g['metrics'].attrs)")
    note = "one row per simulation of the campaign; its parameters and metrics are columns" + (
        f"; arrays of a simulation: tasks/<task>/{{{', '.join(arrays[:20])}}}" if arrays else "")
    return [Table(root.table_name("tasks"), root.data, columns, read, note, covers=("tasks", h5writer.INDEX))]


#: Characters a shell treats specially. Parsl's providers put paths under the run directory into
#: shell command lines unquoted (LocalProvider's launch command, submit scripts), so a run
#: directory named ``a $(touch x)`` would run ``touch x`` and one with a space would not start.
SHELL_SPECIAL = re.compile(r"""[\s"'`$\\;&|<>()*?\[\]{}!#]""")


def check_shell_safe(run_dir: Path) -> None:
    """Refuse a run directory whose absolute path a shell would not read as one plain word."""
    bad = SHELL_SPECIAL.search(str(run_dir.absolute()))
    if bad:
        raise RunDirError(f"{run_dir}: the run directory's path contains {bad.group()!r}; Parsl passes it to a "
                          "shell unquoted, so choose a path without spaces or shell characters")


class RunStore:
    """A campaign's run directory, opened by the one orchestrator that writes it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.journal_path = run_dir / JOURNAL
        self.h5_path = run_dir / HDF5
        self._lock_fh = None
        self.journal: Journal | None = None
        self._h5_writer: h5writer.Hdf5Writer | None = None
        self._folders: set[str] | None = None  # tasks/ as next_task_id first listed it

    @classmethod
    def create(cls, run_dir: Path) -> RunStore:
        """A new run directory (FileExistsError if there is one: the caller says resume)."""
        check_shell_safe(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            (run_dir / "tasks").mkdir()
        except FileExistsError:
            raise
        except OSError as exc:  # under /proc, a read-only or full filesystem, a file in the way
            raise RunDirError(f"{run_dir}: cannot create the run directory: {exc.strerror or exc}") from None
        return cls(run_dir)

    def open_for_writing(self) -> None:
        """Take the run-dir lock (refused while another live orchestrator holds it) and open the
        journal for appending, after moving aside a line torn by a crash."""
        check_shell_safe(self.run_dir)
        self.lock()
        heal_journal(self.journal_path)
        self.journal = Journal(self.journal_path)
        # (started from the thread that opens the store: the process dies with that thread)
        self._h5_writer = h5writer.Hdf5Writer(self.h5_path)

    def lock(self) -> None:
        """Take the run-dir lock (refused while another live orchestrator holds it)."""
        lock_path = self.run_dir / LOCK
        self._lock_fh = open(lock_path, "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.seek(0)
            holder = self._lock_fh.read().strip() or "another process"
            self._lock_fh.close()
            raise RunDirError(f"{self.run_dir} is in use by a running orchestrator ({holder})") from None
        # The kernel drops flock when its holder dies, so a stale file never blocks a resume.
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._lock_fh.flush()

    def close(self) -> None:
        if self._h5_writer:
            self._h5_writer.close()
            self._h5_writer = None
        if self.journal:
            self.journal.close()
            self.journal = None
        if self._lock_fh:
            self._lock_fh.close()
            self._lock_fh = None

    def write_run_files(self, workflow: LoadedWorkflow, site: SiteSpec, slots: int | None = None) -> None:
        """Record what runs: the resolved workflow, and in run.json the folder and file it came
        from (its relative paths and ``{workflow_dir}`` mean the same on resume), the site as
        resolved now (placeholders filled at submit need not be set again) and ``slots``, the
        simulations its pools run at once (``validate.Checked.slots``; None: as many as
        ``budget.max_concurrent``)."""
        text = yaml.safe_dump(workflow.resolved(), sort_keys=False)
        (self.run_dir / WORKFLOW).write_text(text)
        info = {"workflow_dir": str(workflow.directory), "source": str(workflow.source or workflow.path),
                "site": site.model_dump(), "workflow_sha256": hashlib.sha256(text.encode()).hexdigest()}
        if slots is not None:
            info["slots"] = slots
        self._write_info(info)

    def slots(self, spec: dict[str, Any]) -> int:
        """Simulations this run could have in flight at once: ``budget.max_concurrent`` of its
        resolved ``spec``, or fewer where its site's pools held fewer (run.json's ``slots``). What
        the busy fraction and the workers' timeline count."""
        asked = int(spec["budget"]["max_concurrent"])
        try:
            have = json.loads((self.run_dir / RUN_INFO).read_text(encoding="utf-8")).get("slots")
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
            have = None
        return min(asked, have) if isinstance(have, int) and not isinstance(have, bool) and have >= 1 else asked

    def record_model_url(self, base_url: str) -> None:
        """Add the model server's URL to run.json (the key is never written anywhere)."""
        self._write_info({**self.run_info(), "llm_base_url": base_url})

    def run_info(self) -> dict[str, Any]:
        """run.json as written at submit; a missing or damaged one is a RunDirError naming it."""
        path = self.run_dir / RUN_INFO
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise RunDirError(f"{path}: missing or damaged ({why}); physflow wrote it at submit and needs it "
                              "to resume") from None
        if not isinstance(info, dict) or not isinstance(info.get("source"), str):
            raise RunDirError(f"{path}: damaged (not the object physflow wrote at submit)")
        return info

    def resolved_spec(self) -> dict[str, Any]:
        """The resolved workflow the run was started with (workflow.yaml) as plain data, read with
        the same bounds as any YAML; a missing or damaged file is a RunDirError naming it."""
        try:
            data, _ = load_yaml_with_lines(self.run_dir / WORKFLOW)
        except SpecError as exc:
            raise RunDirError(f"{self.run_dir}: its {WORKFLOW} cannot be read ({exc.one_line()})") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{self.run_dir / WORKFLOW}: damaged (not the mapping physflow wrote)")
        return data

    def _write_info(self, info: dict[str, Any]) -> None:
        (self.run_dir / RUN_INFO).write_text(json.dumps(info, indent=1))

    def submitted_workflow(self) -> tuple[LoadedWorkflow, SiteSpec | None]:
        """The workflow this run was submitted with (its resolved copy, standing for the file it
        came from, so relative paths resolve as at submit) and its site as resolved then (None
        for a run that predates that record)."""
        info = self.run_info()
        recorded = info.get("workflow_sha256")
        if recorded is not None:  # results of two parameter spaces, budgets or metrics never mix
            try:
                now = hashlib.sha256((self.run_dir / WORKFLOW).read_bytes()).hexdigest()
            except OSError as exc:
                raise RunDirError(f"{self.run_dir / WORKFLOW}: cannot be read ({exc.strerror or exc})") from None
            if now != recorded:
                raise RunDirError(f"{self.run_dir / WORKFLOW} was changed after the run started; the results so far "
                                  "belong to the workflow it recorded: put that back, or submit the changed workflow "
                                  "as a new run")
        site = SiteSpec.model_validate(info["site"]) if "site" in info else None
        return load_workflow(self.run_dir / WORKFLOW, source=Path(info["source"])), site

    def task_dir(self, task_id: str) -> Path:
        return self.run_dir / "tasks" / task_id

    def state(self) -> CampaignState:
        return self.follower().state()

    def follower(self) -> JournalFollower:
        """The run's state, for a reader that looks again and again (``JournalFollower``)."""
        return JournalFollower(self.journal_path)

    def is_live(self) -> bool:
        """True while an orchestrator holds this run's lock."""
        lock_path = self.run_dir / LOCK
        if not lock_path.exists():
            return False
        with open(lock_path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False

    def next_task_id(self, tasks: Mapping[str, Any]) -> str:
        """The next task's id (t0000, t0001, ...): past every id the campaign has and every folder
        under tasks/, so a folder is never reused for new parameters, not even one whose task the
        journal lost.

        tasks/ is listed once, at the first call (a stat per new task cost a campaign ~0.1-0.7 ms a
        result): the run's lock keeps every other campaign out, so a folder made after that is
        one of ``tasks``."""
        if self._folders is None:
            try:
                self._folders = {entry.name for entry in os.scandir(self.run_dir / "tasks")}
            except FileNotFoundError:
                self._folders = set()
        n = len(tasks)
        while (tid := f"t{n:04d}") in tasks or tid in self._folders:
            n += 1
        return tid

    def unaccounted(self, state: CampaignState) -> list[str]:
        """What this run directory holds that its journal does not account for — evidence that the
        journal lost events it had (damaged lines, results in campaign.h5 of tasks it has not
        finished). Empty for a sound run, a crashed one included."""
        why = [f"{d}; the event it held is lost" for d in state.damage]
        done = {t.id for t in state.tasks.values() if t.status in ("finished", "failed")}
        extra = sorted((self.stored_task_ids() or set()) - done)
        if extra:
            why.append(f"campaign.h5 holds results of {len(extra)} task(s) the journal has not finished "
                       f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})")
        # A task folder the journal does not know is no such evidence: a kill between a task's
        # submission and the fsync of its "proposed" event leaves one (next_task_id skips it).
        return why

    def stored_task_ids(self) -> set[str] | None:
        """Task groups present in campaign.h5, or None if the file is unreadable (torn by a crash)."""
        if not self.h5_path.exists():
            return set()
        try:
            with h5py.File(self.h5_path, "r") as f:
                return set(f["tasks"]) if "tasks" in f else set()
        except (OSError, KeyError):
            return None

    def repair_hdf5(self, tasks: Iterable[TaskRecord], arrays_of: Callable[[TaskRecord], dict[str, Array]]) -> int:
        """Write the HDF5 groups that the journal has but the file lacks; returns how many.

        An unreadable file (killed mid-write) is moved aside and rebuilt whole from the journal.
        """
        done = [t for t in tasks if t.status in ("finished", "failed")]
        present = self.stored_task_ids()
        if present is None:
            self.set_aside_hdf5()
            present = set()
        missing = [t for t in done if t.id not in present]
        self.rewrite_hdf5(missing, arrays_of)
        return len(missing)

    def rewrite_hdf5(self, tasks: Iterable[TaskRecord], arrays_of: Callable[[TaskRecord], dict[str, Array]],
                     remove: Iterable[str] = ()) -> None:
        """Write these done tasks' groups whole, from their journal records (and task folders)."""
        tasks, remove = list(tasks), list(remove)
        if tasks or remove:
            self.write_hdf5([(t, arrays_of(t) if t.status == "finished" else {}) for t in tasks], remove)

    def back_up_hdf5(self, why: str) -> Path:
        """Copy campaign.h5 to ``campaign.h5.<why>-<time>`` before it is changed in place of what
        it held (a repair): the copy is what it was."""
        target = self.h5_path.with_name(f"{HDF5}.{why}-{int(time.time())}")
        shutil.copyfile(self.h5_path, target)
        return target

    def set_aside_hdf5(self) -> Path:
        """Move an unreadable campaign.h5 (torn by a crash) aside; the journal can rebuild it."""
        target = self.h5_path.with_name(f"{HDF5}.torn-{int(time.time())}")
        self.h5_path.rename(target)
        return target

    def holder_pid(self) -> int | None:
        """The pid written by the orchestrator that holds (or held) the lock."""
        try:
            words = (self.run_dir / LOCK).read_text().split()
            return int(words[1]) if len(words) > 1 and words[0] == "pid" else None
        except (OSError, ValueError):
            return None

    def commit(self, events: list[dict[str, Any]]) -> None:
        """One group commit of events to the journal (fsync'd): after it, nothing is lost."""
        assert self.journal is not None, "store not opened for writing"
        self.journal.append(events)

    def write_hdf5(self, results: list[tuple[TaskRecord, dict[str, Array]]], remove: Iterable[str] = ()) -> None:
        """Write finished tasks' groups (and drop the ``remove`` ones) in one atomic replace of
        campaign.h5 (``h5writer.write_file``): by the writer process while this store is open for
        writing, so HDF5 never takes the orchestrator's interpreter; else here (fsck, tools)."""
        if self._h5_writer is not None:
            self._h5_writer.write(results, remove)
        else:
            h5writer.write_file(self.h5_path, results, remove)


#: The HDF5 stage writes once results pause this long (s) ...
HDF5_QUIET_S = 0.01
#: ... or once its oldest unwritten result is this old (s): the most campaign.h5 lags the journal.
HDF5_MAX_LAG_S = 5.0
#: ... but not before this many times the previous write's duration has passed since it ended: a
#: write copies the whole file and fsyncs it, so under a flood of short tasks a 10 ms pause alone
#: meant a write every few results, and the writes took the CPU the dispatch needed
#: (physflow/raw dispatch 0.56 against 0.89 with a 50 ms pause). So HDF5 takes at most about a
#: fifth of the time however large the file grows, and a lone result still follows after the
#: 10 ms pause.
HDF5_PAUSE_PER_WRITE = 4.0

#: Turns a worker's outcome into the task's final state; returns the arrays to store.
Finalize = Callable[[TaskRecord, dict[str, Any]], dict[str, Array]]


class Committer:
    """The single writer: takes events and results from any thread, commits them in groups.

    Two stages, each its own thread. The journal stage parses outputs (``finalize``, off Parsl's
    result thread), appends everything that arrived together with one fsync, and then calls
    ``on_committed`` for each result: from that moment the result is durable and the agents may
    see it. The HDF5 stage writes the same results' groups behind it (through the writer
    process), once results pause or at most HDF5_MAX_LAG_S later, so a slow HDF5 write (~2 ms a
    task, mostly attribute creation) never holds back the journal or the agents. A crash between
    the two stages loses nothing: resume rewrites missing groups from the journal and the task
    folders (``RunStore.repair_hdf5``).
    """

    def __init__(self, store: RunStore, finalize: Finalize,
                 on_committed: Callable[[TaskRecord], None] | None = None,
                 on_failed: Callable[[BaseException], None] | None = None) -> None:
        """``on_failed(exc)`` is called once, from the journal stage, when a commit fails (a full
        disk): the results of that batch are not durable, so they are neither shown (``on_committed``)
        nor written to campaign.h5, and ``close`` no longer raises what was reported."""
        self.store = store
        self.finalize = finalize
        self.on_committed = on_committed
        self.on_failed = on_failed
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hdf5_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._journal_stage, name="physflow-journal", daemon=True),
                         threading.Thread(target=self._hdf5_stage, name="physflow-hdf5", daemon=True)]
        for thread in self._threads:
            thread.start()

    def event(self, kind: str, **fields: Any) -> None:
        self._queue.put({"event": kind, "t": fields.pop("t", None) or time.time(), **fields})

    def result(self, task: TaskRecord, outcome: dict[str, Any]) -> None:
        """Called from any thread when a task's future completes."""
        self._queue.put((task, outcome))

    def future_done(self, task: TaskRecord, future: Future) -> None:
        """A done callback of a task's future (runs in the dispatcher's thread): its outcome, or
        the failure of the machinery (worker loss, a serialization error) as a failed task."""
        task.received = time.time()
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - a failed task, not a crash of the campaign
            outcome = {"returncode": 1, "stderr_tail": f"{type(exc).__name__}: {exc}"}
        self.result(task, outcome)

    def flush(self) -> None:
        """Block until everything queued so far is in the journal and in HDF5."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        if self._error:
            raise self._error

    def close(self) -> None:
        try:
            self.flush()
        except BaseException:
            if self.on_failed is None:  # nobody was told: the caller must hear of it
                raise
        finally:
            self._queue.put(None)
            for thread in self._threads:
                thread.join()

    def _fail(self, exc: BaseException) -> None:
        """A write of the run directory failed (the journal's or campaign.h5's): say it once."""
        if self._error is None and self.on_failed is not None:
            self.on_failed(exc)
        self._error = self._error or exc

    @staticmethod
    def _drain(q: queue.SimpleQueue[Any], timeout: float | None = None) -> list[Any]:
        """What is waiting in ``q``: at least one item (waits ``timeout`` s for it, then raises
        queue.Empty; None waits forever), at most everything."""
        batch = [q.get(timeout=timeout)]
        while True:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                return batch

    def _journal_stage(self) -> None:
        while True:
            events: list[dict[str, Any]] = []
            results: list[tuple[TaskRecord, dict[str, Array]]] = []
            markers: list[threading.Event | None] = []
            for item in self._drain(self._queue):
                if item is None or isinstance(item, threading.Event):
                    markers.append(item)
                elif isinstance(item, tuple):
                    task, outcome = item
                    arrays = self.finalize(task, outcome)
                    task.stored = time.time()
                    results.append((task, arrays))
                    events.append(_result_event(task))
                else:
                    events.append(item)
            try:
                self.store.commit(events)
            except BaseException as exc:  # noqa: BLE001 - surfaced by on_failed, or by flush()
                self._fail(exc)
                results = []  # not durable: neither shown to the agents nor put in campaign.h5
            if self.on_committed:
                for task, _ in results:
                    self.on_committed(task)
            if results:
                self._hdf5_queue.put(results)
            for marker in markers:  # flush and stop markers follow the results queued before them
                self._hdf5_queue.put(marker)
            if None in markers:
                return

    def _hdf5_stage(self) -> None:
        """Writes HDF5 groups when results pause (HDF5_QUIET_S, and no sooner than
        HDF5_PAUSE_PER_WRITE times the last write after it) or lag (HDF5_MAX_LAG_S), or on flush.

        During a flood of short tasks the writes wait for a pause, so their cost does not slow the
        dispatch of the tasks still coming; in a campaign of real simulations that is at once.
        """
        pending: list[tuple[TaskRecord, dict[str, Array]]] = []
        oldest = 0.0
        next_write = 0.0  # monotonic time before which no write starts (HDF5_PAUSE_PER_WRITE)
        while True:
            now = time.monotonic()
            wait = None if not pending else max(0.0, min(max(HDF5_QUIET_S, next_write - now),
                                                         oldest + HDF5_MAX_LAG_S - now))
            try:
                batch = self._drain(self._hdf5_queue, wait)
            except queue.Empty:
                batch = []
            markers = [item for item in batch if item is None or isinstance(item, threading.Event)]
            for item in batch:
                if isinstance(item, list):
                    oldest = oldest if pending else time.monotonic()
                    pending.extend(item)
            paused = not batch or time.monotonic() - oldest >= HDF5_MAX_LAG_S
            if pending and (paused or markers):
                started = time.monotonic()
                try:
                    self.store.write_hdf5(pending)
                except BaseException as exc:  # noqa: BLE001 - surfaced by on_failed, or by flush()
                    self._fail(exc)  # the journal has these results: resume writes their groups
                pending = []
                ended = time.monotonic()
                next_write = ended + HDF5_PAUSE_PER_WRITE * (ended - started)
            for marker in markers:
                if marker is not None:
                    marker.set()
            if None in markers:
                return


def _result_event(task: TaskRecord) -> dict[str, Any]:
    return {"event": task.status, "t": task.stored, "task": task.id,
            "metrics": {k: finite_or_none(v) for k, v in task.metrics.items()}, "arrays": task.arrays,
            "started": task.started, "finished": task.finished, "received": task.received,
            "host": task.host, "error": task.error}
