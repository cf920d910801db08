"""Retrieval as a tool: an agent searches an index (e.g. chapter 10's) by calling it."""

from __future__ import annotations

from collections.abc import Callable

from ..retrieval.base import Retriever
from .tools import Tool

__all__ = ["retrieval_tool", "format_passages"]


def format_passages(texts: list[str], max_chars: int | None = 400) -> str:
    """``[1] first passage\\n[2] second ...``, each cut to ``max_chars`` (with ``...``)."""
    if not texts:
        return "No results."
    lines = []
    for i, t in enumerate(texts, start=1):
        t = " ".join(t.split())
        if max_chars is not None and len(t) > max_chars:
            t = t[: max_chars - 3].rstrip() + "..."
        lines.append(f"[{i}] {t}")
    return "\n".join(lines)


def retrieval_tool(
    retriever: Retriever,
    *,
    name: str = "search",
    k: int = 3,
    max_k: int = 10,
    max_chars: int | None = 400,
    defence: Callable[[str], str] | None = None,
    description: str | None = None,
) -> Tool:
    """A :class:`~llmcourse.agents.tools.Tool` ``{"query": str, "k"?: int}`` over ``retriever``.

    Args:
        retriever: anything with ``search(query, k) -> list[SearchResult]`` holding texts
            (``BM25.from_texts``, ``DenseRetriever``, ``HybridRetriever``...).
        k: passages returned when the model does not ask for a number; ``max_k`` caps it.
        max_chars: each passage is cut to this many characters (keeps prompts short).
        defence: applied to the formatted passages before the model sees them, e.g.
            ``make_defence("both")`` from :mod:`llmcourse.agents.injection`.
    """
    if not 1 <= k <= max_k:
        raise ValueError(f"need 1 <= k <= max_k, got k={k}, max_k={max_k}")

    def run(query: str, k: int = k) -> str:
        results = retriever.search(query, k)
        if any(r.text is None for r in results):
            raise ValueError("the retriever returns no texts; build it with its texts")
        block = format_passages([r.text or "" for r in results], max_chars)
        return defence(block) if defence else block

    return Tool(
        name=name,
        description=description
        or "Search the knowledge base and return the most relevant passages.",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "description": "what to look for"},
                "k": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": max_k,
                    "description": "number of passages",
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        function=run,
    )
