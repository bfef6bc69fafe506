"""physflow drives a code it did not write: LAMMPS under mpiexec, inputs rendered per task."""

from __future__ import annotations

import shutil

import pytest

from physflow.errors import SpecError
from physflow.sim_adapters import get_adapter
from physflow.vocabulary.workflow import load_workflow
from tests.conftest import EXAMPLES, results_of, submit_folder

MELT = EXAMPLES / "lammps_melt"


def test_inputs_are_rendered_per_task(tmp_path):
    adapter = get_adapter(load_workflow(MELT / "lammps_melt.yaml"))
    spec = adapter.build_task("t7", {"temperature": 1.25, "density": 0.8}, tmp_path)
    text = spec.files["in.melt"]
    assert "lattice         fcc 0.8\n" in text and "velocity        all create 1.25 4928459" in text
    assert "{{" not in text and "$(f_avg[1])" in text  # LAMMPS's own syntax is left alone
    assert spec.argv == ["lmp", "-in", "in.melt", "-log", "log.lammps", "-screen", "none"] and spec.mpi


def test_unknown_template_name_is_a_spec_error(tmp_path):
    shutil.copy(MELT / "lammps_melt.yaml", tmp_path / "wf.yaml")
    (tmp_path / "in.melt.template").write_text((MELT / "in.melt.template").read_text() + "\n# {{ pressure_unit }}")
    with pytest.raises(SpecError, match="unknown {{ pressure_unit }}") as err:
        get_adapter(load_workflow(tmp_path / "wf.yaml"))
    assert err.value.field == "simulation.inputs.in.melt"


def test_lammps_campaign_runs_for_real(tmp_path):
    shutil.copy(MELT / "in.melt.template", tmp_path)
    text = (MELT / "lammps_melt.yaml").read_text()
    text = text.replace("llm: {provider: embedded}", "agents: {planner: {enabled: false}}")
    text = text.replace("max_simulations: 24", "max_simulations: 2").replace("equilibrate: 1000", "equilibrate: 300")
    text = text.replace("production: 1000", "production: 300").replace("samples: 100", "samples: 30")
    run, proc = submit_folder(tmp_path, {"wf.yaml": text})
    assert proc.returncode == 0, proc.stderr
    rows = results_of(run)
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "finished", row
        m = row["metrics"]
        assert m["atoms"] == 864 and m["chi2"] >= 0
        assert abs(m["temperature"] - row["params"]["temperature"]) < 0.15 * row["params"]["temperature"]
        log = (run / "tasks" / row["id"] / "log.lammps").read_text()
        assert "LAMMPS" in log and "Total wall time" in log
