"""BLEU and ROUGE against values computed by hand (sacrebleu, nltk and rouge-score are not
dependencies of the course), and against a naive second implementation of clipped counting."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from llmcourse.metrics import (
    brevity_penalty,
    clipped_matches,
    closest_ref_length,
    corpus_bleu,
    lcs_length,
    modified_precision,
    ngram_counts,
    rouge_l,
    rouge_n,
    sentence_bleu,
    tokenize,
)

HYP, REF = "The cat sat on the mat.", "A cat sat on a mat."


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize(HYP) == ["the", "cat", "sat", "on", "the", "mat"]
    assert tokenize("Don't stop!", lowercase=False) == ["Don", "t", "stop"]
    with pytest.raises(TypeError, match="string"):
        tokenize(["a", "b"])


def test_ngram_counts():
    assert ngram_counts(["a", "b", "a", "b"], 2) == Counter({("a", "b"): 2, ("b", "a"): 1})
    assert ngram_counts(["a"], 2) == Counter()
    with pytest.raises(ValueError, match=">= 1"):
        ngram_counts(["a"], 0)


def test_worked_example_rouge():
    """The chapter's example: 4 of 6 words and 2 of 5 bigrams shared; LCS 'cat sat on mat'."""
    r1, r2, rl = rouge_n(HYP, REF, 1), rouge_n(HYP, REF, 2), rouge_l(HYP, REF)
    for score in (r1, rl):
        assert score.precision == pytest.approx(4 / 6)
        assert score.recall == pytest.approx(4 / 6)
        assert score.fmeasure == pytest.approx(0.667, abs=5e-4)
    assert (r2.precision, r2.recall) == pytest.approx((2 / 5, 2 / 5))
    assert r2.fmeasure == pytest.approx(0.40)


def test_worked_example_bleu():
    """p1 = 4/6, p2 = 2/5, p3 = 1/4 ('cat sat on'), p4 = 0/3; equal lengths so BP = 1."""
    b2 = sentence_bleu(HYP, REF, max_n=2)
    assert b2.score == pytest.approx(math.sqrt(4 / 6 * 2 / 5))
    assert b2.score == pytest.approx(0.516, abs=5e-4)
    b4 = sentence_bleu(HYP, REF)
    assert b4.score == 0.0
    assert b4.matches == (4, 2, 1, 0) and b4.totals == (6, 5, 4, 3)
    assert b4.precisions == pytest.approx((4 / 6, 2 / 5, 1 / 4, 0.0))
    assert b4.brevity_penalty == 1.0 and (b4.hyp_len, b4.ref_len) == (6, 6)


@pytest.mark.parametrize(
    ("smoothing", "p4"),
    [("floor", (4 / 6, 2 / 5, 1 / 4, 0.1 / 3)), ("exp", (4 / 6, 2 / 5, 1 / 4, 1 / 6))],
)
def test_smoothing_replaces_only_the_zero_order(smoothing, p4):
    expected = math.prod(p4) ** 0.25
    assert sentence_bleu(HYP, REF, smoothing=smoothing).score == pytest.approx(expected)


def test_add_one_smoothing_adds_to_orders_two_and_up():
    expected = (4 / 6 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert sentence_bleu(HYP, REF, smoothing="add1").score == pytest.approx(expected)
    assert 0 < sentence_bleu("a b", "a b c", smoothing="add1").score < 1


def test_exp_smoothing_halves_for_each_further_zero_order():
    # hypothesis "a b x y" vs reference "a b c d": p1 = 2/4, p2 = 1/3, p3 = 0/2, p4 = 0/1
    score = sentence_bleu("a b x y", "a b c d", smoothing="exp").score
    assert score == pytest.approx((2 / 4 * 1 / 3 * 1 / (2 * 2) * 1 / (4 * 1)) ** 0.25)


def test_clipping_the_papineni_example():
    """'the' x7 against two references: 'the' occurs at most twice in one reference -> 2/7."""
    refs = ["The cat is on the mat.", "There is a cat on the mat."]
    assert modified_precision("the the the the the the the", refs, 1) == pytest.approx(2 / 7)
    assert modified_precision("the the the the the the the", refs[1], 1) == pytest.approx(1 / 7)
    assert sentence_bleu("the the the the the the the", refs, max_n=1).score == pytest.approx(2 / 7)


def test_clipped_matches_agree_with_a_naive_count():
    """Clipping = each reference n-gram can be used up once; check against that definition."""
    rng = random.Random(0)
    for _ in range(200):
        hyp = [rng.choice("abc") for _ in range(rng.randint(0, 9))]
        refs = [
            [rng.choice("abcd") for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 3))
        ]
        for n in (1, 2, 3):
            best = 0
            grams = [tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)]
            for g in set(grams):
                allowed = max(  # the clip: the most times g occurs in one reference
                    sum(tuple(r[i : i + n]) == g for i in range(len(r) - n + 1)) for r in refs
                )
                best += min(grams.count(g), allowed)
            assert clipped_matches(hyp, refs, n) == (best, len(grams))


