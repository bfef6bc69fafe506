"""campaign.h5 written by a process of its own, so that HDF5 never runs in the orchestrator.

h5py holds the GIL for all its work (an attribute ~100 us, ~2 ms a task), and the orchestrator's
interpreter is the one that takes results, runs the loop and submits to Parsl: at 10,000
concurrent 60-s simulations (167 results/s) campaign.h5 alone would take a third of it. So the
committer's HDF5 stage hands each batch to this process over a pipe (pickled task records and
arrays) and waits, without the GIL, for its answer: None, or the exception the write raised.

Each batch goes into a copy of campaign.h5 that then takes its name in one rename (``write_file``):
a reader keeps the whole file it opened, a new reader gets the last whole file, and a crash
mid-write leaves the previous file intact. The same replace keeps ``/index`` (``INDEX``): one row
per task group, its id and a JSON record of what the group holds, so that a check of 100,000
tasks reads two datasets instead of 100,000 groups (each group's attributes cost ~0.7 ms in
h5py); ``campaign.h5.written`` beside it records the size and time of the file the writer put
in place, so a file changed since is known (``as_written``). The process ends when its pipe closes, and dies with
the orchestrator (``PR_SET_PDEATHSIG``): it never writes once a resume may hold the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import h5py

from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.task import Array

_FRAME = struct.Struct("<Q")  # a frame: its length in bytes, then a pickle


def write_task_hdf5(f: h5py.File, task: TaskRecord, arrays: dict[str, Array]) -> None:
    """One task's group, replaced whole (a resumed task never leaves a stale half behind)."""
    name = f"tasks/{task.id}"
    if name in f:
        del f[name]
    g = f.create_group(name)
    for key in ("status", "hypothesis", "source", "error", "host"):
        value = getattr(task, key)
        if value is not None:
            g.attrs[key] = value
    for key in ("created", "submitted", "started", "finished", "received", "stored"):
        value = getattr(task, key)
        if value is not None:
            g.attrs[key] = value
    g.attrs["params_json"] = json.dumps(task.params)
    g.create_group("params").attrs.update(task.params)
    g.create_group("metrics").attrs.update(task.metrics)
    for key, arr in arrays.items():
        d = g.create_dataset(key, data=arr.values)
        d.attrs["units"] = arr.units


#: ``/index/task`` (ids) and ``/index/record`` (JSON: status, params, metrics, array names), row
#: by row; a removed task's row is emptied (id ""), a rewritten task's row rewritten in place.
INDEX = "index"


def index_record(task: TaskRecord, arrays: Iterable[str]) -> dict[str, Any]:
    """What ``/index/record`` says of a task's group (and what a check compares with the journal)."""
    return {"status": task.status, "params": task.params, "metrics": task.metrics, "arrays": sorted(arrays)}


def group_record(g: h5py.Group) -> dict[str, Any]:
    """The index record of a group as it is in the file (a file written before the index, or
    changed since; fsck's deep check); status None for a half-written group (params, metrics,
    status or params_json missing). Each name and attribute is read once: an HDF5 lookup costs
    tens of microseconds, seconds on 100,000 groups."""
    members = set(g)
    attrs = g.attrs
    status = attrs.get("status")
    whole = {"params", "metrics"} <= members and "params_json" in attrs
    return {"status": status if whole else None,
            "params": dict(g["params"].attrs) if "params" in members else {},
            "metrics": dict(g["metrics"].attrs) if "metrics" in members else {},
            "arrays": sorted(members - {"params", "metrics"})}


def read_index(f: h5py.File) -> dict[str, dict[str, Any]] | None:
    """Task id -> index record, or None when the file has no index (written before it)."""
    if INDEX not in f:
        return None
    ids = f[INDEX]["task"].asstr()[...]
    records = f[INDEX]["record"].asstr()[...]
    return {tid: json.loads(rec) for tid, rec in zip(ids, records, strict=True) if tid}


