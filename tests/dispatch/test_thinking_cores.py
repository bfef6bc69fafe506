"""Cores for thinking: a local site's model server on its own cores (``llm.cores``), the
simulation pools on the rest and at their own priority (``llm.simulation_priority``), read back
from the running processes themselves: the llama.cpp server's threads and the ranks of a real
2-rank mpiexec task, each reporting its own affinity and priority."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from physflow.dispatch.parsl_backend import ParslDispatcher
from physflow.dispatch.parsl_config import make_room_for_model
from physflow.errors import SiteError
from physflow.serving.plans import serving_plan
from physflow.serving.service import ModelService
from physflow.site_configs.loader import load_site
from physflow.site_configs.site import SiteLLM, core_list, machine_cores, model_cores, parse_cores, split_cores
from physflow.vocabulary.task import TaskSpec
from physflow.vocabulary.workflow import LLMSpec
from tests.conftest import physflow

#: Every rank prints its rank, the cores it may run on, its nice value and its scheduling policy.
#: (Gathered on rank 0: ranks printing at once interleave their lines.)
RANK_REPORT = ("import json, os; from mpi4py import MPI; c = MPI.COMM_WORLD\n"
               "r = c.gather([c.Get_rank(), sorted(os.sched_getaffinity(0)), os.getpriority(os.PRIO_PROCESS, 0), "
               "os.sched_getscheduler(0)])\n"
               "if c.Get_rank() == 0: print(json.dumps(r))")

CORES = machine_cores()
needs_two_cores = pytest.mark.skipif(len(CORES) < 2, reason="pinning needs a machine with 2 cores or more")


def _ranks(dispatcher: ParslDispatcher, folder: Path) -> list[list]:
    """Run RANK_REPORT as a 2-rank MPI task on the dispatcher's MPI pool; each rank's report."""
    spec = TaskSpec("probe", str(folder), argv=[sys.executable, "-c", RANK_REPORT], mpi=True, ranks=2)
    outcome = dispatcher.submit(spec).result(timeout=120)
    assert outcome["returncode"] == 0, outcome
    return json.loads((folder / "stdout.txt").read_text())


def _allowed(pid: int) -> list[int]:
    """The cores /proc says ``pid`` may run on (Cpus_allowed_list), for the process and each thread."""
    def read(status: Path) -> str:
        return next(line.split(":", 1)[1].strip() for line in status.read_text().splitlines()
                    if line.startswith("Cpus_allowed_list"))
    lists = {read(task / "status") for task in Path(f"/proc/{pid}/task").iterdir()}
    assert len(lists) == 1, f"the server's threads disagree on their cores: {lists}"
    return parse_cores(lists.pop())


def _site(cores: str, priority: str):
    site = load_site("local")
    return site.model_copy(update={"llm": SiteLLM(serve_on="llm", cores=cores, simulation_priority=priority)})


@needs_two_cores
def test_pinned_model_server_and_simulations_on_the_other_cores_at_nice_19(tmp_path):
    model_core = CORES[-1]
    site = _site(str(model_core), "nice")
    plan, pool = serving_plan(LLMSpec(model="smollm2-135m"), site, model_cores(site))
    assert pool == "llm" and plan.cores == [model_core]
    assert plan.argv[plan.argv.index("--n_threads") + 1] == "1"  # one thread per pinned core
    dispatcher = ParslDispatcher(site, tmp_path / "parsl", 2, service_pool=pool)
    try:
        service = ModelService(plan, tmp_path / "llm", dispatcher.submit_service)
        dispatcher.on_close(service.stop)
        service.start()
        pid = json.loads((tmp_path / "llm" / "endpoint.json").read_text())["pid"]
        assert _allowed(pid) == [model_core] == sorted(os.sched_getaffinity(pid))
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0  # the model thinks at normal priority
        ranks = _ranks(dispatcher, tmp_path / "probe")
    finally:
        dispatcher.close()
    rest = [c for c in CORES if c != model_core]
    assert ranks == [[0, rest, 19, os.SCHED_OTHER], [1, rest, 19, os.SCHED_OTHER]]


def test_shared_cores_with_idle_simulations_and_no_model_leaves_pools_alone(tmp_path):
    """``cores: none`` + ``idle``: the ranks may use every core, under SCHED_IDLE. Without a
    model served by physflow (no service pool) the same site changes nothing."""
    site = _site("none", "idle")
    dispatcher = ParslDispatcher(site, tmp_path / "served", 2, service_pool="llm")
    try:
        served = _ranks(dispatcher, tmp_path / "probe1")
    finally:
        dispatcher.close()
    assert served == [[r, CORES, 0, os.SCHED_IDLE] for r in (0, 1)]
    dispatcher = ParslDispatcher(site, tmp_path / "alone", 2)
    try:
        alone = _ranks(dispatcher, tmp_path / "probe2")
    finally:
        dispatcher.close()
    assert alone == [[r, CORES, os.getpriority(os.PRIO_PROCESS, 0), os.SCHED_OTHER] for r in (0, 1)]


def test_core_lists_and_auto():
    assert parse_cores("0-2,5,1") == [0, 1, 2, 5] and core_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    site = _site("auto", "nice")
    assert split_cores(site, list(range(2))) == ([1], [0])
    assert split_cores(site, list(range(16))) == ([12, 13, 14, 15], list(range(12)))
    assert split_cores(site, list(range(64)))[0] == [60, 61, 62, 63]  # never more than 4 threads
    assert split_cores(_site("none", "nice"), [0, 1]) is None
    assert split_cores(_site("2-3", "normal"), [0, 1, 2, 3]) == ([2, 3], [0, 1])


LOCAL = "name: mine\nscheduler: {scheduler}\npools:\n  cpu: {{kind: htex{affinity}}}\n  llm: {{kind: htex}}\n" \
        "llm:\n  serve_on: llm\n  cores: {cores}\n"


@pytest.mark.parametrize("scheduler, cores, affinity, field, message", [
    ("local", "'1-0'", "", "llm.cores", "core range '1-0' runs backwards"),
    ("local", "one", "", "llm.cores", "'one' is not a list of cores (e.g. 1, 2-3 or 0,2)"),
    ("local", "0-99999999999", "", "llm.cores", "core 99999999999 is beyond any machine's"),
    ("local", str(max(CORES) + 1), "", "llm.cores",
     f"core {max(CORES) + 1} is not one of this machine's cores ({core_list(CORES)})"),
    ("local", f"'{core_list(CORES)}'", "", "llm.cores", f"takes every core of this machine ({core_list(CORES)})"),
    ("slurm", "0", "", "llm.cores", "site mine's model server runs on its slurm nodes: leave llm.cores none"),
    ("local", str(CORES[-1]), f", cpu_affinity: 'list:{CORES[-1]}'", "pools.cpu.cpu_affinity",
     f"pool cpu's cpu_affinity lists core {CORES[-1]}, which llm.cores {CORES[-1]} gives the model server"),
])
def test_core_sets_that_cannot_be_pinned_are_refused_with_file_line_and_field(
        tmp_path, scheduler, cores, affinity, field, message):
    if field == "pools.cpu.cpu_affinity" and len(CORES) < 2:
        pytest.skip("pinning needs a machine with 2 cores or more")
    path = tmp_path / "mine.yaml"
    path.write_text(LOCAL.format(scheduler=scheduler, cores=cores, affinity=affinity))
    with pytest.raises(SiteError) as info:
        load_site(str(path))
    err = info.value
    assert message in err.message and (err.file, err.field) == (str(path), field)
    line = 4 if field.startswith("pools") else 8
    assert err.line == line, (err.line, path.read_text())


def test_validate_says_one_line_with_the_place_and_exits_2(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(LOCAL.format(scheduler="local", cores=max(CORES) + 7, affinity=""))
    refused = physflow("sites", "show", str(path))
    assert refused.returncode == 2, refused
    assert refused.stderr.strip().splitlines() == [
        f"error: {path}:8: llm.cores: core {max(CORES) + 7} is not one of this machine's cores ({core_list(CORES)})"]


def test_the_local_sites_default_shares_the_cores_and_nices_the_simulations():
    """The default BENCHMARKS.md ("Cores for thinking") chose, written out in local.yaml."""
    assert load_site("local").llm == SiteLLM(serve_on="llm", cores="none", simulation_priority="nice")
    assert SiteLLM().simulation_priority == "nice" and SiteLLM().cores == "none"


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling here")
def test_niced_simulations_stay_niced_in_their_own_sessions(tmp_path):
    """Autogroup scheduling shares the CPU between sessions before nice counts, and the payload and
    mpiexec start each simulation process in a session of its own: each of those sessions is niced
    as the block asked (PHYSFLOW_SESSION_NICE), or a niced rank competes with the model as an equal."""
    import subprocess

    # each rank writes a file of its own: mpiexec forwards the ranks' stdout in chunks that may interleave
    probe = ("import os; open('rank' + os.environ['PMI_RANK'], 'w')"
             ".write(open('/proc/self/autogroup').read())")
    script = ("import os, sys, json; os.nice(19); from physflow.dispatch.payload import execute; "
              "execute({'task_id': 't', 'workdir': sys.argv[1], 'argv': ['cat', '/proc/self/autogroup']}); "
              "execute({'task_id': 'm', 'workdir': sys.argv[2], 'mpi': True, 'ranks': 2, "
              f"'argv': [sys.executable, '-c', {probe!r}]}})")
    env = {**os.environ, "PHYSFLOW_SESSION_NICE": "19", "PARSL_MPI_PREFIX": "mpiexec -n 2"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "t"), str(tmp_path / "m")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t" / "stdout.txt").read_text().strip().endswith("nice 19")
    ranks = [(tmp_path / "m" / f"rank{r}").read_text().split() for r in (0, 1)]
    assert [nice for _, _, nice in ranks] == ["19", "19"] and len({group for group, _, _ in ranks}) == 2, ranks
    line = make_room_for_model(load_site("local"), "mpi", "llm")
    assert line.endswith("export PHYSFLOW_SESSION_NICE=19")
