"""Typed errors. The CLI turns each into one line and exit code 2; tracebacks are for bugs."""

from __future__ import annotations


class PhysflowError(Exception):
    """Base of every error caused by the user's input rather than by a bug in physflow."""

    exit_code = 2


class SpecError(PhysflowError):
    """A workflow YAML that does not satisfy the spec.

    ``file``, ``line`` and ``field`` locate the problem so the one-line message can say
    ``FILE:LINE: field.path: message``.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message, self.file, self.line, self.field = message, file, line, field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class SiteError(SpecError):
    """A site YAML that cannot be turned into an executor configuration."""


class AdapterError(PhysflowError):
    """A simulation adapter that cannot build a task or parse its outputs."""


class ProposalError(PhysflowError):
    """A proposed simulation (from an agent or a user) that violates the parameter schema.

    Sent back to the proposing agent as text; never clipped into range silently.
    """


class RunDirError(PhysflowError):
    """A run directory that is missing, locked by a live orchestrator, or unreadable."""


class ServingError(PhysflowError):
    """The model server could not be started or did not become healthy."""


class StoreError(PhysflowError):
    """The run directory cannot be written any more (a full disk, a quota): the campaign stops;
    what its journal holds is kept and resumable. A failure, not bad input: exit code 1."""

    exit_code = 1


class QualificationError(PhysflowError):
    """The model scored below the workflow's ``llm.qualify.min_score``: the campaign does not
    start. A refusal, not bad input: exit code 1."""

    exit_code = 1


class SandboxViolation(PhysflowError):
    """LLM-written code that tried to leave the sandbox, or a machine where the sandbox cannot
    be built (exit 1: the input was fine, the machine cannot run it safely)."""

    exit_code = 1


class CatalogError(PhysflowError):
    """A data file given to ``physflow ask`` that is missing or cannot be read as tables."""


class QueryError(PhysflowError):
    """A query_catalog request an agent got wrong (unknown table or column, a forbidden or
    malformed ``where``). Sent back to the agent as text, like a ProposalError."""
