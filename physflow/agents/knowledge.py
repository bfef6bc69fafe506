"""search_knowledge: BM25 retrieval over a folder of local texts (papers, notes, code docs).

No network and no model download: plain Okapi BM25 over paragraph-sized chunks, each cited as
``file:line`` so an agent's claim can be traced to its source.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = {".txt", ".md", ".rst", ".tex", ".py", ".yaml", ".yml", ".csv"}
TOKEN = re.compile(r"[a-z0-9_]+(?:\.[0-9]+)?")


@dataclass
class Chunk:
    source: str  # file:line
    text: str


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def chunk_file(path: Path, root: Path, max_chars: int = 900) -> list[Chunk]:
    """Paragraphs (blank-line separated), merged up to ``max_chars``, each with its first line."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    chunks, buf, start = [], [], 1
    name = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    for number, line in enumerate(lines, 1):
        if not buf:
            start = number
        buf.append(line)
        if (not line.strip() and sum(map(len, buf)) > max_chars // 3) or sum(map(len, buf)) > max_chars:
            text = "\n".join(buf).strip()
            if text:
                chunks.append(Chunk(f"{name}:{start}", text))
            buf = []
    text = "\n".join(buf).strip()
    if text:
        chunks.append(Chunk(f"{name}:{start}", text))
    return chunks


class KnowledgeBase:
    """BM25 index of every text file under the given folders or files."""

    def __init__(self, paths: list[Path], k1: float = 1.5, b: float = 0.75) -> None:
        self.chunks: list[Chunk] = []
        for root in paths:
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES)
            for f in files:
                self.chunks.extend(chunk_file(f, root if root.is_dir() else root.parent))
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
