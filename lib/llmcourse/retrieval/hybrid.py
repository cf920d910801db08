"""Combining and refining rankings: reciprocal rank fusion, MMR, reranking.

* :func:`reciprocal_rank_fusion` merges rankings from different retrievers (BM25 and dense,
  say) using only ranks, so their incomparable scores never meet:
  ``RRF(d) = sum_r w_r / (k + rank_r(d))`` with 1-based ranks and ``k = 60`` by default.
* :func:`mmr` (maximal marginal relevance) picks results that are relevant *and* different
  from what is already picked: ``argmax_d lambda * sim(q, d) - (1 - lambda) * max_s sim(d, s)``.
* A :class:`Reranker` re-scores a short candidate list with a costlier scorer. The two here
  reuse a bi-encoder (no cross-encoder weights ship with the course):
  :class:`EmbeddingReranker` embeds each candidate's *full* text (useful after BM25, or after
  a first stage over truncated/quantised vectors), and :class:`MaxSimReranker` embeds each
  sentence of a candidate and scores it by its best-matching sentence (a sentence-level
  cousin of ColBERT's max-sim), which helps when a long chunk holds the answer in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, runtime_checkable

import torch

from ..utils import check_shape
from .base import Retriever, SearchResult, check_k
from .chunking import split_sentences
from .dense import Embedder, encode_checked

__all__ = [
    "reciprocal_rank_fusion",
    "mmr",
    "Reranker",
    "EmbeddingReranker",
    "MaxSimReranker",
    "HybridRetriever",
    "RerankedRetriever",
]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]],
    k: float = 60,
    weights: Sequence[float] | None = None,
    top_n: int | None = None,
) -> list[tuple[Hashable, float]]:
    """Fuse several rankings (lists of ids, best first) into one.

    Args:
        rankings: e.g. ``[[3, 1, 7], [1, 9, 3]]``; an id missing from a ranking adds nothing.
        k: the smoothing constant; larger ``k`` flattens the advantage of the top ranks.
        weights: one weight per ranking (default all 1).
        top_n: keep only the best ``top_n``.

    Returns:
        ``[(id, score), ...]`` sorted by score; ties go to the id with the better best rank,
        then to the id seen first. Example with k=60: ids 1 (ranks 2 and 1) -> 1/62 + 1/61.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(rankings)} rankings but {len(weights)} weights")
    scores: dict[Hashable, float] = {}
    best_rank: dict[Hashable, int] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        if len(set(ranking)) != len(ranking):
            raise ValueError("a ranking lists the same id twice; deduplicate it first")
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
            best_rank[doc] = min(best_rank.get(doc, rank), rank)
    first_seen = {doc: i for i, doc in enumerate(scores)}
    fused = sorted(scores.items(), key=lambda kv: (-kv[1], best_rank[kv[0]], first_seen[kv[0]]))
    return fused if top_n is None else fused[:top_n]


def mmr(
    query: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    lambda_: float = 0.5,
) -> list[int]:
    """Maximal marginal relevance selection.

    Args:
        query: (d,) embedding; candidates: (N, d) embeddings (both L2-normalised, so inner
            products are cosines).
        k: how many to select (at most N).
        lambda_: 1.0 = pure relevance (plain top-k), 0.0 = pure diversity.

    Returns:
        Positions into ``candidates`` in selection order. The first pick is always the most
        relevant candidate; each next one maximises
        ``lambda * cos(q, d) - (1 - lambda) * max_{s selected} cos(d, s)``.
    """
    check_shape(candidates, (None, query.shape[-1]), "candidates")
    check_shape(query, (candidates.shape[1],), "query")
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must lie in [0, 1], got {lambda_}")
    check_k(k)
    n = candidates.shape[0]
    k = min(k, n)
    relevance = candidates @ query  # (N,)
    redundancy = torch.full((n,), float("-inf"), dtype=relevance.dtype)  # max sim to selected
    chosen = torch.zeros(n, dtype=torch.bool)
    selected: list[int] = []
    for _ in range(k):
        penalty = torch.where(torch.isneginf(redundancy), torch.zeros_like(redundancy), redundancy)
        value = lambda_ * relevance - (1 - lambda_) * penalty
        value[chosen] = float("-inf")
        best = int(value.argmax())
        selected.append(best)
        chosen[best] = True
        redundancy = torch.maximum(redundancy, candidates @ candidates[best])
    return selected


@runtime_checkable
class Reranker(Protocol):
    """Re-scores candidate texts for a query: ``rerank(query, texts) -> [(position, score)]``."""

    def rerank(
        self, query: str, texts: Sequence[str], top_k: int | None = None
    ) -> list[tuple[int, float]]:
        """Positions into ``texts`` with new scores, best first (at most ``top_k``)."""
        ...


