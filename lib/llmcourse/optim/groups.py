"""Parameter groups for weight decay: decay the matrices, not the biases and norm gains."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["weight_decay_groups"]


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Tensors with two or more dimensions (weight matrices, embeddings) get ``weight_decay``;
    vectors (biases, LayerNorm / RMSNorm gains) get 0, since shrinking them towards zero only
    fights the normalisation. Tied parameters appear once. Pass the result to any optimizer.
    """
    decay, no_decay = [], []
    for p in model.parameters():  # .parameters() yields shared (tied) tensors once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
