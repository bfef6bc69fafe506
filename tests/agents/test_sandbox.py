"""LLM-written code stays in its box: real escape attempts, each refused and reported."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from physflow.agents.sandbox import UNSAFE, Sandbox, SandboxLimits

ISOLATIONS = ["bwrap", "landlock", "unsafe"]


@pytest.fixture(params=ISOLATIONS)
def box(request, tmp_path: Path, monkeypatch):
    if request.param == "bwrap" and not Path("/usr/bin/bwrap").exists():
        pytest.skip("bubblewrap is not installed (scripts/setup.sh installs it as root)")
    monkeypatch.setenv("PHYSFLOW_TEST_SECRET", "s3cr3t-value")
    run = tmp_path / "run"
    run.mkdir()
    with h5py.File(run / "campaign.h5", "w") as f:
        f["tasks/t0/temperature"] = np.arange(4.0)
    sandbox = Sandbox(run, SandboxLimits(wall_seconds=10, memory_bytes=2 << 30, cpu_seconds=60),
                      isolation=request.param).start()
    yield sandbox
    sandbox.close()


def test_state_persists_and_data_is_readable(box):
    assert box.run("import h5py\nx = h5py.File('../campaign.h5', 'r')['tasks/t0/temperature'][...].sum()").ok
    res = box.run("print(x * 2)")
    assert res.ok and res.stdout.strip() == "12.0"


def test_writing_outside_scratch_is_refused(box):
    res = box.run(f"open({str(box.run_dir / 'journal.jsonl')!r}, 'w').write('forged')")
    assert not res.ok and ("violation" in res.error or "Read-only" in res.error or "Permission" in res.error)
    assert not (box.run_dir / "journal.jsonl").exists()
    ok = box.run("open('notes.txt', 'w').write('fine here')")
    assert ok.ok and ok.files == ["notes.txt"] and (box.scratch / "notes.txt").read_text() == "fine here"


def test_network_is_unreachable(box):
    res = box.run("import socket\ns = socket.create_connection(('127.0.0.1', 22), timeout=2)")
    assert not res.ok
    assert "violation" in res.error or "unreachable" in res.error.lower() or "refused" in res.error.lower()


def test_fork_bomb_is_stopped(box):
    res = box.run("import os\nwhile True:\n    os.fork()")
    assert not res.ok and res.violation
    res = box.run("import subprocess\nsubprocess.run(['sh', '-c', 'echo escaped'])")
    assert not res.ok and res.violation
    assert box.run("print('alive')").stdout.strip() == "alive"


def test_ten_gigabytes_is_a_memory_error(box):
    res = box.run("import numpy as np\nbig = np.ones(10 * 1024**3 // 8)")
    assert not res.ok and "MemoryError" in res.error
    assert box.run("print(1 + 1)").stdout.strip() == "2"


def test_sleeping_forever_times_out_and_the_kernel_comes_back(box):
    res = box.run("import time\ntime.sleep(10_000)", timeout=2)
    assert res.timed_out and not res.ok
    assert box.run("print('back')").stdout.strip() == "back"


def test_environment_secrets_are_not_visible(box):
    assert os.environ["PHYSFLOW_TEST_SECRET"] == "s3cr3t-value"
    res = box.run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('PHYSFLOW_TEST_SECRET'))")
    assert res.ok and "s3cr3t" not in res.stdout and "PHYSFLOW_TEST_SECRET" not in res.stdout


def test_output_is_clipped_and_says_so(box):
    res = box.run("print('x' * 50_000)")
    assert res.ok and "output cut at 20000 characters" in res.stdout and len(res.stdout) < 21_000


def test_isolation_is_reported(box):
    assert box.isolation == {"bwrap": "bwrap", "landlock": "landlock + seccomp",
                             "unsafe": "unsafe: rlimits + audit hooks"}[box.requested]
    assert (box.warning == "") == (box.isolation == "bwrap")
    assert box.isolation != UNSAFE or box.warning.startswith("sandbox: unsafe")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_data_files_given_to_the_sandbox_are_readable_and_nothing_more(isolation, tmp_path: Path):
    if isolation == "bwrap" and not Path("/usr/bin/bwrap").exists():
        pytest.skip("bubblewrap is not installed (scripts/setup.sh installs it as root)")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    halos = elsewhere / "halos.h5"
    with h5py.File(halos, "w") as f:
        f["mass"] = np.arange(4.0)
    (elsewhere / "notes.txt").write_text("not given to the sandbox")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match="must be existing files"):
        Sandbox(run, data=[elsewhere])  # a folder would show more than the data
    with Sandbox(run, SandboxLimits(wall_seconds=10, memory_bytes=2 << 30), isolation=isolation,
                 data=[halos]) as box:
        read = box.run(f"import h5py\nprint(h5py.File({str(halos)!r}, 'r')['mass'][...].sum())")
        assert read.ok and read.stdout.strip() == "6.0"
        assert not box.run(f"open({str(halos)!r}, 'a').write('forged')").ok
        if isolation == "bwrap":
            assert "No such file" in box.run(f"open({str(elsewhere / 'notes.txt')!r}).read()").error
        if isolation == "landlock":
            assert "Permission denied" in box.run(f"open({str(elsewhere / 'notes.txt')!r}).read()").error
    with h5py.File(halos, "r") as f:
        assert f["mass"][...].sum() == 6.0


def test_other_processes_environments_are_not_readable(box):
    """The orchestrator (this test process here) holds API keys in its environment."""
    for path in ("f'/proc/{os.getppid()}/environ'", "'/proc/1/environ'", "'/proc/self/environ'",
                 "f'/proc/{os.getppid()}/task/{os.getppid()}/environ'"):
        res = box.run(f"import os\nprint(open({path}, 'rb').read())")
        assert "s3cr3t" not in res.stdout + res.error


def test_native_code_cannot_start_processes(box, tmp_path: Path):
    sentinel = tmp_path / "pwned"
    attempts = [
        "import ctypes\nctypes.CDLL(None).system(b'touch {s}')",
        "import ctypes\nctypes.pythonapi.system(b'touch {s}')",
        "import ctypes.util\nctypes.CDLL(ctypes.util.find_library('c')).system(b'touch {s}')",
        "import _posixsubprocess",
        "import sys\nsys.modules['_posixsubprocess'].fork_exec",
        "import subprocess\nsubprocess._fork_exec([b'/bin/sh'], [b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, "
        "-1, -1, -1, -1, True, False, 0, None, None, None, -1, None, False)",
        "import subprocess\nsubprocess._posixsubprocess.fork_exec",
        "import gc\n[o for o in gc.get_objects() if getattr(o, '__name__', '') == 'fork_exec'][0]",
        "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'touch {s}'], {{}})",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    ]
    for code in attempts:
        res = box.run(code.format(s=sentinel))
        assert not res.ok, code
    assert not sentinel.exists()
    assert box.run("print('alive')").stdout.strip() == "alive"


def test_symlinks_do_not_lead_out_of_scratch(box):
    journal = box.run_dir / "journal.jsonl"
    journal.write_text("the truth\n")
    res = box.run(f"import os\nos.symlink({str(journal)!r}, 'j')\nopen('j', 'w').write('forged')")
    assert not res.ok
    res = box.run("import os\nos.makedirs('d', exist_ok=True)\nopen('d/../../journal.jsonl', 'a').write('x')")
    assert not res.ok
    assert journal.read_text() == "the truth\n"


def test_seccomp_syscall_numbers_match_libseccomp():
    """The hand-written filter's numbers against libseccomp's tables, where libseccomp is installed."""
    import ctypes
    import ctypes.util

    from physflow.agents import confine

    name = ctypes.util.find_library("seccomp")
    if name is None:
        pytest.skip("libseccomp is not installed")
    lib = ctypes.CDLL(name)
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for arch, table in confine._SYSCALLS.items():
        for call, number in table.items():
            assert lib.seccomp_syscall_resolve_name_arch(confine._AUDIT_ARCH[arch], call.encode()) == number, call
        assert len(confine.seccomp_filter(own_pid=1234, arch=arch)) % 8 == 0
    assert set(confine._DENIED_NAMES) - set(confine._SYSCALLS["x86_64"]) == set()


def test_the_workflow_sandbox_key_is_strict_by_default_and_names_its_values(tmp_path: Path):
    from physflow.errors import SpecError
    from physflow.vocabulary.workflow import load_workflow
    from tests.conftest import TINY_WORKFLOW

    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    assert load_workflow(tmp_path / "wf.yaml").spec.sandbox == "strict"
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW + "sandbox: unsafe\n")
    assert load_workflow(tmp_path / "wf.yaml").spec.sandbox == "unsafe"
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW + "sandbox: off\n")
    with pytest.raises(SpecError, match="sandbox"):
        load_workflow(tmp_path / "wf.yaml")
