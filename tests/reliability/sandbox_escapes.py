"""Escape attempts against physflow's sandbox, run for real; the harness of test_sandbox_escape.py.

Run only inside a private mount namespace (the test starts it under ``unshare -m --propagation
private``): an escape that worked could otherwise mount over this machine's folders.

    python sandbox_escapes.py ISOLATION WORKDIR [--as-nobody]

As root with ``--as-nobody``, it first makes the interpreter, the repository and WORKDIR
reachable by uid 65534 inside this mount namespace (a 0755 tmpfs over a root-only folder such as
``/root``, with the needed subfolders bound back), then runs itself again as 65534 with setpriv.
It writes ``WORKDIR/results.json``: for each attempt, whether it was stopped, and what was seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

NOBODY = 65534
SECRET = "sk-fake-orchestrator-secret-0123456789"
#: Clears the kernel's audit-hook tables from the code's side: what the hostile tester did first.
UNHOOK = """\
import re, sys
_m = sys.modules['__main__']
for _t in ('_BLOCKED', '_NO_IMPORT', '_PATH_CHANGES'):
    getattr(_m, _t).clear()
_m._SECRET_PROC_FILES = re.compile('^$')
_m._inside_scratch = lambda path: True
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def err():
    import os
    return os.strerror(ctypes.get_errno())
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reachable_views(paths: list[Path]) -> None:
    """Root, in a private mount namespace: let uid 65534 traverse to ``paths``. For each
    folder on the way that is closed to others (e.g. /root, pytest's 0700 basetemp and the 0700
    numbered folder inside it), put a 0755 tmpfs over it and bind back only the subfolder on the
    way to ``paths``. Outer folders come first (a prefix sorts first), so an inner closed folder is
    reached through its outer view and its original is what gets stashed."""
    closed: dict[Path, set[str]] = {}
    for path in paths:
        for parent in reversed(path.parents):
            if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
                closed.setdefault(parent, set()).add(path.relative_to(parent).parts[0])
    stash = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/run")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "physflow-stash", str(stash)], check=True)
    for n, (folder, children) in enumerate(sorted(closed.items())):
        for child in children:
            (stash / f"{n}-{child}").mkdir()
            subprocess.run(["mount", "--bind", str(folder / child), str(stash / f"{n}-{child}")], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "physflow-view", str(folder)], check=True)
        for child in children:
            (folder / child).mkdir()
            subprocess.run(["mount", "--bind", str(stash / f"{n}-{child}"), str(folder / child)], check=True)


