"""Attention over encoder states for seq2seq models: additive (Bahdanau) and dot / general (Luong).

Every module scores queries (decoder states) against keys (encoder states), masks padded source
positions with -inf, softmaxes over the source axis and averages the values with the weights:

    forward(query, keys, values=None, mask=None) -> (context, weights)
      query (B, Tq, Dq) or (B, Dq); keys (B, Tk, Dk); values (B, Tk, Dv), default keys;
      mask (B, Tk) bool, True = real token, False = padding.
      context (B, Tq, Dv) or (B, Dv); weights (B, Tq, Tk) or (B, Tk): row i holds the
      distribution of output position (query) i over the input positions (keys); rows sum to 1.

A decoder calls the same query against the same keys at every step, so the key-side work is
split out: ``prepare(keys)`` once per source batch, then ``attend(query, prepared, values, mask)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from llmcourse.utils import ShapeError

__all__ = ["Attention", "AdditiveAttention", "DotAttention", "GeneralAttention", "masked_softmax"]


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last axis with ``mask`` False positions set to -inf first.

    scores (B, Tq, Tk), mask (B, Tk) bool. Every row must keep at least one key.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


class Attention(nn.Module):
    """Base class: subclasses define ``query_size``/``key_size``, ``prepare`` and ``score``."""

    query_size: int
    key_size: int

    def prepare(self, keys: Tensor) -> Tensor:
        """Query-independent key transform, computed once per source batch. (B, Tk, Dk) -> (B, Tk, *)."""
        return keys

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        """Unnormalised scores: query (B, Tq, Dq), prepared keys -> (B, Tq, Tk)."""
        raise NotImplementedError

    def _check(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> None:
        name = type(self).__name__
        if query.dim() != 3 or query.shape[-1] != self.query_size:
            raise ShapeError(
                f"{name} query: expected (B, Tq, {self.query_size}) or (B, {self.query_size}), "
                f"got shape {tuple(query.shape)}"
            )
        if keys.dim() != 3 or keys.shape[0] != query.shape[0] or keys.shape[-1] != self.key_size:
            raise ShapeError(
                f"{name} keys: expected ({query.shape[0]}, Tk, {self.key_size}), got shape "
                f"{tuple(keys.shape)}"
            )
        if values.dim() != 3 or values.shape[:2] != keys.shape[:2]:
            raise ShapeError(
                f"{name} values: expected ({keys.shape[0]}, {keys.shape[1]}, Dv) to match the "
                f"keys, got shape {tuple(values.shape)}"
            )
        check_mask(mask, keys.shape[0], keys.shape[1], name)

    def attend(
        self, query: Tensor, prepared: Tensor, values: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attention with keys already prepared.  query (B, Tq, Dq) -> (context, weights)."""
        weights = masked_softmax(self.score(query, prepared), mask)  # (B, Tq, Tk)
        return torch.bmm(weights, values), weights

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        values = keys if values is None else values
        single = query.dim() == 2
        if single:
            query = query.unsqueeze(1)
        self._check(query, keys, values, mask)
        context, weights = self.attend(query, self.prepare(keys), values, mask)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights


def check_mask(mask: Tensor | None, batch: int, steps: int, name: str) -> None:
    """Source padding mask must be bool (B, Tk) with at least one True per row."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} mask: expected dtype bool (True = real token), got {mask.dtype}; "
            "build it with e.g. src != pad_id"
        )
    if tuple(mask.shape) != (batch, steps):
        raise ShapeError(f"{name} mask: expected ({batch}, {steps}), got {tuple(mask.shape)}")
    if not bool(mask.any(dim=-1).all()):
        raise ValueError(
            f"{name} mask: some rows mask every key (all False), so softmax has nothing to "
            "normalise; every sequence needs at least one real token"
        )


class AdditiveAttention(Attention):
    """Bahdanau attention: ``score(q, k) = v^T tanh(W_q q + W_k k)``.

    Args: query_size Dq, key_size Dk, attn_size A (width of the hidden tanh layer).
    """

    def __init__(self, query_size: int, key_size: int, attn_size: int) -> None:
        super().__init__()
        self.query_size, self.key_size, self.attn_size = query_size, key_size, attn_size
        self.w_q = nn.Linear(query_size, attn_size, bias=False)
        self.w_k = nn.Linear(key_size, attn_size, bias=True)
        self.v = nn.Linear(attn_size, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.w_k(keys)  # (B, Tk, A)

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        hidden = torch.tanh(self.w_q(query).unsqueeze(2) + prepared.unsqueeze(1))  # (B, Tq, Tk, A)
        return self.v(hidden).squeeze(-1)  # (B, Tq, Tk)


class DotAttention(Attention):
    """Luong dot attention: ``score(q, k) = q . k`` (needs Dq == Dk).

    ``scaled=True`` divides by sqrt(Dk) as the Transformer does; Luong et al. did not scale.
    """

    def __init__(self, size: int, scaled: bool = False) -> None:
        super().__init__()
        self.query_size = self.key_size = size
        self.scaled = scaled

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        scores = torch.bmm(query, prepared.transpose(1, 2))  # (B, Tq, Tk)
        return scores / math.sqrt(self.key_size) if self.scaled else scores


class GeneralAttention(Attention):
    """Luong general attention: ``score(q, k) = q^T W_a k`` (Dq and Dk may differ)."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.query_size, self.key_size = query_size, key_size
        self.w_a = nn.Linear(key_size, query_size, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.w_a(keys)  # (B, Tk, Dq): W_a k

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        return torch.bmm(query, prepared.transpose(1, 2))  # (B, Tq, Tk)
