"""Tables of a run for other programs: ``physflow results --csv``."""

from __future__ import annotations

import csv
import io
from typing import Any

TIMES = ("submitted", "started", "finished")


def results_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV row per simulation: id, status, source, hypothesis, each parameter, each metric
    (prefixed ``metric.`` where a parameter has the same name), timings (UNIX s), error.

    Columns are the union over all rows, so a failed task (no metrics) leaves its cells empty.
    """
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    metrics = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    metric_cols = [f"metric.{m}" if m in params else m for m in metrics]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "status", "source", "hypothesis", *params, *metric_cols, *TIMES, "error"])
    for r in rows:
        writer.writerow([r["id"], r["status"], r["source"], r["hypothesis"] or "",
                         *(r["params"].get(p, "") for p in params),
                         *("" if r["metrics"].get(m) is None else r["metrics"][m] for m in metrics),
                         *("" if r[t] is None else r[t] for t in TIMES), (r["error"] or "").strip()])
    return out.getvalue()
