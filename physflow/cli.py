"""The ``physflow`` command. Exit codes: 0 ok, 1 campaign failed or cancelled, 2 bad input.

Bad input is one line on stderr (``error: FILE:LINE: field: message``), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from physflow import __version__
from physflow.errors import PhysflowError


class PhysflowGroup(click.Group):
    """Turns every PhysflowError into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PhysflowError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=PhysflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="physflow")
def main() -> None:
    """physflow: hypothesis-driven simulation campaigns steered by LLM agents.

    \b
    Example:
      physflow validate workflows/examples/heat2d.yaml
      physflow submit workflows/examples/heat2d.yaml --yes
    """


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--site", help="site name or site YAML path (overrides the workflow's site:)")
def validate(workflow: Path, site: str | None) -> None:
    """Check a workflow YAML (types, bounds, adapter, metric, files, site); print ok.

    \b
    Example: physflow validate workflows/examples/heat2d.yaml
    """
    from physflow.workflows.validate import check_workflow

    check_workflow(workflow, site)
    click.echo("ok")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the workflow YAML (for editors).

    \b
    Example: physflow schema > physflow.schema.json
    """
    from physflow.workflows.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
def sites() -> None:
    """List the built-in sites.

    \b
    Example: physflow sites
    """
    from physflow.site_configs.builder import builtin_sites, load_site

    for name in sorted(builtin_sites()):
        click.echo(f"{name:12s} {load_site(name).description}")


def _default_run_dir(name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{name}-{stamp}"


def _ask_terminal(text: str, batch: list[dict[str, float]]) -> list[dict[str, float]] | None:
    """y runs the batch, n stops the campaign (resumable), e opens $EDITOR on it (JSON, one
    simulation per line) and runs what comes back once it passes the parameter schema."""
    click.echo(text, err=True)
    while True:
        choice = click.prompt("Run this batch? [y]es / [n]o, stop / [e]dit", default="y", err=True,
                              type=click.Choice(["y", "n", "e"]), show_choices=False)
        if choice == "y":
            return batch
        if choice == "n":
            return None
        edited = click.edit("".join(json.dumps(p) + "\n" for p in batch), extension=".jsonl")
        if edited is None:
            click.echo("unchanged", err=True)
            return batch
        try:
            return [json.loads(line) for line in edited.splitlines() if line.strip()]
        except ValueError as exc:
            click.echo(f"not JSON, one simulation per line: {exc}", err=True)


async def _ask(text: str, batch: list[dict[str, float]]) -> list[dict[str, float]] | None:
    return await asyncio.to_thread(_ask_terminal, text, batch)


def _approver(spec: Any, yes: bool, source: Path):
    """The interactive approval callback, or None; refuses when approval needs a missing terminal."""
    if spec.approval == "auto" or yes:
        return None
    if not sys.stdin.isatty():
        raise PhysflowError(f"{source}: approval is {spec.approval!r} but there is no terminal to ask; "
                            "pass --yes to approve every batch")
    return _ask


def _run_campaign(checked: Any, store: Any, approver: Any, previous: Any = None) -> None:
    """Serve the model, run (or resume) the campaign, write the report; exits with its code."""
    from physflow.dispatch.parsl_backend import ParslDispatcher
    from physflow.serving.service import ModelService, serving_plan
    from physflow.workflows.campaign import Campaign, model_clients
    from physflow.workflows.report import write_report

    wf, spec, run_dir = checked.workflow, checked.workflow.spec, store.run_dir
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("parsl").propagate = False  # Parsl logs to parsl/ in the run directory
    logging.getLogger("physflow").setLevel(logging.INFO)
    click.echo(f"physflow {__version__}: campaign {spec.name} on site {checked.site.name}, "
               f"model {spec.llm.provider}:{spec.llm.model}", err=True)
    started = time.time()
    serving = serving_plan(spec.llm, checked.site) if spec.has_team else None
    dispatcher = None
    try:
        # The pools start first: the model server is one of their tasks (a GPU node's on a site).
        dispatcher = ParslDispatcher(checked.site, run_dir / "parsl", spec.budget.max_concurrent,
                                     spec.simulation.resources.nodes, checked.adapter.uses_mpi,
                                     service_pool=serving[1] if serving else None)
        base_url, api_key = spec.llm.base_url, None
        if serving:
            click.echo(f"starting the model server on pool {serving[1]} ...", err=True)
            service = ModelService(serving[0], run_dir / "llm", dispatcher.submit_service)
            dispatcher.on_close(service.stop)
            service.start()
            base_url, api_key = service.base_url, service.api_key
            info = json.loads((run_dir / "run.json").read_text())
            (run_dir / "run.json").write_text(json.dumps({**info, "llm_base_url": base_url}, indent=1))
        clients = model_clients(wf, base_url, api_key)
        pools = dispatcher
        campaign = Campaign(wf, store, checked.site, approver, dispatcher_factory=lambda: pools)
        state = asyncio.run(campaign.run(clients, previous))
    finally:
        if dispatcher is not None:  # the campaign closed it already unless it failed to start
            dispatcher.close()
        store.close()
    report = write_report(run_dir)
    best = campaign.best()
    click.echo(f"campaign {state}: {campaign.stop_reason}; {len(campaign.tasks)} simulations in "
               f"{time.time() - started:.1f} s", err=True)
    if best:
        click.echo(f"best: {best.id} {json.dumps(best.params)} {spec.objective.metric}="
                   f"{best.metrics[spec.objective.metric]:.4g}", err=True)
    click.echo(f"report: {report}", err=True)
    click.echo(str(run_dir))
    sys.exit(0 if state == "finished" else 1)


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--site", help="site name or site YAML path (overrides the workflow's site:)")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where to write the run (default: runs/<name>-<UTC time>)")
@click.option("--yes", "-y", is_flag=True, help="approve every batch without asking")
def submit(workflow: Path, site: str | None, run_dir: Path | None, yes: bool) -> None:
    """Run a campaign in the foreground; the last line printed is the run directory.

    \b
    Example: physflow submit workflows/examples/heat2d.yaml --yes
    """
    from physflow.errors import RunDirError
    from physflow.workflows.campaign import write_run_files
    from physflow.workflows.store import RunStore
    from physflow.workflows.validate import check_workflow

    checked = check_workflow(workflow, site)
    spec = checked.workflow.spec
    approver = _approver(spec, yes, checked.workflow.path)
    run_dir = (run_dir or _default_run_dir(spec.name)).resolve()
    try:
        store = RunStore.create(run_dir)
    except FileExistsError:
        raise RunDirError(f"{run_dir} already exists (use physflow resume to continue a run)") from None
    store.open_for_writing()
    write_run_files(checked.workflow, run_dir, checked.site)
    _run_campaign(checked, store, approver)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--yes", "-y", is_flag=True, help="approve every batch without asking")
def resume(run: Path, yes: bool) -> None:
    """Continue a campaign whose orchestrator stopped (killed, cancelled, out of walltime).

    Finished simulations are kept and never re-run; simulations that were in flight are
    submitted again, once.

    \b
    Example: physflow resume runs/heat2d-inverse-20261125T120000Z
    """
    from physflow.errors import RunDirError
    from physflow.workflows.validate import check_run_dir

    store = _store(run.resolve())
    store.open_for_writing()  # refuses while another orchestrator holds the run
    try:
        previous = store.state()
        if previous.state == "finished":
            raise RunDirError(f"{run}: the campaign already finished ({previous.reason}); nothing to resume")
        checked = check_run_dir(store.run_dir)
        approver = _approver(checked.workflow.spec, yes, store.run_dir / "workflow.yaml")
    except BaseException:
        store.close()
        raise
    _run_campaign(checked, store, approver, previous)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for a clean stop")
def cancel(run: Path, timeout: float) -> None:
    """Stop a running campaign cleanly; it stays resumable.

    \b
    Example: physflow cancel runs/heat2d-inverse-20261125T120000Z
    """
    import os
    import signal

    from physflow.errors import RunDirError

    store = _store(run)
    if not store.is_live():
        click.echo(f"{run}: no orchestrator is running (state: {store.state().state})")
        return
    pid = store.holder_pid()
    if pid is None:
        raise RunDirError(f"{run}: cannot tell which process runs the campaign")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while store.is_live() and time.monotonic() < deadline:
        time.sleep(0.2)
    if store.is_live():
        raise RunDirError(f"{run}: the orchestrator (pid {pid}) did not stop within {timeout:.0f} s")
    click.echo(f"{run}: {store.state().state}")


def _store(run: Path):
    from physflow.errors import RunDirError
    from physflow.workflows.store import JOURNAL, RunStore

    if not (run / JOURNAL).is_file():
        raise RunDirError(f"{run}: not a physflow run directory (no {JOURNAL})")
    return RunStore(run)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(run: Path, as_json: bool) -> None:
    """Show a campaign's state: running, finished, failed or cancelled.

    \b
    Example: physflow status runs/heat2d-20261125T120000Z --json
    """
    store = _store(run)
    st = store.state()
    state = st.state
    if state == "running" and not store.is_live():
        state = "failed"  # the orchestrator died without ending the campaign: resumable
    counts: dict[str, int] = {}
    for t in st.tasks.values():
        counts[t.status] = counts.get(t.status, 0) + 1
    info = {"state": state, "name": st.name, "reason": st.reason or ("orchestrator not running"
                                                                      if state != st.state else ""),
            "tasks": counts, "rounds": st.rounds, "hypotheses": len(st.hypotheses),
            "tokens": sum(st.tokens.values()), "started": st.started, "ended": st.ended}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"{st.name}: {state}" + (f" ({info['reason']})" if info["reason"] else ""))
        click.echo("tasks: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of tasks")
def results(run: Path, as_json: bool) -> None:
    """List a campaign's simulations (readable while it runs).

    \b
    Example: physflow results runs/heat2d-20261125T120000Z --json
    """
    st = _store(run).state()
    rows = []
    for t in st.tasks.values():
        metrics = {k: (v if v == v and abs(v) != float("inf") else None) for k, v in t.metrics.items()}
        rows.append({"id": t.id, "status": t.status, "params": t.params, "metrics": metrics,
                     "hypothesis": t.hypothesis, "source": t.source, "submitted": t.submitted,
                     "started": t.started, "finished": t.finished, "error": t.error})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        params = " ".join(f"{k}={v:.4g}" for k, v in r["params"].items())
        metrics = " ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if v is not None)
        click.echo(f"{r['id']} {r['status']:9s} {r['source']:9s} {params}  {metrics}")


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(run: Path) -> None:
    """(Re)write report.md of a run, at any time.

    \b
    Example: physflow report runs/heat2d-20261125T120000Z
    """
    from physflow.workflows.report import write_report

    _store(run)
    click.echo(str(write_report(run)))


@main.command()
@click.argument("question")
@click.option("--data", "data", multiple=True, type=click.Path(path_type=Path), metavar="PATH",
              help="a data file: HDF5 (a run's campaign.h5, a halo catalog), CSV or FITS table; repeatable, "
                   "at least one")
@click.option("--provider", type=click.Choice(["embedded", "openai", "vllm", "replay"]), default="embedded",
              show_default=True, help="where the model runs (as llm.provider in a workflow)")
@click.option("--model", help="model name (default: the embedded model)")
@click.option("--base-url", help="OpenAI-compatible endpoint (openai, vllm)")
@click.option("--api-key-env", help="name of the environment variable holding the API key")
@click.option("--script", type=click.Path(path_type=Path), help="replay provider: JSONL file of model responses")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where to write transcript.jsonl and answer.md (default: runs/ask-<UTC time>)")
@click.option("--json", "as_json", is_flag=True, help="print the answer as one JSON object")
def ask(question: str, data: tuple[Path, ...], provider: str, model: str | None, base_url: str | None,
        api_key_env: str | None, script: Path | None, run_dir: Path | None, as_json: bool) -> None:
    """Answer a science question from local data, with the code and numbers that answer it.

    The coder agent looks at the tables (query_catalog), writes Python that computes the answer
    from the files, and physflow runs that code itself in the sandbox: the numbers are what the
    code printed. The last line printed is the path of answer.md. Exit code 0: a verified answer;
    1: no code produced one; 2: bad input.

    \b
    Example:
      physflow ask "how many halos are heavier than 1e14 Msun/h, and what is their mean mass?" \\
          --data runs/cosmology-hmf-20261127T043000Z/tasks/t0003/nbody.h5
    """
    from physflow.agents.catalog import Catalog
    from physflow.errors import CatalogError, RunDirError, SpecError

    if not data:
        raise CatalogError("no data: give at least one --data PATH (HDF5, CSV or FITS)")
    catalog = Catalog.load(list(data))  # before the agents' imports, so bad data fails in a blink

    from pydantic import ValidationError

    from physflow.agents.ask import answer_question
    from physflow.agents.models import make_client
    from physflow.serving.llama_cpp import embedded_plan
    from physflow.serving.service import ModelService
    from physflow.workflows.spec import LLMSpec

    settings = {"provider": provider, "base_url": base_url, "api_key_env": api_key_env,
                "script": str(script.resolve()) if script else None, "max_tokens_per_turn": 1536}
    if model:
        settings["model"] = model
    try:
        llm = LLMSpec(**settings)
    except ValidationError as exc:
        raise SpecError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
    run_dir = (run_dir or _default_run_dir("ask")).resolve()
    if run_dir.exists():
        raise RunDirError(f"{run_dir} already exists")
    # Every client but the embedded one can be made (and its settings checked) before anything is written.
    client = None if llm.provider == "embedded" else make_client(llm, script_dir=Path.cwd())
    run_dir.mkdir(parents=True)
    click.echo(f"physflow {__version__}: {len(catalog.tables)} table(s) in {len(catalog.files)} file(s); "
               f"model {llm.provider}:{llm.model}", err=True)
    with contextlib.ExitStack() as stack:
        if client is None:  # no site here: the server's task runs in a thread of this process
            click.echo("starting the embedded model server ...", err=True)
            threads = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="physflow-llm"))
            service = stack.enter_context(ModelService(embedded_plan(llm.model), run_dir / "llm", threads.submit))
            client = make_client(llm, base_url=service.base_url, api_key=service.api_key)
        result = asyncio.run(answer_question(question, catalog, client, run_dir))
    answer_md = run_dir / "answer.md"
    if as_json:
        click.echo(json.dumps({**result.as_json(), "answer_md": str(answer_md)}))
    else:
        click.echo(result.answer)
        if result.code:
            click.echo("\ncode:\n" + "\n".join("    " + line for line in result.code.rstrip().splitlines()))
        click.echo("\noutput (physflow ran the code):\n"
                   + "\n".join("    " + line for line in (result.output.rstrip() or "(none)").splitlines()))
        if result.caveats:
            click.echo("\ncaveats:\n" + "\n".join(f"- {c}" for c in result.caveats))
        click.echo(f"\ntokens: {result.total_tokens}")
        click.echo(str(answer_md))
    sys.exit(0 if result.verified else 1)


def _transcript_line(record: dict[str, Any], t0: float) -> str:
    """One transcript record as a line a person can scan: time, who, what, tokens."""
    content = record.get("content")
    if isinstance(content, (dict, list)):
        content = json.dumps(content)
    text = " ".join(str(content).split())
    who = record.get("agent", "?") + (f" -> {record['to']}" if record.get("to") else "")
    tokens = record.get("prompt_tokens", 0) + record.get("completion_tokens", 0)
    kind = {"ToolCallRequestEvent": "tool call", "ToolCallExecutionEvent": "tool result",
            "ToolCallSummaryMessage": "tool summary", "TextMessage": "message"}.get(record.get("type", ""),
                                                                                      record.get("type", ""))
    if kind.startswith("StructuredMessage"):
        kind = "reply"
    return (f"{record.get('t', t0) - t0:7.1f}s  {who:<22} {kind:<12} {text[:200]}"
            + (f"  [{tokens} tok]" if tokens else ""))


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--agent", "agents", multiple=True, help="only this agent's records (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON lines")
def transcript(run: Path, agents: tuple[str, ...], as_json: bool) -> None:
    """Show every agent message, tool call and tool result of a run, with token counts.

    \b
    Example: physflow transcript runs/cosmology-hmf-20261127T043000Z --agent critic
    """
    from physflow.errors import RunDirError

    _store(run)
    path = run / "transcript.jsonl"
    if not path.is_file():
        raise RunDirError(f"{run}: no transcript.jsonl (the campaign ran without agents)")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash
    records = [r for r in records if not agents or r.get("agent") in agents]
    if as_json:
        for r in records:
            click.echo(json.dumps(r))
        return
    t0 = records[0].get("t", 0.0) if records else 0.0
    for r in records:
        click.echo(_transcript_line(r, t0))
    used: dict[str, int] = {}
    for r in records:
        if r.get("type") == "tokens":
            used[r["agent"]] = used.get(r["agent"], 0) + int(r["content"])
    if used:
        click.echo("tokens: " + ", ".join(f"{a} {n}" for a, n in sorted(used.items()))
                   + f"; total {sum(used.values())}")


if __name__ == "__main__":
    main()
