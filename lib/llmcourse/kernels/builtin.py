"""Fast CPU paths: PyTorch's own fused operators where they compute exactly what the
reference computes.

With ``LLMCOURSE_KERNELS=auto`` (the default) and no Triton kernel for the input (a CPU tensor,
say), the dispatch in :mod:`llmcourse.kernels` calls these instead of the step-by-step
:mod:`.reference` code: ``F.scaled_dot_product_attention``, ``F.layer_norm``, ``F.rms_norm`` and
``F.cross_entropy`` run as single fused operators, which is what makes CPU training fast.
Each function returns ``None`` when its built-in would differ from the reference (e.g. a query
row that sees no key, where SDPA returns NaN and the reference returns zeros), and the caller
falls back to the reference. ``LLMCOURSE_KERNELS=reference`` always runs the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FLOATS = (torch.float32, torch.float64)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor | None:
    """SDPA when every query row sees at least one key; None otherwise."""
    if q.dtype not in _FLOATS or q.dtype != k.dtype or q.dtype != v.dtype:
        return None
    tq, tk = q.shape[-2], k.shape[-2]
    if causal and tq > tk:
        return None  # the first queries would see no key
    mask = None
    if key_padding_mask is not None:
        if not bool(key_padding_mask.any(dim=-1).all()):
            return None  # a sequence that is all padding: its rows see no key
        mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
    if causal and (tq != tk or mask is not None):
        # Queries aligned to the end of the keys (KV cache): query i sees keys <= tk - tq + i.
        rows = torch.arange(tq, device=q.device)[:, None] + (tk - tq)
        allowed = torch.arange(tk, device=q.device)[None, :] <= rows  # (Tq, Tk)
        mask = allowed if mask is None else mask & allowed
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    if x.dtype not in _FLOATS:
        return None
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor | None:
    if x.dtype not in _FLOATS or not hasattr(F, "rms_norm"):  # F.rms_norm: torch >= 2.4
        return None
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int, reduction: str
) -> torch.Tensor | None:
    if logits.dtype not in _FLOATS:
        return None
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
