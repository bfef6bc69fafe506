"""Built-in MPI simulation: 2D heat diffusion with sources (see ``solver``).

A campaign infers the diffusivity ``kappa`` [m^2/s] and the heating rate ``power`` [K/s] from a
noisy target temperature field; ``chi2`` is the mean squared residual in units of the target's
noise, so ``chi2 ~ 1`` means "consistent with the data".
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physflow.errors import AdapterError
from physflow.sim_adapters.base import Adapter
from physflow.vocabulary.task import Array, SimOutput, TaskSpec

#: Parameters the solver understands: name -> (units, default).
KNOWN = {"kappa": ("m^2/s", 0.3), "power": ("K/s", 20.0)}
#: Fixed settings: name -> default.
FIXED = {"n": 96, "t_end": 0.05}


class Heat2DAdapter(Adapter):
    name = "heat2d"

    def check(self) -> None:
        super().check()
        for name in self.parameters:
            if name not in KNOWN:
                raise self.workflow.error(f"simulation.parameters.{name}",
                                          f"heat2d has no parameter {name!r} (known: {', '.join(KNOWN)})")
        for name in self.sim.fixed:
            if name not in FIXED and name not in KNOWN:
                raise self.workflow.error(f"simulation.fixed.{name}", f"heat2d has no setting {name!r}")
        self.target = None
        target = self.workflow.spec.objective.target
        if target:
            path = self.workflow.resolve(target)
            try:
                with h5py.File(path, "r") as f:
                    self.target = (f["temperature"][...], float(f["temperature"].attrs["sigma"]))
            except (OSError, KeyError) as exc:
                raise self.workflow.error("objective.target", f"cannot read a heat2d target from {path}: {exc}") \
                    from None
            n = int(self.sim.fixed.get("n", FIXED["n"]))
            if self.target[0].shape != (n, n):
                raise self.workflow.error("objective.target",
                                          f"target grid {self.target[0].shape} differs from n={n}")

    @property
    def parameters(self):  # type: ignore[override]
        params = self.sim.parameters
        for name, p in params.items():
            if p.units is None:
                params[name] = p.model_copy(update={"units": KNOWN[name][0]})
        return params

    @property
    def uses_mpi(self) -> bool:
        return True

    def metric_names(self) -> set[str]:
        return {"max_temperature", "mean_temperature"} | ({"rmse", "chi2"} if self.target is not None else set())

    def build_task(self, task_id: str, params: dict[str, float], workdir: Path) -> TaskSpec:
        values: dict[str, Any] = {name: default for name, (_, default) in KNOWN.items()}
        values.update(FIXED)
        values.update(self.sim.fixed)
        values.update(params)
        argv = [sys.executable, "-m", "physflow.sim_adapters.heat2d.solver",
                "--kappa", repr(float(values["kappa"])), "--power", repr(float(values["power"])),
                "--n", str(int(values["n"])), "--t-end", repr(float(values["t_end"])), "--out", "field.h5"]
        res = self.sim.resources
        return TaskSpec(task_id=task_id, workdir=str(workdir), argv=argv, mpi=self.uses_mpi,
                        ranks=res.ranks, nodes=res.nodes, walltime=self.sim.walltime)

    def parse_outputs(self, workdir: Path, outcome: dict[str, Any]) -> SimOutput:
        try:
            with h5py.File(workdir / "field.h5", "r") as f:
                field = f["temperature"][...]
        except (OSError, KeyError) as exc:
            raise AdapterError(f"no temperature field in field.h5: {exc}") from None
        out = SimOutput(metrics={"max_temperature": float(field.max()), "mean_temperature": float(field.mean())},
                        arrays={"temperature": Array(field.astype(np.float32), "K")})
        if self.target is not None:
            target, sigma = self.target
            resid = field - target
            out.metrics["rmse"] = float(np.sqrt(np.mean(resid**2)))
            out.metrics["chi2"] = float(np.mean((resid / sigma) ** 2))
        return out


def make_target(path: Path, kappa: float, power: float, n: int = 96, t_end: float = 0.05,
                noise: float = 0.005, seed: int = 1) -> None:
    """Write a target field: the solver's output at (kappa, power) plus Gaussian noise.

    ``noise`` is the noise sigma as a fraction of the field's maximum (K). The true values are
    kept as attributes for benchmarks; agents only ever see metrics computed against the field.
    """
    from mpi4py import MPI

    from physflow.sim_adapters.heat2d.solver import solve

    field = solve(kappa, power, n, t_end, MPI.COMM_SELF)
    sigma = noise * float(field.max())
    noisy = field + np.random.default_rng(seed).normal(0.0, sigma, field.shape)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("temperature", data=noisy)
        d.attrs.update(units="K", sigma=sigma)
        f.attrs.update(true_kappa=kappa, true_power=power, n=n, t_end=t_end)
