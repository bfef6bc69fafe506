"""Selecting rows of a catalog table for query_catalog, and summarising them.

``where`` is written by a model, so it is parsed with ``ast`` and walked node by node over
numpy columns; it is never compiled or evaluated as Python. Only column names, numbers,
comparisons, ``and`` / ``or`` / ``not``, ``+ - * /`` and parentheses are understood; anything
else (a call, an attribute, a subscript, a string, a lambda ...) is a QueryError whose text
goes back to the agent.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from physflow.agents.catalog import Catalog
from physflow.errors import QueryError
from physflow.vocabulary.tables import Table

MAX_WHERE_CHARS = 500
MAX_DEPTH = 40
MAX_ROWS_SHOWN = 200

_COMPARE = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
            ast.Eq: np.equal, ast.NotEq: np.not_equal}
_ARITHMETIC = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_WHAT = {"Call": "function calls", "Attribute": "attribute access (a.b)", "Subscript": "indexing (a[b])",
         "Lambda": "lambda", "BitAnd": "& (write and)", "BitOr": "| (write or)", "Invert": "~ (write not)",
         "Pow": "** (multiply instead)", "Mod": "%", "FloorDiv": "//", "IfExp": "if/else", "Starred": "*args",
         "List": "lists", "Tuple": "tuples", "Dict": "dicts", "Set": "sets", "JoinedStr": "f-strings",
         "NamedExpr": ":=", "In": "in", "NotIn": "not in", "Is": "is", "IsNot": "is not",
         "ListComp": "comprehensions", "GeneratorExp": "comprehensions", "Await": "await"}
ALLOWED = "column names, numbers, comparisons (< <= > >= == !=), and/or/not, + - * / and parentheses"


def _refuse(node: ast.AST) -> QueryError:
    name = type(node).__name__
    return QueryError(f"{_WHAT.get(name, name)} is not allowed in where; use only {ALLOWED}")


class _Where:
    """Evaluates one parsed ``where`` over a table's columns: numbers are float arrays, conditions
    boolean arrays; mixing them up is an error, not a silent cast."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def value(self, node: ast.AST, depth: int = 0) -> np.ndarray:
        if depth > MAX_DEPTH:
            raise QueryError(f"where is nested more than {MAX_DEPTH} deep")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise QueryError(f"only numbers are allowed as constants in where, not {node.value!r}")
            return np.float64(node.value)
        if isinstance(node, ast.Name):
            column = self.table.columns.get(node.id)
            if column is None:
                raise QueryError(f"no column {node.id!r} in table {self.table.name}; columns: "
                                 f"{', '.join(self.table.columns)}")
            if not column.numeric:
                raise QueryError(f"column {node.id!r} holds text; where compares numbers only")
            return column.values.astype(float)
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand, depth + 1)
            if isinstance(node.op, ast.Not):
                return np.logical_not(self._condition(operand, "not"))
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                number = self._number(operand, "a sign")
                return -number if isinstance(node.op, ast.USub) else number
            raise _refuse(node.op)
        if isinstance(node, ast.BinOp):
            op = _ARITHMETIC.get(type(node.op))
            if op is None:
                raise _refuse(node.op)
            left = self._number(self.value(node.left, depth + 1), "arithmetic")
            return op(left, self._number(self.value(node.right, depth + 1), "arithmetic"))
        if isinstance(node, ast.Compare):
            result: np.ndarray | None = None
            left = self._number(self.value(node.left, depth + 1), "a comparison")
            for op_node, right_node in zip(node.ops, node.comparators, strict=True):
                op = _COMPARE.get(type(op_node))
                if op is None:
                    raise _refuse(op_node)
                right = self._number(self.value(right_node, depth + 1), "a comparison")
                step = op(left, right)
                result = step if result is None else np.logical_and(result, step)
                left = right
            return result  # type: ignore[return-value]
        if isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            parts = [self._condition(self.value(v, depth + 1), word) for v in node.values]
            combine = np.logical_and if word == "and" else np.logical_or
            out = parts[0]
            for part in parts[1:]:
                out = combine(out, part)
            return out
        raise _refuse(node)

    @staticmethod
    def _number(value: np.ndarray, where: str) -> np.ndarray:
        if np.asarray(value).dtype.kind == "b":
            raise QueryError(f"{where} needs numbers, got a condition")
        return value

    @staticmethod
    def _condition(value: np.ndarray, word: str) -> np.ndarray:
        if np.asarray(value).dtype.kind != "b":
            raise QueryError(f"'{word}' needs conditions (comparisons), got a number")
        return value


