"""Polaris and Aurora: the batch scripts Parsl's PBSProProvider writes from our site YAMLs, checked
line by line against ALCF's documentation, and the Parsl Configs they build.

PBS cannot run here, so ``qsub`` is the one thing not executed: Parsl's own ``submit()`` writes
the real script and hands the ``qsub`` command line to ``execute_wait``, which we record instead
of running. Everything before that point is Parsl's and physflow's real code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from parsl.config import Config
from parsl.executors import HighThroughputExecutor, MPIExecutor
from parsl.providers import PBSProProvider

from physflow.dispatch.parsl_config import build_parsl_config, build_provider
from physflow.site_configs.loader import load_site

AURORA_TILES = ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1", "5.0", "5.1"]
# docs.alcf.anl.gov/aurora/workflows/parsl: workers pinned to the cores nearest their tile.
AURORA_AFFINITY = ("list:0-7,104-111:8-15,112-119:16-23,120-127:24-31,128-135:32-39,136-143:40-47,144-151:"
                   "52-59,156-163:60-67,164-171:68-75,172-179:76-83,180-187:84-91,188-195:92-99,196-203")
VENV = f"export PATH={Path(sys.executable).parent}:$PATH"


def submit_script(site_name: str, pool: str, tmp_path: Path, **values: str) -> tuple[str, list[str]]:
    """(the qsub command line, the script's lines) for one block of ``pool``."""
    provider = build_provider(load_site(site_name, values=values), pool)
    provider.script_dir = str(tmp_path)
    commands: list[str] = []

    def qsub(cmd: str, timeout: int | None = None) -> tuple[int, str, str]:
        commands.append(cmd)
        return 0, "4242.polaris-pbs-01\n", ""

    provider.execute_wait = qsub
    assert provider.submit("process_worker_pool.py --probe", tasks_per_node=1) == "4242.polaris-pbs-01"
    script = Path(commands[0].split()[-1])
    return " ".join(commands[0].split()), script.read_text().splitlines()


def test_polaris_mpi_block_script_follows_the_alcf_job_script(tmp_path):
    qsub, lines = submit_script("polaris", "mpi", tmp_path, account="MyProj", nodes="4", walltime="0:30:00",
                                filesystems="home:eagle:grand", queue="debug-scaling")
    # docs.alcf.anl.gov/polaris/running-jobs: qsub -q QUEUE -A PROJECT
    assert qsub.startswith("qsub -q debug-scaling -A MyProj ")
    assert lines[0] == "#!/bin/bash"
    directives = [line for line in lines if line.startswith("#PBS")]
    # select=N:system=polaris (Parsl always adds ncpus: the node's 64 hardware threads)
    assert "#PBS -l select=4:ncpus=64:system=polaris" in directives
    assert "#PBS -l place=scatter" in directives
    assert "#PBS -l filesystems=home:eagle:grand" in directives
    assert "#PBS -l walltime=0:30:00" in directives
    # worker_init: ALCF's module loads, then physflow's own environment first on PATH
    start = lines.index("module use /soft/modulefiles")
    assert lines[start:start + 4] == ["module use /soft/modulefiles", "module load conda", "conda activate base", VENV]
    # SimpleLauncher: the worker pool runs once, on the first node; tasks call mpiexec over the block
    assert lines.count("process_worker_pool.py --probe") == 1


def test_polaris_defaults_and_gpu_pool_launch_one_pool_per_node(tmp_path):
    qsub, lines = submit_script("polaris", "gpu", tmp_path, account="MyProj")
    assert qsub.startswith("qsub -q debug -A MyProj ")
    assert {"#PBS -l select=1:ncpus=64:system=polaris", "#PBS -l place=scatter", "#PBS -l filesystems=home:eagle",
            "#PBS -l walltime=01:00:00"} <= set(lines)
    # docs.alcf.anl.gov/polaris/workflows/parsl: MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=64 --ppn 1")
    launch = [line for line in lines if line.startswith("mpiexec ")]
    assert len(launch) == 1 and launch[0].startswith("mpiexec --cpu-bind none --depth=64 --ppn 1 ")


def test_aurora_scripts_follow_the_alcf_aurora_pages(tmp_path):
    qsub, lines = submit_script("aurora", "mpi", tmp_path, account="AuroraProj", nodes="10")
    assert qsub.startswith("qsub -q debug -A AuroraProj ")
    # cpus_per_node=208 and filesystems=home:flare as on docs.alcf.anl.gov/aurora/workflows/parsl
    assert {"#PBS -l select=10:ncpus=208:system=aurora", "#PBS -l place=scatter",
            "#PBS -l filesystems=home:flare", "#PBS -l walltime=01:00:00"} <= set(lines)
    start = lines.index("module load frameworks")
    assert lines[start + 1] == VENV
    _, gpu = submit_script("aurora", "gpu", tmp_path, account="AuroraProj")
    assert [line for line in gpu if line.startswith("mpiexec ")][0].startswith("mpiexec --cpu-bind none --ppn 1 ")


def test_polaris_and_aurora_build_parsl_configs(tmp_path):
    polaris = build_parsl_config(load_site("polaris", values={"account": "p", "interface": "lo"}),
                                 tmp_path / "polaris", max_concurrent=4, nodes_needed=2)
    assert isinstance(polaris, Config) and polaris.retries >= 1
    ex = {e.label: e for e in polaris.executors}
    assert list(ex) == ["mpi", "cpu", "gpu", "llm"]
    assert isinstance(ex["mpi"], MPIExecutor) and ex["mpi"].mpi_launcher == "mpiexec"
    assert ex["mpi"].max_workers_per_block == 4 and ex["mpi"].provider.nodes_per_block == 2
    assert all(isinstance(e.provider, PBSProProvider) for e in ex.values())
    assert all(e.address == "127.0.0.1" and e.encrypted for e in ex.values())  # interface lo, TLS on a cluster
    assert ex["gpu"].available_accelerators == ["0", "1", "2", "3"] and ex["gpu"].cpu_affinity == "block-reverse"
    assert ex["llm"].available_accelerators == ["0,1,2,3"]  # one worker sees all four A100s

    aurora = build_parsl_config(load_site("aurora", values={"account": "a", "interface": "lo"}), tmp_path / "aurora",
                                2,
                                kinds=frozenset({"htex"}))
    ex = {e.label: e for e in aurora.executors}
    assert list(ex) == ["cpu", "gpu", "llm"]  # only the kinds asked for start
    assert isinstance(ex["gpu"], HighThroughputExecutor)
    assert ex["gpu"].available_accelerators == AURORA_TILES
    assert ex["gpu"].cpu_affinity == AURORA_AFFINITY
    assert ex["gpu"].provider.cpus_per_node == 208


def test_polaris_refuses_an_interface_this_machine_lacks(tmp_path):
    from physflow.errors import SiteError

    site = load_site("polaris", values={"account": "p", "interface": "nosuchif0"})
    with pytest.raises(SiteError, match="network interface 'nosuchif0' not usable here"):
        build_parsl_config(site, tmp_path, 2)
