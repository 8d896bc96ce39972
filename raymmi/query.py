"""Row queries (``--negcon``, ``--samples``, a config's ``negcon:``) in a small, safe grammar.

A query is parsed with Python's :mod:`ast` and accepted only if every node belongs to the
grammar below; it is then evaluated here, column by column, over a :class:`pandas.DataFrame`.
Nothing is ever handed to ``eval``, ``pandas.eval`` or ``DataFrame.query``: those resolve
``@name`` against the caller's globals and allow method calls on columns, so a query string
could run code (``@pd.io.common.os.system(...)``) or write files (``col.to_csv(...)``).

Grammar (``COLUMN`` is a column name, ``LITERAL`` a string, number, ``True``/``False``)::

    expr  := expr and expr | expr or expr | not expr
           | expr & expr | expr | expr | ~expr
           | value OP value [OP value ...]          OP: == != < <= > >=
           | value in [LITERAL, ...] | value not in [LITERAL, ...]
           | COLUMN.isin([LITERAL, ...])
           | value
    value := COLUMN | LITERAL | -value | +value
           | value + value | value - value | value * value | value / value | value % value
           | ( expr )

Boolean operators work row by row (as in ``DataFrame.query``): ``a and b`` is ``a & b``.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from raymmi.schema import RaymmiError

__all__ = ["ALLOWED_FORMS", "Query", "evaluate_query", "parse_query"]

#: Shown in every refusal.
ALLOWED_FORMS = (
    "allowed: column names, string/number/True/False literals, comparisons (== != < <= > >=), "
    'and/or/not or & | ~, `COL in ["a", "b"]`, `COL.isin([...])`, + - * / %, parentheses; '
    "e.g. \"Metadata_pert_type == 'control'\" or \"Metadata_Plate in ['P1', 'P2'] & "
    'Metadata_is_negcon"'
)

_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_BITS: dict[type, Callable[[Any, Any], Any]] = {ast.BitAnd: operator.and_, ast.BitOr: operator.or_}
_LITERAL_TYPES = (str, int, float, bool)


class _Refused(Exception):
    """A node outside the grammar (turned into a RaymmiError naming the query)."""


@dataclasses.dataclass(frozen=True)
class Query:
    """A parsed, checked query. Build one with :func:`parse_query`."""

    text: str
    tree: ast.expr
    columns: tuple[str, ...]

    def evaluate(self, frame: pd.DataFrame, *, what: str = "query") -> np.ndarray:
        """Boolean mask of shape ``(len(frame),)``: the rows the query chooses.

        Raises
        ------
        RaymmiError
            A column missing from ``frame`` (named, with those present), values that cannot be
            compared, or a result that is not one True/False per row.
        """
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            shown = ", ".join(map(str, list(frame.columns)[:12]))
            msg = (
                f"{what} {self.text!r} names column(s) {missing} not in the data (columns: "
                f"{shown}{' ...' if len(frame.columns) > 12 else ''})"
            )
            raise RaymmiError(msg)
        try:
            result = _Evaluator(frame).visit(self.tree)
        except (TypeError, ValueError, ZeroDivisionError) as err:
            msg = f"{what} {self.text!r} cannot be evaluated on these columns ({err})"
            raise RaymmiError(msg) from err
        mask = np.asarray(result)
        if mask.shape != (len(frame),) or mask.dtype != bool:
            if mask.shape == (len(frame),) and mask.dtype == object:
                values = set(pd.unique(mask))
                if values <= {True, False}:
                    return mask.astype(bool)
            msg = f"{what} {self.text!r} does not give one True/False per row; use a comparison"
            raise RaymmiError(msg)
        return mask


def parse_query(text: str, *, what: str = "query") -> Query:
    """Parse ``text`` into a :class:`Query`, refusing anything outside the grammar.

    Raises
    ------
    RaymmiError
        The text does not parse, or uses a form outside the grammar (a call, an attribute other
        than ``.isin``, ``@``, a subscript, a lambda ...); the message lists the allowed forms.
    """
    if not isinstance(text, str) or not text.strip():
        msg = f"{what} must be a non-empty query; {ALLOWED_FORMS}"
        raise RaymmiError(msg)
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        msg = f"{what} {text!r} does not parse ({err.msg}); {ALLOWED_FORMS}"
        raise RaymmiError(msg) from None
    try:
        columns = tuple(dict.fromkeys(_check(tree, boolean_ok=True)))
    except _Refused as err:
        msg = f"{what} {text!r} uses {err}, which is not allowed; {ALLOWED_FORMS}"
        raise RaymmiError(msg) from None
    return Query(text=text, tree=tree, columns=columns)


def evaluate_query(text: str, frame: pd.DataFrame, *, what: str = "query") -> np.ndarray:
    """:func:`parse_query` then :meth:`Query.evaluate`."""
    return parse_query(text, what=what).evaluate(frame, what=what)


# ----------------------------------------------------------------------------------------------
# checking: yields the column names used
# ----------------------------------------------------------------------------------------------


def _check(node: ast.AST, *, boolean_ok: bool) -> Iterator[str]:
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            yield from _check(v, boolean_ok=True)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, (ast.Not, ast.Invert)):
            yield from _check(node.operand, boolean_ok=True)
        elif isinstance(node.op, (ast.USub, ast.UAdd)):
            yield from _check(node.operand, boolean_ok=False)
        else:
            raise _Refused(f"the operator {type(node.op).__name__}")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITH and type(node.op) not in _BITS:
            raise _Refused(f"the operator {_op_name(node.op)}")
        yield from _check(node.left, boolean_ok=True)
        yield from _check(node.right, boolean_ok=True)
    elif isinstance(node, ast.Compare):
        yield from _check(node.left, boolean_ok=True)
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.In, ast.NotIn)):
                _literal_list(right)
            elif type(op) in _COMPARE:
                yield from _check(right, boolean_ok=True)
            else:
                raise _Refused(f"the comparison {type(op).__name__} (use == or !=)")
    elif isinstance(node, ast.Call):
        func = node.func
        if not (
            isinstance(func, ast.Attribute)
            and func.attr == "isin"
            and isinstance(func.value, ast.Name)
            and len(node.args) == 1
            and not node.keywords
        ):
            raise _Refused("a function or method call (only COLUMN.isin([...]) is allowed)")
        yield from _check(func.value, boolean_ok=True)
        _literal_list(node.args[0])
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise _Refused(f"the name {node.id!r} (names may not start with '_')")
        if node.id not in ("True", "False"):
            yield node.id
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, _LITERAL_TYPES):
            raise _Refused(f"the literal {node.value!r}")
    elif isinstance(node, ast.Attribute):
        raise _Refused(f"the attribute .{node.attr} (only COLUMN.isin([...]) is allowed)")
    elif isinstance(node, ast.Subscript):
        raise _Refused("a subscript [...]")
    else:
        raise _Refused(f"a {type(node).__name__} expression")


def _literal_list(node: ast.AST) -> list[Any]:
    if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        raise _Refused("`in` with something other than a list of literals")
    values = []
    for elt in node.elts:
        value = _literal(elt)
        if value is _NOT_LITERAL:
            raise _Refused("a list element that is not a literal")
        values.append(value)
    return values


_NOT_LITERAL = object()


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, _LITERAL_TYPES):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("True", "False"):
        return node.id == "True"
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, (int, float))
        and not isinstance(node.operand.value, bool)
    ):
        v = node.operand.value
        return -v if isinstance(node.op, ast.USub) else v
    return _NOT_LITERAL


def _op_name(op: ast.operator) -> str:
    names = {ast.MatMult: "@", ast.Pow: "**", ast.FloorDiv: "//", ast.BitXor: "^"}
    names |= {ast.LShift: "<<", ast.RShift: ">>"}
    return names.get(type(op), type(op).__name__)


# ----------------------------------------------------------------------------------------------
# evaluation over a frame's columns (only nodes _check accepted reach here)
# ----------------------------------------------------------------------------------------------


class _Evaluator:
    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.BoolOp):
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = self._bool(self.visit(node.values[0]))
            for v in node.values[1:]:
                result = combine(result, self._bool(self.visit(v)))
            return result
        if isinstance(node, ast.UnaryOp):
            value = self.visit(node.operand)
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return ~self._bool(value) if not isinstance(value, bool) else not value
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            if type(node.op) in _BITS:
                return _BITS[type(node.op)](self._bool(left), self._bool(right))
            return _ARITH[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            result = None
            left = self.visit(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, (ast.In, ast.NotIn)):
                    part = self._isin(left, _literal_list(right_node))
                    if isinstance(op, ast.NotIn):
                        part = ~part
                    right = None
                else:
                    right = self.visit(right_node)
                    part = _COMPARE[type(op)](left, right)
                result = part if result is None else self._bool(result) & self._bool(part)
                left = right
            return result
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Attribute)
            return self._isin(self.visit(node.func.value), _literal_list(node.args[0]))
        if isinstance(node, ast.Name):
            if node.id in ("True", "False"):
                return node.id == "True"
            return self._frame[node.id]
        if isinstance(node, ast.Constant):
            return node.value
        raise AssertionError(f"unchecked node {type(node).__name__}")  # pragma: no cover

    def _isin(self, value: Any, values: list[Any]) -> Any:
        if isinstance(value, pd.Series):
            return value.isin(values)
        return pd.Series(np.full(len(self._frame), value in values), index=self._frame.index)

    @staticmethod
    def _bool(value: Any) -> Any:
        if isinstance(value, pd.Series) and value.dtype != bool:
            if value.dtype == object or str(value.dtype) == "boolean":
                return value.fillna(False).astype(bool)
        return value
