"""Retrieval metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from llmcourse.retrieval import (
    average_precision,
    dcg_at_k,
    evaluate_rankings,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)

# ranking d3 d1 d7 d2 d9 ; relevant d1, d2, d5
RANKING = ["d3", "d1", "d7", "d2", "d9"]
RELEVANT = {"d1", "d2", "d5"}


def test_recall_precision_by_hand():
    assert recall_at_k(RANKING, RELEVANT, 1) == 0.0
    assert recall_at_k(RANKING, RELEVANT, 2) == pytest.approx(1 / 3)
    assert recall_at_k(RANKING, RELEVANT, 5) == pytest.approx(2 / 3)  # d5 never retrieved
    assert precision_at_k(RANKING, RELEVANT, 2) == pytest.approx(1 / 2)
    assert precision_at_k(RANKING, RELEVANT, 5) == pytest.approx(2 / 5)
    assert precision_at_k(RANKING, RELEVANT, 10) == pytest.approx(2 / 10)  # divides by k


def test_reciprocal_rank_and_ap_by_hand():
    assert reciprocal_rank(RANKING, RELEVANT) == 0.5  # first hit at rank 2
    assert reciprocal_rank(RANKING, RELEVANT, k=1) == 0.0
    assert reciprocal_rank(["x"], RELEVANT) == 0.0
    # hits at ranks 2 and 4: precisions 1/2 and 2/4; d5 missing counts 0 -> (0.5 + 0.5) / 3
    assert average_precision(RANKING, RELEVANT) == pytest.approx(1 / 3)


def test_dcg_standard_log2_discount():
    # gains 3, 2, 0, 1 at ranks 1..4: 3/log2(2) + 2/log2(3) + 0 + 1/log2(5)
    assert dcg_at_k([3, 2, 0, 1]) == pytest.approx(3 + 2 / math.log2(3) + 1 / math.log2(5))
    assert dcg_at_k([3, 2, 0, 1], k=2) == pytest.approx(3 + 2 / math.log2(3))


def test_ndcg_graded_by_hand():
    grades = {"a": 3, "b": 2, "c": 1, "z": 0}
    ranking = ["b", "x", "a", "c"]
    dcg = 2 / math.log2(2) + 0 + 3 / math.log2(4) + 1 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranking, grades, 4) == pytest.approx(dcg / idcg)
    # k = 2: DCG = 2; IDCG@2 = 3 + 2/log2(3)
    assert ndcg_at_k(ranking, grades, 2) == pytest.approx(2 / (3 + 2 / math.log2(3)))
    # exponential gain 2^rel - 1
    dcg_e = 3 / 1 + 7 / 2 + 1 / math.log2(5)
    idcg_e = 7 + 3 / math.log2(3) + 1 / 2
    assert ndcg_at_k(ranking, grades, 4, gain="exponential") == pytest.approx(dcg_e / idcg_e)
    assert ndcg_at_k(["a", "b", "c"], grades, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], grades, 2) == 0.0


def test_ndcg_binary_relevance():
    # relevant at rank 2 only, one relevant doc: (1/log2(3)) / 1
    assert ndcg_at_k(["x", "r"], {"r"}, 10) == pytest.approx(1 / math.log2(3))


def test_evaluate_rankings_averages():
    rankings = [RANKING, ["d5", "d1"]]
    qrels = [RELEVANT, {"d5": 2}]
    res = evaluate_rankings(rankings, qrels, ks=(1, 5))
    assert res["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert res["recall@1"] == pytest.approx((0 + 1) / 2)
    assert res["recall@5"] == pytest.approx((2 / 3 + 1) / 2)
    assert res["precision@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert res["ndcg@1"] == pytest.approx((0 + 1) / 2)
    assert res["map"] == pytest.approx((1 / 3 + 1) / 2)
    assert set(res) >= {"mrr@1", "mrr@5", "ndcg@5"}


def test_metric_errors():
    with pytest.raises(ValueError, match="without relevant"):
        recall_at_k(["a"], set(), 1)
    with pytest.raises(ValueError, match="without relevant"):
        ndcg_at_k(["a"], {"a": 0}, 1)
    with pytest.raises(ValueError, match="more than once"):
        recall_at_k(["a", "b", "a"], {"a"}, 3)
    with pytest.raises(ValueError, match="positive"):
        precision_at_k(["a"], {"a"}, 0)
    with pytest.raises(TypeError, match="string"):
        recall_at_k("abc", {"a"}, 1)
    with pytest.raises(ValueError, match="judgements"):
        evaluate_rankings([["a"]], [])
