"""llmcourse.metrics: evaluation metrics for generated text (BLEU, ROUGE)."""

from llmcourse.metrics.text import (
    SMOOTHING_METHODS,
    BleuScore,
    RougeScore,
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
