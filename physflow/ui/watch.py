"""``physflow watch`` and the foreground progress of ``physflow submit``.

On a terminal: a rich panel redrawn in place (tasks by state, hypotheses and verdicts, best
metric, tokens, ETA). Elsewhere (a pipe, a log file, CI): one plain ``key=value`` line per change,
so that scripts can parse it and logs stay short.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from physflow.ui.snapshot import snapshot
from physflow.workflows.store import JournalFollower, RunStore

#: States in which the campaign no longer changes.
ENDED = ("finished", "failed", "cancelled")


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


#: Hypotheses the plain line names (the latest); a longer campaign adds ``hypotheses_total=N``.
LINE_HYPOTHESES = 10


def plain_line(snap: dict[str, Any]) -> str:
    """One parseable line: ``time state=... tasks=finished:3,submitted:2 best=... tokens=... eta=...``."""
    counts = ",".join(f"{k}:{v}" for k, v in snap["counts"].items() if v)
    best = snap["best"]
    hyps = snap["hypotheses"]
    verdicts = ",".join(f"{h['id']}:{h['verdict'] or 'pending'}" for h in hyps[-LINE_HYPOTHESES:])
    more = f" hypotheses_total={len(hyps)}" if len(hyps) > LINE_HYPOTHESES else ""
    return (f"{time.strftime('%H:%M:%S', time.localtime(snap['now']))} state={snap['state']} "
            f"tasks={counts or 'none'} "
            f"best={snap['metric']}={_g(best['value']) if best else '-'}{'@' + best['id'] if best else ''} "
            f"hypotheses={verdicts or 'none'} tokens={snap['tokens_total']} eta={_duration(snap['eta_s'])}{more}")


def rich_view(snap: dict[str, Any]) -> Any:
    """The same content as ``plain_line``, laid out as a rich panel for a terminal."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    best = snap["best"]
    head.add_row("state", f"[bold]{snap['state']}[/bold] {snap['reason']}",
                 "elapsed", _duration(snap["elapsed"]), "ETA", _duration(snap["eta_s"]))
    head.add_row("tasks", "  ".join(f"{k} {v}" for k, v in snap["counts"].items() if v) or "none",
                 "rounds", f"{snap['rounds']}/{snap['max_rounds']}",
                 "tokens", f"{snap['tokens_total']}" + (f"/{snap['max_tokens_total']}" if snap["max_tokens_total"]
                                                        else ""))
    head.add_row("best", (f"{snap['metric']} = {_g(best['value'])} ({best['id']}: "
                          + ", ".join(f"{k}={v:.4g}" for k, v in best["params"].items()) + ")") if best else "-",
                 "utilization", _g(snap["utilization"]), "", "")
    hyp = Table("id", "hypothesis", "prediction", "verdict", "evidence", title="hypotheses", expand=True)
    for h in snap["hypotheses"][-6:]:
        hyp.add_row(h["id"], f"{h['statement'][:80]} ({h.get('author', 'planner')})", (h["prediction"] or "")[:50],
                    h["verdict"] or "pending", (h["evidence"] or "")[:60])
    recent = Table("task", "status", "source", "parameters", snap["metric"], title="latest simulations",
                   expand=True)
    for t in snap["tasks"][-8:]:
        recent.add_row(t["id"], t["status"], t["source"], ", ".join(f"{k}={v:.4g}" for k, v in t["params"].items()),
                       _g(t["value"]))
    return Panel(Group(head, hyp, recent), title=f"physflow: {snap['name']}")


def watch(run_dir: Path, once: bool, as_json: bool, interval: float, out: IO[str] | None = None,
          tty: bool | None = None, follower: JournalFollower | None = None) -> str:
    """Show the run until its campaign ends (or once); returns the final state.

    ``interval`` is the polling period in seconds. JSON mode prints one snapshot object per line.
    Each look reads only what the journal gained (``follower``, made here if not given).
    """
    out = out or sys.stdout
    follower = follower or RunStore(run_dir).follower()

    def snapshot_now() -> dict[str, Any]:
        return snapshot(run_dir, state=follower.state())

    tty = out.isatty() if tty is None else tty
    if once or as_json or not tty:
        last = None
        while True:
            snap = snapshot_now()
            text = json.dumps(snap) if as_json else plain_line(snap)
            key = (snap["version"], snap["state"])
            if key != last:  # quiet: a line per change, not per poll
                print(text, file=out, flush=True)
                last = key
            if once or snap["state"] in ENDED:
                return snap["state"]
            time.sleep(interval)
    from rich.console import Console
    from rich.live import Live

    snap = snapshot_now()
    with Live(rich_view(snap), console=Console(file=out), refresh_per_second=4) as live:
        while snap["state"] not in ENDED:
            time.sleep(interval)
            snap = snapshot_now()
            live.update(rich_view(snap))
    return snap["state"]


@contextlib.contextmanager
def live_progress(run_dir: Path, stream: IO[str] | None = None, interval: float = 1.0) -> Iterator[None]:
    """While the body runs (a foreground campaign), redraw the rich panel on a terminal.

    Not a terminal: does nothing, so that the output of ``physflow submit`` stays the short log on
    stderr and the run directory on stdout. The panel replaces physflow's INFO log lines meanwhile
    (both on one terminal would tear each other).
    """
    stream = stream or sys.stderr
    if not stream.isatty():
        yield
        return
    from rich.console import Console
    from rich.live import Live

    stop = threading.Event()
    logger = logging.getLogger("physflow")
    level = logger.level
    logger.setLevel(logging.WARNING)

    follower = RunStore(run_dir).follower()  # in the orchestrator: never the whole journal a second

    def view() -> Any:
        try:
            return rich_view(snapshot(run_dir, state=follower.state()))
        except Exception as exc:  # noqa: BLE001 - a display must never stop the campaign
            return f"(progress unavailable: {exc})"

    def loop(update: Callable[[Any], None]) -> None:
        while not stop.wait(interval):
            update(view())

    with Live(view(), console=Console(file=stream), refresh_per_second=4, transient=False) as live:
        thread = threading.Thread(target=loop, args=(live.update,), name="physflow-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            live.update(view())
            logger.setLevel(level)