def where_mask(table: Table, where: str) -> np.ndarray:
    """The rows of ``table`` that satisfy ``where`` (all rows when it is blank)."""
    if not isinstance(where, str):
        raise QueryError("where must be a string")
    text = where.strip()
    if not text:
        return np.ones(table.rows, dtype=bool)
    if len(text) > MAX_WHERE_CHARS:
        raise QueryError(f"where is longer than {MAX_WHERE_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise QueryError(f"where is not a valid expression ({exc.msg}); use only {ALLOWED}") from None
    except (ValueError, RecursionError, MemoryError):
        raise QueryError(f"where cannot be parsed; use only {ALLOWED}") from None
    with np.errstate(all="ignore"):  # x / 0 is inf and compares as such; NaN matches nothing
        mask = _Where(table).value(tree.body)
    if np.asarray(mask).dtype.kind != "b":
        raise QueryError("where must be a condition such as 'mass > 1e13', not a number")
    return np.broadcast_to(mask, (table.rows,)).copy()


def _plain(value: Any) -> Any:
    """A JSON value a model reads easily: 6 significant digits, None for NaN and infinities."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return str(value)


def summarize(values: np.ndarray) -> dict[str, Any]:
    """Count, and for numbers the min, max, mean, median, standard deviation and sum of the finite
    values (in the column's units); for text the number of distinct values."""
    if values.dtype.kind not in "biuf":
        return {"count": int(len(values)), "distinct": len(set(values.tolist()))}
    finite = values.astype(float)
    finite = finite[np.isfinite(finite)]
    out: dict[str, Any] = {"count": int(len(finite))}
    if len(values) != len(finite):
        out["missing"] = int(len(values) - len(finite))
    if len(finite):
        out.update(min=finite.min(), max=finite.max(), mean=finite.mean(), median=np.median(finite),
                   std=finite.std(), sum=finite.sum())
    return {k: _plain(v) for k, v in out.items()}


def query(catalog: Catalog, table: str, columns: Sequence[str] = (), where: str = "", limit: int = 20) -> str:
    """query_catalog's answer as JSON text; raises QueryError for a request to send back."""
    t = catalog.table(str(table))
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    names = list(columns) or list(t.columns)
    unknown = [c for c in names if c not in t.columns]
    if unknown:
        raise QueryError(f"no column {', '.join(map(repr, unknown))} in table {t.name}; columns: "
                         f"{', '.join(t.columns)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_ROWS_SHOWN:
        raise QueryError(f"limit must be an integer from 0 to {MAX_ROWS_SHOWN}, got {limit!r}")
    mask = where_mask(t, where)
    chosen = np.flatnonzero(mask)
    units = {c: t.columns[c].units for c in names if t.columns[c].units}
    shown = chosen[:limit]
    return json.dumps({
        "table": t.name, "where": where.strip(), "rows_matching": int(len(chosen)), "rows_total": t.rows,
        "columns": names, **({"units": units} if units else {}),
        "summary": {c: summarize(t.columns[c].values[chosen]) for c in names},
        "rows": [[_plain(t.columns[c].values[i]) for c in names] for i in shown],
        **({"rows_not_shown": int(len(chosen) - len(shown))} if len(chosen) > len(shown) else {}),
    })
