"""``physflow dashboard RUN``: a local web page that follows a campaign while it runs.

The standard library's HTTP server on 127.0.0.1 (nothing listens beyond this machine) serves one
page, ``/api/state`` (the snapshot that ``physflow watch`` prints, as JSON) and ``/plots/<name>.png``
(the report's own figures). The page polls the JSON endpoint and redraws its tables; the figures
are redrawn only when the journal has grown, so an idle dashboard costs nothing.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from physflow.errors import PhysflowError
from physflow.ui.snapshot import journal_version, snapshot
from physflow.workflows.report import draw_figures, model_turns
from physflow.workflows.store import RunStore

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>physflow dashboard</title>
<style>
body{font-family:sans-serif;margin:1em 2em;line-height:1.35}
table{border-collapse:collapse;font-size:90%;margin-bottom:1em}td,th{border:1px solid #aaa;padding:2px 6px}
#summary span{margin-right:1.5em} .finished{color:#070} .failed{color:#b00} .submitted{color:#06c}
#figures img{max-width:48%;margin:0.5%;border:1px solid #ddd;vertical-align:top}
</style></head><body>
<h1 id="title">physflow</h1>
<p id="goal"></p>
<div id="summary"></div>
<h2>Hypotheses</h2>
<table id="hypotheses"><thead><tr><th>id</th><th>hypothesis</th><th>predicted</th><th>verdict</th>
<th>evidence</th><th>tasks</th></tr></thead><tbody></tbody></table>
<h2>Simulations</h2>
<table id="tasks"><thead></thead><tbody></tbody></table>
<h2>Figures</h2>
<div id="figures"></div>
<script>
const POLL_MS = __POLL_MS__;
let shownVersion = -1;
function esc(s) { const d = document.createElement("div"); d.textContent = s == null ? "" : String(s);
  return d.innerHTML; }
function g(v) { return v == null ? "—" : Number(v).toPrecision(4); }
function dur(s) { if (s == null) return "—"; s = Math.round(s); return s >= 60 ? Math.floor(s / 60) + "m" +
  String(s % 60).padStart(2, "0") + "s" : s + "s"; }
function render(s) {
  document.getElementById("title").textContent = "physflow: " + s.name;
  document.getElementById("goal").textContent = s.goal;
  const counts = Object.entries(s.counts).filter(([k, v]) => v).map(([k, v]) => k + " " + v).join(", ");
  const best = s.best ? s.metric + " = " + g(s.best.value) + " (" + s.best.id + ")" : "—";
  document.getElementById("summary").innerHTML =
    `<span>state: <b id="state">${esc(s.state)}</b> ${esc(s.reason)}</span>` +
    `<span>tasks: <b id="counts">${esc(counts || "none")}</b></span><span>best: <b id="best">${esc(best)}</b></span>` +
    `<span>tokens: ${s.tokens_total}</span><span>utilization: ${g(s.utilization)}</span>` +
    `<span>elapsed: ${dur(s.elapsed)}</span><span>ETA: ${dur(s.eta_s)}</span>`;
  document.querySelector("#hypotheses tbody").innerHTML = s.hypotheses.map(h =>
    `<tr><td>${esc(h.id)}</td><td>${esc(h.statement)}</td><td>${esc(h.prediction)}</td>` +
    `<td>${esc(h.verdict || "pending")}</td><td>${esc(h.evidence)}</td><td>${esc(h.tasks.join(", "))}</td></tr>`
  ).join("");
  const names = Object.keys(s.parameters);
  document.querySelector("#tasks thead").innerHTML = "<tr><th>task</th><th>status</th><th>source</th>" +
    "<th>hypothesis</th>" + names.map(n => `<th>${esc(n)}</th>`).join("") + `<th>${esc(s.metric)}</th></tr>`;
  document.querySelector("#tasks tbody").innerHTML = s.tasks.map(t =>
    `<tr data-task="${esc(t.id)}" data-status="${esc(t.status)}"><td>${esc(t.id)}</td>` +
    `<td class="${esc(t.status)}">${esc(t.status)}</td><td>${esc(t.source)}</td><td>${esc(t.hypothesis)}</td>` +
    names.map(n => `<td>${g(t.params[n])}</td>`).join("") + `<td>${g(t.value)}</td></tr>`).join("");
  if (s.version !== shownVersion) {
    shownVersion = s.version;
    document.getElementById("figures").innerHTML = (s.figures || []).map(f =>
      `<img alt="${esc(f)}" src="plots/${esc(f)}.png?v=${s.version}">`).join("");
  }
}
async function poll() {
  try { const r = await fetch("api/state", {cache: "no-store"}); if (r.ok) render(await r.json()); }
  catch (e) { document.getElementById("summary").textContent = "dashboard server unreachable: " + e; }
  setTimeout(poll, POLL_MS);
}
poll();
</script></body></html>
"""


