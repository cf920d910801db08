"""Okapi BM25 with an inverted index in NumPy.

For a query q = (t_1, ..., t_m) and a document d of length |d| (in tokens),

    score(q, d) = sum_i idf(t_i) * f(t_i, d) * (k1 + 1) / (f(t_i, d) + k1 * (1 - b + b * |d| / avgdl))

with f(t, d) the count of t in d and avgdl the mean document length. A term repeated in the
query counts once per repetition. The IDF is

    idf(t) = ln(N - n(t) + 0.5) - ln(n(t) + 0.5)

(N documents, n(t) of them contain t). It is negative for terms in more than half of the
documents; those get the floor ``epsilon * mean(idf)`` instead, the mean taken over the
whole vocabulary before flooring. These choices are those of ``rank_bm25.BM25Okapi``, and
:class:`BM25` returns the same scores on the same tokenised corpus, bit for bit (the
tests compare them), while scoring a query with one ``np.bincount`` over the postings of
its terms instead of a loop over all documents. One deliberate difference: an empty
document scores 0, where rank_bm25 returns NaN (0 / 0) for it when ``b = 1``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .base import SearchResult, attach_texts, check_k

__all__ = ["BM25", "simple_tokenize", "top_k_indices"]

_WORD = re.compile(r"\w+")


def simple_tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and return its runs of letters, digits and underscores.

    ``"BM25's k1=1.5!"`` -> ``["bm25", "s", "k1", "1", "5"]``. No stemming, no stop words:
    simple, predictable and language-agnostic (``\\w`` matches Unicode letters too).
    """
    return _WORD.findall(text.lower())


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``scores`` (1-D), best first; ties go to the lower index."""
    n = scores.shape[0]
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        cand = np.argpartition(-scores, k - 1)[:k]
        # argpartition may cut a tie group arbitrarily: take every index tied with the k-th.
        kth = scores[cand].min()
        cand = np.flatnonzero(scores >= kth)
    else:
        cand = np.arange(n)
    order = np.lexsort((cand, -scores[cand]))
    return cand[order][:k].astype(np.int64)


class BM25:
    """Okapi BM25 over a tokenised corpus.

    Args:
        corpus: one list of tokens per document (use :meth:`from_texts` to tokenise).
        k1: term-frequency saturation (1.2-2.0 is usual; 0 ignores frequency).
        b: length normalisation (0: none, 1: full).
        epsilon: the IDF floor, as a fraction of the mean IDF, for terms in more than half
            of the documents.
        texts: the documents' texts, returned in :class:`SearchResult` (optional).
        tokenizer: the function that turns a string query into tokens in :meth:`search`.

    Attributes:
        vocab: term -> column id (in order of first appearance).
        idf: (V,) float64, the floored IDF per term id.
        doc_len: (N,) int64 document lengths; ``avgdl`` their mean.
    """

    def __init__(
        self,
        corpus: Sequence[Sequence[str]],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        texts: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        tokenizer: Callable[[str], list[str]] = simple_tokenize,
    ) -> None:
        if isinstance(corpus, str) or len(corpus) == 0:
            raise ValueError("BM25 needs a non-empty list of tokenised documents (lists of str)")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        for name, seq in (("texts", texts), ("metadata", metadata)):
            if seq is not None and len(seq) != len(corpus):
                raise ValueError(
                    f"{name} has {len(seq)} items but the corpus has {len(corpus)} documents"
                )
        self.k1, self.b, self.epsilon = float(k1), float(b), float(epsilon)
        self.texts = None if texts is None else list(texts)
        self.metadata = None if metadata is None else list(metadata)
        self.tokenizer = tokenizer
        self._build(corpus)

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        *,
        tokenizer: Callable[[str], list[str]] = simple_tokenize,
        metadata: Sequence[dict[str, Any]] | None = None,
        **kwargs: float,
    ) -> BM25:
        """Tokenise ``texts`` with ``tokenizer`` and index them (``kwargs``: k1, b, epsilon)."""
        return cls(
            [tokenizer(t) for t in texts],
            texts=texts,
            metadata=metadata,
            tokenizer=tokenizer,
            **kwargs,
        )

    # ----------------------------------------------------------------- index construction

    def _build(self, corpus: Sequence[Sequence[str]]) -> None:
        vocab: dict[str, int] = {}
        doc_ids: list[int] = []
        term_ids: list[int] = []
        freqs: list[int] = []
        doc_len = np.zeros(len(corpus), dtype=np.int64)
        for d, tokens in enumerate(corpus):
            if isinstance(tokens, str):
                raise TypeError(
                    f"document {d} is a str; BM25 expects token lists. Use BM25.from_texts(texts) "
                    "to tokenise raw text"
                )
            doc_len[d] = len(tokens)
            for term, count in Counter(tokens).items():
                term_ids.append(vocab.setdefault(term, len(vocab)))
                doc_ids.append(d)
                freqs.append(count)
        total = int(doc_len.sum())
        if total == 0:
            raise ValueError("every document is empty: BM25 needs at least one token")
        self.vocab = vocab
        self.n_docs = len(corpus)
        self.doc_len = doc_len
        self.avgdl = total / self.n_docs

        # Postings sorted by term (stable: doc ids stay ascending within a term): CSC layout.
        t = np.asarray(term_ids, dtype=np.int64)
        order = np.argsort(t, kind="stable")
        self._post_docs = np.asarray(doc_ids, dtype=np.int64)[order]  # (P,)
        tf = np.asarray(freqs, dtype=np.int64)[order]  # (P,)
        df = np.bincount(t, minlength=len(vocab))  # (V,) document frequency
        self._indptr = np.concatenate([[0], np.cumsum(df)])  # (V + 1,)
        self.doc_freq = df

        # idf: math.log in vocabulary order, exactly as rank_bm25 computes it.
        idf = np.empty(len(vocab), dtype=np.float64)
        idf_sum = 0.0
        for j, n in enumerate(df.tolist()):
            v = math.log(self.n_docs - n + 0.5) - math.log(n + 0.5)
            idf[j] = v
            idf_sum += v
        self.average_idf = idf_sum / len(vocab)
        idf[idf < 0] = self.epsilon * self.average_idf
        self.idf = idf

        # The term-frequency part of every posting, computed once.
        norm = self.k1 * (1 - self.b + self.b * self.doc_len / self.avgdl)  # (N,)
        self._post_tf_weight = tf * (self.k1 + 1) / (tf + norm[self._post_docs])  # (P,)

    # ----------------------------------------------------------------- scoring

    def __len__(self) -> int:
        return self.n_docs

    def _tokens(self, query: str | Sequence[str]) -> Sequence[str]:
        return self.tokenizer(query) if isinstance(query, str) else query

    def get_scores(self, query: str | Sequence[str]) -> np.ndarray:
        """BM25 score of every document for ``query`` (a string or a token list): (N,) float64."""
        tokens = self._tokens(query)
        docs, weights = [], []
        for term in tokens:
            j = self.vocab.get(term)
            if j is None:
                continue  # unseen terms contribute nothing
            a, b = self._indptr[j], self._indptr[j + 1]
            docs.append(self._post_docs[a:b])
            weights.append(self.idf[j] * self._post_tf_weight[a:b])
        if not docs:
            return np.zeros(self.n_docs, dtype=np.float64)
        # bincount adds in input order, i.e. term by term like the textbook loop.
        return np.bincount(np.concatenate(docs), np.concatenate(weights), minlength=self.n_docs)

    def get_scores_batch(self, queries: Iterable[str | Sequence[str]]) -> np.ndarray:
        """Scores for several queries: (Q, N) float64."""
        rows = [self.get_scores(q) for q in queries]
        return np.stack(rows) if rows else np.zeros((0, self.n_docs))

    def top_k(self, query: str | Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (k,), scores (k,))`` of the best documents; ties go to the lower index."""
        check_k(k)
        scores = self.get_scores(query)
        idx = top_k_indices(scores, k)
        return idx, scores[idx]

    def search(self, query: str | Sequence[str], k: int = 10) -> list[SearchResult]:
        """The ``k`` best documents as :class:`SearchResult` (with text when given)."""
        idx, scores = self.top_k(query, k)
        return attach_texts(idx.tolist(), scores.tolist(), self.texts, self.metadata)

    def idf_of(self, term: str) -> float:
        """The (floored) IDF of ``term``; 0.0 for a term not in the corpus."""
        j = self.vocab.get(term)
        return 0.0 if j is None else float(self.idf[j])

    def __repr__(self) -> str:
        return (
            f"BM25(n_docs={self.n_docs}, vocab={len(self.vocab)}, avgdl={self.avgdl:.1f}, "
            f"k1={self.k1}, b={self.b}, epsilon={self.epsilon})"
        )
