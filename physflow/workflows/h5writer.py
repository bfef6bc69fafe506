"""campaign.h5 written by a process of its own, so that HDF5 never runs in the orchestrator.

h5py holds the GIL for all its work (an attribute ~100 us, ~2 ms a task), and the orchestrator's
interpreter is the one that takes results, runs the loop and submits to Parsl: at 10,000
concurrent 60-s simulations (167 results/s) campaign.h5 alone would take a third of it. So the
committer's HDF5 stage hands each batch to this process over a pipe (pickled task records and
arrays) and waits, without the GIL, for its answer: None, or the exception the write raised.

Each batch goes into a copy of campaign.h5 that then takes its name in one rename (``write_file``):
a reader keeps the whole file it opened, a new reader gets the last whole file, and a crash
mid-write leaves the previous file intact. The process ends when its pipe closes, and dies with
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


def write_file(h5_path: Path, results: list[tuple[TaskRecord, dict[str, Array]]], remove: Iterable[str] = ()) -> None:
    """Write finished tasks' groups (and drop the ``remove`` ones) in one atomic replace of
    ``h5_path`` (why a copy and a rename: the module's docstring). The copy costs ~1 ms per MB."""
    tmp = h5_path.with_name(f"{h5_path.name}.writing")
    if h5_path.exists():
        shutil.copyfile(h5_path, tmp)
    else:
        tmp.unlink(missing_ok=True)
    with h5py.File(tmp, "a") as f:
        for name in remove:
            f.pop(f"tasks/{name}", None)
        for task, arrays in results:
            write_task_hdf5(f, task, arrays)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, h5_path)


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
