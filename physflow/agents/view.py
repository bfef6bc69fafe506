"""What the campaign shows its agents, declared here so that the agents' layer never depends on
how the loop keeps its state (the loop, workflows.campaign, implements it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from physflow.vocabulary.records import Hypothesis, TaskRecord
from physflow.vocabulary.workflow import ParameterSpec, WorkflowSpec


class CampaignView(Protocol):
    """Read on the loop's thread, never written. ``results()`` are ``TaskRecord.public()`` rows (what
    the tools and the coder see); ``suggest(n)`` asks the optimizer for ``n`` points."""

    @property
    def spec(self) -> WorkflowSpec: ...

    @property
    def parameters(self) -> dict[str, ParameterSpec]: ...

    @property
    def tasks(self) -> Mapping[str, TaskRecord]: ...

    @property
    def hypotheses(self) -> Mapping[str, Hypothesis]: ...

    @property
    def simulations_left(self) -> int: ...

    def best(self) -> TaskRecord | None: ...

    def results(self) -> list[dict[str, Any]]: ...

    def suggest(self, n: int) -> list[dict[str, float]]: ...
