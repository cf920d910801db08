"""Overlap metrics for generated text: BLEU (Papineni et al., 2002) and ROUGE (Lin, 2004).

A text is either a string, split by :func:`tokenize` (lower-cased runs of word characters, so
punctuation is dropped), or an already tokenised sequence of strings, used as it is (so
``list("2021-03-03")`` scores characters).

BLEU is precision-oriented. For each order n it counts the hypothesis n-grams that occur in a
reference, *clipping* each n-gram's count at the most times it occurs in any single reference
(the modified precision p_n), then combines the orders with a weighted geometric mean and a
brevity penalty for hypotheses shorter than the reference:

    BLEU = BP * exp(sum_n w_n log p_n),   BP = 1 if c > r else exp(1 - r / c)

with c the hypothesis length and r the reference length closest to c (ties: the shorter).
Corpus BLEU sums matches, totals and lengths over all sentences *before* dividing; it is not
the mean of sentence BLEUs. Without smoothing, one order with no match makes BLEU 0.

ROUGE is recall-oriented: ROUGE-N counts clipped n-gram overlap against the reference's n-grams,
ROUGE-L uses the longest common subsequence. Both report precision, recall and F-measure.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SMOOTHING_METHODS",
    "BleuScore",
    "RougeScore",
    "tokenize",
    "ngram_counts",
    "clipped_matches",
    "modified_precision",
    "brevity_penalty",
    "closest_ref_length",
    "sentence_bleu",
    "corpus_bleu",
    "lcs_length",
    "rouge_n",
    "rouge_l",
]

Text = str | Sequence[str]
"""A string (tokenised by :func:`tokenize`) or a sequence of string tokens."""

SMOOTHING_METHODS = (None, "floor", "add1", "exp")
"""BLEU smoothing for orders with no clipped match (Chen and Cherry, 2014):

- ``None``: no smoothing; a zero precision makes BLEU 0.
- ``"floor"``: a zero match count becomes ``epsilon`` (default 0.1), i.e. p_n = epsilon / total.
- ``"add1"``: for n >= 2, add one to both matches and total (Lin and Och, 2004).
- ``"exp"``: the k-th order with no match gets p_n = 1 / (2**k * total) (the NIST smoothing).
"""

_WORD = re.compile(r"\w+")


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Split ``text`` into words: runs of letters, digits and underscores; punctuation is dropped.

    >>> tokenize("The cat sat on the mat.")
    ['the', 'cat', 'sat', 'on', 'the', 'mat']
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a string, got {type(text).__name__}")
    return _WORD.findall(text.lower() if lowercase else text)


def _as_tokens(text: Text, name: str) -> list[str]:
    """A string is tokenised; a sequence of strings is taken as tokens."""
    if isinstance(text, str):
        return tokenize(text)
    if isinstance(text, Sequence) and all(isinstance(t, str) for t in text):
        return list(text)
    raise TypeError(
        f"{name}: expected a string or a sequence of string tokens, got {type(text).__name__}"
        + (f" containing {type(text[0]).__name__}" if isinstance(text, Sequence) and text else "")
    )


def _as_references(references: Text | Sequence[Text], n_hyp_tokens: int) -> list[list[str]]:
    """One reference (a string) or a sequence of references (strings or token sequences)."""
    if isinstance(references, str):
        return [tokenize(references)]
    if not isinstance(references, Sequence) or len(references) == 0:
        raise ValueError(
            "references: expected a reference string or a non-empty list of references, got "
            f"{references!r}"
        )
    refs = [_as_tokens(r, f"references[{i}]") for i, r in enumerate(references)]
    if (
        len(refs) > 1
        and n_hyp_tokens > 1
        and all(isinstance(r, str) and len(t) == 1 for r, t in zip(references, refs, strict=True))
    ):
        raise ValueError(
            f"references: got {len(refs)} one-word references for a {n_hyp_tokens}-token "
            "hypothesis; this looks like ONE tokenised reference passed as a list of words. "
            "Wrap it in a list: references=[tokens]"
        )
    return refs


def ngram_counts(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of the n-grams (tuples of n consecutive tokens) in ``tokens``."""
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def clipped_matches(
    hypothesis: Sequence[str], references: Sequence[Sequence[str]], n: int
) -> tuple[int, int]:
    """(clipped matches, number of hypothesis n-grams) for token lists.

    Each hypothesis n-gram counts at most as often as it occurs in a single reference (the
    maximum over references), so repeating a correct word earns no extra credit.
    """
    hyp = ngram_counts(hypothesis, n)
    max_ref: Counter[tuple[str, ...]] = Counter()
    for ref in references:
        max_ref |= ngram_counts(ref, n)  # union of Counters keeps the maximum count
    matches = sum(min(count, max_ref[gram]) for gram, count in hyp.items())
    return matches, sum(hyp.values())


