"""Input checks shared by both backends, and what the Triton kernels support.

``validate_*`` raise on input that no backend can handle (wrong ranks, mismatched sizes,
devices or dtypes). ``triton_*_unsupported`` return ``None`` when the Triton kernel can run the
input, else a sentence that lists what it supports; :func:`backend.choose_backend` turns that
into a fallback (``auto``) or an error (forced ``triton``). This module never imports Triton.
"""

from __future__ import annotations

import torch

from llmcourse.utils import ShapeError, check_dtype, check_shape

__all__ = [
    "FLOAT_DTYPES",
    "TRITON_DTYPES",
    "ATTENTION_HEAD_DIMS",
    "MAX_NORM_WIDTH",
    "REDUCTIONS",
    "validate_attention",
    "validate_norm",
    "validate_cross_entropy",
    "validate_lstm_cell",
    "validate_rope",
    "triton_attention_unsupported",
    "triton_dtype_unsupported",
    "triton_norm_unsupported",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ATTENTION_HEAD_DIMS = (16, 128)  # inclusive range of head dims the Triton attention handles
MAX_NORM_WIDTH = 16384  # a LayerNorm/RMSNorm row must fit in one Triton block
REDUCTIONS = ("mean", "sum", "none")


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _same_device(tensors: dict[str, torch.Tensor | None]) -> None:
    present = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(present.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in present.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")


def validate_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    scale: float | None,
) -> None:
    """q: (B, H, Tq, D), k and v: (B, H, Tk, D), key_padding_mask: (B, Tk) bool."""
    check_shape(q, ("B", "H", None, "D"), "q")
    check_shape(k, (q.shape[0], q.shape[1], None, q.shape[3]), "k")
    check_shape(v, tuple(k.shape), "v")
    check_dtype(q, FLOAT_DTYPES, "q")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_padding_mask is not None:
        check_shape(key_padding_mask, (q.shape[0], k.shape[2]), "key_padding_mask (B, Tk)")
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(
                f"key_padding_mask must be bool (True = real token, False = padding), got "
                f"{key_padding_mask.dtype}; convert with mask.bool()"
            )
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be a positive number or None (1/sqrt(D)), got {scale}")
    _same_device({"q": q, "k": k, "v": v, "key_padding_mask": key_padding_mask})


def validate_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> None:
    """x: (..., C); weight and bias: (C,) or None."""
    if x.dim() < 1:
        raise ShapeError(f"x: expected at least 1 dim (..., C), got shape {tuple(x.shape)}")
    check_dtype(x, FLOAT_DTYPES, "x")
    width = x.shape[-1]
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None:
            check_shape(param, (width,), f"{name} (C,)")
            check_dtype(param, FLOAT_DTYPES, name)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _same_device({"x": x, "weight": weight, "bias": bias})


def validate_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> None:
    """logits: (N, V) float, targets: (N,) integer."""
    check_shape(logits, ("N", "V"), "logits (N, V)")
    check_shape(targets, (logits.shape[0],), "targets (N,)")
    check_dtype(logits, FLOAT_DTYPES, "logits")
    check_dtype(targets, (torch.int64, torch.int32), "targets")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; use one of: {REDUCTIONS}")
    _same_device({"logits": logits, "targets": targets})


def validate_lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor) -> None:
    """gates: (B, 4H) in the order i, f, g, o; c_prev: (B, H)."""
    check_shape(c_prev, ("B", "H"), "c_prev (B, H)")
    check_shape(gates, (c_prev.shape[0], 4 * c_prev.shape[1]), "gates (B, 4H)")
    check_dtype(gates, FLOAT_DTYPES, "gates")
    check_dtype(c_prev, FLOAT_DTYPES, "c_prev")
    _same_device({"gates": gates, "c_prev": c_prev})


def validate_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """x: (B, H, T, D) with D even; cos and sin: (T, D/2) or (B, T, D/2)."""
    check_shape(x, ("B", "H", "T", "D"), "x")
    batch, _, seq, dim = x.shape
    if dim % 2:
        raise ShapeError(f"x: RoPE needs an even head dim D, got D={dim}")
    if cos.dim() == 2:
        check_shape(cos, (seq, dim // 2), "cos (T, D/2)")
    else:
        check_shape(cos, (batch, seq, dim // 2), "cos (B, T, D/2)")
    if sin.shape != cos.shape:
        raise ShapeError(
            f"sin: expected the shape of cos {tuple(cos.shape)}, got {tuple(sin.shape)}"
        )
    check_dtype(x, FLOAT_DTYPES, "x")
    check_dtype(cos, FLOAT_DTYPES, "cos")
    check_dtype(sin, FLOAT_DTYPES, "sin")
    _same_device({"x": x, "cos": cos, "sin": sin})


def triton_dtype_unsupported(*tensors: torch.Tensor) -> str | None:
    """Reason string when a tensor's dtype has no Triton kernel (float64, ...)."""
    for t in tensors:
        if t.dtype not in TRITON_DTYPES:
            return f"dtype {_dtype_names((t.dtype,))} (supported: {_dtype_names(TRITON_DTYPES)})"
    return None


def triton_attention_unsupported(q: torch.Tensor) -> str | None:
    """Reason string when the Triton attention cannot take ``q``'s dtype or head dim."""
    low, high = ATTENTION_HEAD_DIMS
    head_dim = q.shape[-1]
    if not low <= head_dim <= high:
        return f"head dim {head_dim} (supported: {low} to {high})"
    return triton_dtype_unsupported(q)


def triton_norm_unsupported(x: torch.Tensor, *params: torch.Tensor | None) -> str | None:
    """Reason string when a LayerNorm/RMSNorm row is too wide or a dtype is unsupported."""
    if x.shape[-1] > MAX_NORM_WIDTH:
        return f"normalised width {x.shape[-1]} (supported: up to {MAX_NORM_WIDTH})"
    return triton_dtype_unsupported(x, *(p for p in params if p is not None))
