"""Autoregressive generation from any language model: greedy, sampling, stop sequences.

Works with every model whose ``forward(idx (B, T))`` returns an object with ``.logits``
(B, T, V). When the model also has ``new_kv_cache(batch_size)`` and accepts
``forward(idx, kv_cache=cache)``, each step feeds only the new token; the result is the same
token sequence as without the cache, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from llmcourse.generation.logits import apply_penalties, sample_next
from llmcourse.utils import ShapeError

__all__ = ["generate", "NextTokenLogits"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch dropout off for the duration, then restore the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def check_prompt(idx: torch.Tensor, max_new_tokens: int) -> None:
    """Raise unless idx is a non-empty (B, T) integer tensor and max_new_tokens >= 0."""
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ShapeError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")


class NextTokenLogits:
    """Logits for the token after a growing sequence, with or without a KV cache.

    Call it with the whole sequence so far (B, L); it returns (B, V) logits for position L.
    The context is cropped to the model's ``config.block_size`` when it has one. With a cache,
    only tokens not yet cached are fed; once the sequence outgrows block_size the window
    slides, every position changes, and the cropped window is recomputed each step (exactly
    what the uncached path does).
    """

    def __init__(self, model: nn.Module, batch_size: int, use_kv_cache: bool = True) -> None:
        self.model = model
        config = getattr(model, "config", None)
        self.block_size: int | None = getattr(config, "block_size", None)
        has_cache = callable(getattr(model, "new_kv_cache", None))
        self.cache = model.new_kv_cache(batch_size) if use_kv_cache and has_cache else None

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        window = seq if self.block_size is None else seq[:, -self.block_size :]
        if self.cache is None:
            return self.model(window).logits[:, -1]
        if (
            self.cache.length
            and window.shape[1] == seq.shape[1]
            and self.cache.length < seq.shape[1]
        ):
            new = seq[:, self.cache.length :]  # only the tokens the cache has not seen
        else:
            self.cache.reset()  # first call, or the window slid past block_size
            new = window
        return self.model(new, kv_cache=self.cache).logits[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        """Follow a reordering of the batch rows (beam search)."""
        if self.cache is not None:
            self.cache.reorder(index)


def _normalise_stops(stop_sequences: Sequence[int | Sequence[int]] | None) -> list[list[int]]:
    stops = []
    for s in stop_sequences or []:
        seq = [s] if isinstance(s, int) else [int(t) for t in s]
        if not seq:
            raise ValueError("stop_sequences: an empty stop sequence would stop at once")
        stops.append(seq)
    return stops


def _ends_with_stop(generated: torch.Tensor, stops: list[list[int]]) -> torch.Tensor:
    """(B, n) generated tokens -> (B,) bool: the row ends with one of the stop sequences."""
    hit = torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
    for s in stops:
        if generated.shape[1] >= len(s):
            tail = generated[:, -len(s) :]
            hit |= (tail == torch.tensor(s, device=generated.device)).all(dim=1)
    return hit


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    stop_sequences: Sequence[int | Sequence[int]] | None = None,
    use_kv_cache: bool = True,
    generator: torch.Generator | None = None,
    pad_id: int = 0,
) -> torch.Tensor:
    """Extend each prompt row by up to ``max_new_tokens`` tokens, one forward pass per token.

    idx: (B, T) prompt ids -> (B, T + n) with n <= max_new_tokens.
    ``temperature=0`` is greedy decoding; otherwise tokens are sampled after the penalties
    (:func:`apply_penalties`, over prompt and generated tokens), temperature, top-k and top-p
    (:func:`top_p_filter`: smallest set with probability >= p). ``stop_sequences``: token-id
    sequences (an int is a one-token sequence, e.g. an end-of-text id); a row that ends with
    one (within its generated tokens) is finished, the stop tokens included, and its later
    positions hold ``pad_id``; generation ends when every row is finished. ``generator``
    makes sampling reproducible. The model runs in eval mode (restored afterwards).
    """
    check_prompt(idx, max_new_tokens)
    stops = _normalise_stops(stop_sequences)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    b, t0 = idx.shape
    seq = idx
    done = torch.zeros(b, dtype=torch.bool, device=idx.device)
    with eval_mode(model):
        next_logits = NextTokenLogits(model, b, use_kv_cache)
        for _ in range(max_new_tokens):
            logits = next_logits(seq).float()  # (B, V)
            logits = apply_penalties(
                logits, seq, repetition_penalty, frequency_penalty, presence_penalty
            )
            nxt = sample_next(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            nxt = nxt.masked_fill(done, pad_id)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if stops:
                done |= _ends_with_stop(seq[:, t0:], stops)
                if bool(done.all()):
                    break
    return seq
