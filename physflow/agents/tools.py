"""Tools the agents call: plain typed functions whose docstrings the model reads.

They see the campaign only through ``CampaignView`` (results so far, the optimizer), so the
agents never touch Parsl, the store's files or the simulation code directly.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

from autogen_core.tools import FunctionTool


class CampaignView(Protocol):
    """What the campaign shows its agents."""

    objective_metric: str
    goal: str

    def results(self) -> list[dict[str, Any]]: ...

    def suggest(self, n: int) -> list[dict[str, float]]: ...


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def results_table(view: CampaignView, sort_by: str | None = None, limit: int = 10,
                  status: str = "finished") -> list[dict[str, Any]]:
    """Rows of (id, params, metrics, hypothesis), best objective first."""
    metric = sort_by or view.objective_metric
    rows = [r for r in view.results() if status == "any" or r["status"] == status]
    sign = 1.0 if view.goal == "minimize" else -1.0

    def key(row: dict[str, Any]) -> float:
        value = row.get("metrics", {}).get(metric)
        return sign * value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    rows.sort(key=key)
    out = []
    for r in rows[: max(1, min(int(limit), 50))]:
        out.append({"id": r["id"], "status": r["status"], "hypothesis": r.get("hypothesis"),
                    "params": {k: round(v, 6) for k, v in r["params"].items()},
                    "metrics": {k: _finite(round(v, 6)) for k, v in r.get("metrics", {}).items()},
                    **({"error": r["error"][-300:]} if r.get("error") else {})})
    return out


def make_tools(view: CampaignView) -> dict[str, FunctionTool]:
    """The campaign tools bound to ``view``, by name."""

    def suggest_parameters(n: int = 2) -> str:
        """Ask the optimizer (fitted to every finished simulation so far) for n promising parameter
        sets within the bounds. Use its numbers when you are unsure which values to try."""
        if not 1 <= int(n) <= 8:
            return f"error: n must be between 1 and 8, got {n}"
        return json.dumps([{k: round(v, 6) for k, v in p.items()} for p in view.suggest(n)])

    def query_results(sort_by: str = "", limit: int = 10, status: str = "finished") -> str:
        """List simulations so far, best objective first. sort_by: a metric name (default: the
        objective); status: finished, failed, submitted or any; limit: at most 50 rows."""
        if status not in ("finished", "failed", "submitted", "any"):
            return "error: status must be one of finished, failed, submitted, any"
        return json.dumps(results_table(view, sort_by or None, limit, status))

    return {f.__name__: FunctionTool(f, description=(f.__doc__ or "").strip())
            for f in (suggest_parameters, query_results)}
