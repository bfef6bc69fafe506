"""``physflow init``: a workflow folder to start from, for each kind of adapter.

Each folder holds ``workflow.yaml`` (every key commented) and what it needs to validate and run
at once: a target made by the built-in code at known "true" parameters (heat2d, nbody_pm), or a
small model to replace with your own (executable: ``sim.py``; python: ``model.py``).
"""

from __future__ import annotations

from pathlib import Path

from physflow.errors import PhysflowError

COMMON_TAIL = """\
site: local                      # a built-in site (physflow sites) or a path to a site YAML
llm:
  provider: embedded             # embedded (llama.cpp, offline) | openai | vllm | replay
  # model: qwen2.5-coder-1.5b    # embedded: the default; smollm2-135m for quick tests
  # base_url: https://host/v1    # openai / vllm endpoint
  # api_key_env: MY_KEY_VAR      # the environment variable's NAME, never the key itself
  max_tokens_total: 60000        # the whole team's token budget for the campaign
# agents:                        # optional: planner, domain_expert, critic, coder
#   coder: {enabled: false}      # e.g. switch a role off; planner off = optimizer only
budget:
  max_simulations: 16            # simulations in all
  max_concurrent: 2              # simulations in flight at once (worker slots)
  max_rounds: 4                  # planner turns
  wall_time: 15m                 # stop after this long (s, or 30m, 2h)
  backfill: optimizer            # fill idle slots with the optimizer while agents think | none
approval: auto                   # auto | plan (ask before the first batch) | every-batch
"""

HEAT2D = """\
# A physflow workflow: infer the diffusivity and heating rate of a 2-D plate from a target field.
# Validate: physflow validate workflow.yaml     Run: physflow submit workflow.yaml
physflow: 1                      # schema version
name: {name}                     # run directories are runs/<name>-<UTC time>
goal: >                          # what the agents read first: the scientific question
  Which thermal diffusivity kappa and heating rate power reproduce the observed temperature
  field in data/target.h5 (chi2 at most 1.5)?
simulation:
  adapter: heat2d                # built-in MPI heat-diffusion solver
  resources: {{ranks: 2, nodes: 1}}  # MPI ranks and nodes per simulation
  fixed: {{n: 96, t_end: 0.05}}    # settings the agents may not change (grid points, end time in s)
  walltime: 5m                   # per-simulation limit
  parameters:                    # what the agents choose, with bounds and units
    kappa: {{min: 0.05, max: 1.0, units: m^2/s}}
    power: {{min: 5.0, max: 60.0, units: K/s}}
objective:
  metric: chi2                   # mean squared residual in units of the target's noise
  target: data/target.h5         # relative to this file; made by physflow init at kappa 0.4, power 30
  goal: minimize
  tolerance: 1.5                 # stop when reached
"""

NBODY = """\
# A physflow workflow: which omega_m and sigma8 reproduce a target halo mass function?
# Validate: physflow validate workflow.yaml     Run: physflow submit workflow.yaml
physflow: 1                      # schema version
name: {name}                     # run directories are runs/<name>-<UTC time>
goal: >                          # what the agents read first: the scientific question
  Which matter density omega_m and fluctuation amplitude sigma8 reproduce the halo mass
  function of the target universe in data/target.h5 (chi2_hmf at most 1)?
simulation:
  adapter: nbody_pm              # built-in MPI particle-mesh N-body code
  resources: {{ranks: 2, nodes: 1}}  # MPI ranks and nodes per simulation
  # box_size in Mpc/h; n_side^3 particles; n_mesh^3 force mesh; must match the target's
  fixed: {{box_size: 64.0, n_side: 24, n_mesh: 48, steps: 8, seed: 7, z_init: 49.0}}
  walltime: 5m                   # per-simulation limit
  parameters:                    # any of omega_m, omega_b, h, n_s, sigma8, with bounds
    omega_m: {{min: 0.15, max: 0.45}}
    sigma8: {{min: 0.6, max: 1.0}}
objective:
  metric: chi2_hmf               # or chi2_pk (power spectrum), sigma8_measured, n_halos_total
  target: data/target.h5         # made by physflow init at omega_m 0.31, sigma8 0.83 (same seed)
  goal: minimize
  tolerance: 1.0
"""

EXECUTABLE = """\
# A physflow workflow around any program: here sim.py, to be replaced by your own (MPI) code.
# Validate: physflow validate workflow.yaml     Run: physflow submit workflow.yaml
physflow: 1                      # schema version
name: {name}                     # run directories are runs/<name>-<UTC time>
goal: >                          # what the agents read first: the scientific question
  Which alpha and beta minimise the loss that sim.py reports?
simulation:
  adapter: executable
  # Split into arguments first, then {{placeholders}} are filled: values never reach a shell.
  # {{python}} is this Python; {{workflow_dir}} this folder; each task runs in runs/.../tasks/<id>/.
  command: "{{python}} {{workflow_dir}}/sim.py --alpha {{alpha}} --beta {{beta}}"
  mpi: false                     # true: prefixed with the site's MPI launcher (mpiexec -n ranks ...)
  resources: {{ranks: 1, nodes: 1}}
  outputs: {{format: json, path: result.json}}  # numbers -> metrics, lists of numbers -> arrays
  # inputs: {{in.txt: in.txt.template}}  # input files from templates ({{{{ name }}}} is replaced)
  walltime: 2m
  parameters:
    alpha: {{min: 0.0, max: 1.0}}
    beta: {{min: -2.0, max: 2.0, units: m}}
objective:
  metric: loss
  goal: minimize
  tolerance: 0.001
"""

