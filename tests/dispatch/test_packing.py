"""Several MPI tasks on one node, each bound to its own cores: Parsl's MPIExecutor alone gives
each task whole nodes (a 1-rank simulation would hold a 64-core node), so physflow lists a node
once per slot and the payload binds each task's ranks to its slot's cores."""

from __future__ import annotations

import json
import sys

import pytest

from physflow.dispatch.parsl_backend import ParslDispatcher
from physflow.dispatch.parsl_config import block_worker_init
from physflow.dispatch.payload import bind_options
from physflow.errors import SiteError
from physflow.site_configs.loader import load_site
from physflow.site_configs.site import SiteSpec, machine_cores, pack_mpi, simulation_slots
from physflow.vocabulary.task import TaskSpec

#: Run as each rank: the cores it may run on, read from inside, and when it ran (s).
AFFINITY_PROBE = ("import json, os, time; t = time.time(); time.sleep(3); "
                  "print(json.dumps({'cores': sorted(os.sched_getaffinity(0)), 'start': t, 'end': time.time()}))")


def _site(yaml_pools: dict) -> SiteSpec:
    return SiteSpec.model_validate({"name": "x", "scheduler": "pbs", "pools": yaml_pools})


def test_one_node_tasks_are_packed_as_the_cores_and_devices_hold():
    site = _site({"mpi": {"kind": "mpi", "cores_per_node": 64, "accelerators": ["0", "1", "2", "3"]}})
    four = pack_mpi(site, "mpi", ranks=4, nodes=1)
    assert four.per_node == 16 and four.bind == "pals"
    assert four.cores[0] == (0, 1, 2, 3) and four.cores[15] == (60, 61, 62, 63)
    gpu = pack_mpi(site, "mpi", ranks=4, nodes=1, gpus=1)  # the four devices bound it: one each
    assert gpu.per_node == 4 and gpu.gpus == ("0", "1", "2", "3") and gpu.cores[3] == (12, 13, 14, 15)
    assert pack_mpi(site, "mpi", ranks=4, nodes=1, gpus=2).gpus == ("0,1", "2,3")
    wide = pack_mpi(site, "mpi", ranks=128, nodes=2)  # over two nodes: never packed
    assert wide.per_node == 1 and not wide.packed
    with pytest.raises(SiteError, match="5 GPUs a node asked, but pool mpi of site x lists 4"):
        pack_mpi(site, "mpi", ranks=1, nodes=1, gpus=5)
    assert simulation_slots(site, True, 1, four) == 16


def test_a_full_node_and_explicit_counts():
    site = _site({"mpi": {"kind": "mpi", "cores_per_node": 8, "nodes_per_block": 4, "max_blocks": 2}})
    whole = pack_mpi(site, "mpi", ranks=8, nodes=1)
    assert whole.per_node == 1 and not whole.packed  # as before: one task a node, nothing bound
    assert simulation_slots(site, True, 1, whole) == 8 and simulation_slots(site, True, 2, whole) == 4
    over = _site({"mpi": {"kind": "mpi", "cores_per_node": 8, "tasks_per_node": 4}})
    shared = pack_mpi(over, "mpi", ranks=4, nodes=1)  # asked for more than the cores hold: shared cores
    assert shared.per_node == 4 and shared.bind == "none" and not shared.cores
    threads = _site({"mpi": {"kind": "mpi", "cores_per_node": 8, "cores_per_rank": 2}})
    assert pack_mpi(threads, "mpi", ranks=2, nodes=1).cores == ((0, 1, 2, 3), (4, 5, 6, 7))
    slurm = SiteSpec.model_validate({"name": "s", "scheduler": "slurm", "pools": {
        "mpi": {"kind": "mpi", "launcher": "srun", "tasks_per_node": 2}}})
    steps = pack_mpi(slurm, "mpi", ranks=1, nodes=1)
    assert steps.per_node == 2 and steps.bind == "slurm" and not steps.cores  # Slurm picks the cores


@pytest.mark.parametrize(("style", "want"), [
    ("hydra", ["-bind-to", "user:4+5,6+7"]),
    ("pals", ["--cpu-bind", "list:4-5:6-7"]),
    ("slurm", ["--exact", "--cpus-per-task=2", "--cpu-bind=cores"]),
    ("none", []),
])
def test_bind_options_per_launcher(style, want):
    assert bind_options(style, [4, 5, 6, 7], ranks_per_node=2, cores_per_rank=2) == want


def test_block_lists_each_node_once_per_slot():
    site = _site({"mpi": {"kind": "mpi", "cores_per_node": 4}})
    lines = block_worker_init(site, "mpi", packing=pack_mpi(site, "mpi", ranks=2, nodes=1))
    assert "for _ in $(seq 2); do awk '!seen[$0]++' \"$PBS_NODEFILE\"; done" in lines
    assert "PHYSFLOW_SLOTS=2 PHYSFLOW_SLOT_CORES='0-1;2-3' PHYSFLOW_BIND=pals" in lines


@pytest.mark.skipif(len(machine_cores()) < 2, reason="needs 2 cores")
def test_two_one_rank_tasks_run_at_once_each_on_its_own_core(tmp_path):
    site = load_site("local")
    packing = pack_mpi(site, "mpi", ranks=1, nodes=1)
    assert packing.per_node == len(machine_cores()) and packing.bind == "hydra"
    dispatcher = ParslDispatcher(site, tmp_path / "parsl", max_concurrent=2, packing=packing)
    try:
        futures = [dispatcher.submit(TaskSpec(f"t{i}", str(tmp_path / f"t{i}"), mpi=True, ranks=1,
                                              argv=[sys.executable, "-c", AFFINITY_PROBE])) for i in range(2)]
        outcomes = [f.result(timeout=120) for f in futures]
    finally:
        dispatcher.close()
    assert all(o["returncode"] == 0 for o in outcomes), outcomes
    assert all("-bind-to user:" in o["command"] for o in outcomes)
    seen = [json.loads((tmp_path / f"t{i}" / "stdout.txt").read_text()) for i in range(2)]
    assert all(len(s["cores"]) == 1 for s in seen) and seen[0]["cores"] != seen[1]["cores"], seen
    assert max(s["start"] for s in seen) < min(s["end"] for s in seen), seen  # they overlapped


def test_a_polaris_block_packs_sixteen_four_rank_simulations_a_node_with_pals_binding(tmp_path):
    site = load_site("polaris", values={"account": "p"})
    packing = pack_mpi(site, "mpi", ranks=4, nodes=1)
    init = block_worker_init(site, "mpi", packing=packing)
    assert "for _ in $(seq 16); do awk '!seen[$0]++' \"$PBS_NODEFILE\"; done" in init
    assert "PHYSFLOW_BIND=pals" in init and "PHYSFLOW_SLOT_CORES='0-3;4-7;" in init
    assert init.index("PBS_NODEFILE") < init.index("module load conda")
    assert simulation_slots(site, True, 1, packing) == 32  # 2 nodes a block
    assert bind_options("pals", list(packing.cores[1]), 4, 1) == ["--cpu-bind", "list:4:5:6:7"]