class FigureCache:
    """The report's figures for a run, redrawn only when the journal has changed since the last draw."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._version: int | None = None
        self._figures: dict[str, Path] = {}

    def figures(self, version: int) -> dict[str, Path]:
        """Figure name -> PNG path, current as of journal ``version`` (its size in bytes)."""
        with self._lock:
            if version != self._version:
                store = RunStore(self.run_dir)
                self._figures = draw_figures(self.run_dir, store.state(), store.resolved_spec(),
                                             model_turns(self.run_dir))
                self._version = version
            return dict(self._figures)


class StateCache:
    """``/api/state`` as served: the snapshot (with its figure names) made again only when the
    journal has grown or the last one is ``max_age`` seconds old (its elapsed time and ETA), so any
    number of pages polling at once costs one snapshot."""

    def __init__(self, run_dir: Path, figures: FigureCache, max_age: float = 1.0) -> None:
        self.run_dir, self.figures, self.max_age = run_dir, figures, max_age
        self._follower = RunStore(run_dir).follower()
        self._lock = threading.Lock()
        self._made = (-1, -math.inf)  # (journal version, monotonic time)
        self._body = b""

    def body(self) -> bytes:
        with self._lock:
            version = journal_version(self.run_dir)
            if version != self._made[0] or time.monotonic() - self._made[1] > self.max_age:
                snap = snapshot(self.run_dir, state=self._follower.state())
                snap["figures"] = sorted(self.figures.figures(snap["version"]))
                self._body, self._made = json.dumps(snap).encode(), (version, time.monotonic())
            return self._body


#: Names a browser on this machine sends in ``Host:``; any other is refused, so that a web page
#: elsewhere cannot point its own host name at 127.0.0.1 (DNS rebinding) and read the run.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


def loopback_host(header: str | None) -> bool:
    """Whether a ``Host:`` header names this machine's loopback (with or without a port)."""
    if not header:
        return False
    host = header.strip().lower()
    if host.startswith("["):  # an IPv6 literal: [::1] or [::1]:8765
        host = host[: host.find("]") + 1]
    else:
        host = host.split(":", 1)[0]
    return host in LOOPBACK_HOSTS


def make_server(run_dir: Path, port: int = 0, poll_ms: int = 1000) -> ThreadingHTTPServer:
    """An HTTP server for ``run_dir`` on 127.0.0.1:``port`` (0: any free port); not yet serving."""
    cache = FigureCache(run_dir)
    state = StateCache(run_dir, cache)
    page = PAGE.replace("__POLL_MS__", str(int(poll_ms))).encode()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: bytes, content_type: str, code: int = 200) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if not loopback_host(self.headers.get("Host")):
                self._send(b"this dashboard answers only for 127.0.0.1 and localhost", "text/plain", 403)
                return
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(page, "text/html; charset=utf-8")
            elif path == "/api/state":
                try:
                    self._send(state.body(), "application/json")
                except PhysflowError as exc:  # the run's files went missing or damaged meanwhile
                    self._send(str(exc).encode(), "text/plain; charset=utf-8", 500)
            elif path.startswith("/plots/") and path.endswith(".png"):
                name = path[len("/plots/"):-len(".png")]
                figure = cache.figures(journal_version(run_dir)).get(name)
                if figure is None:
                    self._send(b"no such figure", "text/plain", 404)
                else:
                    self._send(figure.read_bytes(), "image/png")
            else:
                self._send(b"not found", "text/plain", 404)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass  # one line per poll would drown the terminal

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)

