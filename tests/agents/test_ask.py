"""physflow ask: questions over local data answered with code that physflow runs itself.

The model is AutoGen's ReplayChatCompletionClient fed a script; the data are real files (a
halo catalog the built-in N-body solver writes, a CSV galaxy table) and every number the tests
expect is computed here from those files with numpy. The first test runs the command in its own
process, as a user would; the others invoke the same click command in-process, to stay fast.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from physflow.agents.catalog import Catalog
from physflow.agents.tools import Toolbox
from physflow.cli import main
from physflow.sim_adapters import catalog_tables
from tests.conftest import physflow, write_script

THRESHOLD = 1e14  # Msun/h


@pytest.fixture(scope="module")
def halo_catalog(tmp_path_factory) -> Path:
    """A real halo catalog: the nbody_pm solver on a 16^3-particle box, a second or two."""
    folder = tmp_path_factory.mktemp("nbody")
    mpiexec = Path(sys.executable).parent / "mpiexec"
    subprocess.run([str(mpiexec), "-n", "1", sys.executable, "-m", "physflow.sim_adapters.nbody_pm.solver",
                    "--n-side", "16", "--n-mesh", "32", "--box-size", "64", "--steps", "4", "--out", "nbody.h5"],
                   cwd=folder, check=True, capture_output=True, timeout=120)
    return folder / "nbody.h5"


def halo_masses(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["group_size"][...] * f.attrs["particle_mass"]


def ask(*args: str):
    """``physflow ask ARGS`` in this process: exit_code, stdout and stderr."""
    return CliRunner().invoke(main, ["ask", *args], catch_exceptions=False)


def printed(stdout: str, label: str) -> float:
    """The number printed after ``label`` in the code's output, as the CLI shows it."""
    match = re.search(re.escape(label) + r"\s*([-+0-9.eE]+)", stdout)
    assert match, f"{label!r} not in:\n{stdout}"
    return float(match.group(1))


HALO_CODE = textwrap.dedent(f"""\
    import h5py
    import numpy as np
    with h5py.File(DATA['nbody'], 'r') as f:
        mass = f['group_size'][...] * f.attrs['particle_mass']  # Msun/h
    heavy = mass[mass > {THRESHOLD:g}]
    print('halos heavier than {THRESHOLD:g} Msun/h:', heavy.size)
    print('mean mass [Msun/h]:', repr(float(heavy.mean())))
""")


