"""The local site through Parsl: a real 2-rank MPI task via MPIExecutor and mpiexec."""

from __future__ import annotations

import os
import sys

import pytest

from physflow.dispatch.parsl_backend import ParslDispatcher, bin_dir_on_path
from physflow.dispatch.parsl_config import bin_dir, build_parsl_config
from physflow.errors import SiteError
from physflow.site_configs.loader import load_site
from physflow.vocabulary.task import TaskSpec

RANK_PROBE = ("from mpi4py import MPI; c = MPI.COMM_WORLD; r = c.gather((c.Get_rank(), c.Get_size()))\n"
              "if c.Get_rank() == 0: print(r)")


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory):
    d = ParslDispatcher(load_site("local"), tmp_path_factory.mktemp("parsl"), max_concurrent=2)
    yield d
    d.close()


def test_mpi_task_runs_on_two_ranks(dispatcher, tmp_path):
    spec = TaskSpec("t0", str(tmp_path / "t0"), argv=[sys.executable, "-c", RANK_PROBE], mpi=True, ranks=2)
    outcome = dispatcher.submit(spec).result(timeout=120)
    assert outcome["returncode"] == 0, outcome
    assert outcome["command"].startswith("mpiexec -n 2")
    assert (tmp_path / "t0" / "stdout.txt").read_text().strip() == "[(0, 2), (1, 2)]"
    assert outcome["started"] <= outcome["finished"]


@pytest.mark.parametrize("level", ["info", "debug"])
def test_python_task_runs_on_the_serial_pool_alone(tmp_path, level):
    """Also: parsl.log at ``info`` leaves out Parsl's per-task lines (the journal has them) and
    keeps the rest; ``debug`` keeps them."""
    site = load_site("local").model_copy(update={"parsl_log_level": level})
    d = ParslDispatcher(site, tmp_path / "parsl", max_concurrent=2, mpi=False)
    try:
        assert d.labels == ["cpu"]  # a campaign of Python functions starts no MPI pool
        ok = d.submit(TaskSpec("t1", str(tmp_path / "t1"), function="math.hypot")).result(timeout=60)
    finally:
        d.close()
    assert ok["returncode"] == 0 and ok["value"] == 0.0
    (log,) = (tmp_path / "parsl").glob("*/parsl.log")
    text = log.read_text()
    assert "[Scaling executor cpu] Scaling out" in text and "Summary of tasks in DFK" in text
    per_task = ("Task 0 submitted for App", "Task 0 changing state from launched to exec_done",
                "Standard out for task 0 will not be redirected")
    assert all((line in text) == (level == "debug") for line in per_task), text[-3000:]


def test_cores_per_worker_below_one_runs_more_workers_than_cores(tmp_path):
    """``cores_per_worker`` (htex): Parsl starts cores / it workers a node, so tasks that mostly wait
    run six at once on a 2-core machine, all of them overlapping (the scale test's emulated workers)."""
    site = load_site("local")
    cpu = site.pools["cpu"].model_copy(update={"workers_per_node": 6, "cores_per_worker": (os.cpu_count() or 1) / 6})
    site = site.model_copy(update={"pools": {**site.pools, "cpu": cpu}})
    d = ParslDispatcher(site, tmp_path / "parsl", max_concurrent=6, mpi=False)
    try:
        futures = [d.submit(TaskSpec(f"t{i}", str(tmp_path / f"t{i}"), function="subprocess.call",
                                      kwargs={"args": ["sleep", "3"]}))
                   for i in range(6)]
        outcomes = [f.result(timeout=120) for f in futures]
    finally:
        d.close()
    assert all(o["returncode"] == 0 for o in outcomes), outcomes
    assert max(o["started"] for o in outcomes) < min(o["finished"] for o in outcomes)  # all six at once


def test_mpi_pool_alone_also_runs_python_tasks_and_reports_failures(dispatcher, tmp_path):
    assert dispatcher.labels == ["mpi"]
    ok = dispatcher.submit(TaskSpec("t1", str(tmp_path / "t1"), function="math.hypot")).result(timeout=60)
    assert ok["returncode"] == 0 and ok["value"] == 0.0
    bad = dispatcher.submit(TaskSpec("t2", str(tmp_path / "t2"), argv=[sys.executable, "-c", "import sys; "
                                     "sys.stderr.write('boom'); sys.exit(7)"], mpi=True, ranks=1))
    out = bad.result(timeout=60)
    assert out["returncode"] != 0 and "boom" in out["stderr_tail"]


def test_mpi_request_larger_than_a_block_is_refused(tmp_path):
    with pytest.raises(SiteError, match="wait forever"):
        build_parsl_config(load_site("local"), tmp_path, 2, nodes_needed=2)


def test_building_a_config_leaves_the_environment_and_starting_pools_puts_physflow_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    before = dict(os.environ)
    build_parsl_config(load_site("local"), tmp_path, 2)
    assert dict(os.environ) == before  # a Config is data; nothing of this process changes
    bin_dir_on_path()
    assert os.environ["PATH"] == f"{bin_dir()}{os.pathsep}/usr/bin:/bin"
    bin_dir_on_path()  # once only
    assert os.environ["PATH"] == f"{bin_dir()}{os.pathsep}/usr/bin:/bin"
