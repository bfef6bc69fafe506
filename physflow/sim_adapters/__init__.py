"""Simulation adapters: one module per simulation code, all behind ``base.Adapter``."""

from physflow.sim_adapters import executable, heat2d, nbody_pm, python  # noqa: F401 - registration
