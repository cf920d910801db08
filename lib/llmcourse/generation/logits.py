"""Pure functions on next-token logits: penalties, temperature, top-k, top-p, sampling.

Every function takes logits of shape (B, V) (one row per sequence) and returns a new tensor;
filtered-out tokens get -inf, so a softmax gives them probability 0. The order used by
:func:`llmcourse.generation.generate` is: penalties, temperature, top-k, top-p, then sample.
"""

from __future__ import annotations

import torch

from llmcourse.utils import ShapeError

__all__ = [
    "apply_penalties",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "sample_next",
]


def _check_logits(logits: torch.Tensor, who: str) -> None:
    if logits.dim() != 2:
        raise ShapeError(f"{who}: logits must have shape (B, V), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{who}: logits must be a float tensor, got dtype {logits.dtype}")


def apply_penalties(
    logits: torch.Tensor,
    context: torch.Tensor,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> torch.Tensor:
    """Discourage tokens that already occur in ``context`` (B, L).

    * repetition penalty (Keskar et al. 2019, CTRL; as Hugging Face): the logit of every token
      seen in the context is divided by ``repetition_penalty`` when positive and multiplied by
      it when negative (> 1 discourages repeats, 1 = off).
    * frequency / presence penalty (OpenAI API): logit -= frequency_penalty * count(token)
      + presence_penalty * [count(token) > 0].

    logits: (B, V) -> (B, V).
    """
    _check_logits(logits, "apply_penalties")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty}")
    if repetition_penalty == 1.0 and frequency_penalty == 0.0 and presence_penalty == 0.0:
        return logits
    if context.dim() != 2 or context.shape[0] != logits.shape[0]:
        raise ShapeError(
            f"apply_penalties: context must have shape ({logits.shape[0]}, L), got {tuple(context.shape)}"
        )
    counts = torch.zeros_like(logits).scatter_add_(
        1, context.long(), torch.ones(context.shape, dtype=logits.dtype, device=logits.device)
    )  # (B, V): occurrences of each token
    seen = counts > 0
    if repetition_penalty != 1.0:
        penalised = torch.where(
            logits > 0, logits / repetition_penalty, logits * repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if frequency_penalty or presence_penalty:
        logits = logits - frequency_penalty * counts - presence_penalty * seen.to(logits.dtype)
    return logits


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature: < 1 sharpens the distribution, > 1 flattens it.

    Temperature 0 is greedy decoding (argmax), which has no logits form: it raises here.
    """
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 (use argmax, or generate(temperature=0), for greedy), got {temperature}"
        )
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (ties with the k-th are kept), -inf elsewhere."""
    _check_logits(logits, "top_k_filter")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be a positive int, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose total probability
    is >= p (at least ``min_tokens_to_keep``), -inf elsewhere.

    With probabilities sorted in decreasing order, a token is kept when the mass of the tokens
    ranked before it is still < p. E.g. probs (0.5, 0.3, 0.15, 0.05) and p = 0.8 keep the first
    two (0.5 + 0.3 >= 0.8); p = 0.81 keeps three.
    """
    _check_logits(logits, "top_p_filter")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V): mass of higher-ranked tokens
    drop_sorted = mass_before >= p
    drop_sorted[:, :min_tokens_to_keep] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V) -> (B,) long.

    ``temperature=0`` takes the argmax (greedy); otherwise temperature, top-k and top-p are
    applied in that order and a token is drawn from the softmax.
    """
    _check_logits(logits, "sample_next")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
