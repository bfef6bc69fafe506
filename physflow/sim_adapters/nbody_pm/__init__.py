"""Built-in MPI simulation: particle-mesh cosmological N-body (see ``solver``).

A campaign infers cosmological parameters (e.g. omega_m and sigma8) from a target file written
by ``make_target``: the same code's z = 0 matter power spectrum and friends-of-friends halo mass
function at hidden true parameters. Parameters agents may choose: omega_m, omega_b, h, n_s,
sigma8 (any not chosen take the Planck 2015 values of ``KNOWN``); fixed settings: box_size
[Mpc/h], n_side, n_mesh, steps, seed, z_init.

Metrics, each a mean over bins so that ~1 means "consistent with the target's errors":

- ``chi2_pk``: over the target's k shells below 0.3 h/Mpc (at least three shells),
  ((P - P_t) / sigma_P)^2 with the Gaussian cosmic-variance error of the target's shell,
  sigma_P = P_t sqrt(2 / N_modes). Beyond the quasi-linear range mode coupling makes shell
  errors larger and correlated: against a target from another seed at the true parameters the
  mean over all shells was 10-20, over these ~1-2.
- ``chi2_hmf``: over the target's halo mass bins plus one overflow bin above them,
  (n - n_t)^2 / max(n_t, 1): Poisson errors on the target's halo counts. The run's FoF groups
  are re-binned into the target's bins (groups from 5 particles up are kept for this, so a run
  with heavier particles still fills the target's lowest bin).
- always: ``pk_large_scale`` [(Mpc/h)^3], the mode-weighted mean P(k) over shells with
  k < 0.2 h/Mpc (at least the lowest shell); ``sigma8_measured``, the rms of the z = 0 density
  in 8 Mpc/h top-hat spheres from the measured shells (nonlinear, shot noise included, no modes
  beyond the box: it tracks sigma8 but is not equal to it); ``n_halos_total`` (halos of >= 20
  particles) and ``max_halo_mass`` [Msun/h].
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physflow.errors import AdapterError
from physflow.sim_adapters.base import Adapter
from physflow.sim_adapters.nbody_pm.cosmology import Cosmology, top_hat_window
from physflow.sim_adapters.nbody_pm.halos import MIN_HALO_PARTICLES
from physflow.sim_adapters.nbody_pm.settings import Settings
from physflow.vocabulary.figures import CurveFigure
from physflow.vocabulary.tables import Column, H5Group, Table
from physflow.vocabulary.task import Array, SimOutput, TaskSpec

#: Parameters the code understands: name -> (units, default, description). Planck 2015 defaults.
KNOWN = {
    "omega_m": ("dimensionless", 0.3089, "matter density parameter today, Omega_m"),
    "omega_b": ("dimensionless", 0.0486, "baryon density parameter today, Omega_b"),
    "h": ("dimensionless", 0.6774, "Hubble constant H0 / (100 km/s/Mpc)"),
    "n_s": ("dimensionless", 0.9667, "spectral index of the primordial power spectrum"),
    "sigma8": ("dimensionless", 0.8159, "rms linear density contrast in 8 Mpc/h spheres at z = 0"),
}
#: Fixed settings: name -> default (box_size in Mpc/h).
FIXED: dict[str, float | int] = dataclasses.asdict(Settings())
#: Output file the solver writes in the task's working directory.
OUTPUT = "nbody.h5"
#: Wavenumber (h/Mpc) below which P(k) counts as large-scale for ``pk_large_scale``.
LARGE_SCALE_K = 0.2
#: Shells below this wavenumber (h/Mpc) enter ``chi2_pk``: where Gaussian errors hold.
CHI2_PK_KMAX = 0.3


@dataclasses.dataclass
class Target:
    """What a run is compared with: P(k) shells and halo counts in mass bins (Msun/h edges)."""

    k: np.ndarray
    pk: np.ndarray
    nmodes: np.ndarray
    mass_edges: np.ndarray
    n_halos: np.ndarray

    @classmethod
    def read(cls, path: Path) -> tuple[Target, dict[str, Any]]:
        """The target in ``path`` and the file's attributes."""
        with h5py.File(path, "r") as f:
            target = cls(*(f[name][...] for name in ("k", "pk", "nmodes", "m_edges", "n_halos")))
            return target, dict(f.attrs)


