"""A real campaign to look at: heat2d steered by the optimizer alone or by AutoGen's replay model, detached."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import EXAMPLES, physflow, write_script

HEAT_OPTIMIZER = """\
physflow: 1
name: heat-ui
goal: Which kappa and power reproduce the observed field?
{team}
simulation:
  adapter: heat2d
  resources: {{ranks: 2, nodes: 1}}
  fixed: {{n: 96, t_end: {t_end}}}
  parameters: {{kappa: {{min: 0.05, max: 1.0, units: m^2/s}}, power: {{min: 5, max: 60, units: K/s}}}}
objective: {{metric: chi2, target: data/heat2d_target.h5}}
budget: {{max_simulations: {sims}, max_concurrent: {slots}, max_rounds: 2, wall_time: 5m}}
"""
#: No model: the optimizer steers alone.
OPTIMIZER_ONLY = "agents:\n  planner: {enabled: false}"
#: AutoGen's replay model: a scripted planner and critic (two hypotheses, two verdicts).
REPLAY_TEAM = """\
llm: {provider: replay, script: planner.jsonl}
agents:
  critic: {script: critic.jsonl}
  domain_expert: {enabled: false}
  coder: {enabled: false}"""
PLANNER = [
    {"content": {"hypothesis": "The field is matched near kappa 0.4 m^2/s.", "bound": "below", "value": 1e6,
                 "simulations": ["A"]}},
    {"content": {"hypothesis": "A larger power needs a larger kappa.", "bound": "above", "value": 1e6,
                 "simulations": ["A"]}},
]
CRITIC = [
    {"content": {"verdict": "supported", "evidence": "chi2 near 1 at kappa 0.4", "advice": "vary power"}},
    {"content": {"verdict": "refuted", "evidence": "chi2 is large at power 50", "advice": "stop"}},
]


def heat_folder(folder: Path, sims: int, slots: int, t_end: float = 0.05, team: bool = False) -> Path:
    """A workflow folder (YAML + the shipped target) for a heat2d campaign, steered by the
    optimizer alone or (``team``) by the replay planner and critic."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "data" / "heat2d_target.h5", folder / "data" / "heat2d_target.h5")
    path = folder / "wf.yaml"
    path.write_text(HEAT_OPTIMIZER.format(sims=sims, slots=slots, t_end=t_end,
                                          team=REPLAY_TEAM if team else OPTIMIZER_ONLY))
    write_script(folder / "planner.jsonl", PLANNER)
    write_script(folder / "critic.jsonl", CRITIC)
    return path


def submit_detached(folder: Path, sims: int, slots: int, t_end: float = 0.05, team: bool = False) -> Path:
    """``physflow submit --detach``: returns the run dir it printed."""
    wf = heat_folder(folder, sims, slots, t_end, team)
    proc = physflow("submit", str(wf), "--detach", "--run-dir", str(folder / "run"), cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])
