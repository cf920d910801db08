"""Tensor helpers shared by the alignment methods: padding, log-probabilities, masked statistics.

Conventions: sequences are right-padded; ``targets`` follow the next-token convention of the
course GPT (``targets[:, t]`` is the token after ``input_ids[:, t]``) with ``-100`` where a
position does not count (prompt, padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.finetune.sft import IGNORE_INDEX
from llmcourse.utils import ShapeError

__all__ = [
    "IGNORE_INDEX",
    "pad_right",
    "hidden_size_of",
    "token_logprobs",
    "sequence_logprobs",
    "entropy_from_logits",
    "masked_mean",
    "masked_whiten",
    "last_token_index",
]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad token lists: ``(ids (B, T) long, mask (B, T) bool)``, mask True on real tokens."""
    if not seqs:
        raise ValueError("pad_right: got no sequences")
    width = max(len(s) for s in seqs)
    if width == 0:
        raise ValueError("pad_right: all sequences are empty")
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def hidden_size_of(backbone: nn.Module) -> int:
    """Width of a backbone's hidden states, read from ``backbone.config.n_embd``."""
    size = getattr(getattr(backbone, "config", None), "n_embd", None)
    if not isinstance(size, int):
        raise ValueError(
            f"cannot read the hidden size of {type(backbone).__name__} (no config.n_embd); "
            "pass hidden_size=... explicitly"
        )
    return size


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """``log p(targets[b, t])`` under ``logits[b, t]``: (B, T, V), (B, T) -> (B, T).

    Positions with target ``-100`` get 0 (they can be summed without masking again).
    """
    if logits.shape[:-1] != targets.shape:
        raise ShapeError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected "
            "(B, T, V) and (B, T)"
        )
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * valid


def sequence_logprobs(
    model: nn.Module, input_ids: Tensor, targets: Tensor, *, average: bool = False
) -> Tensor:
    """Summed (or, with ``average``, mean) log-probability of the target tokens: (B,).

    ``input_ids`` (B, T) and ``targets`` (B, T) as in an :class:`~llmcourse.finetune.sft.SFTBatch`:
    only positions whose target is not ``-100`` (the response tokens) count, so prompt and
    padding never contribute. ``model(input_ids)`` must return an object with ``.logits``.
    """
    logits = model(input_ids).logits  # (B, T, V)
    logp = token_logprobs(logits, targets)  # (B, T)
    total = logp.sum(dim=1)
    if not average:
        return total
    counts = (targets != IGNORE_INDEX).sum(dim=1)
    if torch.any(counts == 0):
        raise ValueError("sequence_logprobs(average=True): a sequence has no target tokens")
    return total / counts


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last dim: (..., V) -> (...)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is True (all dims, or along ``dim``)."""
    if x.shape != mask.shape:
        raise ShapeError(f"masked_mean: x {tuple(x.shape)} and mask {tuple(mask.shape)} differ")
    m = mask.to(x.dtype)
    if dim is None:
        n = m.sum()
        if n == 0:
            raise ValueError("masked_mean: the mask selects nothing")
        return (x * m).sum() / n
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise the masked entries of ``x`` to mean 0 (unless not ``shift_mean``) and std 1.

    Masked-out entries are returned as 0. Uses the biased variance of the selected entries.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each right-padded row: (B, T) bool -> (B,) long.

    Raises if a row is empty or its mask is not of the form ``1...1 0...0`` (left padding or
    holes would make the "last token" ambiguous for a causal model).
    """
    if attention_mask.dim() != 2:
        raise ShapeError(f"attention_mask: expected (B, T), got {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if torch.any(lengths == 0):
        raise ValueError("attention_mask: a row has no real tokens")
    positions = torch.arange(mask.shape[1], device=mask.device)
    expected = positions[None, :] < lengths[:, None]
    if not torch.equal(expected, mask):
        raise ValueError(
            "attention_mask must be right-padded (ones, then zeros); pad on the right "
            "so that a causal model's real tokens never attend to padding"
        )
    return lengths - 1