def chi2_pk(pk: np.ndarray, target: Target) -> float:
    """Mean over the target's shells below CHI2_PK_KMAX (at least 3) of ((P - P_t) / sigma_P)^2,
    sigma_P = P_t sqrt(2 / N_modes): Gaussian cosmic variance of the target's shells."""
    if pk.shape != target.pk.shape:
        raise AdapterError(f"P(k) has {pk.size} shells, the target {target.pk.size}: box or mesh differ")
    used = max(3, int(np.sum(target.k < CHI2_PK_KMAX)))
    sigma = target.pk[:used] * np.sqrt(2.0 / target.nmodes[:used])
    return float(np.mean(((pk[:used] - target.pk[:used]) / sigma) ** 2))


def chi2_hmf(halo_mass: np.ndarray, target: Target) -> float:
    """Mean over the target's mass bins and one overflow bin of (n - n_t)^2 / max(n_t, 1) (Poisson)."""
    edges = np.append(target.mass_edges, np.inf)
    counts = np.histogram(halo_mass, bins=edges)[0]
    expected = np.append(target.n_halos, 0.0)
    return float(np.mean((counts - expected) ** 2 / np.maximum(expected, 1.0)))


def sigma8_from_shells(k: np.ndarray, pk: np.ndarray, nmodes: np.ndarray, box_size: float) -> float:
    """rms density in 8 Mpc/h top-hat spheres from shell-averaged P(k): sum N P W^2(8k) / V."""
    return float(math.sqrt(np.sum(nmodes * pk * top_hat_window(8.0 * k) ** 2) / box_size**3))


def halo_table(group: H5Group) -> Table | None:
    """The halo catalog the solver writes (``OUTPUT``), as ``physflow ask`` shows it: one row per
    FoF group, with each halo's mass derived from its ``group_size`` and the file's
    ``particle_mass``; None for a group that is not one."""
    f, columns = group.file, group.columns
    if "group_size" not in columns or "particle_mass" not in f.attrs:
        return None
    particle_mass = float(f.attrs["particle_mass"])
    mass = Column("mass", columns["group_size"].values.astype(float) * particle_mass, "Msun/h",
                  note=f"derived by physflow: group_size * particle_mass ({particle_mass:.6g} Msun/h, "
                       "a file attribute)")
    size = group.prefix + "group_size"
    minimum = f[size].attrs.get("min_particles")
    note = "a halo catalog: one row per friends-of-friends group" + (
        f" of at least {int(minimum)} particles" if minimum is not None else "")
    read = f"f = h5py.File({group.source}); mass = f[{size!r}][...] * f.attrs['particle_mass']  # Msun/h"
    return Table(group.table_name("halos"), group.data, {**columns, "mass": mass}, read, note)


