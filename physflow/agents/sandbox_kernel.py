"""The sandbox kernel: runs LLM-written code, one request at a time, keeping state between calls.

This file is executed as ``python -I -c <its source>`` inside the sandbox (see sandbox.py), so
it imports nothing from physflow. Requests and replies are JSON lines on stdin / a private copy
of stdout; anything the code prints goes into the reply, never into the protocol.

Audit hooks refuse sockets, new processes, native-library loading and writes outside the
scratch folder. They are defence in depth, not the boundary: where the machine allows it the
kernel also runs in a bubblewrap or network namespace (sandbox.py says which in the transcript).
"""

import contextlib
import io
import json
import os
import re
import sys
import traceback

SCRATCH = os.path.realpath(os.environ.get("PHYSFLOW_SCRATCH", "."))
MAX_OUTPUT = int(os.environ.get("PHYSFLOW_MAX_OUTPUT", "20000"))
MARK = "sandbox violation: "

for _module in ("numpy", "h5py", "matplotlib", "matplotlib.pyplot", "csv", "math", "statistics", "json"):
    with contextlib.suppress(Exception):
        if _module == "matplotlib.pyplot":
            import matplotlib

            matplotlib.use("Agg")
        __import__(_module)

_BLOCKED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "subprocess.Popen",
            "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
            "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "sys.addaudithook", "resource.setrlimit",
            "os.chroot", "os.setuid", "os.putenv", "gc.get_objects", "gc.get_referrers", "gc.get_referents"}
#: Modules that start processes without an audit event (``_posixsubprocess.fork_exec``): purged
#: from the interpreter before the code runs and refused on import (gc is blocked above, so no
#: reference to them can be dug up).
_NO_IMPORT = {"_posixsubprocess"}
#: Other processes' environments hold the orchestrator's API keys (the kernel's own is clean).
_SECRET_PROC_FILES = re.compile(r"^/proc/.+/(environ|mem)$")
_PATH_CHANGES = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.chmod", "os.chown",
                 "os.symlink", "os.link", "os.truncate", "os.utime"}


def _inside_scratch(path) -> bool:
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == SCRATCH or real.startswith(SCRATCH + os.sep)


def _purge_process_modules() -> None:
    for name in _NO_IMPORT:
        module = sys.modules.pop(name, None)
        for other in list(sys.modules.values()):  # e.g. subprocess._posixsubprocess, subprocess._fork_exec
            for attr, value in list(getattr(other, "__dict__", {}).items()):
                with contextlib.suppress(Exception):  # odd module attributes may raise on access
                    if value is module or getattr(value, "__module__", None) == name:
                        setattr(other, attr, None)


def _hook(event, args):
    if event in _BLOCKED:
        raise PermissionError(MARK + f"{event} is not allowed in the sandbox")
    if event == "import" and args and str(args[0]).partition(".")[0] in _NO_IMPORT:
        raise PermissionError(MARK + f"importing {args[0]} is not allowed in the sandbox")
    if event == "open" and args:
        path, mode, flags = args[0], args[1] if len(args) > 1 else "r", args[2] if len(args) > 2 else 0
        if isinstance(path, int):
            return
        with contextlib.suppress(TypeError, ValueError):
            if _SECRET_PROC_FILES.match(os.path.abspath(os.fsdecode(path))) or \
                    _SECRET_PROC_FILES.match(os.path.realpath(os.fsdecode(path))):
                raise PermissionError(MARK + f"reading {os.fsdecode(path)} is not allowed in the sandbox")
        writing = any(c in str(mode or "") for c in "wax+") or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and not _inside_scratch(path):
            raise PermissionError(MARK + f"writing {path} is not allowed: write only under {SCRATCH}")
    elif event in _PATH_CHANGES and args:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes))]
        if not all(_inside_scratch(p) for p in paths):
            raise PermissionError(MARK + f"{event} outside the scratch folder is not allowed")


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT:
        return text
    return text[:MAX_OUTPUT] + f"\n[output cut at {MAX_OUTPUT} characters of {len(text)}]"


def main() -> None:
    proto = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    namespace = {"__name__": "__sandbox__", "SCRATCH": SCRATCH}
    _purge_process_modules()
    sys.addaudithook(_hook)
    proto.write(json.dumps({"ready": True}) + "\n")
    proto.flush()
    for line in sys.stdin:
        request = json.loads(line)
        out = io.StringIO()
        reply = {"id": request.get("id"), "ok": True, "error": "", "violation": False}
        before = set(os.listdir(SCRATCH))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(compile(request["code"], "<analysis>", "exec"), namespace)  # noqa: S102 - the sandbox
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the agent
            reply["ok"] = False
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            reply["error"] = _clip("".join(line for line in tb if "sandbox_kernel" not in line)[-3000:])
            reply["violation"] = isinstance(exc, PermissionError) and MARK in str(exc)
            if isinstance(exc, MemoryError):
                reply["error"] += "\nMemoryError: the sandbox's memory limit was reached"
        reply["stdout"] = _clip(out.getvalue())
        reply["files"] = sorted(set(os.listdir(SCRATCH)) - before)
        proto.write(json.dumps(reply, default=str) + "\n")
        proto.flush()


if __name__ == "__main__":
    main()
