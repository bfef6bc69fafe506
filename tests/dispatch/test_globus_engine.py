"""The Globus Compute endpoint side, for real: physflow's tasks through Globus Compute's own engines.

The Globus cloud is out of reach here, so each test plays the part of the cloud between
``Executor.submit`` and the endpoint, as globus-compute-endpoint's own test-suite does
(``engine_runner``): the call physflow's GlobusDispatcher would submit (``globus_call``) is packed
with the SDK's serializer, handed to an engine loaded from ``physflow endpoint-config`` output by
the endpoint's own config loader, and the packed result comes back through ``outcome_of`` into
the adapter that parses it.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import h5py
import pytest
from globus_compute_common import messagepack
from globus_compute_endpoint.endpoint.config.utils import get_config
from globus_compute_endpoint.engines import GCFuture
from globus_compute_sdk.serialize import ComputeSerializer

from physflow.dispatch.globus_backend import (
    INLINE_BYTES,
    VALUE_FILE,
    GlobusCall,
    chained,
    environment_report,
    globus_call,
    lighten,
    mismatches,
    mpi_runner,
    outcome_of,
    serial_resources,
)
from physflow.sim_adapters import get_adapter
from physflow.vocabulary.task import TaskSpec
from physflow.vocabulary.workflow import load_workflow
from tests.conftest import physflow

BIN = str(Path(sys.executable).parent)

#: A site of this machine as a user would write it for an endpoint: an MPI pool for two MPI tasks
#: at once, a serial pool whose workers import the user's own model module.
SITE = """\
name: endpoint-here
scheduler: local
pools:
  mpi: {{kind: mpi, launcher: mpiexec, nodes_per_block: 1, max_tasks: 2}}
  cpu: {{kind: htex, workers_per_node: 2, worker_init: "export PYTHONPATH={models}"}}
"""

MODEL = """\
import os
import numpy as np

def run(alpha, beta, scale=1.0):
    return {"loss": scale * (alpha - beta) ** 2, "profile": np.linspace(0, alpha, 4), "pid": float(os.getpid())}

def field(alpha, beta, scale=1.0):  # 24 MB of result: more than Globus Compute carries (10 MB)
    return {"loss": (alpha - beta) ** 2, "field": np.full(3_000_000, alpha)}
"""

HEAT = """\
physflow: 1
name: heat-globus
goal: How hot does the plate get?
simulation:
  adapter: heat2d
  resources: {ranks: 2, nodes: 1}
  fixed: {n: 32, t_end: 0.01}
  parameters:
    kappa: {min: 0.05, max: 1.0}
    power: {min: 5, max: 60}
objective: {metric: max_temperature}
"""

PYTHON = """\
physflow: 1
name: py-globus
goal: g
simulation:
  adapter: python
  function: mymodel.run
  fixed: {scale: 2.0}
  parameters: {alpha: {min: 0, max: 1}, beta: {min: 0, max: 1}}
