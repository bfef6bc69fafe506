"""PDFs in the knowledge folder: real PDFs written by matplotlib and pypdf, searched, cited as
``file:pPAGE:line`` and checked the way the domain expert's citations are; damaged and encrypted
ones skipped with a warning; and a replay campaign whose expert cites a PDF passage."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib
import pytest
from pypdf import PdfReader, PdfWriter

from physflow.agents.knowledge import KnowledgeBase, parse_citation
from physflow.agents.tools import Toolbox
from tests.conftest import physflow, write_script

matplotlib.use("Agg")

SENTENCE = "The thermal diffusivity of annealed copper is about 1.1e-4 square metres per second."
#: ~1,400 characters before the sentence on page 2, so that it lands in the page's second passage.
FILLER = [f"Line {i:02d} of the measurement log: plate {i} held at constant temperature." for i in range(20)]


def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A PDF with one page per list, one text line per entry (TrueType fonts: a text layer)."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for lines in pages:
            fig = plt.figure(figsize=(8.27, 11.69))
            for i, line in enumerate(lines):
                fig.text(0.05, 0.95 - 0.02 * i, line, fontsize=8)
            pdf.savefig(fig)
            plt.close(fig)
    return path


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    write_pdf(folder / "copper.pdf", [["Heat flow in metal plates", "Plates conduct heat along their length."],
                                      ["Measurements", *FILLER, SENTENCE]])
    (folder / "plain.md").write_text("# Plain notes\n\nSteel conducts heat less well than copper.\n")
    return folder


def _line_of(pdf: Path, page: int, text: str) -> int:
    """Where ``text`` is in the page's extracted text (lines from 1): what a reader is pointed to."""
    lines = PdfReader(pdf).pages[page - 1].extract_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_a_pdf_sentence_is_found_and_cited_by_page_and_line(notes):
    kb = KnowledgeBase([notes])
    assert not kb.skipped
    (_, best), *_ = kb.search("thermal diffusivity annealed copper", k=3)
    assert SENTENCE in best.text.replace("\n", " ")
    file, page, first = parse_citation(best.source)
    assert (file, page) == ("copper.pdf", 2) and best.source == f"copper.pdf:p2:{first}"
    line = _line_of(notes / "copper.pdf", 2, "annealed copper")
    assert first < line <= best.last_line  # the page's second passage, which holds the sentence
    assert kb.search("steel conducts")[0][1].source == "plain.md:1"  # text files: file:line, as before


def test_pdf_citations_pass_the_experts_check_only_where_retrieved(notes):
    tools = Toolbox(None, knowledge=KnowledgeBase([notes]))
    shown = tools.search_knowledge("thermal diffusivity annealed copper", k=1)
    source = shown[1:shown.index("]")]
    line = _line_of(notes / "copper.pdf", 2, "annealed copper")
    assert source.startswith("copper.pdf:p2:")
    for good in (source, f"copper.pdf:p2:{line}", "copper.pdf:p2", "copper.pdf"):
        assert tools.was_retrieved(good), good
    for bad in (f"copper.pdf:p1:{line}", f"copper.pdf:{line}", "copper.pdf:p2:1", "copper.pdf:p3",
                "plain.md:1", "Smith et al. 2031", "other.pdf:p2:30"):
        assert not tools.was_retrieved(bad), bad


def test_damaged_and_encrypted_pdfs_are_skipped_with_a_warning(notes, caplog):
    (notes / "damaged.pdf").write_bytes(b"%PDF-1.7\n" + b"\x00not a pdf at all\n" * 40)
    (notes / "empty.pdf").write_bytes(b"")
    locked = PdfWriter(clone_from=notes / "copper.pdf")
    locked.encrypt(user_password="secret", algorithm="RC4-128")
    locked.write(notes / "locked.pdf")
    restricted = PdfWriter(clone_from=notes / "copper.pdf")  # an owner password only: opens for reading
    restricted.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    restricted.write(notes / "restricted.pdf")
    with caplog.at_level(logging.WARNING, logger="physflow.agents.knowledge"):
        kb = KnowledgeBase([notes])
    ours = [r.getMessage() for r in caplog.records if r.name == "physflow.agents.knowledge"]
    assert ours == [f"knowledge: {line}" for line in kb.skipped]
    skipped = {line.split(":")[0]: line for line in kb.skipped}
    assert set(skipped) == {"damaged.pdf", "empty.pdf", "locked.pdf"}, kb.skipped
    assert skipped["locked.pdf"] == "locked.pdf: encrypted; skipped"
    assert all("\n" not in line for line in kb.skipped)
    sources = {c.source.split(":")[0] for c in kb.chunks}
    assert sources == {"copper.pdf", "restricted.pdf", "plain.md"}


EXPERT_CITES_A_PDF = """\
physflow: 1
name: pdf-knowledge
goal: Which kappa and power reproduce the observed field?
llm: {provider: replay, script: planner.jsonl}
agents:
  domain_expert: {script: expert.jsonl}
  critic: {enabled: false}
  coder: {enabled: false}
knowledge: [notes]
simulation:
  adapter: heat2d
  resources: {ranks: 1, nodes: 1}
  fixed: {n: 96, t_end: 0.05}
  parameters:
    kappa: {min: 0.05, max: 1.0, units: m^2/s}
    power: {min: 5, max: 60, units: K/s}
objective: {metric: chi2, target: data/heat2d_target.h5}
budget: {max_simulations: 1, max_concurrent: 1, max_rounds: 1, wall_time: 5m, backfill: none}
"""


def test_the_domain_experts_pdf_citation_is_kept_and_a_damaged_pdf_is_noted(heat_workflow, tmp_path, notes):
    (notes / "damaged.pdf").write_bytes(b"%PDF-1.4\n garbage")
    line = _line_of(notes / "copper.pdf", 2, "annealed copper")
    write_script(tmp_path / "planner.jsonl", [
        {"content": {"hypothesis": "the thermal diffusivity of annealed copper sets kappa", "bound": "below",
                     "value": 1e6, "simulations": ["A"]}}])
    write_script(tmp_path / "expert.jsonl", [
        {"content": {"sound": True, "concerns": "", "citations": [f"copper.pdf:p2:{line}", "copper.pdf:p9:2"]}}])
    run = tmp_path / "run"
    proc = physflow("submit", str(heat_workflow(EXPERT_CITES_A_PDF)), "--run-dir", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(e) for e in (run / "journal.jsonl").read_text().splitlines()]
    hypothesis = next(e for e in events if e["event"] == "hypothesis")
    assert hypothesis["review"]["citations"] == [f"copper.pdf:p2:{line}"]
    assert hypothesis["unverified_citations"] == ["copper.pdf:p9:2"]  # a page the search never returned
    transcript = [json.loads(t) for t in (run / "transcript.jsonl").read_text().splitlines()]
    noted = [t for t in transcript if t["type"] == "knowledge"]
    assert len(noted) == 1 and noted[0]["warning"].startswith("damaged.pdf: ")
    # physflow searched the knowledge folder with the hypothesis and showed the expert the passages
    searched = [t for t in transcript if t["type"] == "tool_result" and t["tool"] == "search_knowledge"]
    assert len(searched) == 1 and searched[0]["to"] == "domain_expert" and "annealed copper" in searched[0]["query"]
    assert "[copper.pdf:p2:" in searched[0]["content"]
    review = next(t for t in transcript if t["type"] == "task" and t.get("to") == "domain_expert")
    assert "[copper.pdf:p2:" in review["content"]
