"""Retrieval quality metrics for one query and averaged over queries.

A ranking is a sequence of ids, best first. Relevance judgements are either a collection
of relevant ids (binary relevance) or a mapping ``id -> grade`` (graded; grade <= 0 means
not relevant). With R the set of relevant ids and ``top_k`` the first k ranked ids:

* ``recall@k    = |top_k ∩ R| / |R|``
* ``precision@k = |top_k ∩ R| / k``         (k, not the number returned)
* ``RR          = 1 / rank of the first relevant id`` (0 if none in the cut-off); MRR = mean RR
* ``AP          = mean over relevant ids of precision at their rank`` (unretrieved ones count 0)
* ``DCG@k       = sum_{i=1..k} gain(rel_i) / log2(i + 1)`` with gain = grade ("linear") or
  ``2**grade - 1`` ("exponential"); ``nDCG@k = DCG@k / IDCG@k``, IDCG the DCG of the ideal
  ordering of all judged ids.

A query without any relevant id makes recall and nDCG undefined: these functions raise
``ValueError`` rather than silently returning 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Literal, Union

__all__ = [
    "recall_at_k",
    "precision_at_k",
    "reciprocal_rank",
    "average_precision",
    "dcg_at_k",
    "ndcg_at_k",
    "evaluate_rankings",
]

Relevance = Union[Collection[Hashable], Mapping[Hashable, float]]
Gain = Literal["linear", "exponential"]


def _grades(relevant: Relevance) -> dict[Hashable, float]:
    if isinstance(relevant, Mapping):
        return {doc: float(g) for doc, g in relevant.items()}
    if isinstance(relevant, (str, bytes)):
        raise TypeError(
            "relevant must be a collection of ids or a mapping id -> grade, not a string"
        )
    return {doc: 1.0 for doc in relevant}


def _relevant_set(relevant: Relevance) -> set[Hashable]:
    return {doc for doc, g in _grades(relevant).items() if g > 0}


def _top(ranking: Sequence[Hashable], k: int | None) -> Sequence[Hashable]:
    if isinstance(ranking, (str, bytes)):
        raise TypeError("ranking must be a sequence of ids, not a string")
    if len(set(ranking)) != len(ranking):
        seen: set[Hashable] = set()
        dup = next(d for d in ranking if d in seen or seen.add(d))  # type: ignore[func-returns-value]
        raise ValueError(f"ranking lists id {dup!r} more than once; a ranking must not repeat ids")
    if k is None:
        return ranking
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return ranking[:k]


def _need_relevant(rel: set[Hashable] | dict[Hashable, float], metric: str) -> None:
    if not rel:
        raise ValueError(
            f"{metric} is undefined for a query without relevant ids; drop such queries"
        )


def recall_at_k(ranking: Sequence[Hashable], relevant: Relevance, k: int) -> float:
    """Fraction of the relevant ids found in the top ``k``."""
    rel = _relevant_set(relevant)
    _need_relevant(rel, "recall@k")
    return sum(1 for d in _top(ranking, k) if d in rel) / len(rel)


def precision_at_k(ranking: Sequence[Hashable], relevant: Relevance, k: int) -> float:
    """Fraction of the top ``k`` slots holding a relevant id (a short ranking is padded)."""
    rel = _relevant_set(relevant)
    return sum(1 for d in _top(ranking, k) if d in rel) / k


def reciprocal_rank(
    ranking: Sequence[Hashable], relevant: Relevance, k: int | None = None
) -> float:
    """``1 / rank`` of the first relevant id within the top ``k`` (all when None), else 0."""
    rel = _relevant_set(relevant)
    for rank, d in enumerate(_top(ranking, k), start=1):
        if d in rel:
            return 1.0 / rank
    return 0.0


def average_precision(
    ranking: Sequence[Hashable], relevant: Relevance, k: int | None = None
) -> float:
    """Mean of precision@rank over the relevant ids (missing ones contribute 0)."""
    rel = _relevant_set(relevant)
    _need_relevant(rel, "average precision")
    hits, total = 0, 0.0
    for rank, d in enumerate(_top(ranking, k), start=1):
        if d in rel:
            hits += 1
            total += hits / rank
    return total / len(rel)


def dcg_at_k(gains: Sequence[float], k: int | None = None) -> float:
    """``sum_i gains[i] / log2(i + 2)`` over the first ``k`` gains (i counted from 0)."""
    gains = list(gains) if k is None else list(gains)[:k]
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def _gain(grade: float, gain: Gain) -> float:
    if gain == "linear":
        return grade
    if gain == "exponential":
        return 2.0**grade - 1.0
    raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")


def ndcg_at_k(
    ranking: Sequence[Hashable], relevance: Relevance, k: int, gain: Gain = "linear"
) -> float:
    """Normalised DCG of the top ``k``: 1.0 for an ideal ordering, 0.0 with no relevant hit.

    ``relevance`` maps ids to grades (e.g. 0-3), or is a collection of relevant ids (grade
    1). Unjudged ids count as grade 0.
    """
    grades = {d: g for d, g in _grades(relevance).items() if g > 0}
    _need_relevant(grades, "nDCG")
    gains = [_gain(grades.get(d, 0.0), gain) for d in _top(ranking, k)]
    ideal = sorted((_gain(g, gain) for g in grades.values()), reverse=True)
    return dcg_at_k(gains, k) / dcg_at_k(ideal, k)


def evaluate_rankings(
    rankings: Sequence[Sequence[Hashable]],
    relevance: Sequence[Relevance],
    ks: Sequence[int] = (1, 5, 10),
    gain: Gain = "linear",
) -> dict[str, float]:
    """Mean of every metric over queries: ``{"recall@5": ..., "mrr": ..., "ndcg@10": ...}``.

    Keys: ``recall@k``, ``precision@k``, ``mrr@k``, ``ndcg@k`` for each k in ``ks``, plus
    ``mrr`` and ``map`` over the whole ranking. ``rankings[i]`` is judged by ``relevance[i]``.
    """
    if len(rankings) != len(relevance):
        raise ValueError(f"got {len(rankings)} rankings but {len(relevance)} relevance judgements")
    if not rankings:
        raise ValueError("no queries to evaluate")
    sums: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        sums[name] = sums.get(name, 0.0) + value

    for ranking, rel in zip(rankings, relevance, strict=True):
        for k in ks:
            add(f"recall@{k}", recall_at_k(ranking, rel, k))
            add(f"precision@{k}", precision_at_k(ranking, rel, k))
            add(f"mrr@{k}", reciprocal_rank(ranking, rel, k))
            add(f"ndcg@{k}", ndcg_at_k(ranking, rel, k, gain))
        add("mrr", reciprocal_rank(ranking, rel))
        add("map", average_precision(ranking, rel))
    return {name: total / len(rankings) for name, total in sums.items()}