def attempts(box, work: Path, data: Path, run: Path, sleeper: subprocess.Popen, port: int) -> dict[str, dict]:
    """Every escape attempt, each real code given to ``box``; returns name -> {stopped, seen}."""
    out: dict[str, dict] = {}
    campaign = run / "campaign.h5"
    before = {"data": _sha(data), "campaign": _sha(campaign), "mounts": Path("/proc/self/mountinfo").read_text()}

    def attempt(name: str, code: str, escaped, timeout: float | None = None) -> None:
        started = time.monotonic()
        try:
            res = box.run(code, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the code broke the sandbox itself: an escape too
            out[name] = {"stopped": False, "seen": f"the sandbox failed: {exc!r}"[-600:], "seconds": 0}
            return
        seen = (res.stdout + res.error)[-600:]
        out[name] = {"stopped": not escaped(res), "seen": seen, "seconds": round(time.monotonic() - started, 2)}

    attempt("read a file outside the run dir", f"print(open({str(work / 'secret.txt')!r}).read())",
            lambda r: "top-secret" in r.stdout)
    attempt("write the --data file", UNHOOK + f"open({str(data)!r}, 'a').write('forged row\\n')",
            lambda r: _sha(data) != before["data"])
    attempt("write into the run dir", UNHOOK + f"open({str(run / 'forged.txt')!r}, 'w').write('x')",
            lambda r: (run / "forged.txt").exists())
    attempt("tamper with campaign.h5", UNHOOK + f"import h5py\nh5py.File({str(campaign)!r}, 'r+')['x'] = 1",
            lambda r: _sha(campaign) != before["campaign"])
    remount = UNHOOK + (
        f"MS_REMOUNT, MS_BIND = 32, 4096\n"
        f"for target in ({str(run)!r}, {str(data)!r}, '/'):\n"
        f"    rc = libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND, None)\n"
        f"    print('remount', target, rc, err())\n"
        f"open({str(run / 'after-remount.txt')!r}, 'w').write('x')\n")
    attempt("remount a read-only bind read-write", remount,
            lambda r: (run / "after-remount.txt").exists() or " 0 Success" in r.stdout)
    attempt("mount a tmpfs", UNHOOK + "for t in (b'/tmp', b'/usr', SCRATCH.encode()):\n"
            "    print('mount', t, libc.mount(b'none', t, b'tmpfs', 0, None), err())",
            lambda r: " 0 Success" in r.stdout or Path("/proc/self/mountinfo").read_text() != before["mounts"])
    attempt("open a TCP socket to the host", UNHOOK + "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "s.sendall(b'escaped')\nprint('connected')",
            lambda r: "connected" in r.stdout)
    attempt("raw socket families (inet6, netlink, packet)", UNHOOK + "import socket\nok = []\n"
            "for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):\n"
            "    try:\n        socket.socket(fam, socket.SOCK_RAW if fam == socket.AF_PACKET else socket.SOCK_DGRAM)\n"
            "        ok.append(int(fam))\n    except OSError as e:\n        print(fam, e)\nprint('opened', ok)",
            lambda r: "opened []" not in r.stdout)
    attempt("fork bomb", UNHOOK + "n = 0\nfor _ in range(200):\n    pid = libc.fork()\n"
            "    if pid == 0:\n        libc._exit(0)\n    if pid > 0:\n        n += 1\nprint('forked', n, err())",
            lambda r: "forked 0 " not in r.stdout)
    attempt("start a process", UNHOOK + "import os\n"
            "os.posix_spawn('/bin/sh', ['sh', '-c', 'true'], {})\nprint('spawned')",
            lambda r: "spawned" in r.stdout)
    attempt("allocate 30 GiB", "import numpy as np\nbig = np.ones(30 * 1024**3 // 8)\nprint('allocated', big.sum())",
            lambda r: "allocated" in r.stdout)
    attempt("infinite loop", "while True:\n    pass", lambda r: not r.timed_out, timeout=3)
    attempt("read the environment and /proc/*/environ", UNHOOK + "import os, glob\nprint(dict(os.environ))\n"
            "for p in ['/proc/self/environ', f'/proc/{os.getppid()}/environ', '/proc/1/environ',\n"
            # the orchestrator (this harness, holding the secret) and its parent, by their host pids
            f"          '/proc/{os.getpid()}/environ', '/proc/{os.getppid()}/environ']"
            " + glob.glob('/proc/*/environ'):\n"
            "    try:\n        print(p, open(p, 'rb').read())\n    except OSError as e:\n        print(p, e)",
            lambda r: SECRET in r.stdout + r.error)
    attempt("kill a host process", UNHOOK + f"import os, signal\nfor sig in (signal.SIGKILL,):\n"
            f"    try:\n        os.kill({sleeper.pid}, sig)\n    except OSError as e:\n        print('kill', e)\n"
            "for pid in (-1,):\n    print('kill -1', libc.kill(-1, 9), err())\n"
            f"fd = libc.syscall(434, {sleeper.pid}, 0)\nprint('pidfd_open', fd, err())\n"
            "print('pidfd_send_signal', libc.syscall(424, fd, 9, None, 0), err())",
            lambda r: sleeper.poll() is not None)
    attempt("ptrace a host process", UNHOOK + f"print('attach', libc.ptrace(16, {sleeper.pid}, None, None), err())\n"
            "import os\nprint('attach parent', libc.ptrace(16, os.getppid(), None, None), err())\n"
            f"print('process_vm_readv', libc.syscall(310, {sleeper.pid}, None, 0, None, 0, 0), err())",
            lambda r: " 0 Success" in r.stdout)
    attempt("raw syscalls: mount, unshare, setns, clone3, bpf", UNHOOK + (
            "import platform\nx86 = platform.machine() == 'x86_64'\n"
            "n = dict(mount=165, unshare=272, setns=308, bpf=321, keyctl=250) if x86 else "
            "dict(mount=40, unshare=97, setns=268, bpf=280, keyctl=219)\n"
            "print('mount', libc.syscall(n['mount'], b'none', b'/tmp', b'tmpfs', 0, None), err())\n"
            "print('unshare', libc.syscall(n['unshare'], 0x10000000 | 0x20000), err())\n"
            "print('unshare', libc.syscall(n['unshare'], 0x20000), err())\n"
            "print('setns', libc.syscall(n['setns'], 0, 0), err())\n"
            "print('clone3', libc.syscall(435, None, 0), err())\n"
            "print('bpf', libc.syscall(n['bpf'], 0, None, 0), err())\n"
            "print('keyctl', libc.syscall(n['keyctl'], 0, 0, 0, 0, 0), err())\n"),
            lambda r: " 0 Success" in r.stdout)
    attempt("disable the audit hooks, then write outside scratch",
            UNHOOK + f"import shutil\nshutil.copy({str(data)!r}, {str(run / 'copied')!r})",
            lambda r: (run / "copied").exists())
    quota = box.limits.scratch_bytes
    # at most 4 times the quota (8 MiB files), so that a sandbox without a quota fills no real disk
    attempt("fill the disk", UNHOOK + "import os\nchunk = b'x' * (1 << 20)\nn = 0\ntry:\n"
            f"    for i in range({quota >> 21}):\n"
            "        with open(f'fill{i}', 'wb') as f:\n"
            "            for _ in range(8):\n                f.write(chunk)\n                n += 1\n"
            "except OSError as e:\n    print('stopped by', e)\nprint('wrote MiB', n)",
            lambda r: _scratch_bytes(box.scratch) > quota or _wrote(r) > quota >> 20, timeout=30)
    if box.scratch.is_dir():
        out["fill the disk"]["scratch MiB on the host"] = _scratch_bytes(box.scratch) >> 20
    return out


def _wrote(res) -> int:
    for line in res.stdout.splitlines():
        if line.startswith("wrote MiB"):
            return int(line.split()[-1])
    return 0


def _scratch_bytes(scratch: Path) -> int:
    return sum(p.lstat().st_size for p in scratch.rglob("*") if p.is_file()) if scratch.is_dir() else 0


def _without_landlock() -> None:
    """Make this process a machine without Landlock: a seccomp filter answers its syscalls
    ENOSYS, as an older kernel would (x86-64 and AArch64 both number them 444-446)."""
    import ctypes
    import struct

    nr, enosys, allow = 0x20, 0x00050000 | 38, 0x7FFF0000
    code = [(nr, 0, 0, 0), (0x35, 0, 3, 444), (0x35, 2, 0, 447), (0x06, 0, 0, enosys), (0x06, 0, 0, allow),
            (0x06, 0, 0, allow)]
    prog = b"".join(struct.pack("=HBBI", *c) for c in code)
    buf = ctypes.create_string_buffer(prog, len(prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fprog = Fprog(len(code), ctypes.cast(buf, ctypes.c_void_p))
    assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0


def refusal(work: Path) -> None:
    """No isolation here: bwrap is not on PATH and the kernel answers Landlock ENOSYS."""
    from physflow.agents.sandbox import Sandbox
    from physflow.errors import SandboxViolation

    os.environ["PATH"] = str(work)  # no bwrap (nor setpriv) on it
    _without_landlock()
    run = work / "run"
    run.mkdir()
    report: dict = {}
    try:
        Sandbox(run).start()
        report["refused"] = ""
    except SandboxViolation as exc:
        report["refused"] = str(exc)
    with Sandbox(run, unsafe=True) as box:
        res = box.run("print(6 * 7)")
        report.update(isolation=box.isolation, warning=box.warning, stdout=res.stdout)
    # physflow ask, as a user runs it (its own process): refused, then run with --sandbox unsafe
    table = work / "t.csv"
    table.write_text("x\n1\n2\n")
    script = work / "model.jsonl"
    script.write_text(json.dumps({"content": {"answer": "The sum is 3.", "code": "print('sum:', 1 + 2)",
                                              "caveats": []}}) + "\n" + json.dumps({"content": {"missing": []}}) + "\n")
    physflow = str(Path(sys.executable).parent / "physflow")
    for mode in ("strict", "unsafe"):
        proc = subprocess.run([physflow, "ask", "What is the sum of x?", "--data", str(table), "--provider", "replay",
                               "--script", str(script), "--run-dir", str(work / f"ask-{mode}"), "--sandbox", mode],
                              capture_output=True, text=True, timeout=120)
        answer = work / f"ask-{mode}" / "answer.md"
        transcript = work / f"ask-{mode}" / "transcript.jsonl"
        report[f"ask {mode}"] = {"rc": proc.returncode, "stderr": proc.stderr[-1500:],
                                 "answer first line": answer.read_text().splitlines()[0] if answer.exists() else "",
                                 "transcript": transcript.read_text() if transcript.exists() else ""}
    (work / "results.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    isolation, work = sys.argv[1], Path(sys.argv[2])
    if isolation == "none":
        refusal(work)
        return
    if "--as-nobody" in sys.argv:
        repo = Path(__file__).resolve().parents[2]
        _reachable_views([Path(sys.base_prefix).resolve(), Path(sys.prefix), repo, work])
        for path in (work, *work.rglob("*")):
            os.chown(path, NOBODY, NOBODY)
        argv = [a for a in sys.argv if a != "--as-nobody"]
        os.execvp("setpriv", ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                              "--inh-caps=-all", sys.executable, *argv])
    from physflow.agents.sandbox import Sandbox, SandboxLimits

    # opened first: an escape that mounted over /tmp must not hide where the results go
    results_file = open(work / "results.json", "w")  # noqa: SIM115
    os.environ["OPENAI_API_KEY"] = SECRET  # the orchestrator's secret: must never reach the code
    (work / "secret.txt").write_text("top-secret notes\n")
    data = work / "data.csv"
    data.write_text("mass,radius\n1,2\n")
    run = work / "run"
    run.mkdir()
    import h5py

    with h5py.File(run / "campaign.h5", "w") as f:
        f["tasks/t0/temperature"] = [1.0, 2.0]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.1)
    sleeper = subprocess.Popen(["sleep", "300"])
    limits = SandboxLimits(wall_seconds=20, memory_bytes=2 << 30, cpu_seconds=60, file_bytes=16 << 20,
                           scratch_bytes=64 << 20)
    try:
        with Sandbox(run, limits, isolation=isolation, data=[data]) as box:
            legit = box.run("import h5py, numpy as np\nimport matplotlib.pyplot as plt\n"
                            "t = h5py.File('../campaign.h5', 'r')['tasks/t0/temperature'][...]\n"
                            f"print(open({str(data)!r}).read().count('\\n'), np.mean(t))\n"
                            "plt.plot(t)\nplt.savefig('plot.png')")
            results = attempts(box, work, data, run, sleeper, listener.getsockname()[1])
            isolation_used, uid = box.isolation, os.getuid()
        try:
            listener.accept()
            results["open a TCP socket to the host"]["stopped"] = False
        except OSError:
            pass
    finally:
        sleeper.kill()
    report = {"isolation": isolation_used, "uid": uid, "attempts": results,
              "legit": {"ok": legit.ok, "stdout": legit.stdout, "error": legit.error[-500:],
                        "png": (run / "scratch" / "plot.png").is_file()}}
    with results_file:
        results_file.write(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
