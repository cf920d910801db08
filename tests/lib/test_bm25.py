"""BM25: equal to rank_bm25.BM25Okapi on the same tokenised corpus, plus a hand-checked score."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from llmcourse.data import load_text
from llmcourse.retrieval import BM25, SearchResult, simple_tokenize, top_k_indices


def zipf_corpus(n_docs: int = 300, vocab: int = 400, seed: int = 0) -> list[list[str]]:
    """Documents of Zipf-distributed words: frequent words occur in most documents
    (negative raw IDF, so the epsilon floor is exercised), rare ones in a few."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    probs = 1.0 / np.arange(1, vocab + 1)
    probs /= probs.sum()
    lengths = rng.integers(0, 60, size=n_docs)  # includes empty documents
    return [list(rng.choice(words, size=n, p=probs)) for n in lengths]


def shakespeare_paragraphs(n: int = 400) -> list[str]:
    text = load_text("tinyshakespeare")  # reads $LLMCOURSE_DATA_MIRROR first
    return [p for p in text.split("\n\n") if p.strip()][:n]


def queries_for(corpus: list[list[str]], n: int = 40, seed: int = 1) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    nonempty = [d for d in corpus if d]
    out = []
    for _ in range(n):
        doc = nonempty[rng.integers(len(nonempty))]
        q = list(rng.choice(doc, size=min(len(doc), int(rng.integers(1, 5)))))
        out.append(q + [q[0], "never-seen-term"])  # a repeated and an unknown term
    return out


@pytest.mark.parametrize(
    "k1,b,epsilon", [(1.5, 0.75, 0.25), (1.2, 0.5, 0.1), (2.0, 1.0, 0.5), (0.9, 0.0, 0.25)]
)
def test_scores_equal_rank_bm25_zipf(k1, b, epsilon):
    corpus = zipf_corpus()
    ref = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
    ours = BM25(corpus, k1=k1, b=b, epsilon=epsilon)
    assert ours.avgdl == ref.avgdl
    assert ours.average_idf == pytest.approx(ref.average_idf, rel=1e-15, abs=0)
    for term, j in ours.vocab.items():
        assert ours.idf[j] == pytest.approx(ref.idf[term], rel=1e-15, abs=0)
    empty = np.array([len(d) == 0 for d in corpus])
    for q in queries_for(corpus):
        with np.errstate(invalid="ignore"):
            got, expected = ours.get_scores(q), ref.get_scores(q)
        if b == 1.0:
            # rank_bm25 divides 0 by 0 for an empty document when b = 1 (NaN); an empty
            # document contains no query term, so its score is 0.
            assert np.isnan(expected[empty]).all() and (got[empty] == 0).all()
            got, expected = got[~empty], expected[~empty]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert (ours.idf > 0).all() and any(
        ref.idf[t] == ref.epsilon * ref.average_idf for t in ref.idf
    )


def test_scores_equal_rank_bm25_shakespeare():
    texts = shakespeare_paragraphs(400)
    corpus = [simple_tokenize(t) for t in texts]
    ref = BM25Okapi(corpus)
    ours = BM25.from_texts(texts)
    qs = queries_for(corpus, n=60, seed=3) + [
        simple_tokenize("What light through yonder window breaks")
    ]
    batch = ours.get_scores_batch(qs)
    assert batch.shape == (len(qs), len(texts))
    for q, row in zip(qs, batch, strict=True):
        expected = ref.get_scores(q)
        np.testing.assert_allclose(row, expected, rtol=1e-12, atol=1e-12)
        idx, scores = ours.top_k(q, 5)
        np.testing.assert_allclose(scores, np.sort(expected)[::-1][:5], rtol=1e-12)


def test_score_by_hand():
    # 3 documents; query "cat". n(cat) = 2 of N = 3: raw idf = ln(1.5) - ln(2.5) < 0, so the
    # floor applies: eps * mean idf over the vocabulary {the, cat, sat, dog, ran}.
    corpus = [["the", "cat", "sat"], ["the", "dog", "ran"], ["cat", "cat"]]
    bm = BM25(corpus, k1=1.5, b=0.75, epsilon=0.25)
    idf_common = math.log(3 - 2 + 0.5) - math.log(2 + 0.5)  # the, cat
    idf_rare = math.log(3 - 1 + 0.5) - math.log(1 + 0.5)  # sat, dog, ran
    mean_idf = (2 * idf_common + 3 * idf_rare) / 5
    idf_cat = 0.25 * mean_idf
    assert bm.idf_of("cat") == pytest.approx(idf_cat)
    assert bm.idf_of("dog") == pytest.approx(idf_rare)
    assert bm.idf_of("unicorn") == 0.0
    avgdl = 8 / 3

    def term(tf: int, dl: int) -> float:
        return idf_cat * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl))

    np.testing.assert_allclose(bm.get_scores(["cat"]), [term(1, 3), 0.0, term(2, 2)], rtol=1e-12)


def test_search_returns_texts_and_ranks():
    texts = ["the cat sat on the mat", "dogs chase cats", "a mat is not a rug", "nothing here"]
    bm = BM25.from_texts(texts, metadata=[{"i": i} for i in range(4)])
    hits = bm.search("Cat on the MAT!", k=2)
    assert all(isinstance(h, SearchResult) for h in hits)
    assert hits[0].index == 0 and hits[0].text == texts[0] and hits[0].metadata == {"i": 0}
    assert hits[0].score >= hits[1].score
    assert len(bm.search("cat", k=100)) == 4  # k larger than the corpus


def test_top_k_ties_go_to_lower_index():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert top_k_indices(scores, 2).tolist() == [1, 2]
    assert top_k_indices(scores, 4).tolist() == [1, 2, 4, 3]
    assert top_k_indices(scores, 10).tolist() == [1, 2, 4, 3, 0, 5]


def test_simple_tokenize():
    assert simple_tokenize("BM25's k1=1.5!") == ["bm25", "s", "k1", "1", "5"]
    assert simple_tokenize("Café, naïve") == ["café", "naïve"]


def test_bad_input_errors():
    with pytest.raises(TypeError, match="from_texts"):
        BM25(["a raw string instead of tokens"])
    with pytest.raises(ValueError, match="non-empty"):
        BM25([])
    with pytest.raises(ValueError, match="empty"):
        BM25([[], []])
    with pytest.raises(ValueError, match="k1"):
        BM25([["a"]], b=1.5)
    with pytest.raises(ValueError, match="positive"):
        BM25([["a"]]).top_k(["a"], 0)
