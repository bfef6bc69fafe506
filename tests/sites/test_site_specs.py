"""Site YAMLs as users meet them: placeholders, `physflow sites [show]`, their own site files,
and the checks that refuse a request before Parsl would queue it forever."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from physflow.errors import SiteError
from physflow.site_configs.loader import builtin_sites, load_site
from physflow.site_configs.site import check_gpus, check_mpi_request
from tests.conftest import physflow

HEAT = """\
physflow: 1
name: heat-sites
goal: Which kappa and power reproduce the observed field?
site: {site}
llm: {llm}
simulation:
  adapter: heat2d
  resources: {{ranks: {ranks}, nodes: {nodes}}}
  fixed: {{n: 96, t_end: 0.05}}
  parameters:
    kappa: {{min: 0.05, max: 1.0}}
    power: {{min: 5, max: 60}}
objective: {{metric: chi2, target: data/heat2d_target.h5}}
"""


def heat(heat_workflow, site: str = "local", llm: str = "{provider: embedded}", ranks: int = 2,
         nodes: int = 1) -> Path:
    return heat_workflow(HEAT.format(site=site, llm=llm, ranks=ranks, nodes=nodes))


def test_every_builtin_site_is_listed_and_loads_once_its_placeholders_are_set():
    listing = physflow("sites")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert {"local", "polaris", "aurora", "pbs", "slurm"} <= set(names) == set(builtin_sites())
    values = {"account": "p", "queue": "q", "endpoint": "2f9f2a5e-8d3c-4f7a-9a51-3c0f6f1e7b11"}
    for name in ("local", "polaris", "aurora", "pbs", "slurm"):
        site = load_site(name, values={k: v for k, v in values.items() if k != "endpoint"}
                         if name in ("polaris", "aurora", "pbs") else {})
        assert site.name == name and site.pools


def test_missing_placeholder_is_one_line_naming_file_line_and_how_to_set_it(monkeypatch):
    monkeypatch.delenv("PHYSFLOW_ACCOUNT", raising=False)
    proc = physflow("sites", "show", "polaris")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    line = next(i for i, text in enumerate(builtin_sites()["polaris"].read_text().splitlines(), 1)
                if text.startswith("account:"))
    assert proc.stderr.startswith(f"error: {builtin_sites()['polaris']}:{line}: account: ${{account}} not set")
    assert "--set account=VALUE" in proc.stderr and "PHYSFLOW_ACCOUNT" in proc.stderr


def test_set_beats_environment_beats_default_and_typos_are_refused():
    shown = physflow("sites", "show", "polaris", "--set", "account=fromset", "--set", "queue=prod",
                     env={"PHYSFLOW_ACCOUNT": "fromenv", "PHYSFLOW_WALLTIME": "2:00:00"})
    assert shown.returncode == 0, shown.stderr
    site = yaml.safe_load(shown.stdout)
    assert (site["account"], site["queue"], site["walltime"]) == ("fromset", "prod", "2:00:00")
    assert "#PBS -l filesystems=home:eagle" in site["scheduler_options"]  # the default
    env_only = yaml.safe_load(physflow("sites", "show", "polaris", env={"PHYSFLOW_ACCOUNT": "fromenv"}).stdout)
    assert env_only["account"] == "fromenv"
    typo = physflow("sites", "show", "polaris", "--set", "account=x", "--set", "acount=y")
    assert typo.returncode == 2 and "--set acount: no such placeholder" in typo.stderr
    bad = physflow("sites", "show", "polaris", "--set", "account")
    assert bad.returncode == 2 and "expected name=value" in bad.stderr


def test_shell_variables_are_not_placeholders(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text(textwrap.dedent("""\
        name: mine
        scheduler: slurm
        worker_init: cd ${HOME} && source ${venv:-/opt/env}/bin/activate
        pools: {mpi: {kind: mpi, launcher: srun}}
        """))
    site = load_site(str(own), values={"venv": "/tmp/v"})
    assert site.worker_init == "cd ${HOME} && source /tmp/v/bin/activate"


def test_sites_show_prints_a_site_yaml_that_loads_back_the_same(tmp_path):
    shown = physflow("sites", "show", "aurora", "--set", "account=AuroraProj")
    assert shown.returncode == 0, shown.stderr
    copy = tmp_path / "aurora-mine.yaml"
    copy.write_text(shown.stdout)
    assert load_site(str(copy)) == load_site("aurora", values={"account": "AuroraProj"})
    again = physflow("sites", "show", str(copy))
    assert again.returncode == 0 and again.stdout == shown.stdout



def test_polaris_and_aurora_as_shown_field_by_field():
    """What a Polaris or Aurora user gets without setting anything but the account."""
    for name, fs, cores in (("polaris", "home:eagle", 64), ("aurora", "home:flare", 208)):
        site = yaml.safe_load(physflow("sites", "show", name, "--set", "account=P").stdout)
        assert site["scheduler"] == "pbs" and site["account"] == "P" and site["queue"] == "debug"
        assert site["interface"] == "hsn0"  # not bond0: globus/globus-compute PR #1780
        assert site["loop"] == "login" and site["select_options"] == f"system={name}"
        assert f"#PBS -l filesystems={fs}" in site["scheduler_options"]
        mpi = site["pools"]["mpi"]
        assert (mpi["kind"], mpi["launcher"], mpi["cores_per_node"]) == ("mpi", "mpiexec", cores)
        assert (mpi["tasks_per_node"], mpi["cores_per_rank"], mpi["bind"]) == ("auto", 1, "auto")
        assert site["llm"]["serve_on"] == "llm" and site["llm"]["tool_parser"] is None


def test_own_site_yaml_path_works_in_the_workflow_and_on_the_command_line(heat_workflow, tmp_path):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "mine.yaml").write_text("name: mine\npools: {mpi: {kind: mpi}, cpu: {kind: htex}}\n")
    wf = heat(heat_workflow, site="sites/mine.yaml")  # relative to the workflow's folder
    assert physflow("validate", str(wf)).stdout.strip() == "ok"
    other = heat(heat_workflow, site="local")
    elsewhere = tmp_path / "run-from-here"
    elsewhere.mkdir()
    proc = physflow("validate", str(other), "--site", "../sites/mine.yaml", cwd=elsewhere)  # relative to cwd
    assert proc.returncode == 0, proc.stderr
    missing = physflow("validate", str(other), "--site", "nowhere.yaml")
    assert missing.returncode == 2 and f"site: unknown site '{Path.cwd() / 'nowhere.yaml'}'" in missing.stderr


def test_validate_and_submit_take_set_for_the_site(heat_workflow, monkeypatch):
    monkeypatch.delenv("PHYSFLOW_ACCOUNT", raising=False)
    wf = heat(heat_workflow, site="polaris")
    assert physflow("validate", str(wf), "--set", "account=p").stdout.strip() == "ok"
    unset = physflow("submit", str(wf), "--yes")
    assert unset.returncode == 2 and "${account} not set" in unset.stderr


def test_mpi_requests_that_cannot_fit_a_block_are_refused_with_the_workflow_line(heat_workflow):
    too_big = physflow("validate", str(heat(heat_workflow, site="polaris", ranks=8, nodes=3)), "--set", "account=p")
    assert too_big.returncode == 2
    assert ":8: simulation.resources.nodes: 3 nodes do not fit a block of pool mpi of site polaris (2 nodes " \
           "per block)" in too_big.stderr
    fits = physflow("validate", str(heat(heat_workflow, site="polaris", ranks=8, nodes=3)), "--set", "account=p",
                    "--set", "nodes=4")
    assert fits.returncode == 0, fits.stderr
    sparse = physflow("validate", str(heat(heat_workflow, site="polaris", ranks=1, nodes=2)), "--set", "account=p")
    assert sparse.returncode == 2 and "simulation.resources.ranks: 1 ranks cannot fill 2 nodes" in sparse.stderr
    crowded = load_site("polaris", values={"account": "p"})
    with pytest.raises(SiteError, match="65 per node, more than the 64 cores"):
        check_mpi_request(crowded, "mpi", 1, 65)


def test_gpu_requests_must_exist_in_one_worker_of_the_pool(heat_workflow):
    site = load_site("polaris", values={"account": "p"})
    check_gpus(site, "llm", 4)
    with pytest.raises(SiteError, match=r"4 GPUs asked of pool gpu .* its workers see 1 each"):
        check_gpus(site, "gpu", 4)
    with pytest.raises(SiteError, match="pool cpu of site polaris, but it has no accelerators"):
        check_gpus(site, "cpu", 1)
    vllm = "{provider: vllm, model: meta-llama/Llama-3.3-70B-Instruct, tensor_parallel: 4, pool: gpu}"
    refused = physflow("validate", str(heat(heat_workflow, site="polaris", llm=vllm)), "--set", "account=p")
    assert refused.returncode == 2 and "llm.tensor_parallel: 4 GPUs asked of pool gpu" in refused.stderr
    served = vllm.replace("pool: gpu", "pool: llm")
    ok = physflow("validate", str(heat(heat_workflow, site="polaris", llm=served)), "--set", "account=p")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("body, message", [
    ("name: x\nscheduler: globus\npools: {mpi: {kind: mpi}}\n", "scheduler globus needs endpoint"),
    ("name: x\nwalltime: 2h\npools: {mpi: {kind: mpi}}\n", "walltime '2h' is not H:MM:SS"),
    ("name: x\npools: {mpi: {kind: mpi, accelerators: ['0,1']}}\n", "accelerators name a node's devices one an entry"),
    ("name: x\npools: {mpi: {kind: mpi, tasks_per_node: 0}}\n", "tasks_per_node 0 is not a count of tasks on a node"),
    ("name: x\npools: {mpi: {kind: mpi, tasks_per_node: 1000000000}}\n", "(1 to 8192, or auto)"),
    ("name: x\npools: {mpi: {kind: mpi, init_blocks: 2, max_blocks: 1}}\n", "init_blocks (2) exceeds max_blocks"),
    ("name: x\npools: {mpi: {kind: mpi, launcher: srun}}\n", "a local site launches MPI with mpiexec"),
])
def test_site_yaml_mistakes_name_file_and_field(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(SiteError, match=re.escape(message)) as info:
        load_site(str(path))
    assert info.value.file == str(path)


def test_validate_says_when_max_concurrent_exceeds_what_the_pools_run_at_once(heat_workflow, tmp_path):
    (tmp_path / "one.yaml").write_text("name: one\npools: {mpi: {kind: mpi, tasks_per_node: 1}, "
                                       "cpu: {kind: htex, workers_per_node: 2}}\n")
    wf = heat_workflow(HEAT.format(site=tmp_path / "one.yaml", llm="{provider: embedded}", ranks=1, nodes=1)
                       + "budget: {max_concurrent: 3}\n")
    proc = physflow("validate", str(wf))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert "warning: budget.max_concurrent is 3, but site one runs at most 1 simulation(s) at once (pool mpi " \
           "has 1 block(s) of 1 node(s), 1 simulation(s) a node): 2 would wait" in proc.stderr
    fits = heat_workflow(HEAT.format(site=tmp_path / "one.yaml", llm="{provider: embedded}", ranks=1, nodes=1)
                         + "budget: {max_concurrent: 1}\n")
    assert physflow("validate", str(fits)).stderr == ""
    gpus = heat_workflow(HEAT.format(site="local", llm="{provider: embedded}", ranks=1, nodes=1).replace(
        "nodes: 1}", "nodes: 1, gpus: 1}"))
    refused = physflow("validate", str(gpus))
    assert refused.returncode == 2 and ":8: simulation.resources.gpus: 1 GPUs a node asked, but pool mpi of site " \
                                      "local lists none in accelerators" in refused.stderr


def test_the_serial_pool_counts_its_workers():
    from physflow.site_configs.site import concurrency_note, simulation_slots

    site = load_site("local").model_copy(deep=True)
    site.pools["cpu"].workers_per_node = 2
    assert simulation_slots(site, mpi=False) == 2
    note = concurrency_note(site, 3, 2, mpi=False)
    assert note and "site local runs at most 2 simulation(s) at once (pool cpu has 2 worker(s))" in note
    assert "pools.cpu.workers_per_node" in note
    assert simulation_slots(load_site("slurm"), mpi=False) is None  # Parsl counts each node's cores there