def test_halo_question_is_answered_with_the_code_and_the_numbers_it_printed(halo_catalog, tmp_path):
    mass = halo_masses(halo_catalog)
    heavy = mass[mass > THRESHOLD]
    assert heavy.size > 0
    script = write_script(tmp_path / "model.jsonl", [
        {"tool": "query_catalog", "arguments": {"table": "nbody/halos", "columns": ["mass"],
                                                "where": f"mass > {THRESHOLD:g}", "limit": 3}},
        {"content": {"answer": f"{heavy.size} halos are heavier than 1e14 Msun/h; their mean mass is "
                               f"{heavy.mean():.3g} Msun/h.",
                     "code": HALO_CODE, "caveats": ["masses are friends-of-friends group masses"]}},
        {"content": {"missing": ["a 64 Mpc/h box holds few massive halos"]}},
    ])
    run = tmp_path / "ask"
    proc = physflow("ask", "How many halos are heavier than 1e14 Msun/h, and what is their mean mass?",
                    "--data", str(halo_catalog), "--provider", "replay", "--script", str(script),
                    "--run-dir", str(run), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr

    output = proc.stdout.split("output (physflow ran the code):")[1]
    assert printed(output, "Msun/h:") == heavy.size
    assert printed(output, "mean mass [Msun/h]:") == float(heavy.mean())
    assert "heavy = mass[mass > 1e+14]" in proc.stdout                     # the code is shown
    assert "not produced by the code" not in proc.stdout
    assert "critic: a 64 Mpc/h box holds few massive halos" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == str(run / "answer.md")
    answer_md = (run / "answer.md").read_text()
    assert "```python\n" + HALO_CODE.rstrip() in answer_md and "mean mass [Msun/h]:" in answer_md

    transcript = [json.loads(line) for line in (run / "transcript.jsonl").read_text().splitlines()]
    looked = next(t for t in transcript if t["type"] == "ToolCallExecutionEvent")
    assert f'\\"rows_matching\\": {heavy.size}' in json.dumps(looked["content"])
    assert any(t["type"] == "verification" and t["ok"] for t in transcript)


GALAXIES = [(1e9, 0.12, -18.1), (3e10, 0.15, -20.9), (2e11, 0.11, -22.3), (5e11, 0.18, -22.8),
            (8e10, 0.25, -21.5), (4e10, 0.05, -21.0), (2e12, 0.14, -23.4), (6e10, 0.19, -21.2)]

GALAXY_CODE = textwrap.dedent("""\
    import csv
    import numpy as np
    rows = list(csv.DictReader(open(DATA['galaxies'])))
    mass = np.array([float(r['stellar_mass']) for r in rows])
    z = np.array([float(r['z']) for r in rows])
    mag = np.array([float(r['abs_mag_r']) for r in rows])
    pick = (mass > 1e10) & (mass < 1e12) & (z > 0.1) & (z < 0.2)
    print('galaxies selected:', int(pick.sum()))
    print('mean abs_mag_r:', repr(float(mag[pick].mean())))
""")


def test_a_missing_column_is_named_and_worked_around_never_invented(tmp_path):
    table = tmp_path / "galaxies.csv"
    table.write_text("stellar_mass,z,abs_mag_r\n" + "".join(f"{m},{z},{r}\n" for m, z, r in GALAXIES))
    data = np.array(GALAXIES)
    pick = (data[:, 0] > 1e10) & (data[:, 0] < 1e12) & (data[:, 1] > 0.1) & (data[:, 1] < 0.2)
    mean_mag = float(data[pick, 2].mean())
    script = write_script(tmp_path / "model.jsonl", [
        {"tool": "query_catalog", "arguments": {"table": "galaxies", "columns": ["brightness"]}},
        {"tool": "query_catalog", "arguments": {"table": "galaxies", "columns": ["abs_mag_r"],
                                                "where": "stellar_mass > 1e10 and stellar_mass < 1e12 "
                                                         "and z > 0.1 and z < 0.2"}},
        {"content": {"answer": f"The {int(pick.sum())} galaxies selected have a mean r-band absolute magnitude "
                               f"of {mean_mag:.2f}.",
                     "code": GALAXY_CODE,
                     "caveats": ["the table has no brightness column; the r-band absolute magnitude abs_mag_r "
                                 "is used instead (brighter is more negative)"]}},
        {"content": {"missing": []}},
    ])
    proc = ask("What is the average brightness of galaxies with stellar mass between 1e10 and 1e12 solar masses "
               "at 0.1 < z < 0.2?", "--data", str(table), "--provider", "replay", "--script", str(script),
               "--run-dir", str(tmp_path / "ask"), "--json")
    assert proc.exit_code == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verified"] and result["code"] == GALAXY_CODE
    assert printed(result["output"], "galaxies selected:") == pick.sum() == 4
    assert printed(result["output"], "mean abs_mag_r:") == mean_mag
    assert any("no brightness column" in c and "abs_mag_r" in c for c in result["caveats"])
    assert not any("not produced by the code" in c for c in result["caveats"])
    assert set(result) >= {"question", "answer", "code", "output", "caveats", "tokens"}

    transcript = (tmp_path / "ask" / "transcript.jsonl").read_text()
    assert "no column 'brightness' in table galaxies; columns: stellar_mass, z, abs_mag_r" in transcript


def test_a_number_the_code_never_printed_is_flagged(halo_catalog, tmp_path):
    mass = halo_masses(halo_catalog)
    heavy = mass[mass > THRESHOLD]
    invented = heavy.size + 40
    script = write_script(tmp_path / "model.jsonl", [
        {"content": {"answer": f"{heavy.size} halos are heavier than 1e14 Msun/h, out of {invented} in the box.",
                     "code": HALO_CODE, "caveats": []}},
        {"content": {"missing": []}},
    ])
    proc = ask("How many halos are heavier than 1e14 Msun/h?", "--data", str(halo_catalog), "--provider", "replay",
               "--script", str(script), "--run-dir", str(tmp_path / "ask"), "--json")
    assert proc.exit_code == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert f"out of {invented} [not produced by the code] in the box" in result["answer"]
    caveats = result["caveats"]
    flagged = [c for c in caveats if c.startswith("not produced by the code:")]
    assert len(flagged) == 1
    numbers = flagged[0].removeprefix("not produced by the code:").split("(")[0]
    assert [n.strip() for n in numbers.split(",")] == [str(invented)]  # the printed count is not flagged


def test_failing_code_goes_back_to_the_coder_and_three_failures_end_unverified(halo_catalog, tmp_path):
    broken = {"answer": "There are 12 heavy halos.", "code": "print(DATA['nbody'].missing_attribute)",
              "caveats": []}
    script = write_script(tmp_path / "model.jsonl", [{"content": broken}] * 3)
    proc = ask("How many heavy halos?", "--data", str(halo_catalog), "--provider", "replay", "--script", str(script),
               "--run-dir", str(tmp_path / "ask"))
    assert proc.exit_code == 1, proc.stderr
    assert proc.stdout.startswith("No verified result was produced: the code failed when physflow ran it")
    assert "There are 12 heavy halos" not in proc.stdout
    transcript = [json.loads(line) for line in (tmp_path / "ask" / "transcript.jsonl").read_text().splitlines()]
    tasks = [t["content"] for t in transcript if t["type"] == "task" and t.get("to") == "coder"]
    assert len(tasks) == 3 and "AttributeError" in tasks[1]


@pytest.mark.parametrize("where", [
    "__import__('os').system('echo escaped')",
    "mass.__class__.__bases__",
    "open('/etc/passwd')",
    "(lambda: 1)()",
    "mass[0] > 1",
    "mass > 1e13 & mass < 1e14",
    "group_size == 'x'",
    "[x for x in ()]",
    "mass >",
    "-" * 300 + "mass > 0",
    "mass > 1e13 and mass",
])
def test_hostile_or_malformed_where_is_an_error_for_the_agent(halo_catalog, where):
    toolbox = Toolbox(None, catalog=Catalog.load([halo_catalog], group_tables=catalog_tables()))
    answer = toolbox.query_catalog("nbody/halos", ["mass"], where)
    assert answer.startswith("error: ")


def test_where_selects_exactly_the_rows_numpy_selects(halo_catalog):
    toolbox = Toolbox(None, catalog=Catalog.load([halo_catalog], group_tables=catalog_tables()))
    mass = halo_masses(halo_catalog)
    out = json.loads(toolbox.query_catalog("nbody/halos", ["mass"], "not (mass <= 5e13) and mass / 1e13 < 20", 0))
    chosen = mass[(mass > 5e13) & (mass / 1e13 < 20)]
    assert out["rows_matching"] == chosen.size and out["rows"] == []
    assert out["summary"]["mass"]["mean"] == float(f"{chosen.mean():.6g}") and out["units"] == {"mass": "Msun/h"}
    assert toolbox.query_catalog("nbody/galaxies").startswith("error: no table 'nbody/galaxies'; tables: ")


def test_missing_data_file_is_one_line_and_exit_2(tmp_path):
    proc = ask("anything?", "--data", str(tmp_path / "nope.h5"))
    assert proc.exit_code == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.h5'}: no such data file"
    assert not (tmp_path / "runs").exists()
