"""llmcourse.generation: decoding strategies for language models.

:func:`generate` (greedy, temperature, top-k, top-p, repetition / frequency / presence
penalties, stop sequences, KV cache) and :func:`beam_search` (with length penalty), plus the
pure functions on logits they are built from (:func:`apply_temperature`,
:func:`top_k_filter`, :func:`top_p_filter`, :func:`apply_penalties`, :func:`sample_next`).
"""

from llmcourse.generation.beam import BeamHypothesis, beam_search, beam_search_hypotheses
from llmcourse.generation.decoding import NextTokenLogits, generate
from llmcourse.generation.logits import (
    apply_penalties,
    apply_temperature,
    sample_next,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "generate",
    "beam_search",
    "beam_search_hypotheses",
    "BeamHypothesis",
    "NextTokenLogits",
    "apply_penalties",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "sample_next",
]
