"""Memory accounting: bytes held by a model's weights, and a simple training-memory estimate.

These count tensor storage only (``numel * element_size``); activations, the CUDA caching
allocator and Python overhead are not included. Quantized layers keep their packed weights and
scales in buffers, so :func:`model_nbytes` reports their real footprint.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["model_nbytes", "trainable_nbytes", "training_memory_bytes", "format_bytes"]


def _unique_tensors(model: nn.Module, include_buffers: bool) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    tensors = list(model.parameters())
    if include_buffers:
        tensors += list(model.buffers())
    for t in tensors:
        if id(t) not in seen:  # tied weights are the same object: count them once
            seen.add(id(t))
            yield t


def model_nbytes(model: nn.Module, *, include_buffers: bool = True) -> int:
    """Bytes of all parameters (and buffers, by default) of ``model``; shared tensors once."""
    return sum(t.numel() * t.element_size() for t in _unique_tensors(model, include_buffers))


def trainable_nbytes(model: nn.Module) -> int:
    """Bytes of the parameters with ``requires_grad=True``."""
    return sum(
        t.numel() * t.element_size() for t in _unique_tensors(model, False) if t.requires_grad
    )


def training_memory_bytes(model: nn.Module, *, optimizer_states: int = 2) -> int:
    """Weights + gradients + optimizer state, in bytes (activations excluded).

    Every trainable parameter needs a gradient and ``optimizer_states`` extra tensors of its
    size (2 for Adam/AdamW: first and second moments; 0 for plain SGD). Frozen weights cost
    only their own storage, which is why LoRA and QLoRA save so much.
    """
    if optimizer_states < 0:
        raise ValueError(f"optimizer_states must be >= 0, got {optimizer_states}")
    return model_nbytes(model) + trainable_nbytes(model) * (1 + optimizer_states)


def format_bytes(n: int | float) -> str:
    """Human-readable size with binary units, e.g. ``format_bytes(3 * 2**20) == '3.00 MiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
