"""``physflow endpoint-config SITE``: its output loads with globus-compute-endpoint's own loader
and gives the engine and the batch provider physflow itself would use on that site."""

from __future__ import annotations

from pathlib import Path

import yaml
from globus_compute_endpoint.endpoint.config.utils import get_config, load_config_yaml
from parsl.launchers import MpiExecLauncher, SimpleLauncher
from parsl.providers import LocalProvider, PBSProProvider

from physflow.dispatch.endpoint_config import endpoint_config_yaml
from physflow.dispatch.parsl_config import build_provider
from physflow.site_configs.loader import builtin_sites, load_site
from tests.conftest import physflow


def loaded(text: str, here_interface: str = "lo"):
    """The endpoint's config from ``text``. Polaris's hsn0 exists only on Polaris; the loader
    resolves the interface it names, so here it is pointed at this machine's loopback."""
    return load_config_yaml(text.replace("ifname: hsn0", f"ifname: {here_interface}"))


def test_polaris_mpi_endpoint_config_loads_as_a_globus_mpi_engine_on_pbs(tmp_path):
    out = tmp_path / "ep" / "config.yaml"
    proc = physflow("endpoint-config", "polaris", "--set", "account=MYPROJ", "--set", "filesystems=home:grand",
                    "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(out.read_text())
    assert data["engine"]["type"] == "GlobusMPIEngine"
    assert data["engine"]["address"] == {"type": "address_by_interface", "ifname": "hsn0"}  # PR #1780

    engine = loaded(out.read_text()).engine
    assert type(engine).__name__ == "GlobusMPIEngine" and engine.executor.mpi_launcher == "mpiexec"
    provider = engine.executor.provider
    assert isinstance(provider, PBSProProvider) and isinstance(provider.launcher, SimpleLauncher)
    assert (provider.account, provider.queue, provider.select_options) == ("MYPROJ", "debug", "system=polaris")
    assert "#PBS -l filesystems=home:grand" in provider.scheduler_options.splitlines()
    assert provider.nodes_per_block == 2 and provider.walltime == "01:00:00"
    assert "module load conda" in provider.worker_init
    # The very provider physflow's own Parsl pool would get for that pool of the site.
    site = load_site("polaris", values={"account": "MYPROJ", "filesystems": "home:grand"})
    assert repr(provider) == repr(build_provider(site, "mpi"))


def test_polaris_gpu_pool_gives_a_globus_compute_engine_with_one_worker_per_a100():
    proc = physflow("endpoint-config", "polaris", "--set", "account=MYPROJ", "--pool", "gpu")
    assert proc.returncode == 0, proc.stderr
    engine = loaded(proc.stdout).engine
    assert type(engine).__name__ == "GlobusComputeEngine"
    assert engine.executor.available_accelerators == ["0", "1", "2", "3"]
    assert engine.executor.cpu_affinity == "block-reverse"
    launcher = engine.executor.provider.launcher
    assert isinstance(launcher, MpiExecLauncher) and "--ppn 1" in launcher.overrides


def test_local_endpoint_config_is_what_the_endpoint_loads_from_its_directory(tmp_path):
    ep_dir = tmp_path / "local-ep"
    proc = physflow("endpoint-config", "local", "-o", str(ep_dir / "config.yaml"))
    assert proc.returncode == 0 and Path(proc.stderr.strip()) == ep_dir / "config.yaml"
    header = (ep_dir / "config.yaml").read_text().splitlines()[0]
    assert header.startswith("# Globus Compute endpoint config for pool mpi of site local")
    engine = get_config(ep_dir).engine  # the loader `globus-compute-endpoint start` uses
    assert type(engine).__name__ == "GlobusMPIEngine" and engine.executor.address == "127.0.0.1"
    provider = engine.executor.provider
    assert isinstance(provider, LocalProvider) and "PBS_NODEFILE" in provider.worker_init


def test_every_pool_of_every_batch_site_loads():
    required = {"local": {}, "slurm": {}, "polaris": {"account": "A"}, "aurora": {"account": "A"},
                "pbs": {"account": "A", "queue": "workq"}}
    assert set(required) <= set(builtin_sites())
    for name, values in required.items():
        site = load_site(name, values=values)
        for pool in site.pools:
            config = loaded(endpoint_config_yaml(site, pool))
            assert config.display_name == f"physflow-{name}-{pool}"
            assert repr(config.engine.executor.provider) == repr(build_provider(site, pool)), (name, pool)
            engine = "GlobusMPIEngine" if site.pools[pool].kind == "mpi" else "GlobusComputeEngine"
            assert type(config.engine).__name__ == engine, (name, pool)


def test_missing_placeholder_and_globus_site_are_one_line_errors():
    proc = physflow("endpoint-config", "polaris")
    polaris = builtin_sites()["polaris"]
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {polaris}:")
    assert "account" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    proc = physflow("endpoint-config", "globus", "--set", "endpoint=6d1f7e55-6c1a-4b7c-9c38-1e3f0d2c4a10")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "Globus Compute" in proc.stderr and "Traceback" not in proc.stderr

    proc = physflow("endpoint-config", "local", "--pool", "gpu")
    assert proc.returncode == 2 and "no pool 'gpu'" in proc.stderr


def test_an_endpoint_for_four_rank_simulations_packs_sixteen_on_a_polaris_node():
    proc = physflow("endpoint-config", "polaris", "--set", "account=MYPROJ", "--ranks", "4")
    assert proc.returncode == 0, proc.stderr
    engine = loaded(proc.stdout).engine
    assert engine.executor.max_workers_per_block == 32  # 2 nodes a block, 16 simulations a node
    init = engine.executor.provider.worker_init
    assert "for _ in $(seq 16)" in init and "PHYSFLOW_BIND=pals" in init and "PHYSFLOW_SLOT_CORES='0-3;4-7;" in init
