"""How much of the orchestrator's interpreter does writing campaign.h5 take, in-process vs in
the store's writer process (``physflow.workflows.h5writer``)?

h5py holds the GIL while it works, and the orchestrator's interpreter also runs the loop, the
journal and the submissions to Parsl. This script writes the same batches of task groups
(``--batches`` of ``--per-batch`` tasks, each with a 1,000-value array, into a file that grows as
a campaign's does) two ways, interleaved ``--repeats`` times:

``in-process``  ``h5writer.write_file`` called in this interpreter, as the committer's HDF5
                thread did before the writer process
``writer``      ``RunStore.write_hdf5`` of a store open for writing: the batch goes to the
                writer process and this thread waits for its answer

Meanwhile a thread of this interpreter counts loop iterations (a stand-in for the campaign's
loop); its rate during the writes, divided by its rate with nothing else running, is the share
of the interpreter the writes left to the loop (1.0: the writes took none of it). Also printed:
seconds per batch.

Run from the repository root: ``python bench/hdf5_writer.py [--batches 200] [--per-batch 10]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from physflow.vocabulary.records import TaskRecord  # noqa: E402
from physflow.vocabulary.task import Array  # noqa: E402
from physflow.workflows import h5writer  # noqa: E402
from physflow.workflows.store import RunStore  # noqa: E402


class Counter:
    """A thread that counts iterations of a pure-Python loop until stopped: its rate is how much
    of the interpreter (the GIL) it got."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for _ in range(1000):
                n += 1
            self.count = n

    def __enter__(self) -> Counter:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def batches(n: int, per: int) -> list[list[tuple[TaskRecord, dict[str, Array]]]]:
    out, k = [], 0
    for _ in range(n):
        batch = []
        for _ in range(per):
            task = TaskRecord(id=f"t{k:06d}", params={"x": k / 7, "y": 1.0}, status="finished",
                              metrics={"loss": k / 3, "chi2": 1.5}, created=1.0, submitted=2.0, started=3.0,
                              finished=4.0, received=5.0, stored=6.0, host="node0", source="optimizer")
            batch.append((task, {"profile": Array(np.linspace(0, 1, 1000), "m")}))
            k += 1
        out.append(batch)
    return out


def run(mode: str, work: list, root: Path) -> tuple[float, float]:
    """(loop rate during the writes, seconds per batch) for one mode, in a fresh run directory."""
    store = RunStore.create(root / f"{mode}-{time.monotonic_ns()}")
    if mode == "writer":
        store.open_for_writing()
    try:
        with Counter() as counter:
            started = time.perf_counter()
            for batch in work:
                if mode == "writer":
                    store.write_hdf5(batch)
                else:
                    h5writer.write_file(store.h5_path, batch)
            elapsed = time.perf_counter() - started
    finally:
        store.close()
    return counter.rate, elapsed / len(work)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--per-batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    work = batches(args.batches, args.per_batch)
    with Counter() as idle:
        time.sleep(2.0)
    rows: dict[str, list[tuple[float, float]]] = {"in-process": [], "writer": []}
    with tempfile.TemporaryDirectory(prefix="physflow-h5bench-") as tmp:
        for _ in range(args.repeats):
            for mode in rows:
                rows[mode].append(run(mode, work, Path(tmp)))
    print(f"{args.batches} batches of {args.per_batch} tasks; loop alone {idle.rate:,.0f} iterations/s")
    print(f"  {'mode':<11} {'loop share':>10} {'s/batch':>9}   (median of {args.repeats})")
    share = {}
    for mode, results in rows.items():
        share[mode] = statistics.median(r for r, _ in results) / idle.rate
        print(f"  {mode:<11} {share[mode]:>10.2f} {statistics.median(s for _, s in results):>9.4f}")
    print(f"  loop share, writer / in-process: {share['writer'] / share['in-process']:.2f}")


if __name__ == "__main__":
    main()
