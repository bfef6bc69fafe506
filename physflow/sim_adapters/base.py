"""The one interface every simulation code sits behind.

An adapter knows its parameters (bounds, units), the resources a run needs, how to turn a
parameter set into a ``TaskSpec`` and how to turn a finished run's files into metrics (scalars)
and arrays (to HDF5, with units). It knows nothing of agents or of where the task runs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from physflow.errors import AdapterError, ProposalError
from physflow.vocabulary.figures import CurveFigure
from physflow.vocabulary.records import TaskRecord
from physflow.vocabulary.tables import GroupTableReader
from physflow.vocabulary.task import Array, SimOutput, TaskSpec
from physflow.vocabulary.workflow import LoadedWorkflow, ParameterSpec


class Adapter(ABC):
    """Base of all adapters; subclasses register themselves by ``name``."""

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Adapter]]] = {}
    #: Keys of ``simulation:`` this adapter reads besides the common ones.
    own_keys: ClassVar[frozenset[str]] = frozenset()
    #: The report's figures of this code's arrays (plain data: the report reads them from the
    #: class, never constructing the adapter); none by default.
    figures: ClassVar[tuple[CurveFigure, ...]] = ()
    #: Readers of the tables in this code's own output files whose layout only it knows (for
    #: ``physflow ask``, which otherwise reads any HDF5 file generically); none by default.
    catalog_tables: ClassVar[tuple[GroupTableReader, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Adapter.registry[cls.name] = cls

    def __init__(self, workflow: LoadedWorkflow) -> None:
        self.workflow = workflow
        self.sim = workflow.spec.simulation
        self.check()

    # -- what the agents may choose ------------------------------------------------------------
    @property
    def parameters(self) -> dict[str, ParameterSpec]:
        return self.sim.parameters

    def parameter_schema(self) -> dict[str, Any]:
        """JSON Schema of one parameter set, shown to the agents and used for proposals."""
        props = {}
        for name, p in self.parameters.items():
            desc = p.description or name
            if p.units:
                desc += f" [{p.units}]"
            props[name] = {"type": "number", "minimum": p.min, "maximum": p.max, "description": desc}
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    def validate_params(self, params: Any) -> dict[str, float]:
        """Check one proposed parameter set; raise ProposalError naming every problem.

        Out-of-range values are rejected, never clipped: the agent must learn the bounds.
        """
        if not isinstance(params, dict):
            raise ProposalError(f"a simulation must be an object of parameters, got {type(params).__name__}")
        problems = []
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            problems.append(f"unknown parameter(s) {', '.join(unknown)} (allowed: {', '.join(self.parameters)})")
        clean: dict[str, float] = {}
        for name, p in self.parameters.items():
            if name not in params:
                problems.append(f"{name} is missing")
                continue
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{name}={value!r} is not a number")
            elif not math.isfinite(value):
                problems.append(f"{name}={value} is not finite")
            elif not p.min <= value <= p.max:
                problems.append(f"{name}={value} is outside [{p.min}, {p.max}]")
            else:
                clean[name] = float(value)
        if problems:
            raise ProposalError("; ".join(problems))
        return clean

    # -- what a run needs and makes ------------------------------------------------------------
    def check(self) -> None:
        """Reject keys this adapter does not read (they would be silently ignored otherwise)."""
        for key in ("command", "mpi", "outputs", "inputs", "function"):
            if getattr(self.sim, key) is not None and key not in self.own_keys:
                raise self.workflow.error(f"simulation.{key}", f"not used by adapter {self.name}")

    @property
    def uses_mpi(self) -> bool:
        """Whether runs go through the site's MPI launcher (and so need an MPI pool)."""
        return False

    def metric_names(self) -> set[str] | None:
        """Metrics this adapter reports, or None when only a run can tell (external programs)."""
        return None

    @abstractmethod
    def build_task(self, task_id: str, params: dict[str, float], workdir: Path) -> TaskSpec:
        """The task that runs the simulation for ``params`` in ``workdir``."""

    @abstractmethod
    def parse_outputs(self, workdir: Path, outcome: dict[str, Any]) -> SimOutput:
        """Metrics and arrays of a finished run; raise AdapterError if they are missing."""

    def finish(self, task: TaskRecord, outcome: dict[str, Any], workdir: Path) -> dict[str, Array]:
        """A worker's outcome (``dispatch.payload.execute``'s dict) -> the task's final state:
        status, metrics, error, run times. Returns the arrays to store. A run that exited non-zero,
        whose outputs cannot be read, or that did not report the objective's metric has failed."""
        task.started, task.finished, task.host = outcome.get("started"), outcome.get("finished"), outcome.get("host")
        code = outcome.get("returncode", 1)
        if code != 0:
            why = f"timed out after {self.sim.walltime:.0f} s" if outcome.get("timed_out") else f"exit code {code}"
            task.status, task.error = "failed", f"{why}; stderr tail: {outcome.get('stderr_tail', '').strip()}"
            return {}
        try:
            out = self.parse_outputs(workdir, outcome)
        except AdapterError as exc:
            task.status, task.error = "failed", str(exc)
            return {}
        task.metrics, task.arrays = out.metrics, sorted(out.arrays)
        metric = self.workflow.spec.objective.metric
        if metric not in out.metrics:
            task.status = "failed"
            task.error = f"the simulation reported no {metric} (it reported: {', '.join(out.metrics)})"
        elif not math.isfinite(out.metrics[metric]):  # NaN, or a number past a float's range (1e400)
            task.status = "failed"
            task.error = f"the simulation reported {metric} = {out.metrics[metric]}, not a finite number"
        else:
            task.status = "finished"
        return out.arrays

    def stored_arrays(self, workdir: Path) -> dict[str, Array]:
        """A finished run's arrays parsed again from its working directory, to rebuild its HDF5
        group after a crash; empty when its files are gone (or live only in the worker's memory)."""
        try:
            return self.parse_outputs(workdir, {"returncode": 0}).arrays
        except (AdapterError, OSError):
            return {}


def split_values(data: dict[str, Any], where: str) -> SimOutput:
    """Numbers become metrics, lists of numbers become arrays; anything else is an error."""
    out = SimOutput()
    if not isinstance(data, dict):
        raise AdapterError(f"{where}: expected an object of named values")
    for key, value in data.items():
        if isinstance(value, bool):
            out.metrics[key] = float(value)
        elif isinstance(value, (int, float)):
            out.metrics[key] = float(value)
        elif isinstance(value, (list, np.ndarray)):
            try:
                out.arrays[key] = Array(np.asarray(value, dtype=float))
            except (TypeError, ValueError):
                raise AdapterError(f"{where}: {key} is not a list of numbers") from None
        # strings and nested objects are provenance, not results: ignored on purpose
    return out
