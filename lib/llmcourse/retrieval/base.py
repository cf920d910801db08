"""Types shared by every retriever: one search hit and the protocol a retriever follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["SearchResult", "Retriever", "check_k"]


@dataclass(frozen=True)
class SearchResult:
    """One retrieved item.

    Attributes:
        index: position of the item in the corpus the retriever was built on (an int id).
        score: the retriever's score; higher is better. Scores of different retrievers are
            not comparable (BM25 is unbounded, cosine lies in [-1, 1], RRF is ~1/60).
        text: the item's text, when the retriever keeps the texts.
        metadata: anything attached to the item (e.g. a chunk's ``doc_id`` and heading path).
    """

    index: int
    score: float
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers a text query with a ranked list of :class:`SearchResult`."""

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        """Return at most ``k`` results, best first."""
        ...


def check_k(k: int, name: str = "k") -> int:
    """Validate a top-k argument (a positive int) and return it."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive int, got {k!r}")
    return k


def attach_texts(
    indices: Sequence[int],
    scores: Sequence[float],
    texts: Sequence[str] | None,
    metadata: Sequence[dict[str, Any]] | None,
) -> list[SearchResult]:
    """Build :class:`SearchResult` objects, looking texts and metadata up by index."""
    out = []
    for i, s in zip(indices, scores, strict=True):
        i = int(i)
        out.append(
            SearchResult(
                index=i,
                score=float(s),
                text=None if texts is None else texts[i],
                metadata={} if metadata is None else dict(metadata[i]),
            )
        )
    return out