def _sorted_pairs(scores: torch.Tensor, top_k: int | None) -> list[tuple[int, float]]:
    order = sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i))
    pairs = [(i, float(scores[i])) for i in order]
    return pairs if top_k is None else pairs[: check_k(top_k, "top_k")]


class EmbeddingReranker:
    """Score = cosine between the query and the candidate's full text, both freshly embedded.

    A bi-encoder used as a second stage: cheap to run on tens of candidates, and it sees the
    whole text even when the first stage looked only at keywords (BM25) or compressed vectors.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def rerank(
        self, query: str, texts: Sequence[str], top_k: int | None = None
    ) -> list[tuple[int, float]]:
        if not texts:
            return []
        emb = encode_checked(self.embedder, [query, *texts])  # (1 + N, d)
        return _sorted_pairs(emb[1:] @ emb[0], top_k)


class MaxSimReranker:
    """Score = ``alpha * max_sentence cos(q, s) + (1 - alpha) * cos(q, full text)``.

    Each candidate is split into sentences (``splitter``, default
    :func:`~llmcourse.retrieval.chunking.split_sentences`), every sentence is embedded, and the
    best-matching sentence decides (``alpha=1``) or is blended with the whole-text cosine.
    A bi-encoder approximation of a cross-encoder's "read the passage with the question in
    mind": it rewards a passage that contains one sentence answering the query.
    """

    def __init__(
        self,
        embedder: Embedder,
        alpha: float = 0.7,
        splitter: Callable[[str], list[str]] | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.embedder, self.alpha = embedder, alpha
        self.splitter = splitter or (lambda t: [t[s:e] for s, e in split_sentences(t)] or [t])

    def rerank(
        self, query: str, texts: Sequence[str], top_k: int | None = None
    ) -> list[tuple[int, float]]:
        if not texts:
            return []
        sentences: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            parts = self.splitter(text) or [text]
            sentences.extend(parts)
            owner.extend([i] * len(parts))
        emb = encode_checked(self.embedder, [query, *texts, *sentences])
        q, full, sent = emb[0], emb[1 : 1 + len(texts)], emb[1 + len(texts) :]
        sims = sent @ q  # (S,)
        best = torch.full((len(texts),), float("-inf")).scatter_reduce(
            0, torch.tensor(owner), sims, reduce="amax"
        )
        return _sorted_pairs(self.alpha * best + (1 - self.alpha) * (full @ q), top_k)


class HybridRetriever:
    """Run several retrievers and fuse their rankings with reciprocal rank fusion.

    The retrievers must index the same corpus in the same order (``SearchResult.index`` must
    mean the same item in each), e.g. ``BM25.from_texts(chunks)`` and
    ``DenseRetriever.from_texts(chunks, embedder)``. Each is asked for ``candidates`` results;
    the fused score is the RRF score.
    """

    def __init__(
        self,
        retrievers: Sequence[Retriever],
        *,
        k_rrf: float = 60,
        weights: Sequence[float] | None = None,
        candidates: int = 50,
    ) -> None:
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        self.retrievers = list(retrievers)
        self.k_rrf, self.weights, self.candidates = (
            k_rrf,
            weights,
            check_k(candidates, "candidates"),
        )

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        check_k(k)
        runs = [r.search(query, max(k, self.candidates)) for r in self.retrievers]
        by_index: dict[int, SearchResult] = {}
        for run in runs:
            for res in run:
                by_index.setdefault(res.index, res)
        fused = reciprocal_rank_fusion(
            [[r.index for r in run] for run in runs], self.k_rrf, self.weights, k
        )
        return [
            SearchResult(int(i), score, by_index[int(i)].text, dict(by_index[int(i)].metadata))
            for i, score in fused
        ]


class RerankedRetriever:
    """A first-stage retriever followed by a :class:`Reranker` over its top ``candidates``."""

    def __init__(self, retriever: Retriever, reranker: Reranker, *, candidates: int = 20) -> None:
        self.retriever, self.reranker = retriever, reranker
        self.candidates = check_k(candidates, "candidates")

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        check_k(k)
        first = self.retriever.search(query, max(k, self.candidates))
        if any(r.text is None for r in first):
            raise ValueError(
                "reranking needs texts: build the first-stage retriever with its texts"
            )
        order = self.reranker.rerank(query, [r.text or "" for r in first], top_k=k)
        return [
            SearchResult(first[i].index, s, first[i].text, dict(first[i].metadata))
            for i, s in order
        ]
