"""Any importable Python function ``f(**params, **fixed) -> dict`` of metrics and arrays."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from physflow.errors import AdapterError
from physflow.sim_adapters.base import Adapter, split_values
from physflow.vocabulary.task import SimOutput, TaskSpec


class PythonAdapter(Adapter):
    name = "python"
    own_keys = frozenset({"function"})

    def check(self) -> None:
        super().check()
        dotted = self.sim.function
        if not dotted or "." not in dotted:
            raise self.workflow.error("simulation.function", "adapter python needs function: package.module.name")
        module_name, _, attr = dotted.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise self.workflow.error("simulation.function", f"cannot import {module_name}: {exc}") from None
        if not callable(getattr(module, attr, None)):
            raise self.workflow.error("simulation.function", f"{module_name} has no function {attr}")

    def build_task(self, task_id: str, params: dict[str, float], workdir: Path) -> TaskSpec:
        return TaskSpec(task_id=task_id, workdir=str(workdir), function=self.sim.function,
                        kwargs={**self.sim.fixed, **params}, walltime=self.sim.walltime)

    def parse_outputs(self, workdir: Path, outcome: dict[str, Any]) -> SimOutput:
        value = outcome.get("value")
        if not isinstance(value, dict):
            raise AdapterError(f"{self.sim.function} returned {type(value).__name__}, expected a dict")
        return split_values(value, str(self.sim.function))
