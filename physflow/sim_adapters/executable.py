"""Any external program, MPI or not: a command template, parameters in, a JSON file out.

The template is split into arguments *before* substitution, and each argument is formatted on
its own, so a parameter value can never become a second argument or reach a shell unquoted.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from physflow.errors import AdapterError
from physflow.sim_adapters.base import Adapter, split_values
from physflow.vocabulary.task import SimOutput, TaskSpec

#: ``{{ name }}`` in an input template; distinct from the ``$var``/``${var}``/``{}`` of input languages.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class ExecutableAdapter(Adapter):
    name = "executable"
    own_keys = frozenset({"command", "mpi", "outputs", "inputs"})

    def check(self) -> None:
        super().check()
        if not self.sim.command:
            raise self.workflow.error("simulation.adapter", "adapter executable needs simulation.command")
        try:
            self.argv_template = shlex.split(self.sim.command)
        except ValueError as exc:
            raise self.workflow.error("simulation.command", f"cannot split the command: {exc}") from None
        dummy = {name: 0.0 for name in self.parameters}
        try:
            self._argv(dummy, Path("."), "t")
        except KeyError as exc:
            raise self.workflow.error(
                "simulation.command",
                f"unknown placeholder {{{exc.args[0]}}} (known: workflow_dir, python, workdir, task_id, "
                "the parameters and the fixed values)") from None
        except (ValueError, IndexError) as exc:
            raise self.workflow.error("simulation.command", f"bad placeholder: {exc}") from None
        self.templates: dict[str, str] = {}
        for name, template in (self.sim.inputs or {}).items():
            field = f"simulation.inputs.{name}"
            if "/" in name or name in ("", ".", ".."):
                raise self.workflow.error(field, "input files are plain names inside the task directory")
            try:
                self.templates[name] = self.workflow.resolve(template).read_text()
            except OSError as exc:
                raise self.workflow.error(field, f"cannot read template: {exc}") from None
            try:
                self._render(self.templates[name], self._values(dummy, Path("."), "t"))
            except KeyError as exc:
                raise self.workflow.error(field, f"template uses unknown {{{{ {exc.args[0]} }}}}") from None

    @property
    def uses_mpi(self) -> bool:
        return bool(self.sim.mpi)

    def _values(self, params: dict[str, float], workdir: Path, task_id: str) -> dict[str, Any]:
        values: dict[str, Any] = {**self.sim.fixed, **{k: repr(v) for k, v in params.items()}}
        values.update(workflow_dir=str(self.workflow.directory), python=sys.executable,
                      workdir=str(workdir), task_id=task_id)
        return values

    @staticmethod
    def _render(template: str, values: dict[str, Any]) -> str:
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)

    def _argv(self, params: dict[str, float], workdir: Path, task_id: str) -> list[str]:
        values = self._values(params, workdir, task_id)
        return [token.format_map(values) for token in self.argv_template]

    def build_task(self, task_id: str, params: dict[str, float], workdir: Path) -> TaskSpec:
        res = self.sim.resources
        values = self._values(params, workdir, task_id)
        files = {name: self._render(text, values) for name, text in self.templates.items()}
        return TaskSpec(task_id=task_id, workdir=str(workdir), argv=self._argv(params, workdir, task_id), files=files,
                        mpi=self.uses_mpi, ranks=res.ranks, nodes=res.nodes, walltime=self.sim.walltime)

    def parse_outputs(self, workdir: Path, outcome: dict[str, Any]) -> SimOutput:
        outputs = self.sim.outputs
        path = workdir / (outputs.path if outputs else "result.json")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise AdapterError(f"the program did not write {path.name}") from None
        except (OSError, ValueError) as exc:
            raise AdapterError(f"cannot read {path.name}: {exc}") from None
        return split_values(data, path.name)