SIM_PY = '''\
"""A stand-in simulation: replace with your code. It must write result.json in its working directory."""
import argparse
import json

parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, required=True)
parser.add_argument("--beta", type=float, required=True)
args = parser.parse_args()
loss = (args.alpha - 0.3) ** 2 + (args.beta - 0.5) ** 2
json.dump({"loss": loss, "profile": [args.alpha * i for i in range(8)]}, open("result.json", "w"))
'''

PYTHON = """\
# A physflow workflow around a Python function: model.simulate(**parameters, **fixed) -> dict.
# The module must be importable: run physflow from this folder with PYTHONPATH=. (or install it).
# Validate: PYTHONPATH=. physflow validate workflow.yaml     Run: PYTHONPATH=. physflow submit workflow.yaml
physflow: 1                      # schema version
name: {name}                     # run directories are runs/<name>-<UTC time>
goal: >                          # what the agents read first: the scientific question
  Which damping ratio zeta and natural frequency omega make the oscillator's settling time
  closest to 2 s?
simulation:
  adapter: python
  function: model.simulate       # package.module.function
  fixed: {{t_end: 10.0}}           # passed as keyword arguments too (s)
  walltime: 1m
  parameters:
    zeta: {{min: 0.05, max: 2.0}}
    omega: {{min: 0.5, max: 10.0, units: rad/s}}
objective:
  metric: loss                   # any number in the returned dict; lists become arrays
  goal: minimize
  tolerance: 0.01
"""

MODEL_PY = '''\
"""A stand-in model: replace with your own function. Returns metrics (numbers) and arrays (lists)."""
import numpy as np


def simulate(zeta: float, omega: float, t_end: float = 10.0) -> dict:
    """Damped oscillator x'' + 2 zeta omega x' + omega^2 x = 0 from x=1; times in s, omega in rad/s."""
    t = np.linspace(0.0, t_end, 2001)
    x, v, xs = 1.0, 0.0, []
    dt = t[1] - t[0]
    for _ in t:
        xs.append(x)
        v += (-2 * zeta * omega * v - omega**2 * x) * dt
        x += v * dt
    xs = np.array(xs)
    outside = np.nonzero(np.abs(xs) > 0.02)[0]
    settling = float(t[outside[-1]]) if outside.size else 0.0
    return {"loss": (settling - 2.0) ** 2, "settling_time": settling, "x": xs[::100]}
'''

ADAPTERS = ("nbody_pm", "heat2d", "executable", "python")


def _targets(adapter: str, folder: Path) -> None:
    """Make the target a built-in adapter's workflow compares with, at the values its YAML states."""
    if adapter in ("heat2d", "nbody_pm"):
        (folder / "data").mkdir(exist_ok=True)
    if adapter == "heat2d":
        from physflow.sim_adapters.heat2d import make_target

        make_target(folder / "data" / "target.h5", kappa=0.4, power=30.0)
    elif adapter == "nbody_pm":
        from physflow.sim_adapters.nbody_pm import make_target as make_nbody_target

        make_nbody_target(folder / "data" / "target.h5", omega_m=0.31, sigma8=0.83, box_size=64.0, n_side=24,
                          n_mesh=48, steps=8, seed=7, z_init=49.0)


def scaffold(folder: Path, adapter: str) -> list[Path]:
    """Write a workflow folder for ``adapter``; returns the files written. Refuses to overwrite."""
    if adapter not in ADAPTERS:
        raise PhysflowError(f"unknown adapter {adapter!r}; choose one of {', '.join(ADAPTERS)}")
    workflow = folder / "workflow.yaml"
    extra = {"executable": ("sim.py", SIM_PY), "python": ("model.py", MODEL_PY)}.get(adapter)
    ours = [workflow] + ([folder / extra[0]] if extra else []) \
        + ([folder / "data" / "target.h5"] if adapter in ("heat2d", "nbody_pm") else [])
    taken = [str(p) for p in ours if p.exists() or p.is_symlink()]
    if taken:  # a user's own sim.py or target is never written over
        more = f" (and {len(taken) - 1} more of the files init writes)" if len(taken) > 1 else ""
        raise PhysflowError(f"{taken[0]} already exists{more}; choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhysflowError(f"{folder}: cannot create the folder: {exc.strerror or exc}") from None
    # The folder's name as the campaign's, within the spec's pattern for names.
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in folder.resolve().name)[:64]
    name = name.lstrip("_.-") or "campaign"
    template = {"heat2d": HEAT2D, "nbody_pm": NBODY, "executable": EXECUTABLE, "python": PYTHON}[adapter]
    workflow.write_text(template.format(name=name) + COMMON_TAIL)
    written = [workflow]
    if extra:
        (folder / extra[0]).write_text(extra[1])
        written.append(folder / extra[0])
    _targets(adapter, folder)
    if (folder / "data" / "target.h5").exists():
        written.append(folder / "data" / "target.h5")
    return written
