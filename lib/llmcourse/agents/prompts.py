"""Prompt templates with a small, safe formatter, and few-shot prompt building.

``str.format`` is risky for prompts: ``"{user.__class__.__init__.__globals__}"`` walks
attributes of the values, and a value containing braces can break a second formatting pass.
:class:`PromptTemplate` accepts only plain ``{name}`` fields (identifiers; ``{{`` and
``}}`` for literal braces), substitutes each value exactly once as text, and names missing
or unexpected fields in its errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PromptTemplate", "PromptTemplateError", "format_prompt", "FewShotPrompt"]

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class PromptTemplateError(ValueError):
    """A template is malformed or was given the wrong fields."""


class PromptTemplate:
    """A text with ``{field}`` slots.

    >>> PromptTemplate("Q: {question}\\nA:").format(question="2+2?")
    'Q: 2+2?\\nA:'

    Args:
        template: the text. Fields are identifiers in braces; ``{{``/``}}`` are literal braces.
            Anything else in braces (``{0}``, ``{a.b}``, ``{x!r}``, ``{x:>5}``) is rejected.
        strict: when True (default), :meth:`format` rejects values for fields the template does
            not have (catches typos such as ``questoin=``).
    """

    def __init__(self, template: str, *, strict: bool = True) -> None:
        if not isinstance(template, str):
            raise TypeError(f"template must be a str, got {type(template).__name__}")
        self.template, self.strict = template, strict
        self._parts: list[tuple[bool, str]] = []  # (is_field, text or field name)
        pos = 0
        for m in _TOKEN.finditer(template):
            if m.start() > pos:
                self._parts.append((False, template[pos : m.start()]))
            tok = m.group()
            if tok in ("{{", "}}"):
                self._parts.append((False, tok[0]))
            elif m.group(1) is not None and _IDENT.match(m.group(1).strip()):
                self._parts.append((True, m.group(1).strip()))
            else:
                col = m.start()
                raise PromptTemplateError(
                    f"bad placeholder {tok!r} at character {col}: use {{name}} with a plain identifier, "
                    "and {{ or }} for a literal brace"
                )
            pos = m.end()
        if pos < len(template):
            self._parts.append((False, template[pos:]))
        self.fields: tuple[str, ...] = tuple(
            dict.fromkeys(name for is_f, name in self._parts if is_f)
        )

    def format(self, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> str:
        """Fill every field with ``str(value)``; values are inserted verbatim, never re-parsed."""
        vals = {**(values or {}), **kwargs}
        missing = [f for f in self.fields if f not in vals]
        if missing:
            raise PromptTemplateError(
                f"missing values for fields {missing}; the template has fields {list(self.fields)}"
            )
        if self.strict:
            extra = sorted(set(vals) - set(self.fields))
            if extra:
                raise PromptTemplateError(
                    f"unexpected fields {extra}; the template has fields {list(self.fields)} "
                    "(pass strict=False to allow extras)"
                )
        return "".join(str(vals[text]) if is_field else text for is_field, text in self._parts)

    def partial(self, **kwargs: Any) -> PromptTemplate:
        """A new template with some fields filled in (their values' braces are escaped)."""
        unknown = sorted(set(kwargs) - set(self.fields))
        if unknown:
            raise PromptTemplateError(
                f"unknown fields {unknown}; the template has fields {list(self.fields)}"
            )
        out = []
        for is_field, text in self._parts:
            if is_field and text in kwargs:
                out.append(str(kwargs[text]).replace("{", "{{").replace("}", "}}"))
            elif is_field:
                out.append("{" + text + "}")
            else:
                out.append(text.replace("{", "{{").replace("}", "}}"))
        return PromptTemplate("".join(out), strict=self.strict)

    def __repr__(self) -> str:
        return f"PromptTemplate({self.template!r})"


def format_prompt(template: str, /, **values: Any) -> str:
    """One-shot :meth:`PromptTemplate.format` (strict)."""
    return PromptTemplate(template).format(values)


@dataclass
class FewShotPrompt:
    """Instructions, then solved examples, then the new input.

    Args:
        example_template: how one example is written, e.g. ``"Review: {text}\\nSentiment: {label}"``.
        query_template: how the new input is written, usually the example template up to the
            answer, e.g. ``"Review: {text}\\nSentiment:"``.
        examples: the demonstrations (dicts of field values).
        instructions: text placed first (may be empty).
        separator: between blocks (instructions, each example, the query).
        selector: optional ``(examples, query_values, k) -> examples`` to pick the shots
            (e.g. most similar first); default takes the first ``k``.
    """

    example_template: str
    query_template: str
    examples: Sequence[Mapping[str, Any]] = field(default_factory=list)
    instructions: str = ""
    separator: str = "\n\n"
    selector: (
        Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any], int], Sequence[Mapping[str, Any]]]
        | None
    ) = None

    def __post_init__(self) -> None:
        self._example = PromptTemplate(self.example_template, strict=False)
        self._query = PromptTemplate(self.query_template, strict=False)

    def build(
        self, query: Mapping[str, Any] | None = None, k: int | None = None, **values: Any
    ) -> str:
        """The full prompt with ``k`` shots (all when None; 0 gives a zero-shot prompt)."""
        qvals = {**(query or {}), **values}
        k = len(self.examples) if k is None else k
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        shots = self.selector(self.examples, qvals, k) if self.selector else self.examples[:k]
        blocks = [self.instructions] if self.instructions else []
        blocks += [self._example.format(ex) for ex in shots]
        blocks.append(self._query.format(qvals))
        return self.separator.join(blocks)
