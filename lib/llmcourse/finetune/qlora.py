"""QLoRA: a frozen NF4 4-bit base with LoRA adapters kept in full precision (Dettmers et al. 2023).

The base weights are stored in NF4 (about 4.13 bits per weight with double quantization) and
dequantized layer by layer in each forward pass; only the LoRA matrices A and B, in
``compute_dtype``, receive gradients. Gradients still flow *through* the frozen 4-bit layers
to adapters in earlier layers, because the dequantized weight is used in an ordinary matmul.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from llmcourse.finetune.lora import LoRALinear, apply_lora
from llmcourse.finetune.quantization import Linear4bit, quantize_model
from llmcourse.finetune.targets import Pattern, as_pattern_list

__all__ = ["qlora_linear", "QLoRAModules", "prepare_qlora"]


def qlora_linear(
    linear: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    *,
    block_size: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.float32,
) -> LoRALinear:
    """One QLoRA layer: ``LoRALinear(Linear4bit.from_linear(linear))``."""
    base = Linear4bit.from_linear(
        linear, block_size=block_size, double_quant=double_quant, compute_dtype=compute_dtype
    )
    return LoRALinear(base, r, alpha, dropout)  # adapters in the base's compute dtype


@dataclass(frozen=True)
class QLoRAModules:
    """Names of the layers :func:`prepare_qlora` changed."""

    quantized: list[str]
    adapted: list[str]


def prepare_qlora(
    model: nn.Module,
    target_patterns: Pattern | Iterable[Pattern],
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    *,
    quantize_patterns: Pattern | Iterable[Pattern] | None = None,
    block_size: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.float32,
) -> QLoRAModules:
    """Turn ``model`` into a QLoRA model in place.

    1. The Linear layers matching ``quantize_patterns`` (default: ``target_patterns``) become
       frozen :class:`Linear4bit` layers (NF4, block 64, double quantization by default).
    2. The layers matching ``target_patterns`` get LoRA adapters of rank ``r``.
    3. Every parameter except the adapters is frozen (embeddings, norms, biases too).

    The QLoRA paper adapts *all* Linear layers of the transformer blocks; pass patterns that
    match them all to reproduce that.
    """
    targets = as_pattern_list(target_patterns)  # a list: iterators may be read only once
    q_patterns = targets if quantize_patterns is None else as_pattern_list(quantize_patterns)
    quantized = quantize_model(
        model,
        q_patterns,
        "nf4",
        block_size=block_size,
        double_quant=double_quant,
        compute_dtype=compute_dtype,
    )
    adapted = apply_lora(model, targets, r, alpha, dropout, freeze_base=True)
    return QLoRAModules(quantized=quantized, adapted=adapted)
