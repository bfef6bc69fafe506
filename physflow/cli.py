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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from physflow import __version__
from physflow.errors import PhysflowError


def _one_line(text: str) -> str:
    """``text`` as one printable line, whatever the input held: a key named "a\rb" is shown as a\rb."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PhysflowGroup(click.Group):
    """Turns every PhysflowError, and every flag or argument click refuses, into one line and
    exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PhysflowError as exc:
            from physflow.secrets import redact

            click.echo(f"error: {_one_line(redact(str(exc)))}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # a subcommand's flags: click would print usage, a hint and the error
            command = f"physflow {exc.ctx.info_name}: " if exc.ctx is not None and exc.ctx is not ctx else ""
            click.echo(f"error: {command}{_one_line(exc.format_message())} (see --help)", err=True)
            sys.exit(2)


@click.group(cls=PhysflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="physflow")
def main() -> None:
    """physflow: hypothesis-driven simulation campaigns steered by LLM agents.

    Exit codes: 0 ok, 1 campaign failed or cancelled, 2 bad input (one line on stderr).

    \b
    Example:
      physflow validate workflows/examples/heat2d.yaml
      physflow submit workflows/examples/heat2d.yaml --yes
    """


#: ``--set key=value`` (repeatable): fills a ``${key}`` placeholder of the site YAML.
set_option = click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                          help="fill a placeholder of the site YAML, e.g. --set account=MYPROJ (repeatable)")


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--site", help="site name or site YAML path (overrides the workflow's site:)")
@set_option
def validate(workflow: Path, site: str | None, assignments: tuple[str, ...]) -> None:
    """Check a workflow YAML (types, bounds, adapter, metric, files, site); print ok.

    \b
    Example: physflow validate workflows/examples/heat2d.yaml
    """
    from physflow.site_configs.placeholders import parse_assignments
    from physflow.workflows.validate import check_workflow

    checked = check_workflow(workflow, site, parse_assignments(assignments))
    for note in checked.notes():
        click.echo(f"{checked.workflow.path}: warning: {note}", err=True)
    click.echo("ok")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the workflow YAML (for editors).

    \b
    Example: physflow schema > physflow.schema.json
    """
    from physflow.vocabulary.workflow import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.group(invoke_without_command=True)
@click.pass_context
def sites(ctx: click.Context) -> None:
    """List the built-in sites; 'physflow sites show NAME' prints one resolved.

    \b
    Example: physflow sites
    """
    from physflow.site_configs.loader import builtin_sites, site_description

    if ctx.invoked_subcommand is None:
        for name in sorted(builtin_sites()):
            click.echo(f"{name:12s} {site_description(name)}")


@sites.command("show")
@click.argument("site")
@set_option
def sites_show(site: str, assignments: tuple[str, ...]) -> None:
    """Print a site (built-in name or YAML path) as it will run: placeholders filled, defaults
    written out. The output is itself a valid site YAML.

    \b
    Example: physflow sites show polaris --set account=MYPROJ
    """
    from physflow.site_configs.loader import load_site, site_yaml
    from physflow.site_configs.placeholders import parse_assignments

    click.echo(site_yaml(load_site(site, Path.cwd(), parse_assignments(assignments))), nl=False)


@main.command("endpoint-config")
@click.argument("site")
@set_option
@click.option("--pool", help="the pool the endpoint serves (default: the site's MPI pool, else its serial pool)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="write here, not to stdout")
@click.option("--ranks", type=click.IntRange(1, 1_000_000), help="ranks of the one-node MPI simulations the endpoint "
              "will run: packed on its nodes, each on its own cores (docs/sites.md)")
@click.option("--gpus", type=click.IntRange(0, 1024), default=0, help="GPUs each of those simulations uses")
def endpoint_config(site: str, assignments: tuple[str, ...], pool: str | None, output: Path | None,
                    ranks: int | None, gpus: int) -> None:
    """Write a Globus Compute endpoint config.yaml for a site's pool (GlobusMPIEngine for an MPI
    pool, GlobusComputeEngine otherwise, with the site's batch provider).

    \b
    Example: physflow endpoint-config polaris --set account=MYPROJ -o ~/.globus_compute/physflow/config.yaml
    """
    from physflow.dispatch.endpoint_config import endpoint_config_yaml
    from physflow.site_configs.loader import load_site
    from physflow.site_configs.placeholders import parse_assignments
    from physflow.vocabulary.workflow import user_path

    text = endpoint_config_yaml(load_site(site, Path.cwd(), parse_assignments(assignments)), pool, site, ranks, gpus)
    if output is None:
        click.echo(text, nl=False)
    else:
        output = user_path(str(output))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        click.echo(str(output), err=True)


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


def _say(text: str) -> None:
    click.echo(text, err=True)


def _run_campaign(checked: Any, store: Any, approver: Any, previous: Any = None, follower: Any = None) -> None:
    """Run (or resume) the campaign through the launcher, print its summary; exits with its code."""
    from physflow.workflows.launcher import run_campaign

    spec = checked.workflow.spec
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) is dropped, not a traceback
    logging.getLogger("parsl").propagate = False  # Parsl logs to parsl/ in the run directory
    logging.getLogger("physflow").setLevel(logging.INFO)
    click.echo(f"physflow {__version__}: campaign {spec.name} on site {checked.site.name}, "
               f"model {spec.llm.provider}:{spec.llm.model}", err=True)
    from physflow.errors import QualificationError
    from physflow.ui.watch import live_progress
    from physflow.workflows.qualify import qualify_gate

    try:
        qualify_gate(checked.workflow, store, _say)
    except BaseException as exc:
        store.close()
        if isinstance(exc, QualificationError):
            click.echo(str(store.run_dir))  # the run folder keeps qualify.json
        raise
    # The rich panel only on a terminal, and not while approval prompts need it.
    progress = (lambda: live_progress(store.run_dir)) if approver is None else contextlib.nullcontext
    outcome = run_campaign(checked, store, approver, previous, progress, _say, follower)
    click.echo(f"campaign {outcome.state}: {outcome.stop_reason}; {outcome.simulations} simulations in "
               f"{outcome.seconds:.1f} s", err=True)
    best = outcome.best
    if best:
        click.echo(f"best: {best.id} {json.dumps(best.params)} {spec.objective.metric}="
                   f"{best.metrics[spec.objective.metric]:.4g}", err=True)
    click.echo(f"report: {outcome.report}", err=True)
    click.echo(str(store.run_dir))
    sys.exit(0 if outcome.state == "finished" else 1)


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--site", help="site name or site YAML path (overrides the workflow's site:)")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where to write the run (default: runs/<name>-<UTC time>)")
@click.option("--yes", "-y", is_flag=True, help="approve every batch without asking")
@click.option("--detach", is_flag=True,
              help="return at once, printing the run directory; the campaign runs on in its own session")
@set_option
def submit(workflow: Path, site: str | None, run_dir: Path | None, yes: bool, detach: bool,
           assignments: tuple[str, ...]) -> None:
    """Run a campaign in the foreground; the last line printed is the run directory.

    On a terminal a live panel shows its progress; otherwise the output stays a short log on
    stderr. With --detach the command returns once the run directory exists (exit 0) and the
    campaign goes on after the terminal closes: follow it with watch, stop it with cancel.

    \b
    Example:
      physflow submit workflows/examples/heat2d.yaml --yes
      physflow watch "$(physflow submit workflows/examples/heat2d.yaml --detach)"
    """
    from physflow.errors import RunDirError
    from physflow.site_configs.placeholders import parse_assignments
    from physflow.site_configs.site import check_loop_here
    from physflow.vocabulary.workflow import real_path
    from physflow.workflows.store import RunStore
    from physflow.workflows.validate import check_workflow

    checked = check_workflow(workflow, site, parse_assignments(assignments))
    spec = checked.workflow.spec
    for note in checked.notes():
        click.echo(f"{checked.workflow.path}: warning: {note}", err=True)
    check_loop_here(checked.site)  # before a run directory exists
    if detach:
        from physflow.ui.detach import submit_detached

        if spec.approval != "auto" and not yes:
            raise RunDirError(f"{checked.workflow.path}: approval is {spec.approval!r}, but a detached campaign "
                              "has no terminal to ask; pass --yes to approve every batch")
        run_dir = real_path(run_dir or _default_run_dir(spec.name))
        options = (["--site", site] if site else []) + [f"--set={a}" for a in assignments] + ["--yes"]
        submit_detached(workflow, run_dir, options)
        click.echo(str(run_dir))
        return
    approver = _approver(spec, yes, checked.workflow.path)
    run_dir = real_path(run_dir or _default_run_dir(spec.name))
    try:
        store = RunStore.create(run_dir)
    except FileExistsError:
        raise RunDirError(f"{run_dir} already exists (use physflow resume to continue a run)") from None
    store.open_for_writing()
    store.write_run_files(checked.workflow, checked.site, checked.slots)
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
        from physflow.processes import reap_leftovers

        ended = reap_leftovers(store.run_dir / "parsl")  # what a killed orchestrator left running
        if ended:
            click.echo(f"ended {len(ended)} process(es) left running by the previous orchestrator", err=True)
        follower = store.follower()  # the journal is read once: the report reads on from here
        previous = follower.state()
        lost = store.unaccounted(previous)
        if lost:  # resuming would re-run what the journal forgot and write over its results
            raise RunDirError(f"{run}: resume refused, the journal lost events it had: {lost[0]}"
                              + (f" (and {len(lost) - 1} more)" if len(lost) > 1 else "")
                              + f"; physflow fsck {run} lists what disagrees; nothing was changed")
        if previous.state == "finished":
            if not (store.run_dir / "report.md").is_file():  # stopped between the end and its report
                from physflow.workflows.report import write_report

                store.close()
                click.echo(f"the campaign had finished; its report was missing: {write_report(store.run_dir)}",
                           err=True)
                return
            raise RunDirError(f"{run}: the campaign already finished ({previous.reason}); nothing to resume")
        checked = check_run_dir(store)
        approver = _approver(checked.workflow.spec, yes, store.run_dir / "workflow.yaml")
    except BaseException:
        store.close()
        raise
    _run_campaign(checked, store, approver, previous, follower)


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


def _state(run: Path):
    """The run's state from its journal; each damaged journal line (skipped) is said on stderr."""
    return _warn_damage(run, _store(run).state())


def _warn_damage(run: Path, st):
    """Say each damaged journal line of ``st`` (skipped by every reader) on stderr; ``st``."""
    for damage in st.damage[:5]:
        click.echo(f"warning: {run}/{damage}; skipped (physflow fsck {run} says what it lost)", err=True)
    if len(st.damage) > 5:
        click.echo(f"warning: {run}: {len(st.damage) - 5} more damaged journal lines skipped", err=True)
    return st


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(run: Path, as_json: bool) -> None:
    """Show a campaign's state: running, finished, failed or cancelled.

    \b
    Example: physflow status runs/heat2d-20261125T120000Z --json
    """
    from physflow.ui.snapshot import effective_state
    from physflow.vocabulary.records import status_counts

    store = _store(run)
    st = _state(run)
    state = effective_state(store, st)  # "failed" if the orchestrator died mid-campaign: resumable
    counts = status_counts(st.tasks.values())
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
@click.option("--repair", is_flag=True, help="rewrite what disagrees from the journal, then check again")
@click.option("--json", "as_json", is_flag=True, help="print the findings as one JSON object")
@click.option("--deep", is_flag=True, help="read every task's group, even where campaign.h5's index may be trusted")
def fsck(run: Path, repair: bool, as_json: bool, deep: bool) -> None:
    """Check that a stopped run's journal and campaign.h5 agree; exit 0 clean, 1 problems left.

    Every finished or failed task of the journal must have its whole group in campaign.h5 with
    the same status, params and metrics. --repair mends the file from the journal. The groups
    are read from campaign.h5's index while the file is the one physflow last wrote (a file
    changed since is read group by group, as --deep always does).

    \b
    Example: physflow fsck runs/heat2d-inverse-20261125T120000Z --repair
    """
    from physflow.workflows.fsck import fsck as check_run
    from physflow.workflows.fsck import run_arrays

    store = _store(run.resolve())
    report = check_run(store, repair, lambda: run_arrays(store), deep)  # refused while an orchestrator runs
    if as_json:
        click.echo(json.dumps(report.as_json()))
    else:
        for p in report.repaired:
            click.echo(f"repaired: {p.task + ': ' if p.task else ''}{p.what}")
        for p in report.problems:
            click.echo(f"problem: {p.task + ': ' if p.task else ''}{p.what}")
        click.echo("clean" if report.clean else f"{len(report.problems)} problem(s)"
                   + ("" if repair else "; physflow fsck --repair mends them from the journal"))
    sys.exit(0 if report.clean else 1)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of tasks")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV: one row per task, a column per parameter and metric")
