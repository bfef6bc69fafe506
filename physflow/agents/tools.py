"""Tools the agents call: plain typed functions whose docstrings the model reads.

They see the campaign only through ``CampaignView`` (results so far, the optimizer, the
sandbox, the knowledge base, the plots folder), so the agents never touch Parsl, the store's
files or the simulation code directly. Every tool answers with text; a bad argument is an
``error: ...`` answer the model can act on, never an exception that ends the turn.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autogen_core.tools import FunctionTool
from pydantic import StrictFloat

from physflow.agents.knowledge import Chunk, parse_citation, passage_text
from physflow.agents.view import CampaignView
from physflow.errors import ProposalError, QueryError
from physflow.vocabulary.ranking import finite_or_none, ranked
from physflow.vocabulary.workflow import TOOL_NAMES

#: Simulations one propose_simulations call may stage (more are rejected, with the reason).
MAX_PROPOSED = 8


def results_table(view: CampaignView, sort_by: str | None = None, limit: int = 10,
                  status: str = "finished") -> list[dict[str, Any]]:
    """Rows of (id, params, metrics, hypothesis), best objective first; rows without a finite
    value of it (failed, still running) follow in the order they were proposed."""
    metric = sort_by or view.spec.objective.metric
    rows = [r for r in view.results() if status == "any" or r["status"] == status]
    rows = ranked(rows, lambda r: r.get("metrics", {}).get(metric), view.spec.objective.goal,
                  unscored_last=True)
    out = []
    for r in rows[: max(1, min(int(limit), 50))]:
        out.append({"id": r["id"], "status": r["status"], "hypothesis": r.get("hypothesis"),
                    "params": {k: round(v, 6) for k, v in r["params"].items()},
                    "metrics": {k: finite_or_none(round(v, 6)) for k, v in r.get("metrics", {}).items()},
                    **({"error": r["error"][-300:]} if r.get("error") else {})})
    return out


class Toolbox:
    """The agents' tools, bound to one campaign (``view``) or one question's data (``catalog``).
    ``staged`` collects propose_simulations calls."""

    def __init__(self, view: CampaignView | None, validate=None, sandbox=None, knowledge=None,
                 plots_dir: Path | None = None, catalog=None) -> None:
        self.view, self.validate, self.sandbox, self.knowledge = view, validate, sandbox, knowledge
        self.plots_dir = plots_dir
        self.catalog = catalog
        self.staged: list[dict[str, float]] = []
        self.calls: dict[str, int] = {}
        #: Passages search_knowledge has returned, as (file, page or None, first line, last
        #: line): a citation must point into one of them.
        self.retrieved: set[tuple[str, int | None, int, int]] = set()

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def suggest_parameters(self, n: int = 2) -> str:
        """Ask the optimizer (fitted to every finished simulation so far) for n promising parameter
        sets within the bounds (1 <= n <= 8). Use its numbers when you are unsure which values to try."""
        self._count("suggest_parameters")
        if self.view is None:
            return "error: there is no campaign in this session"
        if not isinstance(n, int) or not 1 <= n <= 8:
            return f"error: n must be an integer between 1 and 8, got {n!r}"
        return json.dumps([{k: round(v, 6) for k, v in p.items()} for p in self.view.suggest(n)])

    def query_results(self, sort_by: str = "", limit: int = 10, status: str = "finished") -> str:
        """List simulations so far, best objective first. sort_by: a metric name (default: the
        objective); status: finished, failed, submitted or any; limit: 1 to 50 rows."""
        self._count("query_results")
        if self.view is None:
            return "error: there is no campaign in this session"
        if status not in ("finished", "failed", "submitted", "any"):
            return "error: status must be one of finished, failed, submitted, any"
        if not isinstance(limit, int) or not 1 <= limit <= 50:
            return f"error: limit must be an integer between 1 and 50, got {limit!r}"
        return json.dumps(results_table(self.view, sort_by or None, limit, status))

    def propose_simulations(self, simulations: list[dict[str, StrictFloat]]) -> str:
        """Check and stage simulations (each an object of parameter values within the bounds) for
        your hypothesis. Invalid ones are rejected with the reason; valid ones will be run."""
        self._count("propose_simulations")
        if self.validate is None:
            return "error: proposals are not accepted in this session"
        if not isinstance(simulations, list) or not simulations:
            return "error: simulations must be a non-empty list of parameter objects"
        lines = []
        for i, sim in enumerate(simulations[:MAX_PROPOSED], 1):
            try:
                self.staged.append(self.validate(sim))
                lines.append(f"simulation {i}: accepted")
            except ProposalError as exc:
                lines.append(f"simulation {i}: rejected: {exc}")
        if len(simulations) > MAX_PROPOSED:
            lines.append(f"simulations {MAX_PROPOSED + 1}-{len(simulations)}: rejected: "
                         f"at most {MAX_PROPOSED} per call")
        return "\n".join(lines)

    def run_analysis_code(self, code: str) -> str:
        """Run Python code in the campaign's sandbox (numpy, h5py, matplotlib; state persists between
        calls). The run directory is '..' (read-only: ../campaign.h5, ../journal.jsonl); write files in
        the current folder. Print what you want to see."""
        self._count("run_analysis_code")
        if self.sandbox is None:
            return "error: no sandbox in this session"
        if not isinstance(code, str) or not code.strip():
            return "error: code must be a non-empty string of Python"
        return self.sandbox.run(code).as_text()

    def search_knowledge(self, query: str, k: int = 3) -> str:
        """Search the campaign's knowledge base (local papers and notes) and return the k best
        passages (1 <= k <= 8), each with its source as file:line to cite."""
        self._count("search_knowledge")
        if self.knowledge is None or not self.knowledge.chunks:
            return "error: this campaign has no knowledge base (workflow key: knowledge)"
        if not isinstance(k, int) or not 1 <= k <= 8:
            return f"error: k must be an integer between 1 and 8, got {k!r}"
        found = self.passages(str(query), k)
        return passage_text(found) if found else "no passage matches"

    def passages(self, query: str, k: int) -> list[Chunk]:
        """The knowledge folder's ``k`` best passages for ``query``, remembered as retrieved
        (what ``was_retrieved`` accepts as a citation)."""
        if self.knowledge is None:
            return []
        hits = [c for _, c in self.knowledge.search(query, k)]
        for c in hits:
            self.retrieved.add((c.file, c.page, c.line, c.last_line))
        return hits

    def was_retrieved(self, citation: str) -> bool:
        """Whether ``citation`` points into a passage this campaign retrieved: ``file:line``, a
        PDF's ``file:pPAGE:line`` or ``file:pPAGE``, or a file alone."""
        name, page, line = parse_citation(citation)
        for file, passage_page, first, last in self.retrieved:
            if file != name:
                continue
            if page is None and line is None:
                return True
            if page == passage_page and (line is None or first <= line <= last):
                return True
        return False

    def make_plot(self, x: str, y: str, color: str = "", title: str = "") -> str:
        """Plot finished simulations: y against x, optionally coloured by a third quantity. x, y and
        color are parameter or metric names. Saves a PNG in the run directory's plots/ folder."""
        self._count("make_plot")
        if self.plots_dir is None or self.view is None:
            return "error: no plots folder in this session"
        rows = [r for r in self.view.results() if r["status"] == "finished"]
        names = set()
        for r in rows:
            names |= set(r["params"]) | set(r["metrics"])

        def column(name: str) -> list[float]:
            return [r["params"].get(name, r["metrics"].get(name, math.nan)) for r in rows]

        missing = [n for n in (x, y, color) if n and n not in names]
        if missing or not rows:
            return f"error: unknown name(s) {', '.join(missing)}; known: {', '.join(sorted(names))}" if missing \
                else "error: no finished simulation to plot yet"
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
        art = ax.scatter(column(x), column(y), c=column(color) if color else None, cmap="viridis", s=28)
        if color:
            fig.colorbar(art, ax=ax, label=color)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title or f"{y} vs {x}")
        fig.tight_layout()
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9_]+", "_", f"{y}_vs_{x}" + (f"_by_{color}" if color else ""))
        path = self.plots_dir / f"{slug}.png"
        fig.savefig(path)
        plt.close(fig)
        return f"saved plots/{path.name} ({len(rows)} simulations)"

    def query_catalog(self, table: str, columns: Sequence[str] = (), where: str = "", limit: int = 20) -> str:
        """Look at rows of a data table. table: a table name from the data description; columns:
        the columns to show (default all); where: a condition on column names using numbers,
        comparisons, and/or/not, + - * / and parentheses, e.g. "mass > 1e13 and mass < 1e14"
        (default all rows); limit: rows to show, 0 to 200. Also returns how many rows match and each
        column's count, min, max, mean, median, std and sum over all matching rows."""
        self._count("query_catalog")
        if self.catalog is None:
            return "error: there are no data tables in this session"
        from physflow.agents.selection import query

        try:
            return query(self.catalog, table, columns, where, limit)
        except QueryError as exc:
            return f"error: {exc}"

    def tools(self, names: list[str] | None = None, descriptions: dict[str, str] | None = None) -> list[FunctionTool]:
        """AutoGen tools for the named functions (all when None). ``descriptions`` replaces the
        docstring the model reads, for a tool whose setting differs (run_analysis_code outside a
        campaign)."""
        available = {f.__name__: f for f in (self.suggest_parameters, self.query_results, self.propose_simulations,
                                              self.run_analysis_code, self.search_knowledge, self.make_plot,
                                              self.query_catalog)}
        chosen = names if names is not None else list(TOOL_NAMES)  # query_catalog only when named
        described = descriptions or {}
        return [FunctionTool(available[n], description=described.get(n, (available[n].__doc__ or "").strip()),
                             name=n) for n in chosen]
