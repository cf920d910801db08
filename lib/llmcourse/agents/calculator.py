"""A calculator tool that evaluates arithmetic safely, by walking the syntax tree.

``eval`` on model output would run arbitrary Python (``__import__('os').system(...)``).
:func:`safe_eval` parses the expression with :mod:`ast` and evaluates only numbers, the
operators ``+ - * / // % **``, parentheses, the constants ``pi``/``e`` and a few math
functions; everything else is rejected with an error naming what was not allowed. Size
limits stop ``9**9**9`` style expressions from eating the machine.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from .tools import Tool

__all__ = ["CalculatorError", "safe_eval", "calculator_tool", "format_number"]

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "min": min,
    "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_MAX_LENGTH = 500
_MAX_INT_BITS = 4096
_MAX_DEPTH = 50


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why."""


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise CalculatorError(f"result too large (more than {_MAX_INT_BITS} bits)")
    return value


def _power(base: Any, exp: Any) -> Any:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if exp * math.log2(abs(base)) > _MAX_INT_BITS:
            raise CalculatorError(
                f"result too large: {base}**{exp} has more than {_MAX_INT_BITS} bits"
            )
    return base**exp


def _eval(node: ast.AST, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise CalculatorError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, got {node.value!r}")
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(
            f"unknown name {node.id!r}; allowed constants: {', '.join(_CONSTANTS)}"
        )
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.BitXor):
            raise CalculatorError("'^' is not a power here: write a**b")
        if type(node.op) not in _BINARY:
            raise CalculatorError(
                f"operator {type(node.op).__name__} is not allowed; use + - * / // % **"
            )
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _check_int(_power(left, right))
        return _check_int(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _FUNCTIONS:
            raise CalculatorError(f"function not allowed; allowed: {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        return _FUNCTIONS[name](*(_eval(a, depth + 1) for a in node.args))
    raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def safe_eval(expression: str) -> int | float:
    """Evaluate an arithmetic expression without ``eval``.

    >>> safe_eval("2 * (3 + 4) ** 2")
    98
    >>> safe_eval("sqrt(16) + pi")  # doctest: +ELLIPSIS
    7.14159...

    Raises :class:`CalculatorError` for anything else (names, attributes, strings,
    comprehensions, lambdas...), for division by zero and for results that are too large.
    """
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > _MAX_LENGTH:
        raise CalculatorError(f"expression longer than {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise CalculatorError(f"not a valid expression: {err.msg}") from err
    try:
        value = _eval(tree)
    except ZeroDivisionError as err:
        raise CalculatorError("division by zero") from err
    except (OverflowError, ValueError, TypeError) as err:
        if isinstance(err, CalculatorError):
            raise
        raise CalculatorError(f"cannot evaluate: {err}") from err
    if isinstance(value, complex):
        raise CalculatorError("the result is complex; only real arithmetic is supported")
    return value


def format_number(value: int | float) -> str:
    """Integers as they are; floats with up to 12 significant digits (``0.1 + 0.2`` -> ``0.3``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, int) else f"{value:.12g}"


def calculator_tool(name: str = "calculator") -> Tool:
    """The calculator as a :class:`~llmcourse.agents.tools.Tool` taking ``{"expression": str}``."""
    return Tool(
        name=name,
        description="Evaluate an arithmetic expression (numbers, + - * / // % **, parentheses, "
        "sqrt, log, exp, sin, cos, abs, round, min, max, pi, e) and return the number.",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. '17 * (3 + 4)'"}},
            "required": ["expression"],
            "additionalProperties": False,
        },
        function=lambda expression: format_number(safe_eval(expression)),
    )
