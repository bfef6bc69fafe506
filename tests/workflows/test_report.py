"""The report's array figures are the ones the run's adapter declares, drawn from campaign.h5 and
the target; the best-first ranking the report, the snapshot, the agents and the campaign share."""

from __future__ import annotations

import json

import h5py
import numpy as np
import yaml

from physflow.vocabulary.ranking import best, ranked, reaches
from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.task import Array
from physflow.workflows.report import write_report
from physflow.workflows.store import RunStore

K = np.geomspace(0.1, 1.0, 8)
M = np.geomspace(1e13, 1e15, 4)


def _run(tmp_path, adapter: str, arrays: dict[str, Array]):
    """A stopped run of three finished simulations with ``arrays`` each, and a target file."""
    run = tmp_path / adapter
    store = RunStore.create(run)
    target = tmp_path / f"{adapter}-target.h5"
    with h5py.File(target, "w") as f:
        for name, a in arrays.items():
            f.create_dataset(name, data=a.values).attrs["units"] = a.units
    spec = {"name": adapter, "goal": "g", "simulation": {"adapter": adapter, "parameters": {"a": {"min": 0, "max": 1}}},
            "objective": {"metric": "chi2", "goal": "minimize", "target": str(target)},
            "budget": {"max_concurrent": 2}}
    (run / "workflow.yaml").write_text(yaml.safe_dump(spec))
    tasks, events = [], [{"event": "campaign_started", "t": 1.0, "name": adapter}]
    for i, chi2 in enumerate((3.0, 1.0, 2.0)):
        t = TaskRecord(id=f"t{i}", params={"a": i / 4}, status="finished", metrics={"chi2": chi2},
                       arrays=sorted(arrays), started=2.0 + i, finished=3.0 + i)
        tasks.append((t, arrays))
        events += [{"event": "proposed", "t": 1.0 + i, "task": t.id, "params": t.params, "source": "optimizer"},
                   {"event": "finished", "t": 3.5 + i, "task": t.id, "metrics": t.metrics, "arrays": t.arrays,
                    "started": t.started, "finished": t.finished}]
    (run / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    store.write_hdf5(tasks)
    return run


def test_nbody_pm_runs_get_the_power_spectrum_and_mass_function_figures(tmp_path):
    arrays = {"k": Array(K, "h/Mpc"), "pk": Array(1e3 * K**-1.5, "(Mpc/h)^3"),
              "m": Array(M, "Msun/h"), "dn_dlnm": Array(1e-4 * (M / 1e13) ** -1, "(Mpc/h)^-3")}
    report = write_report(_run(tmp_path, "nbody_pm", arrays)).read_text()
    plots = {p.name: p.stat().st_size for p in (tmp_path / "nbody_pm" / "plots").glob("*.png")}
    assert plots.get("power_spectrum.png") and plots.get("mass_function.png"), plots
    assert ("![P(k) of the best simulations against the target](plots/power_spectrum.png)\n\n"
            "*P(k) of the best simulations against the target*") in report
    assert "![Halo mass function of the best simulations against the target](plots/mass_function.png)" in report
    assert report.index("power_spectrum.png") < report.index("mass_function.png") < report.index("## Simulations")


def test_an_adapter_without_figures_gets_none_whatever_its_arrays_are_called(tmp_path):
    arrays = {"k": Array(K, ""), "pk": Array(K, ""), "temperature": Array(np.ones(8), "K")}
    report = write_report(_run(tmp_path, "heat2d", arrays)).read_text()
    assert not (tmp_path / "heat2d" / "plots" / "power_spectrum.png").exists()
    assert "power_spectrum" not in report and "mass function" not in report.lower()
    assert "objective.png" in report


def test_ranking_keeps_finite_values_best_first_and_ties_in_order():
    items = [("a", 2.0), ("b", float("nan")), ("c", 1.0), ("d", None), ("e", 1.0), ("f", float("inf")), ("g", 3)]
    value = dict(items).get
    names = [n for n, _ in items]
    assert ranked(names, value, "minimize") == ["c", "e", "a", "g"]
    assert ranked(names, value, "maximize") == ["g", "a", "c", "e"]
    assert ranked(names, value, "minimize", unscored_last=True) == ["c", "e", "a", "g", "b", "d", "f"]
    assert best(names, value, "minimize") == "c" and best(names, value, "maximize") == "g"
    assert best(["b", "d"], value, "minimize") is None
    assert reaches(1.0, 1.0, "minimize") and not reaches(1.1, 1.0, "minimize") and reaches(1.1, 1.0, "maximize")


def test_a_workflow_with_sandbox_unsafe_says_so_on_the_reports_first_line(tmp_path):
    arrays = {"temperature": Array(np.ones(8), "K")}
    run = _run(tmp_path, "heat2d", arrays)
    assert write_report(run).read_text().startswith("# Campaign report")
    spec = yaml.safe_load((run / "workflow.yaml").read_text())
    (run / "workflow.yaml").write_text(yaml.safe_dump({**spec, "sandbox": "unsafe"}))
    assert write_report(run).read_text().splitlines()[0].startswith("**sandbox: unsafe** - this workflow let "
                                                                    "model-written code run")


def test_lanes_go_to_the_slot_that_fell_free_first():
    from physflow.workflows.report import greedy_lanes

    def task(i, start, end, status="finished"):
        return TaskRecord(id=f"t{i}", params={}, status=status, started=start, finished=end)

    ran = [task(0, 0, 4), task(1, 0, 2), task(2, 2, 3, "failed"), task(3, 3.5, 5), task(4, 4, 6)]
    bars, failed = greedy_lanes(ran, 2, 0.0)
    assert bars == [[(0, 4), (4, 2)], [(0, 2), (3.5, 1.5)]] and failed == [[], [(2, 1)]]
    bars, _ = greedy_lanes(ran, 1, 0.0)  # one slot: everything in it, overlaps and all
    assert len(bars[0]) == 4


def test_a_report_given_a_follower_reads_only_what_the_journal_gained(tmp_path, monkeypatch):
    """A resume reads its journal once: the report at its end goes on from the resume's follower
    (``write_report(run, follower)``), reading only the events added since, not the whole file."""
    import physflow.workflows.store as store_module

    arrays = {"pk": Array(K, "(Mpc/h)^3")}
    run = _run(tmp_path, "nbody_pm", arrays)
    follower = RunStore(run).follower()
    assert len(follower.state().tasks) == 3
    with open(run / "journal.jsonl", "a") as fh:  # what the resumed campaign added
        fh.write(json.dumps({"event": "campaign_ended", "t": 9.0, "state": "finished", "reason": "budget"}) + "\n")
    read = []
    real = store_module.iter_journal

    def counting(*args, **kwargs):
        for event in real(*args, **kwargs):
            read.append(event["event"])
            yield event

    monkeypatch.setattr(store_module, "iter_journal", counting)
    text = write_report(run, follower).read_text()
    assert read == ["campaign_ended"] and "**State:** finished (budget)" in text
    read.clear()
    write_report(run)  # without one: the whole journal
    assert len(read) == 8