def results(run: Path, as_json: bool, as_csv: bool) -> None:
    """List a campaign's simulations (readable while it runs).

    \b
    Example:
      physflow results runs/heat2d-20261125T120000Z --json
      physflow results runs/heat2d-20261125T120000Z --csv > results.csv
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv: choose one")
    rows = [t.result_row() for t in _state(run).tasks.values()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if as_csv:
        from physflow.ui.export import results_csv

        click.echo(results_csv(rows), nl=False)
        return
    for r in rows:
        params = " ".join(f"{k}={v:.4g}" for k, v in r["params"].items())
        metrics = " ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if v is not None)
        click.echo(f"{r['id']} {r['status']:9s} {r['source']:9s} {params}  {metrics}")


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the paths written as one JSON object")
def report(run: Path, as_json: bool) -> None:
    """(Re)write report.md, report.html (figures inline) and plots/*.png of a run, at any time,
    also while it runs; prints report.md's path.

    \b
    Example: physflow report runs/heat2d-20261125T120000Z
    """
    from physflow.workflows.report import write_report

    _state(run)  # says which journal lines are damaged (the report skips them)
    path = write_report(run)
    if as_json:
        click.echo(json.dumps({"markdown": str(path), "html": str(path.with_suffix(".html")),
                               "plots": sorted(str(p) for p in (run / "plots").glob("*.png"))}))
    else:
        click.echo(str(path))


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="print one snapshot and exit")
@click.option("--json", "as_json", is_flag=True, help="print snapshots as JSON, one object per line")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds between looks at the run (at least 0.1)")
def watch(run: Path, once: bool, as_json: bool, interval: float) -> None:
    """Follow a campaign live until it ends: tasks by state, hypotheses and verdicts, best metric,
    tokens spent, ETA. A panel on a terminal; otherwise one line per change. Exit 0 when the
    campaign finished, 1 when it failed or was cancelled (with --once: its state now).

    \b
    Example: physflow watch runs/heat2d-20261125T120000Z
    """
    from physflow.ui.watch import watch as follow

    follower = _store(run).follower()
    _warn_damage(run, follower.state())  # says which journal lines are damaged (the snapshots skip them)
    state = follow(run, once, as_json, interval, follower=follower)
    sys.exit(1 if state in ("failed", "cancelled") else 0)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 (0: any free port)")
@click.option("--poll", default=1.0, show_default=True, type=click.FloatRange(min=0.1, max=3600),
              help="seconds between the page's updates (0.1 to 3600)")
def dashboard(run: Path, port: int, poll: float) -> None:
    """Serve a live page of a run on http://127.0.0.1:PORT/ (this machine only) until Ctrl-C:
    tasks, hypotheses, best metric, and the report's figures, updated as results arrive.

    \b
    Example: physflow dashboard runs/heat2d-20261125T120000Z --port 8765
    """
    from physflow.errors import RunDirError
    from physflow.ui.dashboard import make_server

    _store(run)
    try:
        server = make_server(run.resolve(), port, int(poll * 1000))
    except OSError as exc:
        raise RunDirError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    click.echo(f"http://127.0.0.1:{server.server_address[1]}/", err=True)
    with contextlib.suppress(KeyboardInterrupt), server:
        server.serve_forever()


@main.command()
@click.argument("folder", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--adapter", type=click.Choice(["nbody_pm", "heat2d", "executable", "python"]), default="heat2d",
              show_default=True, help="the kind of simulation the workflow runs")
def init(folder: Path, adapter: str) -> None:
    """Write a workflow folder to start from: a commented workflow.yaml that validates, and what
    it needs (a target made by the built-in code, or a stand-in sim.py / model.py to replace).

    \b
    Example: physflow init my-campaign --adapter nbody_pm && physflow validate my-campaign/workflow.yaml
    """
    from physflow.ui.scaffold import scaffold

    for path in scaffold(folder, adapter):
        click.echo(str(path))


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
@click.option("--sandbox", "sandbox", type=click.Choice(["strict", "unsafe"]), default="strict", show_default=True,
              help="unsafe: where this machine has no kernel isolation (bwrap, Landlock), run the model's code "
                   "with rlimits and audit hooks only instead of refusing; answer.md's first line says so")
def ask(question: str, data: tuple[Path, ...], provider: str, model: str | None, base_url: str | None,
        api_key_env: str | None, script: Path | None, run_dir: Path | None, as_json: bool, sandbox: str) -> None:
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
    from physflow.sim_adapters import catalog_tables
    from physflow.workflows.store import campaign_tables

    if not data:
        raise CatalogError("no data: give at least one --data PATH (HDF5, CSV or FITS)")
    # before the agents' imports, so bad data fails in a blink; the layouts only the adapters
    # (a halo catalog) and the run store (campaign.h5) know are read by their own readers
    catalog = Catalog.load(list(data), group_tables=catalog_tables(), file_tables=[campaign_tables])

    from pydantic import ValidationError

    from physflow.agents.ask import answer_question
    from physflow.vocabulary.workflow import LLMSpec, real_path
    from physflow.workflows.launcher import question_client, question_model

    settings = {"provider": provider, "base_url": base_url, "api_key_env": api_key_env,
                "script": str(script.resolve()) if script else None, "max_tokens_per_turn": 1536}
    if model:
        settings["model"] = model
    try:
        llm = LLMSpec(**settings)
    except ValidationError as exc:
        raise SpecError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
    run_dir = real_path(run_dir or _default_run_dir("ask"))
    if run_dir.exists():
        raise RunDirError(f"{run_dir} already exists")
    client = question_client(llm)  # every client but the embedded one, before anything is written
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise RunDirError(f"{run_dir}: cannot create the run directory: {exc.strerror or exc}") from None
    click.echo(f"physflow {__version__}: {len(catalog.tables)} table(s) in {len(catalog.files)} file(s); "
               f"model {llm.provider}:{llm.model}", err=True)
    with question_model(llm, run_dir, client, _say) as client:
        result = asyncio.run(answer_question(question, catalog, client, run_dir, unsafe=sandbox == "unsafe"))
    _print_answer(result, run_dir / "answer.md", as_json)
    sys.exit(0 if result.verified else 1)


def _print_answer(result: Any, answer_md: Path, as_json: bool) -> None:
    """The answer, the code that computed it, its output and caveats; last line answer.md's path."""
    if as_json:
        click.echo(json.dumps({**result.as_json(), "answer_md": str(answer_md)}))
        return
    click.echo(result.answer)
    if result.code:
        click.echo("\ncode:\n" + "\n".join("    " + line for line in result.code.rstrip().splitlines()))
    click.echo("\noutput (physflow ran the code):\n"
               + "\n".join("    " + line for line in (result.output.rstrip() or "(none)").splitlines()))
    if result.caveats:
        click.echo("\ncaveats:\n" + "\n".join(f"- {c}" for c in result.caveats))
    click.echo(f"\ntokens: {result.total_tokens}")
    click.echo(str(answer_md))


@main.command()
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where to write qualify.json (default: runs/<name>-qualify-<UTC time>)")
@click.option("--json", "as_json", is_flag=True, help="print the record (scores and every answer) as one JSON object")
@click.option("--limit", type=click.IntRange(min=1), help="ask at most this many questions per category")
@click.option("--seed", default=0, show_default=True, type=int,
              help="which shuffle of the options, candidates and questions")
def qualify(workflow: Path, run_dir: Path | None, as_json: bool, limit: int | None, seed: int) -> None:
    """Test the workflow's model before it steers a campaign: physics (cosmology, diffusion,
    molecular dynamics), a valid proposal for this workflow's parameters, the right tool for a
    task, and picking the best of shuffled candidates by their predicted values (steering).

    Uses the workflow's llm: exactly as a campaign would (an embedded model is served for the
    test; the categories of llm.qualify.categories where the workflow names them). Prints a score
    per category against chance and what the scores mean; writes qualify.json into the run folder
    (the last line printed) and keeps the model's latest record beside the embedded model cache.
    Exit 0, or 1 when the workflow's llm.qualify.min_score is not reached; 2 on bad input.

    \b
    Example:
      physflow qualify workflows/examples/heat2d.yaml --limit 3
    """
    from physflow.errors import RunDirError
    from physflow.vocabulary.workflow import load_workflow, real_path
    from physflow.workflows.qualify import run_qualify

    loaded = load_workflow(workflow)
    spec = loaded.spec
    run_dir = real_path(run_dir or _default_run_dir(f"{spec.name}-qualify"))
    if (run_dir / "qualify.json").exists():
        raise RunDirError(f"{run_dir} already holds a qualify.json")

    def progress(n: int, total: int, answer: Any) -> None:
        if n == total or n % 10 == 0:
            click.echo(f"  {n}/{total} questions", err=True)

    gate = spec.llm.qualify
    record = run_qualify(loaded, run_dir, categories=gate.categories if gate else None, seed=seed, limit=limit,
                         say=_say, progress=progress)
    if as_json:
        click.echo(json.dumps({**record.to_json(), "run_dir": str(run_dir)}))
    else:
        click.echo(f"{'category':<20} {'right':>9} {'score':>6} {'chance':>7}  invalid")
        for name, c in record.categories.items():
            click.echo(f"{name:<20} {f'{c.correct}/{c.total}':>9} {c.score:>6.2f} {c.chance:>7.2f}  {c.invalid}")
        click.echo(f"{'overall':<20} {'':>9} {record.overall:>6.2f}")
        if record.top1 is not None:
            click.echo(f"steering: the best candidate picked {record.top1:.0%} of the time (chance 25%); "
                       f"mean pick score {record.steering:.2f} (1 = always the best, 0 = chance)")
        click.echo(record.interpretation())
        click.echo(str(run_dir))
    if gate is not None and record.overall < gate.min_score:
        click.echo(f"below llm.qualify.min_score {gate.min_score:g}: physflow submit would refuse this model",
                   err=True)
        sys.exit(1)


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
    from physflow.vocabulary.workflow import AGENT_ROLES

    _store(run)
    unknown = sorted(set(agents) - {*AGENT_ROLES, "physflow"})
    if unknown:
        raise click.UsageError(f"--agent {', '.join(unknown)}: no such agent (agents: {', '.join(AGENT_ROLES)}, "
                               "physflow)")
    path = run / "transcript.jsonl"
    if not path.is_file():
        raise RunDirError(f"{run}: no transcript.jsonl (the campaign ran without agents)")
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line torn by a crash, or damaged
        if isinstance(record, dict):
            records.append(record)
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
