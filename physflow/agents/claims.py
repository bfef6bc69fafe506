"""The numbers an answer states, checked against what its code printed.

A model can write a fluent sentence around a number it made up. physflow runs the answer's code
itself, so every number the answer states should appear in that output, rounded or truncated
to the digits the answer shows (4.2e13 for 4.1837e+13, 1,235 or 1234 for 1234.6, 12% for 0.12).
Numbers the question itself gives (its selection limits) need no support. What is left is
reported as "not produced by the code", never passed off as a result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_MINUS = "\u2212"
#: A number as people write it: 1234, 1,234.5, -0.25, 4.2e13, 4.2 x 10^13, 4.2×10**13, 10^13, 12%.
#: Not inside a name (abs_mag_r, H0, t0003), an exponent ((Mpc/h)^3) or a word (3rd, 2D).
_STATED = re.compile(
    r"(?<![\w.^/])"
    r"(?P<sign>[-+" + _MINUS + r"]?)"
    r"(?:(?P<power>10\s*(?:\^|\*\*)\s*(?P<p_exp>[-+" + _MINUS + r"]?\d+))"
    r"|(?P<mant>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<e_exp>[-+]?\d+)|\s*(?:x|\u00d7|\*)\s*10\s*(?:\^|\*\*)\s*(?P<x_exp>[-+" + _MINUS + r"]?\d+))?)"
    r"(?P<percent>\s*%)?"
    r"(?![\w.]\w)(?![A-Za-z_])"
)
#: A number as programs print it: 41837000000000.0, 4.1837e+13, -21.3, nan.
_PRINTED = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Stated:
    """A number as written in a text: its value, the unit of its last shown digit, and where it
    stands in the text (``text[start:end]``)."""

    text: str
    value: float
    unit: float
    percent: bool = False
    start: int = 0
    end: int = 0


def _exponent(text: str | None) -> int:
    return int(text.replace(_MINUS, "-")) if text else 0


def stated_numbers(text: str) -> list[Stated]:
    """Every number written in ``text``."""
    found = []
    for m in _STATED.finditer(text):
        sign = -1.0 if m.group("sign") in ("-", _MINUS) else 1.0
        if m.group("power"):
            value, unit = 10.0 ** _exponent(m.group("p_exp")), 10.0 ** (_exponent(m.group("p_exp")) - 1)
        else:
            mantissa = m.group("mant").replace(",", "")
            exponent = _exponent(m.group("e_exp") or m.group("x_exp"))
            if "." in mantissa:
                shown = -len(mantissa.split(".")[1])
            else:
                # 1200 may be 1234 rounded; trailing zeros count as shown only down to 2 digits.
                digits = mantissa.lstrip("0") or "0"
                zeros = len(digits) - len(digits.rstrip("0")) if digits != "0" else 0
                shown = min(zeros, max(0, len(digits) - 2))
            value = float(mantissa) * 10.0**exponent
            unit = 10.0 ** (shown + exponent)
        found.append(Stated(m.group(0).strip(), sign * value, unit, bool(m.group("percent")), m.start(), m.end()))
    return found


def printed_numbers(output: str) -> list[float]:
    """Every number in a program's output (thousands separators allowed)."""
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", output)
    values = []
    for token in _PRINTED.findall(text):
        try:
            values.append(float(token))
        except ValueError:
            continue
    return [v for v in values if math.isfinite(v)]


def _shown_as(stated: Stated, value: float) -> bool:
    """Whether ``value`` written to ``stated``'s digits (rounded or truncated) gives ``stated``."""
    candidates = [value, abs(value), -abs(value)]
    if stated.percent:
        candidates += [100 * c for c in candidates]
    for v in candidates:
        gap = v - stated.value
        if abs(gap) <= 0.5 * stated.unit * (1 + 1e-9):
            return True
        if 0 <= abs(v) - abs(stated.value) < stated.unit and math.copysign(1, v) == math.copysign(1, stated.value):
            return True  # truncated rather than rounded
    return False


def unproduced_numbers(answer: str, output: str, question: str = "") -> list[Stated]:
    """The numbers ``answer`` states that neither ``output`` nor ``question`` contains."""
    printed = printed_numbers(output)
    given = [s.value for s in stated_numbers(question)] + printed_numbers(question)
    missing: list[Stated] = []
    for s in stated_numbers(answer):
        if any(_shown_as(s, v) for v in printed):
            continue
        if any(math.isclose(s.value, v, rel_tol=1e-9) or math.isclose(abs(s.value), abs(v), rel_tol=1e-9)
               for v in given):
            continue
        missing.append(s)
    return missing


def marked(answer: str, numbers: list[Stated], mark: str = " [not produced by the code]") -> str:
    """``answer`` with ``mark`` after each of ``numbers``, so none can be read as a result."""
    for s in sorted(numbers, key=lambda s: s.end, reverse=True):
        answer = answer[: s.end] + mark + answer[s.end:]
    return answer
