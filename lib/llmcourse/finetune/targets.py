"""Choose sub-modules of a model by name, and swap them for wrapped versions.

LoRA and quantization both replace some Linear layers of a model. This module holds the
shared part: matching module names against user patterns, and setting a sub-module by its
dotted name.

Pattern rules (see :func:`name_matches`):

- a ``re.Pattern`` (from ``re.compile``) must match the *whole* dotted name (``fullmatch``);
- a string with glob characters (``*``, ``?``, ``[``) is a shell glob on the whole dotted
  name, e.g. ``"blocks.*.attn.*"`` or ``"*proj"``;
- any other string matches the name itself or its last components, e.g. ``"c_attn"`` matches
  ``"blocks.0.attn.c_attn"`` (the convention of PEFT's ``target_modules``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from torch import nn

from llmcourse import nn as llm_nn

__all__ = [
    "Pattern",
    "LINEAR_TYPES",
    "name_matches",
    "find_modules",
    "set_module",
    "as_pattern_list",
]

Pattern = str | re.Pattern[str]

# Full-precision linear layers: torch's own and the course's ``llmcourse.nn.Linear`` (which the
# GPT uses). Both hold ``weight`` (out, in), an optional ``bias`` and compute x @ W^T + b.
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, llm_nn.Linear)

_GLOB_CHARS = set("*?[")


def as_pattern_list(patterns: Pattern | Iterable[Pattern]) -> list[Pattern]:
    """Normalise one pattern or an iterable of patterns to a non-empty list."""
    if isinstance(patterns, (str, re.Pattern)):
        out: list[Pattern] = [patterns]
    else:
        out = list(patterns)
    if not out:
        raise ValueError("target patterns: got an empty list; give at least one name pattern")
    for p in out:
        if not isinstance(p, (str, re.Pattern)):
            raise TypeError(
                f"target patterns: expected str or re.Pattern, got {type(p).__name__} ({p!r})"
            )
    return out


def name_matches(name: str, pattern: Pattern) -> bool:
    """Whether the dotted module ``name`` matches ``pattern`` (rules in the module docstring)."""
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    if _GLOB_CHARS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def find_modules(
    model: nn.Module,
    patterns: Pattern | Iterable[Pattern],
    types: type[nn.Module] | tuple[type[nn.Module], ...] = LINEAR_TYPES,
) -> list[str]:
    """Names of the sub-modules of ``model`` that match any pattern and are of ``types``.

    Raises ``ValueError`` when nothing matches, listing a few candidate names so a typo is
    easy to spot (a silent no-op would leave a model untouched without warning).
    """
    pats = as_pattern_list(patterns)
    names = [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, types) and any(name_matches(name, p) for p in pats)
    ]
    if not names:
        type_names = (
            types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        )
        candidates = [n for n, m in model.named_modules() if n and isinstance(m, types)]
        shown = ", ".join(candidates[:12]) + (" ..." if len(candidates) > 12 else "")
        raise ValueError(
            f"no {type_names} module matches {_describe(pats)}; "
            f"modules of that type in this model: [{shown or 'none'}]"
        )
    return names


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the sub-module at dotted ``name`` (e.g. ``"blocks.0.attn.c_attn"``) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, child):
        raise KeyError(f"model has no sub-module named {name!r}")
    setattr(parent, child, new)


def _describe(patterns: Sequence[Pattern]) -> str:
    shown = [p.pattern if isinstance(p, re.Pattern) else p for p in patterns]
    return "patterns " + ", ".join(repr(s) for s in shown)
