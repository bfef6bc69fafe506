"""Simulation adapters: one module per simulation code, all behind ``base.Adapter``.

Importing this package registers the built-in adapters; ``get_adapter`` finds one by name.
"""

from physflow.sim_adapters import executable, heat2d, nbody_pm, python  # noqa: F401 - registration
from physflow.sim_adapters.base import Adapter
from physflow.vocabulary.tables import GroupTableReader
from physflow.vocabulary.workflow import LoadedWorkflow


def adapter_class(name: str) -> type[Adapter] | None:
    """The adapter class registered as ``name`` (importing this package registers the built-in
    ones), or None: what a reader of a finished run asks for the adapter's declarations."""
    return Adapter.registry.get(name)


def catalog_tables() -> list[GroupTableReader]:
    """Every registered adapter's readers of its own output files' tables (``Adapter.catalog_tables``),
    for ``physflow ask`` to hand to the catalog; once each (a subclass inherits its parent's)."""
    return list(dict.fromkeys(read for cls in Adapter.registry.values() for read in cls.catalog_tables))


def get_adapter(workflow: LoadedWorkflow) -> Adapter:
    """The adapter named in the workflow, constructed and checked (a located SpecError for an
    unknown name)."""
    name = workflow.spec.simulation.adapter
    cls = adapter_class(name)
    if cls is None:
        known = ", ".join(sorted(Adapter.registry))
        raise workflow.error("simulation.adapter", f"unknown adapter {name!r} (known: {known})")
    return cls(workflow)
