"""Reciprocal rank fusion, MMR and rerankers (hand-checked)."""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse.retrieval import (
    BM25,
    DenseRetriever,
    EmbeddingReranker,
    HashingEmbedder,
    HybridRetriever,
    MaxSimReranker,
    RerankedRetriever,
    Reranker,
    mmr,
    reciprocal_rank_fusion,
)
from llmcourse.retrieval.dense import encode_checked

CORPUS = [
    "BM25 ranks documents by term frequency and inverse document frequency.",
    "Dense retrieval embeds queries and passages into vectors and compares them by cosine.",
    "Reciprocal rank fusion merges rankings from several retrievers.",
    "The cat sat on the mat. It was a sunny day.",
    "Product quantization compresses vectors; binary codes use one bit per dimension.",
    "Maximal marginal relevance trades relevance against redundancy.",
]


def test_rrf_by_hand():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=60)
    expected = {"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 63 + 1 / 62, "d": 1 / 63}
    assert [d for d, _ in fused] == ["b", "c", "a", "d"]
    for doc, score in fused:
        assert score == pytest.approx(expected[doc], abs=1e-15)


def test_rrf_weights_ties_and_top_n():
    # equal scores: the id with the better best rank wins, then the one seen first
    fused = reciprocal_rank_fusion([[1, 2], [2, 1]])
    assert [d for d, _ in fused] == [1, 2] and fused[0][1] == fused[1][1]
    weighted = reciprocal_rank_fusion([[1, 2], [2, 1]], weights=[1.0, 3.0], top_n=1)
    assert weighted == [(2, pytest.approx(1 / 62 + 3 / 61))]
    assert reciprocal_rank_fusion([[5, 6]], k=0) == [(5, 1.0), (6, 0.5)]
    with pytest.raises(ValueError, match="twice"):
        reciprocal_rank_fusion([[1, 1]])
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([[1], [2]], weights=[1.0])


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_mmr_prefers_diverse_second_pick():
    q = torch.tensor([1.0, 0.0])
    # d0 at 10 deg, d1 at 12 deg (near-duplicate of d0), d2 at -50 deg.
    cands = torch.tensor([unit(10), unit(12), unit(-50)])
    # relevance: .985, .978, .643. lambda=.5, second pick:
    #   d1: .5 * .978 - .5 * cos(2 deg) = -.011 ;  d2: .5 * .643 - .5 * cos(60 deg) = +.071
    assert mmr(q, cands, k=3, lambda_=0.5) == [0, 2, 1]
    assert mmr(q, cands, k=3, lambda_=1.0) == [0, 1, 2]  # pure relevance = top-k
    assert mmr(q, cands, k=10, lambda_=0.3) == [0, 2, 1]  # k capped at N
    with pytest.raises(ValueError, match="lambda"):
        mmr(q, cands, 2, lambda_=1.5)


def test_embedding_reranker():
    emb = HashingEmbedder(dim=512)
    rr = EmbeddingReranker(emb)
    assert isinstance(rr, Reranker)
    order = rr.rerank("binary codes one bit per dimension", CORPUS)
    assert order[0][0] == 4 and len(order) == len(CORPUS)
    vecs = encode_checked(emb, ["binary codes one bit per dimension", CORPUS[4]])
    assert order[0][1] == pytest.approx(float(vecs[0] @ vecs[1]), abs=1e-6)
    assert rr.rerank("x", CORPUS, top_k=2).__len__() == 2
    assert rr.rerank("x", []) == []


def test_maxsim_reranker_scores_best_sentence():
    emb = HashingEmbedder(dim=512)
    texts = [
        "Nothing relevant here. The cat sat on the mat.",
        "Cats and mats and sitting in general.",
    ]
    rr = MaxSimReranker(emb, alpha=1.0)
    scores = dict(rr.rerank("the cat sat on the mat", texts))
    sent = encode_checked(
        emb, ["the cat sat on the mat", "Nothing relevant here.", "The cat sat on the mat."]
    )
    expected0 = max(float(sent[0] @ sent[1]), float(sent[0] @ sent[2]))
    assert scores[0] == pytest.approx(expected0, abs=1e-6)
    assert scores[0] > scores[1]
    # alpha blends in the full-text cosine
    full = encode_checked(emb, ["the cat sat on the mat", texts[0]])
    blended = dict(MaxSimReranker(emb, alpha=0.5).rerank("the cat sat on the mat", texts))
    assert blended[0] == pytest.approx(0.5 * expected0 + 0.5 * float(full[0] @ full[1]), abs=1e-6)


def test_hybrid_retriever_fuses_bm25_and_dense():
    bm25 = BM25.from_texts(CORPUS)
    dense = DenseRetriever.from_texts(CORPUS, HashingEmbedder(dim=256))
    hybrid = HybridRetriever([bm25, dense], candidates=6)
    query = "how does rank fusion merge retrievers"
    runs = [[r.index for r in bm25.search(query, 6)], [r.index for r in dense.search(query, 6)]]
    expected = reciprocal_rank_fusion(runs, top_n=3)
    got = hybrid.search(query, k=3)
    assert [(r.index, r.score) for r in got] == [(i, pytest.approx(s)) for i, s in expected]
    assert got[0].index == 2 and got[0].text == CORPUS[2]


def test_reranked_retriever():
    bm25 = BM25.from_texts(CORPUS)
    rr = RerankedRetriever(bm25, EmbeddingReranker(HashingEmbedder(dim=256)), candidates=4)
    res = rr.search("vectors cosine embeds", k=2)
    assert len(res) == 2 and res[0].index == 1 and res[0].score >= res[1].score
    no_text = BM25([t.split() for t in CORPUS])
    with pytest.raises(ValueError, match="texts"):
        RerankedRetriever(no_text, EmbeddingReranker(HashingEmbedder())).search("x")
