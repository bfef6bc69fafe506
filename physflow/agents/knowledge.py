"""search_knowledge: BM25 retrieval over a folder of local texts (papers, notes, code docs).

No network and no model download: plain Okapi BM25 over paragraph-sized chunks, each cited so an
agent's claim can be traced to its source: ``file:line`` in a text file, ``file:pPAGE:line`` in a
PDF (the page counted from 1 as a PDF reader shows it, the line within the text pypdf extracts
from that page). PDFs are read with pypdf (pure Python); one that is damaged, encrypted or has no
text layer (a scan) is skipped with a warning, never fatal to the campaign.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SUFFIXES = {".txt", ".md", ".rst", ".tex", ".py", ".yaml", ".yml", ".csv", ".pdf"}
TOKEN = re.compile(r"[a-z0-9_]+(?:\.[0-9]+)?")
#: A citation: file, then ``:pPAGE`` for a PDF, then ``:LINE``; both optional (a whole file).
CITATION = re.compile(r"(?P<file>.*?)(?::p(?P<page>\d+))?(?::(?P<line>\d+))?", re.DOTALL)


@dataclass
class Chunk:
    file: str  # relative to the knowledge folder it was found in
    line: int  # first line (of the page's text, in a PDF)
    text: str
    page: int | None = None  # PDFs: the page, from 1

    @property
    def source(self) -> str:
        """How to cite it: ``file:line``, or ``file:pPAGE:line`` in a PDF."""
        return f"{self.file}:p{self.page}:{self.line}" if self.page is not None else f"{self.file}:{self.line}"

    @property
    def last_line(self) -> int:
        return self.line + self.text.count("\n")


def passage_text(chunks: list[Chunk], chars: int = 700) -> str:
    """Passages as an agent reads them: each headed by its [source] to cite, at most ``chars``
    characters of its text, separated by a blank line."""
    return "\n\n".join(f"[{c.source}] {c.text[:chars]}" for c in chunks)


class UnreadableSource(Exception):
    """A file of the knowledge folder that cannot be indexed (a damaged or encrypted PDF)."""


def parse_citation(citation: str) -> tuple[str, int | None, int | None]:
    """``"paper.pdf:p3:12"`` -> ``("paper.pdf", 3, 12)``; ``"heat.md:4"`` -> ``("heat.md", None, 4)``;
    anything else is a file name with neither (``"Smith et al. 2031"``)."""
    m = CITATION.fullmatch(citation.strip())  # always matches: the file part takes what the others leave
    if m is None:
        return citation.strip(), None, None
    page, line = m["page"], m["line"]
    return m["file"], int(page) if page else None, int(line) if line else None


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def paragraphs(lines: list[str], max_chars: int = 900) -> list[tuple[int, str]]:
    """Paragraphs (blank-line separated), merged up to ``max_chars``: (first line from 1, text)."""
    found, buf, start = [], [], 1
    for number, line in enumerate(lines, 1):
        if not buf:
            start = number
        buf.append(line)
        if (not line.strip() and sum(map(len, buf)) > max_chars // 3) or sum(map(len, buf)) > max_chars:
            text = "\n".join(buf).strip()
            if text:
                found.append((start, text))
            buf = []
    text = "\n".join(buf).strip()
    if text:
        found.append((start, text))
    return found


def pdf_pages(path: Path) -> list[str]:
    """The text of each page of a PDF; UnreadableSource when pypdf cannot read it."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):  # an owner password alone still opens
            raise UnreadableSource("encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except UnreadableSource:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds on a damaged file; each means "skip it"
        raise UnreadableSource(f"{type(exc).__name__}: {exc}".strip().rstrip(":")[:200]) from None
    if not any(text.strip() for text in pages):
        raise UnreadableSource("no text layer (a scan?)")
    return pages


def chunk_file(path: Path, root: Path, max_chars: int = 900) -> list[Chunk]:
    """A file's paragraphs as chunks (a PDF's page by page); UnreadableSource for a PDF that
    cannot be read. A text file that cannot be read gives none."""
    name = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    if path.suffix.lower() == ".pdf":
        return [Chunk(name, start, text, page) for page, content in enumerate(pdf_pages(path), 1)
                for start, text in paragraphs(content.splitlines(), max_chars)]
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [Chunk(name, start, text) for start, text in paragraphs(lines, max_chars)]


class KnowledgeBase:
    """BM25 index of every text file and PDF under the given folders or files.

    ``skipped``: one line per file that could not be indexed (``paper.pdf: encrypted``), also
    logged as a warning; the campaign's transcript records them.
    """

    def __init__(self, paths: list[Path], k1: float = 1.5, b: float = 0.75) -> None:
        self.chunks: list[Chunk] = []
        self.skipped: list[str] = []
        for root in paths:
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)
            for f in files:
                try:
                    self.chunks.extend(chunk_file(f, root if root.is_dir() else root.parent))
                except UnreadableSource as exc:
                    self.skipped.append(f"{f.name}: {exc}; skipped")
                    logger.warning("knowledge: %s", self.skipped[-1])
        self.k1, self.b = k1, b
        self._tf = [Counter(tokenize(c.text)) for c in self.chunks]
        self._len = [sum(tf.values()) for tf in self._tf]
        self._avg = (sum(self._len) / len(self._len)) if self._len else 0.0
        df: Counter[str] = Counter()
        for tf in self._tf:
            df.update(tf.keys())
        n = len(self.chunks)
        self._idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}

    def search(self, query: str, k: int = 3) -> list[tuple[float, Chunk]]:
        terms = tokenize(query)
        scored = []
        for i, tf in enumerate(self._tf):
            score = 0.0
            norm = self.k1 * (1 - self.b + self.b * self._len[i] / self._avg)
            for t in terms:
                if t in tf:
                    score += self._idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm)
            if score > 0:
                scored.append((score, self.chunks[i]))
        scored.sort(key=lambda sc: -sc[0])
        return scored[:k]
