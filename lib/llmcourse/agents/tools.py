"""Function calling: tools described by JSON Schema, argument validation, tool-call parsing.

A model asks for a tool by writing a JSON object such as
``{"name": "calculator", "arguments": {"expression": "17 * 23"}}``. The agent

1. finds and parses that object (:func:`parse_tool_call`),
2. validates the arguments against the tool's JSON Schema with the ``jsonschema`` package,
3. runs the tool, and
4. returns a :class:`ToolResult` whose text goes back to the model -- on failure an error
   written for the model: what was wrong and what the schema expects, so it can retry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

__all__ = [
    "Tool",
    "ToolCall",
    "ToolResult",
    "ToolRegistry",
    "ToolCallError",
    "parse_tool_call",
    "find_json_object",
]


class ToolCallError(ValueError):
    """The model's output holds no usable tool call; the message is meant for the model."""


@dataclass(frozen=True)
class Tool:
    """A function the model may call.

    Attributes:
        name: identifier the model uses (letters, digits, ``_``, ``-``).
        description: what it does and when to use it (the model reads this).
        parameters: JSON Schema of the arguments object, e.g.
            ``{"type": "object", "properties": {"expression": {"type": "string"}},
            "required": ["expression"], "additionalProperties": False}``.
        function: called as ``function(**arguments)``; its return value is turned into text
            (str as is, anything else as JSON).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    function: Callable[..., Any] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(
                f"tool name {self.name!r} must be non-empty letters, digits, '_' or '-'"
            )
        try:
            Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as err:
            raise ValueError(
                f"tool {self.name!r}: parameters is not a valid JSON Schema: {err.message}"
            ) from err
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a schema of type 'object'")

    def spec(self) -> dict[str, Any]:
        """The JSON description shown to the model: name, description, parameters."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


@dataclass(frozen=True)
class ToolCall:
    """A parsed request: tool ``name`` with ``arguments`` (a JSON object)."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """Outcome of a tool call: ``ok`` and ``content`` (output text, or an error for the model)."""

    ok: bool
    content: str
    value: Any = None


def find_json_object(text: str) -> tuple[dict[str, Any], int, int] | None:
    """The first JSON object in ``text``: ``(object, start, end)``, or None if there is none.

    Tries every ``{`` from left to right with ``json.JSONDecoder.raw_decode``, so prose or a
    Markdown code fence around the object does not matter.
    """
    decoder = json.JSONDecoder()
    pos = text.find("{")
    while pos >= 0:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict):
            return obj, pos, end
        pos = text.find("{", end)
    return None


def parse_tool_call(text: str) -> ToolCall:
    """Parse a tool call from model output.

    Accepts ``{"name": ..., "arguments": {...}}`` (also the keys ``tool``/``args`` or
    ``parameters``, and ``arguments`` given as a JSON string). Raises :class:`ToolCallError`
    with a message for the model when there is no JSON object or it lacks a tool name.
    """
    found = find_json_object(text)
    if found is None:
        hint = " (it looks cut off or malformed)" if "{" in text else ""
        raise ToolCallError(
            f"no JSON object found{hint}. Call a tool as "
            '{"name": "<tool name>", "arguments": {<arguments>}}'
        )
    obj = found[0]
    name = obj.get("name", obj.get("tool"))
    if not isinstance(name, str) or not name:
        raise ToolCallError(f'the JSON object has no "name" string: {json.dumps(obj)[:200]}')
    args = obj.get("arguments", obj.get("args", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as err:
            raise ToolCallError(
                f'"arguments" is a string that is not valid JSON: {err.msg}'
            ) from err
    if not isinstance(args, dict):
        raise ToolCallError(f'"arguments" must be a JSON object, got {type(args).__name__}')
    return ToolCall(name, args)


def _format_error(err: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in err.absolute_path) or "(the arguments object)"
    return f"at {where}: {err.message}"


class ToolRegistry:
    """The tools an agent may use, with validation and safe execution.

    >>> reg = ToolRegistry()
    >>> reg.register(Tool("add", "Add two numbers.", {"type": "object",
    ...     "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    ...     "required": ["a", "b"]}, lambda a, b: a + b))
    >>> reg.call(ToolCall("add", {"a": 2, "b": 3})).content
    '5'
    """

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Draft202012Validator] = {}
        for t in tools or []:
            self.register(t)

    def register(self, tool: Tool) -> Tool:
        """Add ``tool``; its name must be new."""
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        self._validators[tool.name] = Draft202012Validator(tool.parameters)
        return tool

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool:
        if name not in self._tools:
            raise KeyError(f"unknown tool {name!r}; available: {self.names}")
        return self._tools[name]

    def specs(self) -> list[dict[str, Any]]:
        """The JSON description of every tool (for a system prompt or an API)."""
        return [t.spec() for t in self._tools.values()]

    def describe(self) -> str:
        """One line per tool: ``name: description Arguments (JSON Schema): {...}``."""
        return "\n".join(
            f"- {t.name}: {t.description} Arguments (JSON Schema): {json.dumps(dict(t.parameters))}"
            for t in self._tools.values()
        )

    def validate(self, call: ToolCall) -> list[str]:
        """Every problem with ``call`` (unknown tool, schema violations); empty when valid."""
        if call.name not in self._tools:
            return [
                f"unknown tool {call.name!r}; available tools: {', '.join(self.names) or 'none'}"
            ]
        errors = sorted(
            self._validators[call.name].iter_errors(call.arguments),
            key=lambda e: list(e.absolute_path),
        )
        return [_format_error(e) for e in errors]

    def call(self, call: ToolCall) -> ToolResult:
        """Validate and run ``call``. Never raises for a bad call or a failing tool: the
        problem comes back as ``ToolResult(ok=False, content="Error: ...")`` for the model."""
        problems = self.validate(call)
        if problems:
            if call.name not in self._tools:
                return ToolResult(False, "Error: " + problems[0])
            schema = json.dumps(dict(self._tools[call.name].parameters))
            return ToolResult(
                False,
                f"Error: invalid arguments for tool {call.name!r}: "
                + "; ".join(problems)
                + f". Expected schema: {schema}",
            )
        try:
            value = self._tools[call.name].function(**call.arguments)
        except Exception as err:  # the tool failed: report it to the model, keep the agent alive
            return ToolResult(
                False, f"Error: tool {call.name!r} failed: {type(err).__name__}: {err}"
            )
        content = value if isinstance(value, str) else json.dumps(value, default=str)
        return ToolResult(True, content, value)
