"""Model servers as long-running tasks: llama.cpp locally, vLLM on a site's GPU nodes.

One code path for both. ``serve`` is the task body: it runs wherever the pool puts it (a Parsl
worker on a GPU node, a local worker, a thread), starts the server on a free port, publishes
``endpoint.json`` in the run's ``llm/`` folder (a shared filesystem on clusters) and keeps the
server up until the orchestrator writes ``stop`` or stops touching ``heartbeat`` (it was killed:
a GPU node must not serve an orphan for the rest of the allocation). ``ModelService`` is the
orchestrator's side: it submits ``serve``, waits for the endpoint to answer its health check and
hands the URL and a per-campaign API key to the agents' clients.

The API key is made fresh for every start and reaches the server only through its environment
(never an argument, which ``ps`` shows to every user of a node, and never a file).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

from physflow.errors import ServingError
from physflow.processes import die_with_parent, end_group
from physflow.serving.plans import ServerPlan

#: Seconds between the orchestrator's heartbeats, and after which a server without one stops.
HEARTBEAT_S = 5.0
ORPHAN_AFTER_S = 90.0


def free_port(bind: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _starter(cores: list[int]) -> Callable[[], None]:
    """What the server's process runs before it execs: die with its task, and keep to ``cores``
    if any (set before exec, so every thread the server starts has them)."""
    if not cores:
        return die_with_parent

    def start() -> None:
        die_with_parent()
        os.sched_setaffinity(0, cores)
    return start


def serve(plan: dict[str, Any], service_dir: str, api_key: str) -> dict[str, Any]:
    """The task body: run the server until told to stop; returns how it ended.

    Runs on the worker, so it imports nothing from the orchestrator's state and everything it
    needs comes in its arguments (Parsl ships them to the node).
    """
    p = ServerPlan(**plan)
    folder = Path(service_dir)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port(p.bind)
    host = "127.0.0.1" if p.bind == "127.0.0.1" else socket.getfqdn()
    env = {**os.environ, **p.env, p.key_env: api_key}
    with open(folder / "server.log", "ab") as log:
        log.write(f"physflow: {shlex.join(p.command(port))} on {socket.gethostname()}\n".encode())
        log.flush()
        proc = subprocess.Popen(p.command(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_starter(p.cores))
    _write_atomic(folder / "endpoint.json", json.dumps(
        {"url": f"http://{host}:{port}/v1", "host": socket.gethostname(), "pid": proc.pid}))
    reason = "exited"
    while proc.poll() is None:
        if (folder / "stop").exists():
            reason = "stopped"
            break
        try:
            if time.time() - (folder / "heartbeat").stat().st_mtime > ORPHAN_AFTER_S:
                reason = "orphaned"
                break
        except FileNotFoundError:
            pass
        time.sleep(0.5)
    if proc.poll() is None:  # the whole group: vLLM runs its tensor-parallel workers as children
        end_group(proc, grace=20.0)
    return {"reason": reason, "returncode": proc.returncode}


def wait_healthy(url: str, failed: Callable[[], str | None], timeout: float, api_key: str | None = None) -> None:
    """Poll ``url`` (an OpenAI ``/models`` endpoint) until it answers; ``failed()`` returns why
    waiting is pointless (the server died) or None."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    while time.monotonic() < deadline:
        why = failed()
        if why:
            raise ServingError(why)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:
                json.load(resp)
                return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.25)
    raise ServingError(f"model server at {url} not healthy after {timeout:.0f} s")


class ModelService:
    """``with ModelService(plan, run_dir / "llm", submit) as svc: svc.base_url, svc.api_key``

    ``submit(fn, *args) -> Future`` runs ``serve`` somewhere: a Parsl pool of the site
    (``ParslDispatcher.submit_service``) or, for a question without a campaign, a thread.
    """

    def __init__(self, plan: ServerPlan, folder: Path, submit: Callable[..., Future]) -> None:
        self.plan, self.folder, self.submit = plan, folder, submit
        self.api_key = ""
        self.base_url = ""
        self.future: Future | None = None
        self._beating = threading.Event()

    def _failed(self) -> str | None:
        if self.future is None or not self.future.done():
            return None
        log = self.folder / "server.log"
        tail = log.read_text(errors="replace")[-800:].strip() if log.exists() else ""
        exc = self.future.exception()
        if exc is not None:
            return f"the model server task failed: {type(exc).__name__}: {exc}. {tail}"
        return f"model server exited ({self.future.result()}): {tail}"

    def _heartbeat(self) -> None:
        while not self._beating.wait(HEARTBEAT_S):
            (self.folder / "heartbeat").touch()

    def start(self) -> ModelService:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in ("stop", "endpoint.json"):
            (self.folder / stale).unlink(missing_ok=True)
        (self.folder / "heartbeat").touch()
        threading.Thread(target=self._heartbeat, name="physflow-llm-heartbeat", daemon=True).start()
        self.api_key = secrets.token_urlsafe(24)
        self.future = self.submit(serve, asdict(self.plan), str(self.folder), self.api_key)
        deadline = time.monotonic() + self.plan.startup_timeout
        endpoint = self.folder / "endpoint.json"
        try:
            while not endpoint.exists():
                why = self._failed()
                if why:
                    raise ServingError(why)
                if time.monotonic() > deadline:
                    raise ServingError(f"the model server task did not start within {self.plan.startup_timeout:.0f} s "
                                       "(is the serving pool's block queued?)")
                time.sleep(0.2)
            self.base_url = json.loads(endpoint.read_text())["url"]
            wait_healthy(self.base_url + "/models", self._failed, max(1.0, deadline - time.monotonic()), self.api_key)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 40.0) -> None:
        """Tell the task to stop the server and wait for it (it kills the server's process group)."""
        self._beating.set()
        if self.future is None:
            return
        (self.folder / "stop").touch()
        try:
            self.future.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - stopping must not raise over the campaign's own outcome
            pass
        self.future = None

    def __enter__(self) -> ModelService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
