"""Input that cannot hang physflow: YAML bombs, FIFOs, devices, links, huge numbers, deep nesting.

Each is refused in a real process within seconds with one line naming the file, exit code 2, no
traceback, and without growing the process to gigabytes.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_WORKFLOW

pytestmark = pytest.mark.reliability



def bomb(levels: int = 9) -> str:
    """A billion laughs: ``levels`` anchors, each a list of nine aliases of the one before."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def refused(path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``physflow validate PATH`` in its own process with 4 GiB of address space at most (an
    expanded bomb grows past it): it must end in time, exit 2 and say one line naming the file."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run([sys.executable, "-m", "physflow", "validate", str(path), *args], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1000:])
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-1000:]
    return proc


def test_a_billion_laughs_in_a_workflow_is_refused_at_once(tmp_path: Path):
    path = tmp_path / "wf.yaml"
    path.write_text(TINY_WORKFLOW + "x-unused:\n" + "".join("  " + line + "\n" for line in bomb().splitlines()))
    assert "more than 100,000 values" in refused(path).stderr


def test_a_billion_laughs_in_a_site_file_is_refused_at_once(tmp_path: Path):
    site = tmp_path / "site.yaml"
    site.write_text("name: bomb\npools: {cpu: {kind: htex}}\n" + bomb())
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    out = refused(tmp_path / "wf.yaml", "--site", str(site))
    assert str(site) in out.stderr and "more than 100,000 values" in out.stderr


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    fifo = tmp_path / "wf.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(fifo, timeout=20).stderr


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_a_device_or_a_link_to_one_is_refused(tmp_path: Path, target: str):
    assert "not a regular file" in refused(Path(target)).stderr
    link = tmp_path / "wf.yaml"
    link.symlink_to(target)
    assert "not a regular file" in refused(link).stderr


def test_a_symlink_loop_is_one_line(tmp_path: Path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    assert "symbolic links" in refused(tmp_path / "a.yaml").stderr
    (tmp_path / "wf.yaml").write_text(TINY_WORKFLOW)
    assert "symbolic links" in refused(tmp_path / "wf.yaml", "--site", str(tmp_path / "a.yaml")).stderr


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path):
    path = tmp_path / "wf.yaml"
    path.write_text(TINY_WORKFLOW + "# " + "x" * (2 << 20) + "\n")
    assert "larger than 1,048,576 bytes" in refused(path).stderr


@pytest.mark.parametrize(("extra", "says"), [
    ("seed: " + "7" * 5000, "cannot read this value"),
    ("deep: " + "[" * 20000 + "]" * 20000, "nested deeper than"),
    ("blob: !!binary aGVsbG8=", "a bytes value"),
])
def test_values_that_cannot_be_workflow_values(tmp_path: Path, extra: str, says: str):
    path = tmp_path / "wf.yaml"
    path.write_text(TINY_WORKFLOW.replace("objective: {metric: loss}\n",
                                          f"objective: {{metric: loss}}\nx-extra:\n  {extra}\n"))
    out = refused(path)
    assert says in out.stderr and str(path) in out.stderr
