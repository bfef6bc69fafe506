"""Real escape attempts against the sandbox, as root and as an unprivileged user (uid 65534).

Each variant runs ``sandbox_escapes.py`` once in a private mount namespace (``unshare -m
--propagation private``; as a non-root user, in a user namespace of its own too), so that an
escape which worked could never mount over this machine's folders; the tests read its results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from physflow.agents import confine

HARNESS = Path(__file__).with_name("sandbox_escapes.py")
ROOT = os.geteuid() == 0
#: (isolation, user): root runs both as root and, through setpriv, as uid 65534.
VARIANTS = [(iso, user) for iso in ("bwrap", "landlock") for user in (("root", "nobody") if ROOT else ("user",))]
ATTEMPTS = [
    "read a file outside the run dir", "write the --data file", "write into the run dir", "tamper with campaign.h5",
    "remount a read-only bind read-write", "mount a tmpfs", "open a TCP socket to the host",
    "raw socket families (inet6, netlink, packet)", "fork bomb", "start a process", "allocate 30 GiB",
    "infinite loop", "read the environment and /proc/*/environ", "kill a host process", "ptrace a host process",
    "raw syscalls: mount, unshare, setns, clone3, bpf", "disable the audit hooks, then write outside scratch",
    "fill the disk",
]
_results: dict[tuple[str, str], dict] = {}


def _private_namespace() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is missing: escape attempts never run outside a private mount namespace")
    if ROOT:
        return ["unshare", "--mount", "--propagation", "private", "--"]
    return ["unshare", "--user", "--map-current-user", "--mount", "--propagation", "private", "--"]


def _harness(isolation: str, user: str, tmp_path_factory) -> dict:
    key = (isolation, user)
    if key not in _results:
        if isolation == "bwrap" and shutil.which("bwrap") is None:
            pytest.skip("bubblewrap is not installed (scripts/setup.sh installs it as root)")
        if isolation == "landlock" and confine.landlock_abi() < 1:
            pytest.skip("this kernel has no Landlock")
        work = tmp_path_factory.mktemp(f"escape-{isolation}-{user}")
        argv = [*_private_namespace(), sys.executable, str(HARNESS), isolation, str(work)]
        if user == "nobody":
            argv.append("--as-nobody")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _results[key] = json.loads((work / "results.json").read_text())
    return _results[key]


@pytest.mark.parametrize("attempt", ATTEMPTS)
@pytest.mark.parametrize("isolation,user", VARIANTS)
def test_escape_attempt_is_stopped(isolation: str, user: str, attempt: str, tmp_path_factory) -> None:
    results = _harness(isolation, user, tmp_path_factory)
    outcome = results["attempts"][attempt]
    assert outcome["stopped"], f"{attempt} escaped under {results['isolation']} as uid {results['uid']}: " \
                               f"{outcome['seen']}"


@pytest.mark.parametrize("isolation,user", VARIANTS)
def test_the_sandbox_still_runs_analysis(isolation: str, user: str, tmp_path_factory) -> None:
    """numpy, h5py reading the run dir, the --data file, matplotlib writing a PNG into scratch."""
    results = _harness(isolation, user, tmp_path_factory)
    assert results["isolation"] == {"bwrap": "bwrap", "landlock": "landlock + seccomp"}[isolation]
    assert results["uid"] == (65534 if user == "nobody" else os.geteuid())
    legit = results["legit"]
    assert legit["ok"] and legit["stdout"].split() == ["2", "1.5"] and legit["png"], legit
    assert set(results["attempts"]) == set(ATTEMPTS)


def test_without_isolation_model_code_is_refused_unless_unsafe(tmp_path: Path) -> None:
    """A machine without bwrap and without Landlock (its syscalls answered ENOSYS by a seccomp
    filter, as an older kernel would): the sandbox refuses in one line; ``unsafe`` runs the
    code with the warning that the report and transcript show."""
    proc = subprocess.run([*_private_namespace(), sys.executable, str(HARNESS), "none", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["refused"].startswith("refusing to run model-written code: no sandbox isolation is available")
    assert "\n" not in report["refused"] and "sandbox: unsafe" in report["refused"]
    assert report["isolation"] == "unsafe: rlimits + audit hooks" and report["stdout"] == "42\n"
    assert report["warning"].startswith("sandbox: unsafe")
    strict, unsafe = report["ask strict"], report["ask unsafe"]
    assert strict["rc"] == 1, strict
    assert strict["stderr"].strip().splitlines()[-1].endswith("to run it with rlimits and audit hooks only")
    assert "Traceback" not in strict["stderr"]
    assert unsafe["rc"] == 0, unsafe
    assert unsafe["answer first line"].startswith("**sandbox: unsafe**")
    assert '"sandbox": "unsafe"' in unsafe["transcript"] and "unsafe: rlimits + audit hooks" in unsafe["transcript"]

