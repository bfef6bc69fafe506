"""Runs LLM-written code: its own process, the run directory read-only but for a scratch folder,
no network, no secrets, CPU / memory / file-size / wall-clock / output limits.

One kernel per campaign keeps state between calls (like a notebook) and is restarted after a
violation or a timeout. Isolation, strongest first, whichever this machine allows:
``bwrap`` (read-only binds of only what Python needs, private network, PID and IPC namespaces),
then ``unshare --net`` (no network), then rlimits plus the kernel's audit hooks alone — which
HPC compute nodes without user namespaces may force; ``isolation`` says which is active.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from physflow.errors import SandboxViolation


@dataclass
class SandboxLimits:
    cpu_seconds: int = 120            #: CPU time of the kernel over its life (s)
    memory_bytes: int = 4 << 30       #: address space (bytes); numpy and matplotlib need ~1 GiB
    file_bytes: int = 100 << 20       #: largest file the code may write (bytes)
    wall_seconds: float = 60.0        #: per call (s)
    output_chars: int = 20_000        #: printed output returned per call


@dataclass
class SandboxResult:
    ok: bool
    stdout: str = ""
    error: str = ""
    violation: bool = False
    timed_out: bool = False
    files: list[str] = field(default_factory=list)

    def as_text(self) -> str:
        """What the agent reads back."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip())
        if self.files:
            parts.append("files written: " + ", ".join(self.files))
        if self.error:
            parts.append(("SANDBOX VIOLATION (kernel restarted): " if self.violation else "error: ") + self.error)
        return "\n".join(parts) or "(no output)"


def _python_roots() -> list[str]:
    """Folders the interpreter and its packages live in (bound read-only into the sandbox)."""
    roots = {sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(r for r in roots if r and os.path.isdir(r))


class Sandbox:
    """A kernel for LLM-written code. ``data``: files outside ``run_dir`` the code may read (bound
    read-only at their resolved paths; nothing else of their folders becomes visible)."""

    def __init__(self, run_dir: Path, limits: SandboxLimits | None = None, isolation: str = "auto",
                 data: list[Path] | tuple[Path, ...] = ()) -> None:
        self.run_dir = run_dir.resolve()
        self.data = [Path(p).resolve() for p in data]
        not_files = [str(p) for p in self.data if not p.is_file()]
        if not_files:
            # Files only: binding a folder (say the user's home) would show the code far more
            # than the data it was given.
            raise ValueError(f"sandbox data must be existing files: {', '.join(not_files)}")
        self.scratch = self.run_dir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.limits = limits or SandboxLimits()
        self.requested = isolation
        self.isolation = ""
        self.warning = ""
        self.proc: subprocess.Popen | None = None
        self._id = 0
        #: Code that sets up the kernel's state (e.g. the campaign's results); run again after a restart.
        self.prelude = ""

    # -- isolation -----------------------------------------------------------------------------
    def _kernel_argv(self) -> list[str]:
        source = resources.files("physflow.agents").joinpath("sandbox_kernel.py").read_text()
        return [sys.executable, "-I", "-c", source]

    def _env(self) -> dict[str, str]:
        # A fresh environment: API keys and tokens of the orchestrator never reach LLM code.
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.scratch), "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PHYSFLOW_SCRATCH": str(self.scratch),
                "PHYSFLOW_MAX_OUTPUT": str(self.limits.output_chars), "MPLCONFIGDIR": str(self.scratch)}

    def _bwrap(self) -> list[str]:
        argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        for path in ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime", *_python_roots()):
            if os.path.exists(path):
                argv += ["--ro-bind", path, path]
        for path in self.data:  # before the run directory, so no data bind can cover scratch/
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--ro-bind", str(self.run_dir), str(self.run_dir), "--bind", str(self.scratch), str(self.scratch),
                 "--chdir", str(self.scratch), "--clearenv"]
        for key, value in self._env().items():
            argv += ["--setenv", key, value]
        return argv

    def _candidates(self) -> list[tuple[str, list[str]]]:
        out = []
        if self.requested in ("auto", "bwrap") and shutil.which("bwrap"):
            out.append(("bwrap", self._bwrap()))
        if self.requested in ("auto", "unshare") and shutil.which("unshare"):
            out.append(("unshare --net", ["unshare", "--net", "--"]))
        if self.requested in ("auto", "rlimits"):
            out.append(("rlimits + audit hooks", []))
        return out

    def _limit(self) -> None:
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()

    def start(self) -> Sandbox:
        tried = []
        for name, prefix in self._candidates():
            proc = subprocess.Popen(prefix + self._kernel_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=self.scratch, env=self._env(),
                                    preexec_fn=self._limit, text=True, bufsize=1)
            ready = self._read(proc, 60.0)
            if ready and ready.get("ready"):
                self.proc, self.isolation = proc, name
                if name != "bwrap":
                    self.warning = (f"sandbox isolation is {name} only ({'; '.join(tried) or 'bwrap not found'}): "
                                    "weaker than a namespace sandbox")
                if self.prelude:
                    self.run(self.prelude)
                return self
            proc.kill()
            err = proc.stderr.read()[-300:] if proc.stderr else ""
            tried.append(f"{name} failed: {err.strip() or 'no reply'}")
        raise SandboxViolation("no sandbox could be started: " + "; ".join(tried))

    @staticmethod
    def _read(proc: subprocess.Popen, timeout: float) -> dict | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = proc.stdout.readline()
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def run(self, code: str, timeout: float | None = None) -> SandboxResult:
        """Run ``code`` in the kernel; never raises for anything the code does."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc and self.proc.stdin
        self._id += 1
        started = time.monotonic()
        wall = timeout or self.limits.wall_seconds
        try:
            self.proc.stdin.write(json.dumps({"id": self._id, "code": code}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.restart()
            return SandboxResult(False, error="the sandbox kernel had died; it was restarted, state was lost")
        reply = self._read(self.proc, wall)
        if reply is None:
            died = self.proc.poll() is not None
            code_ = self.proc.returncode
            self.restart()
            if died:
                why = "CPU-time limit" if code_ in (-9, -24) else f"exit code {code_}"
                return SandboxResult(False, error=f"the code killed the sandbox kernel ({why}); it was restarted, "
                                                  "state was lost", violation=True)
            return SandboxResult(False, timed_out=True, error=f"timed out after {time.monotonic() - started:.0f} s "
                                 f"(limit {wall:.0f} s); the kernel was restarted, state was lost")
        result = SandboxResult(ok=reply["ok"], stdout=reply.get("stdout", ""), error=reply.get("error", ""),
                               violation=reply.get("violation", False), files=reply.get("files", []))
        if result.violation:
            self.restart()
        return result

    def set_prelude(self, code: str) -> SandboxResult:
        """Run ``code`` now and again whenever the kernel restarts, so a violation by one piece of
        LLM code does not take away the data the next piece is promised."""
        self.prelude = code
        return self.run(code)

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
            self.proc = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
