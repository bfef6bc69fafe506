"""Qualify a workflow's model: serve it (or reach it) as a campaign would, ask the test of
``agents.qualify``, write ``qualify.json`` into the run folder and keep the model's latest record
in a cache folder beside the embedded models (``load_record``), so a campaign can read the model's
last steering score without asking again. ``submit`` runs it first when the workflow sets
``llm.qualify`` and refuses a campaign whose model scores below ``min_score``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from physflow import __version__
from physflow.agents.qualify import Answer, QualifyRecord, build_questions, take_test
from physflow.errors import QualificationError, SpecError
from physflow.vocabulary.workflow import LoadedWorkflow
from physflow.workflows.launcher import Say, question_client, question_model
from physflow.workflows.qualify_records import keep_record, model_name, qualify_llm
from physflow.workflows.store import RunStore, read_qualify, write_qualify


def _quiet(text: str) -> None:
    """The default ``Say``: nobody watches."""


def run_qualify(workflow: LoadedWorkflow, run_dir: Path, *, categories: Iterable[str] | None = None,
                seed: int = 0, limit: int | None = None, say: Say = _quiet,
                progress: Callable[[int, int, Answer], None] | None = None, serve_dir: Path | None = None
                ) -> QualifyRecord:
    """Ask ``workflow``'s model the test (its categories, seed and per-category ``limit``), write
    ``run_dir/qualify.json`` and the model's cached record; returns the record.

    The embedded model is served for the test only, from ``serve_dir`` (default ``run_dir``):
    its log lands in ``serve_dir/llm``."""
    llm = qualify_llm(workflow)
    client = question_client(llm)  # every client but the embedded one, before anything is written
    questions = build_questions(workflow.spec, categories, seed, limit)
    if not questions:
        raise SpecError("no questions to ask (--limit 0?)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"{run_dir}: cannot create the run folder: {exc.strerror or exc}") from None
    say(f"physflow {__version__}: qualifying model {model_name(llm)} for {workflow.spec.name}: "
        f"{len(questions)} questions")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with question_model(llm, serve_dir or run_dir, client, say) as model:
        record = asyncio.run(take_test(model, questions, model_name(llm), seed, __version__, when, progress))
    write_qualify(run_dir, record.to_json())
    keep_record(llm, record)
    return record


def _passed(data: dict | None, min_score: float, categories: list[str] | None) -> bool:
    """Whether a qualify.json already in the run folder passes the gate (same categories)."""
    if not data or not isinstance(data.get("categories"), dict):
        return False
    asked = set(data["categories"])
    wanted = set(categories) if categories else None
    return (wanted is None or asked == wanted) and isinstance(data.get("overall"), (int, float)) \
        and data["overall"] >= min_score


def qualify_gate(workflow: LoadedWorkflow, store: RunStore, say: Say = _quiet) -> QualifyRecord | None:
    """``llm.qualify``: qualify the model in the run folder before the campaign starts (a resumed
    run that passed already is not asked again). Below ``min_score`` the journal records the
    campaign as failed (refused) and a QualificationError says the score and the threshold."""
    spec = workflow.spec
    gate = spec.llm.qualify
    if gate is None or not spec.has_team:  # without agents no model steers anything
        return None
    if _passed(read_qualify(store.run_dir), gate.min_score, gate.categories):
        say(f"the model passed qualification earlier ({store.run_dir / 'qualify.json'})")
        return None
    say(f"qualifying the model (llm.qualify.min_score {gate.min_score:g}) ...")
    record = run_qualify(workflow, store.run_dir, categories=gate.categories, say=say,
                         serve_dir=store.run_dir / "qualify")
    scores = ", ".join(f"{name} {c.score:.2f}" for name, c in record.categories.items())
    say(f"qualify: overall {record.overall:.2f} ({scores}); {record.interpretation()}")
    if record.overall >= gate.min_score:
        return record
    reason = (f"refused: model {record.model} scored {record.overall:.2f} on qualify, below llm.qualify.min_score "
              f"{gate.min_score:g}")
    store.commit([{"event": "campaign_ended", "t": time.time(), "state": "failed", "reason": reason}])
    raise QualificationError(f"{reason}; the scores are in {store.run_dir / 'qualify.json'}")