class NbodyPMAdapter(Adapter):
    name = "nbody_pm"
    catalog_tables = (halo_table,)
    #: The matter power spectrum and the halo mass function of the best runs against the target.
    figures = (CurveFigure("power_spectrum", "k", "pk", "wavenumber k", "P(k)",
                           "P(k) of the best simulations against the target"),
               CurveFigure("mass_function", "m", "dn_dlnm", "halo mass M", "dn/dlnM",
                           "Halo mass function of the best simulations against the target"))

    def check(self) -> None:
        super().check()
        for name in self.sim.parameters:
            if name not in KNOWN:
                raise self.workflow.error(f"simulation.parameters.{name}",
                                          f"nbody_pm has no parameter {name!r} (known: {', '.join(KNOWN)})")
        for name in self.sim.fixed:
            if name not in FIXED and name not in KNOWN:
                raise self.workflow.error(f"simulation.fixed.{name}",
                                          f"nbody_pm has no setting {name!r} (known: {', '.join([*FIXED, *KNOWN])})")
        try:
            self.settings = Settings(**{name: type(default)(self.sim.fixed.get(name, default))
                                        for name, default in FIXED.items()})
        except (TypeError, ValueError) as exc:
            raise self.workflow.error("simulation.fixed", f"not a number: {exc}") from None
        problems = self.settings.problems(self.sim.resources.ranks)
        if problems:
            raise self.workflow.error("simulation.fixed", "; ".join(problems))
        self._check_cosmology_bounds()
        self.target: Target | None = None
        target = self.workflow.spec.objective.target
        if target:
            path = self.workflow.resolve(target)
            try:
                self.target, attrs = Target.read(path)
            except (OSError, KeyError) as exc:
                raise self.workflow.error("objective.target", f"cannot read an nbody_pm target from {path}: {exc}") \
                    from None
            for name in ("box_size", "n_mesh"):
                if name in attrs and float(attrs[name]) != float(getattr(self.settings, name)):
                    raise self.workflow.error("objective.target", f"target {name}={attrs[name]} differs from "
                                              f"simulation.fixed {name}={getattr(self.settings, name)}")

    def _check_cosmology_bounds(self) -> None:
        """Every corner of the parameter box must be a valid cosmology (e.g. omega_b < omega_m)."""
        base = {name: float(self.sim.fixed.get(name, default)) for name, (_, default, _) in KNOWN.items()}
        names = list(self.sim.parameters)
        for corner in itertools.product(*[(p.min, p.max) for p in self.sim.parameters.values()]):
            try:
                Cosmology(**{**base, **dict(zip(names, corner, strict=True))})
            except ValueError as exc:
                raise self.workflow.error("simulation.parameters", f"bounds allow an invalid cosmology: {exc}") \
                    from None

    @property
    def parameters(self):  # type: ignore[override]
        params = self.sim.parameters
        for name, p in params.items():
            units, _, description = KNOWN[name]
            params[name] = p.model_copy(update={"units": p.units or units, "description": p.description or description})
        return params

    @property
    def uses_mpi(self) -> bool:
        return True

    def metric_names(self) -> set[str]:
        always = {"pk_large_scale", "sigma8_measured", "n_halos_total", "max_halo_mass"}
        return always | ({"chi2_pk", "chi2_hmf"} if self.target is not None else set())

    def build_task(self, task_id: str, params: dict[str, float], workdir: Path) -> TaskSpec:
        values: dict[str, Any] = {name: default for name, (_, default, _) in KNOWN.items()}
        values.update(self.sim.fixed)
        values.update(params)
        argv = [sys.executable, "-m", "physflow.sim_adapters.nbody_pm.solver"]
        for name in KNOWN:
            argv += ["--" + name.replace("_", "-"), repr(float(values[name]))]
        for name, value in dataclasses.asdict(self.settings).items():
            argv += ["--" + name.replace("_", "-"), repr(value)]
        argv += ["--out", OUTPUT]
        res = self.sim.resources
        return TaskSpec(task_id=task_id, workdir=str(workdir), argv=argv, mpi=self.uses_mpi,
                        ranks=res.ranks, nodes=res.nodes, walltime=self.sim.walltime)

    def parse_outputs(self, workdir: Path, outcome: dict[str, Any]) -> SimOutput:
        try:
            with h5py.File(workdir / OUTPUT, "r") as f:
                data = {name: f[name][...] for name in ("k", "pk", "nmodes", "m", "dn_dlnm", "n_halos", "group_size")}
                units = {name: str(f[name].attrs.get("units", "")) for name in data}
                particle_mass, box_size = float(f.attrs["particle_mass"]), float(f.attrs["box_size"])
        except (OSError, KeyError) as exc:
            raise AdapterError(f"no nbody_pm results in {OUTPUT}: {exc}") from None
        k, pk, nmodes = data["k"], data["pk"], data["nmodes"]
        large = k < LARGE_SCALE_K
        large[0] = True
        halo_mass = data["group_size"] * particle_mass
        resolved = data["group_size"] >= MIN_HALO_PARTICLES
        out = SimOutput(
            metrics={"pk_large_scale": float(np.sum(pk[large] * nmodes[large]) / np.sum(nmodes[large])),
                     "sigma8_measured": sigma8_from_shells(k, pk, nmodes, box_size),
                     "n_halos_total": float(resolved.sum()),
                     "max_halo_mass": float(halo_mass.max()) if halo_mass.size else 0.0},
            arrays={name: Array(np.asarray(data[name], dtype=float), units[name])
                    for name in ("k", "pk", "nmodes", "m", "dn_dlnm", "n_halos")})
        if self.target is not None:
            out.metrics["chi2_pk"] = chi2_pk(pk, self.target)
            out.metrics["chi2_hmf"] = chi2_hmf(halo_mass, self.target)
        return out


def make_target(path: Path, comm: Any = None, **params: float) -> None:
    """Write a target file: the solver's z = 0 output at the given parameters and settings.

    ``params`` may set any of ``KNOWN`` (cosmology) and ``FIXED`` (settings); the rest take their
    defaults. Runs in this process (on ``comm``, default MPI.COMM_SELF). The true values are kept
    as ``true_<name>`` attributes for benchmarks; agents only ever see metrics against the file.
    """
    from mpi4py import MPI

    from physflow.sim_adapters.nbody_pm import solver

    unknown = set(params) - set(KNOWN) - set(FIXED)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}")
    cosmo = Cosmology(**{name: float(params.get(name, default)) for name, (_, default, _) in KNOWN.items()})
    settings = Settings(**{name: type(default)(params.get(name, default)) for name, default in FIXED.items()})
    comm = MPI.COMM_SELF if comm is None else comm
    result = solver.run(cosmo, settings, comm)
    if comm.Get_rank() == 0:
        solver.write(path, result, **{f"true_{name}": getattr(cosmo, name) for name in KNOWN})