objective: {metric: loss}
"""

SERDE = ComputeSerializer()


def submit(engine: Any, call: GlobusCall) -> Future:
    """What the SDK and the cloud do between ``Executor.submit`` and the result's arrival: pack
    ``call`` as the SDK packs a task, run it on ``engine``, unpack the result as the SDK does."""
    task_id = uuid.uuid4()
    body = SERDE.pack_buffers([SERDE.serialize(call.function), SERDE.serialize(call.args),
                               SERDE.serialize(call.kwargs)])
    packed = messagepack.pack(messagepack.message_types.Task(task_id=task_id, task_buffer=body))
    future = GCFuture(task_id)
    engine.submit(future, packed, resource_specification=call.resource_specification or {})

    def unpack(data: bytes) -> Any:
        result = messagepack.unpack(data)
        assert result.error_details is None, result.error_details
        return SERDE.deserialize(result.data)

    return chained(chained(future, unpack), outcome_of)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """Starts the endpoint engine of one pool (config written by the CLI, loaded by Globus Compute)
    and checks it is the engine that pool calls for; yields (start, the folder of the user's models)."""
    root = tmp_path_factory.mktemp("globus")
    (root / "models").mkdir()
    (root / "models" / "mymodel.py").write_text(MODEL)
    (root / "site.yaml").write_text(SITE.format(models=root / "models"))
    engines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", BIN + os.pathsep + os.environ["PATH"])  # the interchange's launcher

        def start(pool: str, engine_type: str) -> Any:
            ep_dir = root / f"endpoint-{pool}"
            proc = physflow("endpoint-config", str(root / "site.yaml"), "--pool", pool,
                            "-o", str(ep_dir / "config.yaml"))
            assert proc.returncode == 0, proc.stderr
            engine = get_config(ep_dir).engine
            assert type(engine).__name__ == engine_type
            engine.start(endpoint_id=uuid.uuid4(), run_dir=str(ep_dir / "run"))
            engines.append(engine)
            return engine

        yield start, root / "models"
        for engine in engines:
            engine.shutdown(block=True)


@pytest.fixture(scope="module")
def mpi_engine(endpoint):
    return endpoint[0]("mpi", "GlobusMPIEngine")


@pytest.fixture(scope="module")
def serial_engine(endpoint):
    return endpoint[0]("cpu", "GlobusComputeEngine")


def test_heat2d_mpi_task_runs_on_two_ranks_through_a_globus_mpi_engine(mpi_engine, tmp_path):
    (tmp_path / "wf.yaml").write_text(HEAT)
    adapter = get_adapter(load_workflow(tmp_path / "wf.yaml"))
    spec = adapter.build_task("t0001", {"kappa": 0.4, "power": 25.0}, tmp_path / "t0001")
    call = globus_call(spec, mpi_runner())
    assert call.resource_specification == {"num_nodes": 1, "ranks_per_node": 2, "num_ranks": 2}

    outcome = submit(mpi_engine, call).result(timeout=180)
    assert outcome["returncode"] == 0, outcome
    assert outcome["command"].startswith("mpiexec -n 2 -ppn 2")  # the engine's prefix, from the spec
    assert outcome["started"] <= outcome["finished"] <= time.time()
    with h5py.File(tmp_path / "t0001" / "field.h5") as f:
        assert f.attrs["ranks"] == 2
    metrics = adapter.parse_outputs(tmp_path / "t0001", outcome).metrics
    assert set(metrics) == {"max_temperature", "mean_temperature"}
    assert metrics["max_temperature"] > metrics["mean_temperature"] > 0


def test_failing_mpi_task_and_missing_interpreter_come_back_as_failures(mpi_engine, tmp_path):
    crash = TaskSpec("t2", str(tmp_path / "t2"), argv=[sys.executable, "-c", "import sys; sys.stderr.write("
                     "'boom'); sys.exit(7)"], mpi=True, ranks=2)
    failed = submit(mpi_engine, globus_call(crash, mpi_runner())).result(timeout=120)
    assert failed["returncode"] != 0 and "boom" in failed["stderr_tail"] and not failed["timed_out"]
    assert (tmp_path / "t2" / "stderr.txt").read_text().count("boom") == 2  # one per rank

    # No physflow interpreter where the endpoint runs: the runner itself fails, with the shell's word.
    lost = TaskSpec("t3", str(tmp_path / "t3"), argv=["true"], mpi=True, ranks=1)
    gone = submit(mpi_engine, globus_call(lost, mpi_runner(str(tmp_path / "no-python")))).result(timeout=120)
    assert gone["returncode"] == 127 and "no-python" in gone["stderr_tail"]


def test_python_task_runs_the_payload_on_a_globus_compute_engine(serial_engine, endpoint, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(endpoint[1]))  # the adapter checks the function imports here too
    (tmp_path / "wf.yaml").write_text(PYTHON)
    adapter = get_adapter(load_workflow(tmp_path / "wf.yaml"))
    spec = adapter.build_task("t0001", {"alpha": 0.5, "beta": 0.25}, tmp_path / "t0001")
    call = globus_call(spec, mpi_runner(), serial_resources(mpi_only=False))
    assert call.resource_specification is None

    outcome = submit(serial_engine, call).result(timeout=180)
    assert outcome["returncode"] == 0, outcome
    out = adapter.parse_outputs(tmp_path / "t0001", outcome)
    assert out.metrics["loss"] == pytest.approx(0.125)
    assert out.metrics["pid"] != float(os.getpid())  # it ran in the engine's worker
    assert list(out.arrays["profile"].values) == pytest.approx([0, 0.5 / 3, 1 / 3, 0.5])


def test_results_stream_back_in_the_order_they_finish(serial_engine, tmp_path):
    def sleeper(task_id: str, seconds: float) -> TaskSpec:
        return TaskSpec(task_id, str(tmp_path / task_id), argv=[sys.executable, "-c",
                        f"import time; time.sleep({seconds})"])

    arrived: list[tuple[str, float]] = []
    slow = submit(serial_engine, globus_call(sleeper("slow", 6.0), mpi_runner()))
    fast = submit(serial_engine, globus_call(sleeper("fast", 0.1), mpi_runner()))
    for name, future in (("slow", slow), ("fast", fast)):
        future.add_done_callback(lambda f, n=name: arrived.append((n, time.time())))
    fast.result(timeout=120)
    assert not slow.done()  # the fast result is in while the slow task still runs: nothing is batched
    slow.result(timeout=120)
    assert [n for n, _ in arrived] == ["fast", "slow"]
    assert arrived[1][1] - arrived[0][1] > 3


def test_one_rank_spec_for_serial_tasks_on_an_mpi_only_endpoint():
    assert serial_resources(mpi_only=True) == {"num_nodes": 1, "ranks_per_node": 1, "num_ranks": 1}


def test_globus_site_makes_submit_use_globus_compute(heat_workflow, tmp_path):
    # No Globus login here: the campaign must get as far as the SDK and stop with one clear line.
    wf = heat_workflow(HEAT.replace("name: heat-globus", "name: heat-globus\nsite: globus"))
    proc = physflow("submit", str(wf), "--yes", "--run-dir", str(tmp_path / "run"), cwd=tmp_path, timeout=120,
                    env={"PHYSFLOW_ENDPOINT": str(uuid.uuid4()), "HOME": str(tmp_path / "home")}, stdin="")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "cannot use Globus Compute endpoint" in last, proc.stderr
    assert "Traceback" not in proc.stderr


def test_oversized_mpi_request_and_bad_endpoint_are_refused_before_globus_is_asked(tmp_path):
    from physflow.dispatch.globus_backend import GlobusDispatcher
    from physflow.errors import SiteError
    from physflow.site_configs.loader import load_site

    with pytest.raises(SiteError, match="wait forever"):
        GlobusDispatcher(load_site("globus", values={"endpoint": str(uuid.uuid4())}), 2, nodes_needed=2)
    with pytest.raises(SiteError, match="'my-endpoint' is not a UUID") as err:
        GlobusDispatcher(load_site("globus", values={"endpoint": "my-endpoint"}), 2)
    assert err.value.field == "endpoint"


def test_a_result_larger_than_globus_carries_comes_back_through_the_run_directory(serial_engine, endpoint, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.syspath_prepend(str(endpoint[1]))
    (tmp_path / "wf.yaml").write_text(PYTHON.replace("mymodel.run", "mymodel.field"))
    adapter = get_adapter(load_workflow(tmp_path / "wf.yaml"))
    spec = adapter.build_task("t0002", {"alpha": 0.5, "beta": 0.25}, tmp_path / "t0002")
    outcome = submit(serial_engine, globus_call(spec, mpi_runner())).result(timeout=180)
    assert outcome["returncode"] == 0, outcome
    assert (tmp_path / "t0002" / VALUE_FILE).stat().st_size > 10 * 1024 * 1024  # never inside the result
    out = adapter.parse_outputs(tmp_path / "t0002", outcome)
    assert out.metrics["loss"] == pytest.approx(0.0625) and out.arrays["field"].values.shape == (3_000_000,)


def test_large_input_files_are_written_to_the_shared_task_folder_not_submitted(tmp_path):
    small = TaskSpec("a", str(tmp_path / "a"), argv=["true"], files={"in.txt": "x"})
    assert lighten(small) is small
    big = TaskSpec("b", str(tmp_path / "b"), argv=["true"], files={"mesh.txt": "1" * (INLINE_BYTES + 1)})
    light = lighten(big)
    assert light.files == {} and (tmp_path / "b" / "mesh.txt").stat().st_size == INLINE_BYTES + 1


def test_the_endpoint_reports_its_versions_and_a_mismatch_is_one_line(serial_engine):
    there = submit(serial_engine, GlobusCall(environment_report, (), {}, None)).result(timeout=120)
    here = environment_report()
    assert there["python"] == here["python"] and there["parsl"] == here["parsl"]
    assert mismatches(here, there) == []  # the engine runs this very environment
    other = {**there, "python": "3.12.1", "parsl": "2026.02.23", "globus-compute-endpoint": "absent"}
    wrong = mismatches(here, other)
    assert wrong[0] == f"Python 3.12.1 there, {here['python']} here"
    assert f"parsl 2026.02.23 there, {here['parsl']} here" in wrong and "no globus-compute-endpoint there" in wrong
