"""A full disk stops a campaign with one line (exit 1) and a journal that resume continues from,
once there is room: nothing that was journaled is lost, nothing finished runs again.

The run directory is a 6 MiB tmpfs mounted in a private mount namespace (``unshare -m``), so the
host's filesystems are never touched; the third simulation fills it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_WORKFLOW

pytestmark = [pytest.mark.reliability,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                 reason="mounting a small tmpfs in a private mount namespace needs root and unshare")]

WORKFLOW = TINY_WORKFLOW.replace("max_simulations: 2, max_concurrent: 2", "max_simulations: 12, max_concurrent: 1")

# With FILL set, the third run writes until the disk is full (and then cannot write its result);
# the runs are counted in a file beside the workflow, off the small disk.
SIM = """\
import json, os, sys
x = float(sys.argv[1])
count = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")
with open(count, "a") as log:
    log.write("run\\n")
if os.environ.get("FILL") and len(open(count).read().split()) == 3:
    with open("ballast.bin", "wb") as fh:
        try:
            while True:
                fh.write(b"0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
json.dump({"loss": (x - 0.3) ** 2}, open("result.json", "w"))
"""


def test_a_full_disk_stops_the_campaign_in_one_line_and_resume_goes_on(tmp_path: Path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "sim.py").write_text(SIM)
    small, out, py = tmp_path / "small", tmp_path / "out", sys.executable
    small.mkdir()
    out.mkdir()
    run = small / "run"
    script = f"""
mount -t tmpfs -o size=6m tmpfs {small} || exit 99
FILL=1 {py} -m physflow submit {tmp_path}/wf.yaml --run-dir {run} --yes >{out}/submit.out 2>{out}/submit.err
echo $? >{out}/submit.rc
{py} -m physflow results {run} --json >{out}/before.json 2>{out}/before.err
mount -o remount,size=256m {small}
{py} -m physflow resume {run} >{out}/resume.out 2>{out}/resume.err
echo $? >{out}/resume.rc
{py} -m physflow results {run} --json >{out}/after.json 2>{out}/after.err
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], timeout=600, capture_output=True, text=True)
    assert proc.returncode != 99, proc.stderr
    err = (out / "submit.err").read_text()
    assert (out / "submit.rc").read_text().strip() == "1", err
    assert "Traceback" not in err and "Logging error" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "No space left on device" in err, err
    before = {r["id"]: r for r in json.loads((out / "before.json").read_text())}
    assert sum(r["status"] == "finished" for r in before.values()) >= 2, (out / "before.err").read_text()
    assert (out / "resume.rc").read_text().strip() == "0", (out / "resume.err").read_text()
    after = {r["id"]: r for r in json.loads((out / "after.json").read_text())}
    for tid, r in before.items():  # nothing journaled is lost; what had finished ran no more
        if r["status"] == "finished":
            assert after[tid]["metrics"] == r["metrics"] and after[tid]["finished"] == r["finished"]
    assert sum(r["status"] == "finished" for r in after.values()) > sum(
        r["status"] == "finished" for r in before.values())  # resume went on with the budget left
