"""Particle-mesh N-body simulation of a flat LCDM box from z_init to z = 0 (mpi4py, any rank count).

n_side^3 particles start on a lattice displaced by the Zel'dovich approximation (``initial``);
gravity is computed on an n_mesh^3 mesh split into x-slabs, one per rank (``mesh``, ``gravity``);
particles move to the rank whose slab holds them after each drift (``particles``). Time steps
are uniform in the scale factor a, kick-drift-kick with the FastPM factors (Feng et al. 2016),
which reproduce linear growth exactly on large scales however few the steps:

    kick   p += F(x) [g_p(a1) - g_p(a0)] / g_f(a_F)     (F evaluated at a_F)
    drift  x += p [D(a1) - D(a0)] / g_p(a_p)            (p evaluated at a_p)

At z = 0 the code measures P(k) (``power``) and, on rank 0 after gathering all positions,
friends-of-friends halos with linking length 0.2 times the mean interparticle separation
(``halos``), and writes one HDF5 file.

Memory: per particle 56 bytes of state (position, momentum, id), 24 of force, 72 of CIC stencil
and about 100 of temporaries while the stencil is made, i.e. < 260 bytes per particle per rank
at peak (a migration packs only the particles that change rank); per mesh cell about 70 bytes
divided over the ranks: the force with its ghost cells 24, the potential 8, the density modes 8
(16 while new ones replace the old), FFT work arrays 8 on one rank and 16 on several, and the
painted density 8. Rank 0 then gathers 56 bytes per particle plus about 200 bytes per candidate
pair in chunks of 2e6 for the halo finder, after the mesh work arrays are freed.

Run as ``mpiexec -n 2 python -m physflow.sim_adapters.nbody_pm.solver --omega-m 0.3 --sigma8 0.8``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mpi4py import MPI

from physflow.sim_adapters.nbody_pm.cosmology import Cosmology
from physflow.sim_adapters.nbody_pm.gravity import ForceField, density_modes
from physflow.sim_adapters.nbody_pm.halos import (
    LINKING_B,
    MIN_GROUP_PARTICLES,
    MIN_HALO_PARTICLES,
    HaloMassFunction,
    friends_of_friends,
    group_sizes,
    mass_bin_edges,
)
from physflow.sim_adapters.nbody_pm.initial import zeldovich
from physflow.sim_adapters.nbody_pm.mesh import SlabMesh
from physflow.sim_adapters.nbody_pm.particles import gather_to_root, migrate
from physflow.sim_adapters.nbody_pm.power import PowerSpectrum, measure_power
from physflow.sim_adapters.nbody_pm.settings import Settings


@dataclass
class Result:
    """What a run measured at z = 0 (on rank 0), with its diagnostics."""

    cosmology: Cosmology
    settings: Settings
    power: PowerSpectrum
    power_init: PowerSpectrum
    particle_mass: float
    group_size: np.ndarray
    mass_function: HaloMassFunction
    momentum_total: np.ndarray
    momentum_rms: float
    step_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    ranks: int = 1
    max_rss_mb: float = 0.0


class PMSimulation:
    """The particles of this rank and the force on them, advanced with FastPM kick-drift-kick."""

    def __init__(self, cosmo: Cosmology, settings: Settings, comm: MPI.Comm) -> None:
        self.cosmo, self.settings, self.comm = cosmo, settings, comm
        self.n_particles = settings.n_side**3
        self.mesh = SlabMesh(settings.n_mesh, settings.box_size, comm)
        lattice = SlabMesh(settings.n_side, settings.box_size, comm)
        self.particles = migrate(zeldovich(lattice, cosmo, settings.seed, settings.a_init, self.mesh.cell), self.mesh)
        lattice.release_work()
        self.field = ForceField(self.mesh)
        self.compute_force()

    def compute_force(self) -> None:
        """Density modes ``delta_k`` of the current positions and the force (N, 3) on each particle."""
        stencil = self.mesh.stencil(self.particles.pos)
        self.delta_k = density_modes(self.mesh, stencil, self.n_particles)
        self.force = self.mesh.readout(self.field.solve(self.delta_k, self.cosmo.omega_m), stencil)

    def release_mesh_work(self) -> None:
        """Free the mesh-sized work arrays (force field, potential, FFT work); ``compute_force``
        cannot run after this."""
        del self.field
        self.mesh.release_work()

    def kick(self, a_from: float, a_to: float, a_force: float) -> None:
        """Momenta from a_from to a_to with the force computed at a_force."""
        gp, gf = self.cosmo.momentum_growth, self.cosmo.force_growth
        self.particles.mom += self.force * float((gp(a_to) - gp(a_from)) / gf(a_force))

    def drift(self, a_from: float, a_to: float, a_mom: float) -> None:
        """Positions from a_from to a_to with the momenta at a_mom; then particles change rank."""
        growth, gp = self.cosmo.growth, self.cosmo.momentum_growth
        self.particles.pos += self.particles.mom * float((growth(a_to) - growth(a_from)) / gp(a_mom))
        self.particles.wrap(self.settings.box_size)
        self.particles = migrate(self.particles, self.mesh)

    def step(self, a0: float, a1: float) -> None:
        """One kick-drift-kick step from a0 to a1 (positions and momenta synchronous at both ends)."""
        ah = 0.5 * (a0 + a1)
        self.kick(a0, ah, a0)
        self.drift(a0, a1, ah)
        self.compute_force()
        self.kick(ah, a1, a1)

    def momentum(self) -> tuple[np.ndarray, float]:
        """Total momentum (3,) of all particles and their rms momentum, H0 Mpc/h (collective)."""
        mom = self.particles.mom
        sums = np.concatenate([mom.sum(axis=0), [np.einsum("ij,ij->", mom, mom)]])
        self.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        return sums[:3], float(np.sqrt(sums[3] / self.n_particles))


def find_halos(pos: np.ndarray, cosmo: Cosmology, settings: Settings) -> tuple[np.ndarray, HaloMassFunction]:
    """FoF group sizes (groups of >= MIN_GROUP_PARTICLES) and the mass function of halos of
    >= MIN_HALO_PARTICLES, for all particle positions ``pos`` (Mpc/h)."""
    m_p = settings.particle_mass(cosmo)
    labels = friends_of_friends(pos, settings.box_size, LINKING_B * settings.box_size / settings.n_side)
    sizes = group_sizes(labels, MIN_GROUP_PARTICLES)
    masses = sizes[sizes >= MIN_HALO_PARTICLES] * m_p
    edges = mass_bin_edges(m_p, MIN_HALO_PARTICLES, float(masses.max()) if masses.size else 0.0)
    return sizes, HaloMassFunction.from_masses(masses, edges, settings.box_size**3)


def run(cosmo: Cosmology, settings: Settings, comm: MPI.Comm | None = None) -> Result | None:
    """Simulate from z_init to z = 0 and measure; the Result is returned on rank 0 (None elsewhere)."""
    comm = MPI.COMM_WORLD if comm is None else comm
    problems = settings.problems(comm.Get_size())
    if problems:
        raise ValueError("; ".join(problems))
    wall = time.perf_counter()
    sim = PMSimulation(cosmo, settings, comm)
    power_init = measure_power(sim.mesh, sim.delta_k)
    a_steps = np.linspace(settings.a_init, 1.0, settings.steps + 1)
    step_seconds = []
    for a0, a1 in zip(a_steps[:-1], a_steps[1:], strict=True):
        tick = time.perf_counter()
        sim.step(float(a0), float(a1))
        step_seconds.append(time.perf_counter() - tick)
    power = measure_power(sim.mesh, sim.delta_k)
    momentum_total, momentum_rms = sim.momentum()
    rss = comm.reduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, op=MPI.MAX, root=0)
    sim.release_mesh_work()  # the halo finder reuses that memory
    everything = gather_to_root(sim.particles, comm)
    if everything is None:
        return None
    sizes, hmf = find_halos(everything.pos, cosmo, settings)
    return Result(cosmo, settings, power, power_init, settings.particle_mass(cosmo), sizes, hmf, momentum_total,
                  momentum_rms, step_seconds, time.perf_counter() - wall, comm.Get_size(), rss)


def write(path: Path | str, result: Result, **attrs: float) -> None:
    """Write a Result to HDF5: datasets with ``units`` attributes, settings as file attributes."""
    import h5py

    c, s = result.cosmology, result.settings
    with h5py.File(path, "w") as f:
        def put(name: str, values: np.ndarray, units: str, **extra: float) -> None:
            d = f.create_dataset(name, data=values)
            d.attrs.update(units=units, **extra)

        put("k", result.power.k, "h/Mpc")
        put("pk", result.power.pk, "(Mpc/h)^3", shot_noise=s.shot_noise, shot_noise_subtracted=False)
        put("nmodes", result.power.nmodes, "1")
        put("pk_init", result.power_init.pk, "(Mpc/h)^3", a=s.a_init)
        put("pk_linear", c.linear_power(result.power.k), "(Mpc/h)^3")
        put("m", result.mass_function.m, "Msun/h")
        put("m_edges", result.mass_function.edges, "Msun/h")
        put("dn_dlnm", result.mass_function.dn_dlnm, "(Mpc/h)^-3")
        put("n_halos", result.mass_function.n_halos, "1", min_particles=MIN_HALO_PARTICLES)
        put("group_size", result.group_size.astype(np.int32), "particles", min_particles=MIN_GROUP_PARTICLES)
        f.attrs.update(omega_m=c.omega_m, omega_b=c.omega_b, h=c.h, n_s=c.n_s, sigma8=c.sigma8,
                       box_size=s.box_size, n_side=s.n_side, n_mesh=s.n_mesh, steps=s.steps, seed=s.seed,
                       z_init=s.z_init, a_init=s.a_init, growth_init=float(c.growth(s.a_init)),
                       particle_mass=result.particle_mass, linking_b=LINKING_B, shot_noise=s.shot_noise,
                       momentum_total=result.momentum_total, momentum_rms=result.momentum_rms,
                       step_seconds=np.asarray(result.step_seconds), wall_seconds=result.wall_seconds,
                       ranks=result.ranks, max_rss_mb=result.max_rss_mb, **attrs)


def keep_freed_memory() -> None:
    """Have glibc's malloc reuse freed memory instead of returning it to the kernel, and numpy
    ask for no transparent huge pages.

    Each step makes and frees mesh- and particle-sized numpy temporaries (tens to hundreds of MB).
    By default glibc serves every block over 32 MB with its own mmap and unmaps it on free, so
    the next step page-faults the same amount back in and the kernel zeroes it: about a third of
    a 128^3-particle step was system time. With large blocks on the heap and trimming off (up to
    2 GB free at the top), the process keeps its peak footprint (as it would anyway at the next
    step) and reuses it. Does nothing where the C library has no ``mallopt`` (not glibc).

    numpy marks every array of 4 MB or more ``madvise(MADV_HUGEPAGE)``; where the kernel's THP
    ``defrag`` setting is ``madvise`` (Debian's default) a fault in such memory compacts memory
    synchronously to find a 2 MB page. On 2 ranks of a 128^3-particle run that was 0.03-0.05 s
    of system time per step in the CIC paint alone (``perf``: ``clear_page_erms`` under
    ``do_huge_pmd_*``). Turned off here unless ``NUMPY_MADVISE_HUGEPAGE`` says otherwise (numpy's
    own switch, read when numpy is imported; this sets the same flag afterwards).
    """
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        toggle = getattr(getattr(np, "_core", np).multiarray, "_set_madvise_hugepage", None)
        if toggle is not None:
            toggle(False)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults, fixed = Cosmology(), Settings()
    for name, help_text in (("omega_m", "matter density parameter"), ("omega_b", "baryon density parameter"),
                            ("h", "H0 / (100 km/s/Mpc)"), ("n_s", "primordial spectral index"),
                            ("sigma8", "rms linear density in 8 Mpc/h spheres at z=0")):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name), help=help_text)
    parser.add_argument("--box-size", type=float, default=fixed.box_size, help="box side [Mpc/h]")
    parser.add_argument("--n-side", type=int, default=fixed.n_side, help="particles per side")
    parser.add_argument("--n-mesh", type=int, default=fixed.n_mesh, help="PM mesh cells per side")
    parser.add_argument("--steps", type=int, default=fixed.steps, help="time steps from z_init to 0")
    parser.add_argument("--seed", type=int, default=fixed.seed, help="seed of the initial conditions")
    parser.add_argument("--z-init", type=float, default=fixed.z_init, help="starting redshift")
    parser.add_argument("--out", default="nbody.h5", help="HDF5 file written by rank 0")
    args = parser.parse_args(argv)
    settings = Settings(args.box_size, args.n_side, args.n_mesh, args.steps, args.seed, args.z_init)
    comm = MPI.COMM_WORLD
    try:
        cosmo = Cosmology(args.omega_m, args.omega_b, args.h, args.n_s, args.sigma8)
    except ValueError as exc:
        parser.error(str(exc))
    problems = settings.problems(comm.Get_size())
    if problems:
        parser.error("; ".join(problems))
    keep_freed_memory()
    result = run(cosmo, settings, comm)
    if result is not None:
        write(args.out, result)
        steps = result.step_seconds
        print(json.dumps({"ranks": result.ranks, "particles": settings.n_side**3, "steps": settings.steps,
                          "wall_seconds": result.wall_seconds, "seconds_per_step": float(np.mean(steps)),
                          "particle_updates_per_second": settings.n_side**3 / float(np.mean(steps)),
                          "n_halos": int(result.mass_function.n_halos.sum()), "max_rss_mb": result.max_rss_mb}))


if __name__ == "__main__":
    main()