def test_brevity_penalty():
    assert brevity_penalty(7, 6) == 1.0
    assert brevity_penalty(6, 6) == 1.0
    assert brevity_penalty(2, 6) == pytest.approx(math.exp(-2))
    assert brevity_penalty(0, 6) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        brevity_penalty(-1, 3)
    # "the cat" against a 6-word reference: every n-gram matches, only the penalty remains
    score = sentence_bleu("the cat", "the cat sat on the mat", max_n=2)
    assert score.precisions == (1.0, 1.0)
    assert score.score == pytest.approx(math.exp(1 - 6 / 2))


def test_closest_reference_length_ties_go_to_the_shorter():
    assert closest_ref_length(5, [4, 6]) == 4
    assert closest_ref_length(5, [9, 7]) == 7
    assert sentence_bleu("a b c d e", ["a b c d", "a b c d e f"], max_n=1).brevity_penalty == 1.0
    assert sentence_bleu(
        "a b c d e", ["a b c d e f g", "x y z w v u t s r"], max_n=1
    ).brevity_penalty == (pytest.approx(math.exp(1 - 7 / 5)))
    with pytest.raises(ValueError, match="at least one"):
        closest_ref_length(3, [])


def test_corpus_bleu_pools_counts_before_dividing():
    hyps = ["the cat sat on the mat", "a dog"]
    refs = ["the cat sat on the mat", "a dog barked loudly today"]
    corpus = corpus_bleu(hyps, refs, max_n=2)
    # matches 8/8 and 6/6 -> p = 1; lengths c = 8, r = 11 -> BP = exp(1 - 11/8)
    assert corpus.matches == (8, 6) and corpus.totals == (8, 6)
    assert (corpus.hyp_len, corpus.ref_len) == (8, 11)
    assert corpus.score == pytest.approx(math.exp(1 - 11 / 8))
    mean_sentence = (1.0 + math.exp(1 - 5 / 2)) / 2
    assert corpus.score != pytest.approx(mean_sentence)


def test_token_lists_score_characters():
    hyp, ref = list("2021-03-03"), list("2021-03-04")
    assert modified_precision(hyp, [ref], 1) == pytest.approx(9 / 10)
    assert sentence_bleu(hyp, [ref]).score == pytest.approx(
        math.prod([9 / 10, 8 / 9, 7 / 8, 6 / 7]) ** 0.25
    )
    assert sentence_bleu(hyp, [hyp]).score == pytest.approx(1.0)


def test_weights():
    assert sentence_bleu(HYP, REF, weights=(1, 0, 0, 0)).score == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="weights"):
        sentence_bleu(HYP, REF, weights=(0.5, 0.5))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="one-word references"):
        sentence_bleu(HYP, ["a", "cat", "sat", "on", "a", "mat"])
    with pytest.raises(ValueError, match="non-empty"):
        sentence_bleu(HYP, [])
    with pytest.raises(ValueError, match="smoothing"):
        sentence_bleu(HYP, REF, smoothing="laplace")
    with pytest.raises(ValueError, match="same length"):
        corpus_bleu([HYP, HYP], [REF])
    with pytest.raises(TypeError, match="string tokens"):
        rouge_n([1, 2], REF)
    with pytest.raises(ValueError, match="beta"):
        rouge_n(HYP, REF, beta=0)


def test_rouge_clipping_and_edge_cases():
    twice = rouge_n("the the the", "the the", 2)
    assert (twice.precision, twice.recall) == pytest.approx((1 / 2, 1.0))
    empty = rouge_n("", REF)
    assert (empty.precision, empty.recall, empty.fmeasure) == (0.0, 0.0, 0.0)
    assert sentence_bleu("", REF).score == 0.0


def test_rouge_l_and_lcs():
    assert lcs_length(list("abcde"), list("acex")) == 3
    assert lcs_length([], list("abc")) == 0
    score = rouge_l("a b c d e", "a c e x")
    assert (score.precision, score.recall) == pytest.approx((3 / 5, 3 / 4))
    assert score.fmeasure == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    # beta weights recall: F_beta -> recall as beta grows
    assert rouge_l("a b c d e", "a c e x", beta=100).fmeasure == pytest.approx(3 / 4, abs=1e-3)
