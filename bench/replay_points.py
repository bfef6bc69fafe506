"""Which of a run's simulations are the optimizer's fresh point on the data of their moment?

An optimizer's suggestion follows from its seed, the results and the pending points
(``physflow.optimizer``), so a run's journal is enough to ask it again: for each proposed
simulation this rebuilds what the campaign knew when it was proposed (the results finished
before it, the simulations proposed and not yet finished) and asks ``suggest(1, pending)``. A
simulation whose parameters equal that point ran the optimizer's fresh choice; one that differs
came from elsewhere: a spare drawn before the result that freed its slot
(``workflows.backfill``), a round's candidate offered earlier, the planner's pick, the user's
edit. Two runs of one campaign (the optimizer alone and physflow, ``bench/agent_value.py
--keep DIR``) part where one of them first differs.

Points count as the same within ``SAME`` of each parameter's range: the second point of a batch
drawn at once (two slots free together) is chosen on the first as a kriging-believer fantasy
with the batch's random stream, and the replay, asking one point at a time, may land a hair
away from it.

Run from the repository root: ``python bench/replay_points.py RUN_DIR [RUN_DIR ...] [--seed K]``
(``--seed``: the optimizer's seed where a benchmark replaced the workflow's, as
``bench/agent_value.py`` does with its seed k).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from physflow.optimizer import Optimizer  # noqa: E402
from physflow.sim_adapters import get_adapter  # noqa: E402
from physflow.workflows.store import RunStore, read_journal  # noqa: E402

#: Points this close (a fraction of each parameter's range) are the same point.
SAME = 1e-3


def same(a: dict[str, float], b: dict[str, float], parameters: dict[str, Any]) -> bool:
    """Whether two points are the same within ``SAME`` of each parameter's range."""
    return all(abs(a[k] - b[k]) <= SAME * (p.max - p.min) for k, p in parameters.items())


Row = tuple[str, str, dict[str, float], dict[str, float] | None, int, int]


def replay(run_dir: Path, seed: int | None) -> list[Row]:
    """(task, source, the run's point, the optimizer's fresh point where it differs, else None,
    results, pending) per proposal."""
    store = RunStore(run_dir)
    workflow, _ = store.submitted_workflow()
    spec = workflow.spec
    parameters = get_adapter(workflow).parameters
    opt = Optimizer(parameters, spec.objective.goal,
                    seed=int(spec.simulation.fixed.get("seed", 0)) if seed is None else seed)
    params: dict[str, dict[str, float]] = {}
    pending: list[str] = []
    rows = []
    for e in read_journal(store.journal_path):
        if e.get("event") == "proposed":
            fresh = opt.suggest(1, pending=[params[t] for t in pending])[0]
            params[e["task"]] = e["params"]
            rows.append((e["task"], e.get("source") or "", e["params"],
                         None if same(e["params"], fresh, parameters) else fresh, len(opt.observed), len(pending)))
            pending.append(e["task"])
        elif e.get("event") in ("finished", "failed") and e.get("task") in params:
            if e["task"] in pending:
                pending.remove(e["task"])
            value = (e.get("metrics") or {}).get(spec.objective.metric)
            if e["event"] == "finished" and value is not None:
                opt.observe(params[e["task"]], float(value))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--seed", type=int, default=None, help="the optimizer's seed (default: the workflow's)")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        rows = replay(run_dir, args.seed)
        alike = sum(1 for row in rows if row[3] is None)
        print(f"{run_dir}: {alike} of {len(rows)} simulations are the optimizer's fresh point on their data")
        print(f"  {'task':<7} {'source':<10} {'results':>7} {'pending':>7}  {'ran':<34} fresh point, where it differs")
        for task, source, ran, fresh, seen, waiting in rows:
            text = " ".join(f"{v:.4g}" for v in ran.values())
            other = "" if fresh is None else " ".join(f"{v:.4g}" for v in fresh.values())
            print(f"  {task:<7} {source:<10} {seen:>7} {waiting:>7}  {text:<34} {other}")


if __name__ == "__main__":
    main()
