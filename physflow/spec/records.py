"""What a campaign records: each simulation's life and each hypothesis, as the journal tells them.

Plain data on the ground floor, because every layer reads them: the loop keeps them, the store
journals and replays them, the agents' prompts and the report show them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TASK_STATES = ("proposed", "submitted", "running", "finished", "failed", "cancelled")


@dataclass
class TaskRecord:
    """One simulation's life, with Colmena-style timings (UNIX seconds)."""

    id: str
    params: dict[str, float]
    hypothesis: str | None = None
    source: str = "planner"  # planner | optimizer (model fallback) | backfill | user
    status: str = "proposed"
    created: float | None = None
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    received: float | None = None
    stored: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: list[str] = field(default_factory=list)
    error: str | None = None
    host: str | None = None

    def public(self) -> dict[str, Any]:
        """The JSON shape of ``physflow results --json``."""
        return {k: v for k, v in asdict(self).items()}


@dataclass
class Hypothesis:
    """A statement the planner made, the simulations that test it, and the critic's verdict."""

    id: str
    statement: str
    prediction: str = ""
    round: int = 0
    tasks: list[str] = field(default_factory=list)
    verdict: str | None = None  # supported | refuted | inconclusive
    evidence: str = ""
    advice: str = ""
    analysis: str = ""  # the coder's output on this hypothesis's results