def _update_index(f: h5py.File, rows: dict[str, dict[str, Any]], remove: Iterable[str]) -> None:
    """Rewrite the index rows of ``rows`` (task id -> record) and empty those of ``remove``."""
    if INDEX not in f:  # a new file, or one written before the index: every group gets its row
        kind = h5py.string_dtype()
        g = f.create_group(INDEX)
        for name in ("task", "record"):
            g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(4096,), dtype=kind)
        tasks = f.get("tasks", {})
        rows = {**{tid: group_record(tasks[tid]) for tid in tasks if tid not in rows}, **rows}
    ids, records = f[INDEX]["task"], f[INDEX]["record"]
    where = {tid: i for i, tid in enumerate(ids.asstr()[...]) if tid}
    for tid in remove:
        if tid in where:
            i = where.pop(tid)
            ids[i] = records[i] = ""
    new = [tid for tid in rows if tid not in where]
    for tid in rows.keys() & where.keys():
        records[where[tid]] = json.dumps(rows[tid])
    if new:
        n = ids.shape[0]
        ids.resize((n + len(new),))
        records.resize((n + len(new),))
        ids[n:] = new
        records[n:] = [json.dumps(rows[tid]) for tid in new]


def _identity(h5_path: Path) -> dict[str, int]:
    st = h5_path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def written_path(h5_path: Path) -> Path:
    """Where the writer records the identity of the file it last put in place."""
    return h5_path.with_name(h5_path.name + ".written")


def as_written(h5_path: Path) -> bool:
    """Whether ``h5_path`` is still the file the writer last put in place (same size and
    modification time; a copy that keeps the time, ``cp -p`` or ``rsync -a``, is the same file):
    then its index is that of its groups, written in the same replace. A file changed since has
    to be read group by group."""
    try:
        return json.loads(written_path(h5_path).read_text()) == _identity(h5_path)
    except (OSError, ValueError):
        return False


def write_file(h5_path: Path, results: list[tuple[TaskRecord, dict[str, Array]]], remove: Iterable[str] = ()) -> None:
    """Write finished tasks' groups (and drop the ``remove`` ones) in one atomic replace of
    ``h5_path`` (why a copy and a rename: the module's docstring). The copy costs ~1 ms per MB."""
    tmp = h5_path.with_name(f"{h5_path.name}.writing")
    trusted = as_written(h5_path)  # else its index may not be its groups': rebuilt from them
    if h5_path.exists():
        shutil.copyfile(h5_path, tmp)
    else:
        tmp.unlink(missing_ok=True)
    with h5py.File(tmp, "a") as f:
        if not trusted and INDEX in f:
            del f[INDEX]
        remove = list(remove)
        for name in remove:
            f.pop(f"tasks/{name}", None)
        for task, arrays in results:
            write_task_hdf5(f, task, arrays)
        _update_index(f, {task.id: index_record(task, arrays) for task, arrays in results}, remove)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, h5_path)
    written = written_path(h5_path)  # (a crash before this leaves a mismatch: a check reads every group)
    staged = written.with_name(written.name + ".tmp")
    staged.write_text(json.dumps(_identity(h5_path)))
    os.replace(staged, written)


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next object, or EOFError once the other side closed the pipe."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class Hdf5Writer:
    """The orchestrator's side: ``write`` blocks until the process wrote the batch (and raises
    what the write raised, an OSError if the process is gone). One write at a time: a resume's
    repair and the committer's HDF5 stage never interleave their batch and answer."""

    def __init__(self, h5_path: Path) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "physflow.workflows.h5writer", str(h5_path)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self._lock = threading.Lock()

    def write(self, results: list[tuple[TaskRecord, dict[str, Array]]], remove: Iterable[str] = ()) -> None:
        try:
            with self._lock:
                _send(self._proc.stdin, (results, list(remove)))  # type: ignore[arg-type]
                error = _receive(self._proc.stdout)  # type: ignore[arg-type]
        except (EOFError, OSError) as exc:
            raise OSError(f"campaign.h5's writer process ended (exit code {self._proc.poll()})") from exc
        if error is not None:
            raise error

    def close(self) -> None:
        """End the process once it wrote what it was given (it has nothing queued: writes block)."""
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # type: ignore[union-attr]
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            self._proc.stdout.close()  # type: ignore[union-attr]


def _die_with_parent() -> None:
    """SIGKILL this process when the orchestrator that started it dies (Linux; elsewhere the
    closed pipe ends it after the write in progress)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the call took effect
        os._exit(0)


def main(argv: list[str]) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the orchestrator's to handle
    h5_path = Path(argv[0])
    inp, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the replies
    sys.stdout = sys.stderr
    while True:
        try:
            results, remove = _receive(inp)
        except EOFError:
            return
        try:
            write_file(h5_path, results, remove)
            reply: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - the orchestrator decides what a failed write means
            reply = exc
        try:
            _send(out, reply)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            _send(out, OSError(str(reply)))


if __name__ == "__main__":
    main(sys.argv[1:])