def modified_precision(hypothesis: Text, references: Text | Sequence[Text], n: int) -> float:
    """BLEU's modified (clipped) n-gram precision p_n; 0 when the hypothesis has no n-grams."""
    hyp = _as_tokens(hypothesis, "hypothesis")
    matches, total = clipped_matches(hyp, _as_references(references, len(hyp)), n)
    return matches / total if total else 0.0


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """1 if the hypothesis is longer than the reference, else exp(1 - r / c); 0 for c = 0."""
    if hyp_len < 0 or ref_len < 0:
        raise ValueError(f"lengths must be >= 0, got hyp_len={hyp_len}, ref_len={ref_len}")
    if hyp_len == 0:
        return 0.0
    return 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)


def closest_ref_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to ``hyp_len``; on a tie, the shorter one."""
    if not ref_lens:
        raise ValueError("closest_ref_length needs at least one reference length")
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


@dataclass(frozen=True)
class BleuScore:
    """BLEU with its parts. ``score`` in [0, 1]; ``precisions`` are the clipped, unsmoothed p_n;
    ``matches`` / ``totals`` the clipped matches and hypothesis n-grams per order;
    ``hyp_len`` c and ``ref_len`` r the (summed) lengths used by the brevity penalty."""

    score: float
    precisions: tuple[float, ...]
    brevity_penalty: float
    hyp_len: int
    ref_len: int
    matches: tuple[int, ...]
    totals: tuple[int, ...]


def _check_bleu_args(
    max_n: int, weights: Sequence[float] | None, smoothing: str | None, epsilon: float
) -> tuple[float, ...]:
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    if smoothing not in SMOOTHING_METHODS:
        raise ValueError(f"smoothing must be one of {SMOOTHING_METHODS}, got {smoothing!r}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if weights is None:
        return (1.0 / max_n,) * max_n
    if len(weights) != max_n or any(w < 0 for w in weights):
        raise ValueError(
            f"weights: expected {max_n} non-negative numbers (one per order 1..{max_n}), got "
            f"{list(weights)}"
        )
    return tuple(float(w) for w in weights)


def _smoothed_precisions(
    matches: Sequence[int], totals: Sequence[int], smoothing: str | None, epsilon: float
) -> list[float]:
    """p_n per order after smoothing; an order with no hypothesis n-gram and no smoothing is 0."""
    out, k = [], 0
    for order, (m, t) in enumerate(zip(matches, totals, strict=True), start=1):
        if smoothing == "add1" and order >= 2:
            out.append((m + 1) / (t + 1))
        elif m > 0:
            out.append(m / t)
        elif smoothing == "floor":
            out.append(epsilon / max(t, 1))
        elif smoothing == "exp":
            k += 1
            out.append(1.0 / (2**k * max(t, 1)))
        else:
            out.append(0.0)
    return out


def _bleu_from_counts(
    matches: Sequence[int],
    totals: Sequence[int],
    hyp_len: int,
    ref_len: int,
    weights: Sequence[float],
    smoothing: str | None,
    epsilon: float,
) -> BleuScore:
    bp = brevity_penalty(hyp_len, ref_len)
    precisions = _smoothed_precisions(matches, totals, smoothing, epsilon)
    if bp == 0.0 or any(p == 0.0 and w > 0 for p, w in zip(precisions, weights, strict=True)):
        score = 0.0
    else:
        log_mean = sum(w * math.log(p) for p, w in zip(precisions, weights, strict=True) if w > 0)
        score = bp * math.exp(log_mean)
    raw = tuple(m / t if t else 0.0 for m, t in zip(matches, totals, strict=True))
    return BleuScore(score, raw, bp, hyp_len, ref_len, tuple(matches), tuple(totals))


def sentence_bleu(
    hypothesis: Text,
    references: Text | Sequence[Text],
    max_n: int = 4,
    weights: Sequence[float] | None = None,
    smoothing: str | None = None,
    epsilon: float = 0.1,
) -> BleuScore:
    """BLEU of one hypothesis against one reference (a string) or a list of references.

    ``weights`` default to uniform 1/max_n; ``smoothing`` is one of :data:`SMOOTHING_METHODS`.
    A tokenised reference must be wrapped in a list: ``references=[["a", "cat"]]``.
    """
    return corpus_bleu([hypothesis], [references], max_n, weights, smoothing, epsilon)


def corpus_bleu(
    hypotheses: Sequence[Text],
    references: Sequence[Text | Sequence[Text]],
    max_n: int = 4,
    weights: Sequence[float] | None = None,
    smoothing: str | None = None,
    epsilon: float = 0.1,
) -> BleuScore:
    """Corpus BLEU: matches, totals and lengths are summed over all sentences, then combined.

    ``references[i]`` is hypothesis i's reference (a string) or list of references.
    """
    w = _check_bleu_args(max_n, weights, smoothing, epsilon)
    if isinstance(hypotheses, str) or len(hypotheses) != len(references):
        raise ValueError(
            "corpus_bleu: expected a list of hypotheses and a list of the same length of "
            f"references, got {type(hypotheses).__name__} of length {len(hypotheses)} and "
            f"{len(references)} references"
        )
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for i, (hyp_text, ref_texts) in enumerate(zip(hypotheses, references, strict=True)):
        hyp = _as_tokens(hyp_text, f"hypotheses[{i}]")
        refs = _as_references(ref_texts, len(hyp))
        for n in range(1, max_n + 1):
            m, t = clipped_matches(hyp, refs, n)
            matches[n - 1] += m
            totals[n - 1] += t
        hyp_len += len(hyp)
        ref_len += closest_ref_length(len(hyp), [len(r) for r in refs])
    return _bleu_from_counts(matches, totals, hyp_len, ref_len, w, smoothing, epsilon)


@dataclass(frozen=True)
class RougeScore:
    """ROUGE precision (overlap / hypothesis units), recall (overlap / reference units) and
    F-measure ((1 + beta^2) P R / (R + beta^2 P), 0 when both are 0)."""

    precision: float
    recall: float
    fmeasure: float


def _rouge(overlap: int, hyp_units: int, ref_units: int, beta: float) -> RougeScore:
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    p = overlap / hyp_units if hyp_units else 0.0
    r = overlap / ref_units if ref_units else 0.0
    f = (1 + beta**2) * p * r / (r + beta**2 * p) if p + r > 0 else 0.0
    return RougeScore(p, r, f)


def rouge_n(hypothesis: Text, reference: Text, n: int = 1, beta: float = 1.0) -> RougeScore:
    """ROUGE-N: clipped n-gram overlap of ``hypothesis`` with one ``reference``."""
    hyp = ngram_counts(_as_tokens(hypothesis, "hypothesis"), n)
    ref = ngram_counts(_as_tokens(reference, "reference"), n)
    overlap = sum((hyp & ref).values())  # intersection of Counters keeps the minimum count
    return _rouge(overlap, sum(hyp.values()), sum(ref.values()), beta)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) len(b)))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: Text, reference: Text, beta: float = 1.0) -> RougeScore:
    """ROUGE-L: longest common subsequence against the hypothesis and reference lengths."""
    hyp = _as_tokens(hypothesis, "hypothesis")
    ref = _as_tokens(reference, "reference")
    return _rouge(lcs_length(hyp, ref), len(hyp), len(ref), beta)
