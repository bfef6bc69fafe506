"""Placeholders in site YAMLs: the values that differ per user (account, queue, filesystems).

They are written ``${account}`` or ``${queue:-debug}`` (with a default). ``--set account=VALUE``
fills one, else the environment variable ``PHYSFLOW_ACCOUNT``, else the default; anything left
unfilled is one error naming every missing placeholder and how to set it. Upper-case
``${HOME}``-style names are not placeholders: they reach the batch job's shell untouched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from physflow.errors import SiteError
from physflow.vocabulary.workflow import Location, line_of

#: ``${name}`` or ``${name:-default}``; lower-case names only, so ``${HOME}`` stays shell syntax.
PLACEHOLDER = re.compile(r"\$\{([a-z][a-z0-9_]*)(?::-([^}]*))?\}")
#: Where a placeholder begins: one that PLACEHOLDER does not match whole is malformed.
OPENED = re.compile(r"\$\{[a-z]")


def placeholder_variable(name: str) -> str:
    """The environment variable that fills placeholder ``${name}``: ``PHYSFLOW_NAME``."""
    return "PHYSFLOW_" + name.upper()


def parse_assignments(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["account=abc", "queue=debug"]`` (the CLI's repeated ``--set``) -> a dict."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", key.strip()):
            raise SiteError(f"--set {item!r}: expected name=value with a lower-case placeholder name, "
                            "e.g. --set account=myproject")
        if not value.isprintable():  # a newline would become a line of its own in a batch script
            raise SiteError(f"--set {key.strip()}: the value holds a newline or another control character; "
                            "it goes into batch scripts, where that would start a line of its own")
        values[key.strip()] = value
    return values


def placeholder_filler(path: Path, values: Mapping[str, str]) -> Callable[[Any, dict[Location, int]], Any]:
    """Replace every ``${name}`` / ``${name:-default}`` in the site's strings; --set, then the
    environment, then the default. All missing names are reported at once, at the first's line."""

    def fill(data: Any, lines: dict[Location, int]) -> Any:
        used: set[str] = set()
        missing: dict[str, Location] = {}

        def one(match: re.Match[str], loc: Location) -> str:
            name, default = match.group(1), match.group(2)
            used.add(name)
            if name in values:
                return values[name]
            if (env := os.environ.get(placeholder_variable(name))) is not None:
                if not env.isprintable():
                    raise SiteError(f"${{{name}}}: {placeholder_variable(name)} holds a newline or another control "
                                    "character (it would start a line of its own in a batch script)",
                                    str(path), line_of(lines, loc), ".".join(map(str, loc)))
                return env
            if default is not None:
                return default
            missing.setdefault(name, loc)
            return match.group(0)

        def walk(node: Any, loc: Location) -> Any:
            if isinstance(node, dict):
                return {k: walk(v, loc + (k,)) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v, loc + (i,)) for i, v in enumerate(node)]
            if isinstance(node, str):
                if len(OPENED.findall(node)) > len(PLACEHOLDER.findall(node)):
                    raise SiteError("a ${name} placeholder that is not closed (or not name or name:-default)",
                                    str(path), line_of(lines, loc), ".".join(map(str, loc)))
                return PLACEHOLDER.sub(lambda m: one(m, loc), node)
            return node

        filled = walk(data, ())
        if missing:
            first = next(iter(missing.values()))
            how = " ".join(f"--set {n}=VALUE" for n in missing)
            env = ", ".join(placeholder_variable(n) for n in missing)
            raise SiteError(f"{', '.join('${' + n + '}' for n in missing)} not set: pass {how} or export {env}",
                            str(path), line_of(lines, first), ".".join(map(str, first)))
        unknown = sorted(set(values) - used)
        if unknown:
            raise SiteError(f"--set {', '.join(unknown)}: no such placeholder in this site "
                            f"(it has: {', '.join(sorted(used)) or 'none'})", str(path))
        return filled

    return fill
