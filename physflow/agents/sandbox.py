"""Runs LLM-written code: its own process, the run directory read-only, a size-limited scratch
folder, no network, no secrets, no new processes, CPU / memory / file-size / wall-clock / output limits.

One kernel per campaign keeps state between calls (like a notebook) and is restarted after a
violation or a timeout. The walls are the kernel's (the Linux kernel's, not the Python one's),
strongest first, whichever this machine allows; ``isolation`` says which is active:

``bwrap``
    bubblewrap: a new user namespace in which the code runs as an unprivileged id (65534) with no
    capability and no_new_privs; private mount, PID, network, IPC and UTS namespaces; read-only
    binds of only what Python needs, the data files and the run directory; a size-limited tmpfs
    over ``scratch/`` whose files are copied out after each call; and the seccomp filter of
    :mod:`physflow.agents.confine`. Run as root, physflow makes that user namespace itself (uids
    0 and 65534 mapped to themselves), so bwrap can still bind paths under root's home while the
    code's id is 65534 on the host too.
``landlock + seccomp``
    where no user namespace can be made (some HPC nodes): Landlock (Linux >= 5.13) limits the
    files to the same read-only set and scratch, and (ABI >= 4 / 6) TCP and signals; the same
    seccomp filter, with signals only to the kernel itself; capabilities dropped. Scratch is on
    the real disk here, so a watchdog bounds it (``scratch_bytes``) besides RLIMIT_FSIZE.
``unsafe: rlimits + audit hooks``
    only when the workflow says ``sandbox: unsafe`` (``unsafe=True``): the kernel's Python audit
    hooks, which code in the same interpreter can undo. Without that opt-in a machine with
    neither of the above gets :class:`SandboxViolation` (one line) instead of running the code.

The audit hooks of the kernel file run in every case, as a second line that explains refusals
to the agent ("sandbox violation: ...") before the kernel's walls are even reached.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from physflow.agents import confine
from physflow.errors import SandboxViolation

#: The id the code runs as inside the namespace (and, run as root, on the host): "nobody".
SANDBOX_ID = 65534
#: The isolations ``Sandbox(isolation=...)`` accepts; "auto" tries the strong ones in order.
ISOLATIONS = ("auto", "bwrap", "landlock", "unsafe", "rlimits")
UNSAFE = "unsafe: rlimits + audit hooks"
#: The most files copied out of the scratch tmpfs after one call (a count bomb stays inside).
MAX_COPIED_FILES = 2000


@dataclass
class SandboxLimits:
    cpu_seconds: int = 120            #: CPU time of the kernel over its life (s)
    memory_bytes: int = 4 << 30       #: address space (bytes); numpy and matplotlib need ~1 GiB
    file_bytes: int = 100 << 20       #: largest file the code may write (bytes)
    wall_seconds: float = 60.0        #: per call (s)
    output_chars: int = 20_000        #: printed output returned per call
    scratch_bytes: int = 512 << 20    #: all of scratch/ together (bytes): tmpfs size, or the watchdog's bound


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


#: System paths the interpreter needs (read-only), besides ``_python_roots``.
_SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime")
_CLONE_NEWUSER = 0x10000000


def _user_namespace() -> int:
    """As root: a user namespace mapping uids/gids 0 and ``SANDBOX_ID`` to themselves; returns
    an fd of it. bwrap sets up inside it as (namespace) root, able to bind paths below root-only
    folders, and the code then runs as ``SANDBOX_ID`` - an id without any privilege on the host."""
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder: enters the new namespace and waits until the parent has its fd
        try:
            os.close(ready_r)
            os.close(go_w)
            ok = libc.unshare(_CLONE_NEWUSER) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise confine.Unavailable("unshare(CLONE_NEWUSER) was refused")
        mapping = f"0 0 1\n{SANDBOX_ID} {SANDBOX_ID} 1\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(mapping)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


class Sandbox:
    """A kernel for LLM-written code. ``data``: files outside ``run_dir`` the code may read (bound
    read-only at their resolved paths; nothing else of their folders becomes visible).
    ``isolation``: "auto" (bwrap, else Landlock + seccomp), one of those by name ("bwrap",
    "landlock"), or "unsafe" ("rlimits", its old name): audit hooks only, asked for in so many
    words. ``unsafe``: let "auto" fall back to audit hooks only where neither wall is available
    (the workflow's ``sandbox: unsafe``); otherwise ``start`` raises SandboxViolation there."""

    def __init__(self, run_dir: Path, limits: SandboxLimits | None = None, isolation: str = "auto",
                 data: list[Path] | tuple[Path, ...] = (), unsafe: bool = False) -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"sandbox isolation must be one of {', '.join(ISOLATIONS)}, not {isolation!r}")
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
        self.unsafe = unsafe or isolation in ("unsafe", "rlimits")
        self.isolation = ""
        self.warning = ""
        self.proc: subprocess.Popen | None = None
        self._id = 0
        self._child_pid = 0       # bwrap's first process inside the namespaces (for copying scratch out)
        self._copied: dict[str, tuple[int, int]] = {}
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

    def _readable(self) -> list[str]:
        return [p for p in (*_SYSTEM, *_python_roots()) if os.path.exists(p)]

    def _bwrap(self, fds: list[int]) -> tuple[list[str], int | None]:
        """bwrap's argv (the kernel's appended by the caller), and the user namespace fd to
        enter before it runs (root only). ``fds`` collects the fds bwrap must inherit."""
        if confine.seccomp_arch() is None:
            raise confine.Unavailable("no seccomp filter for this architecture")
        program_r, program_w = os.pipe()
        os.write(program_w, confine.seccomp_filter())  # < 64 KiB: fits the pipe's buffer
        os.close(program_w)
        fds.append(program_r)
        info_r, info_w = os.pipe()
        os.set_blocking(info_r, False)
        self._info = os.fdopen(info_r, "rb")
        fds.append(info_w)
        argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--unshare-cgroup-try", "--seccomp", str(program_r), "--info-fd", str(info_w)]
        userns = None
        if os.geteuid() == 0:
            userns = _user_namespace()
            fds.append(userns)
        else:
            argv += ["--unshare-user", "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID), "--disable-userns",
                     "--cap-drop", "ALL"]
        argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        binds = [("--ro-bind", p) for p in self._readable()]
        binds += [("--ro-bind", str(p)) for p in self.data]  # before the run directory: none can cover scratch/
        binds += [("--ro-bind", str(self.run_dir))]
        # bwrap makes the folders above a bind 0700 when it runs as root: open them to the sandbox's id.
        parents = sorted({str(q) for _, p in binds for q in Path(p).parents if str(q) not in ("/", "/tmp")})
        for parent in parents:
            argv += ["--perms", "0755", "--dir", parent]
        for kind, path in binds:
            argv += [kind, path, path]
        argv += ["--perms", "01777", "--size", str(self.limits.scratch_bytes), "--tmpfs", str(self.scratch),
                 "--chdir", str(self.scratch), "--clearenv"]
        for key, value in self._env().items():
            argv += ["--setenv", key, value]
        if userns is not None:
            # bwrap runs as the namespace's root; setpriv becomes SANDBOX_ID (which drops every
            # capability) and empties the bounding set, all before Python starts.
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                os.close(userns)
                raise confine.Unavailable("setpriv (util-linux) is not installed")
            argv += ["--", setpriv, f"--reuid={SANDBOX_ID}", f"--regid={SANDBOX_ID}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all"]
        else:
            argv += ["--"]
        return argv, userns

    def _landlock_preexec(self) -> None:
        """Runs in the child before ``exec``: rlimits, no capabilities, Landlock, seccomp."""
        self._limit()
        if os.geteuid() == 0:
            confine.drop_capabilities()
        confine.set_no_new_privs()
        confine.apply_landlock(read=[*self._readable(), *map(str, self.data), str(self.run_dir)],
                               write=[str(self.scratch), os.devnull])
        confine.apply_seccomp(confine.seccomp_filter(own_pid=os.getpid()))

    def _candidates(self) -> list[str]:
        if self.requested in ("unsafe", "rlimits"):
            return [UNSAFE]
        out = []
        if self.requested in ("auto", "bwrap"):
            out.append("bwrap")
        if self.requested in ("auto", "landlock"):
            out.append("landlock + seccomp")
        if self.requested == "auto" and self.unsafe:
            out.append(UNSAFE)
        return out

    def _limit(self) -> None:
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()

    def _launch(self, name: str) -> subprocess.Popen:
        fds: list[int] = []
        prefix: list[str] = []
        userns = None
        preexec = self._limit
        if name == "bwrap":
            if shutil.which("bwrap") is None:
                raise confine.Unavailable("bwrap is not installed")
            prefix, userns = self._bwrap(fds)
            if userns is not None:
                libc = ctypes.CDLL(None, use_errno=True)

                def preexec() -> None:
                    self._limit()
                    if libc.setns(userns, _CLONE_NEWUSER) != 0:
                        raise OSError(ctypes.get_errno(), "setns(user namespace)")
        elif name == "landlock + seccomp":
            if confine.seccomp_arch() is None:
                raise confine.Unavailable("no seccomp filter for this architecture")
            if confine.landlock_abi() < 1:
                raise confine.Unavailable("Landlock is not available in this kernel")
            preexec = self._landlock_preexec
        try:
            return subprocess.Popen(prefix + self._kernel_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=self.scratch, env=self._env(), pass_fds=fds,
                                    preexec_fn=preexec, text=True, bufsize=1)
        finally:
            for fd in fds:
                os.close(fd)

    def start(self) -> Sandbox:
        tried = []
        for name in self._candidates():
            try:
                proc = self._launch(name)
            except (OSError, subprocess.SubprocessError) as exc:
                tried.append(f"{name}: {exc}")
                continue
            ready = self._read(proc, 60.0)
            if ready and ready.get("ready"):
                self.proc, self.isolation = proc, name
                self._child_pid = self._bwrap_child() if name == "bwrap" else 0
                if name == UNSAFE:
                    self.warning = ("sandbox: unsafe - model-written code runs with rlimits and audit hooks only "
                                    f"({'; '.join(tried) or 'asked for'})")
                elif name != "bwrap":
                    self.warning = f"sandbox isolation is {name}" + (f" ({'; '.join(tried)})" if tried else "")
                if self.prelude:
                    self.run(self.prelude)
                return self
            proc.kill()
            proc.wait()
            err = proc.stderr.read()[-300:] if proc.stderr else ""
            tried.append(f"{name}: {' '.join(err.split()) or 'no reply'}")
        if not self.unsafe and self.requested == "auto":
            raise SandboxViolation("refusing to run model-written code: no sandbox isolation is available here ("
                                   + "; ".join(tried) + "); set 'sandbox: unsafe' in the workflow (physflow ask "
                                   "--sandbox unsafe) to run it with rlimits and audit hooks only")
        raise SandboxViolation("no sandbox could be started: " + "; ".join(tried))

    def _bwrap_child(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(self._info.read() or b"{}")
            self._info.close()
            return int(info.get("child-pid", 0))
        return 0

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

    # -- scratch -------------------------------------------------------------------------------
    def _scratch_bytes(self) -> int:
        """Bytes under the host's scratch/ (the watchdog of the Landlock rung, where scratch is on
        the real disk)."""
        total = 0
        for root, _, files in os.walk(self.scratch):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total

    def _roll_back(self, since: float) -> int:
        """Removes the files under scratch/ changed since ``since`` (epoch s): what a call that
        went past the scratch quota wrote. Returns how many."""
        removed = 0
        for root, _, files in os.walk(self.scratch):
            for name in files:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_mtime >= since:
                        os.unlink(path)
                        removed += 1
        return removed

    def _copy_out(self) -> None:
        """Copies new or changed regular files of the sandbox's scratch tmpfs to the host's
        scratch/. Walks by directory fd without following links (the code may have planted
        symlinks to host files, or swap a folder for one while we copy)."""
        if not self._child_pid:
            return
        try:
            top = os.open(f"/proc/{self._child_pid}/root{self.scratch}", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        copied = 0
        # The host's scratch/ keeps files of earlier kernels too: all of it stays within the quota.
        room = self.limits.scratch_bytes - sum(
            os.lstat(os.path.join(r, n)).st_size for r, _, fs in os.walk(self.scratch) for n in fs)
        try:
            for folder, _, files, dir_fd in os.fwalk(".", dir_fd=top):
                for name in files:
                    if copied >= MAX_COPIED_FILES:
                        return
                    rel = os.path.normpath(os.path.join(folder, name))
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
                    except OSError:
                        continue
                    with os.fdopen(fd, "rb") as src:
                        st = os.fstat(fd)
                        if not stat.S_ISREG(st.st_mode) or self._copied.get(rel) == (st.st_size, st.st_mtime_ns):
                            continue
                        dest = self.scratch / rel
                        old = dest.lstat().st_size if dest.is_file() and not dest.is_symlink() else 0
                        if st.st_size - old > room:
                            continue  # over the quota: stays inside (the code was told ENOSPC at its size)
                        room -= st.st_size - old
                        with contextlib.suppress(OSError):
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            if dest.is_symlink():
                                dest.unlink()
                            with open(dest, "wb") as out:
                                shutil.copyfileobj(src, out, 1 << 20)
                            self._copied[rel] = (st.st_size, st.st_mtime_ns)
                            copied += 1
        finally:
            os.close(top)

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
        reply, over_quota = None, 0
        # Where scratch is on the real disk, look at its size while the code runs (every 0.1 s).
        slice_ = 0.1 if self.isolation != "bwrap" else wall
        while True:
            left = wall - (time.monotonic() - started)
            if left <= 0:
                break
            reply = self._read(self.proc, min(slice_, left))
            done = reply is not None or self.proc.poll() is not None
            if self.isolation != "bwrap":  # also once the call ended: a fast fill beats any polling period
                over_quota = self._scratch_bytes()
                if over_quota > self.limits.scratch_bytes:
                    break
                over_quota = 0
            if done:
                break
        if over_quota:
            self.close()
            removed = self._roll_back(time.time() - (time.monotonic() - started) - 1.0)
            self.start()
            return SandboxResult(False, violation=True, error=(
                f"the code filled scratch/ past its {self.limits.scratch_bytes >> 20} MiB "
                f"({over_quota >> 20} MiB seen); the kernel was restarted, state was lost, and the "
                f"{removed} file(s) this call wrote were removed"))
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
        self._copy_out()
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
        self._child_pid = 0

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
