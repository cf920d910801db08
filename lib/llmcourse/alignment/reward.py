"""Reward models trained on pairwise preferences (Bradley-Terry).

A reward model is a transformer backbone with a scalar head on the hidden state of the *last
real token* of prompt + response. The Bradley-Terry model says a labeller prefers response
``w`` to ``l`` with probability ``sigmoid(r_w - r_l)``; maximising its likelihood gives the
pairwise loss ``-log sigmoid(r_w - r_l)``. Only differences of rewards are learned: adding a
constant to all rewards changes nothing.

InstructGPT's labellers *ranked* K responses per prompt; every ordered pair of a ranking is
one comparison, so a ranking of K gives ``C(K, 2)`` pairs (K = 4: 6, K = 9: 36), all from the
same prompt (InstructGPT put them in one batch to avoid overfitting to the prompt).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.alignment.common import hidden_size_of, last_token_index, pad_right
from llmcourse.utils import ShapeError

__all__ = [
    "RewardModel",
    "bradley_terry_loss",
    "preference_accuracy",
    "ranking_to_pairs",
    "num_comparison_pairs",
]

T = TypeVar("T")


class RewardModel(nn.Module):
    """Backbone + linear head -> one scalar reward per sequence.

    ``backbone(idx)`` must return an object with ``.hidden`` (B, T, C), as
    :class:`llmcourse.models.gpt.GPT` does (its final-norm output). The reward is read at the
    last real token of each right-padded row. ``hidden_size`` defaults to
    ``backbone.config.n_embd``. Start from a copy of the SFT model, as InstructGPT did.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        size = hidden_size if hidden_size is not None else hidden_size_of(backbone)
        self.head = nn.Linear(size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(size + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """idx: (B, T) long; attention_mask: (B, T) bool, right-padded (None: no padding).

        Returns rewards (B,).
        """
        out = self.backbone(idx)
        hidden = getattr(out, "hidden", None)
        if hidden is None:
            raise TypeError(
                f"{type(self.backbone).__name__}.forward must return an object with .hidden "
                "(B, T, C); the course GPT's LMOutput does"
            )
        if attention_mask is None:
            last = torch.full((idx.shape[0],), idx.shape[1] - 1, device=idx.device)
        else:
            if attention_mask.shape != idx.shape:
                raise ShapeError(
                    f"attention_mask: expected shape {tuple(idx.shape)} (as idx), "
                    f"got {tuple(attention_mask.shape)}"
                )
            last = last_token_index(attention_mask)
        rows = torch.arange(idx.shape[0], device=idx.device)
        return self.head(hidden[rows, last]).squeeze(-1)  # (B,)

    @torch.no_grad()
    def score(
        self, texts: Sequence[str], tokenizer, *, pad_id: int = 0, batch_size: int = 32
    ) -> list[float]:
        """Rewards of raw texts (already in the chat template if the model expects it)."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            ids, mask = pad_right(
                [tokenizer.encode(t) for t in texts[start : start + batch_size]], pad_id
            )
            scores += self(ids.to(device), mask.to(device)).tolist()
        self.train(was_training)
        return scores

    def as_reward_fn(self, tokenizer, *, pad_id: int = 0) -> Callable[[str], float]:
        """A ``text -> float`` callable, usable by best-of-n and PPO."""
        return lambda text: self.score([text], tokenizer, pad_id=pad_id)[0]


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Mean of ``-log sigmoid(r_chosen - r_rejected)`` over pairs; rewards (N,) each.

    Computed with ``logsigmoid`` so large reward gaps neither overflow nor give NaN.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ShapeError(
            f"chosen rewards {tuple(chosen_rewards.shape)} and rejected rewards "
            f"{tuple(rejected_rewards.shape)} must have the same shape"
        )
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def preference_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Fraction of pairs where the chosen response gets the strictly higher reward."""
    return (chosen_rewards > rejected_rewards).float().mean().item()


def ranking_to_pairs(ranked: Sequence[T]) -> list[tuple[T, T]]:
    """All ``(better, worse)`` pairs of a ranking listed best first: ``C(K, 2)`` pairs."""
    return [(ranked[i], ranked[j]) for i in range(len(ranked)) for j in range(i + 1, len(ranked))]


def num_comparison_pairs(k: int) -> int:
    """``C(k, 2) = k (k - 1) / 2``: 4 -> 6, 9 -> 36."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return math.comb(k, 2)
