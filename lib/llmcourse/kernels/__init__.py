"""llmcourse.kernels: the hot paths of the course's models, as Triton GPU kernels.

Every model in the library calls these functions and nothing else for attention, the norms,
the loss, the LSTM cell and RoPE. Each function checks its input, then runs either

* the Triton kernel (a ``torch.autograd.Function`` with a hand-written backward) on CUDA, or
* the plain-PyTorch reference in :mod:`llmcourse.kernels.reference` (autograd backward), or,
  under ``auto`` where it computes the same thing, PyTorch's fused built-in operator
  (:mod:`llmcourse.kernels.builtin`: ``F.scaled_dot_product_attention``, ``F.layer_norm``, ...),

as chosen by :func:`llmcourse.kernels.backend.choose_backend` and the environment variable
``LLMCOURSE_KERNELS=auto|triton|reference``. Both paths are differentiable and agree within
the tolerances documented in ``book/kernels_on_gpu.md``.
"""

from __future__ import annotations

import torch

from llmcourse.kernels import builtin, checks, reference
from llmcourse.kernels.backend import (
    BACKEND_ENV_VAR,
    BACKENDS,
    choose_backend,
    requested_backend,
    triton_available,
)

__all__ = [
    "attention",
    "layer_norm",
    "rms_norm",
    "cross_entropy",
    "lstm_cell",
    "apply_rope",
    "rope_cos_sin",
    "BACKEND_ENV_VAR",
    "BACKENDS",
    "requested_backend",
    "triton_available",
]


def _builtin_allowed() -> bool:
    """PyTorch's fused built-ins stand in for the reference only under ``auto``."""
    return requested_backend() == "auto"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention, softmax(q k^T * scale) v, with optional masks.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); key_padding_mask: (B, Tk) bool, True = real token.
    ``causal`` with Tq < Tk aligns the queries to the END of the keys (KV cache): query i sees
    keys j <= Tk - Tq + i. ``scale`` defaults to 1/sqrt(D). A query with no visible key gets
    a zero output row. Returns (B, H, Tq, D) in q's dtype.
    """
    checks.validate_attention(q, k, v, key_padding_mask, scale)
    unsupported = checks.triton_attention_unsupported(q)
    if choose_backend("attention", q.device, unsupported) == "triton":
        from llmcourse.kernels import triton_attention

        return triton_attention.attention(
            q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale
        )
    if _builtin_allowed():
        out = builtin.attention(
            q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale
        )
        if out is not None:
            return out
    return reference.attention(
        q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale
    )


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias.

    x: (..., C); weight, bias: (C,) or None. Returns x's shape and dtype.
    """
    checks.validate_norm(x, weight, bias, eps)
    unsupported = checks.triton_norm_unsupported(x, weight, bias)
    if choose_backend("layer_norm", x.device, unsupported) == "triton":
        from llmcourse.kernels import triton_norms

        return triton_norms.layer_norm(x, weight, bias, eps)
    out = builtin.layer_norm(x, weight, bias, eps) if _builtin_allowed() else None
    return out if out is not None else reference.layer_norm(x, weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight.

    x: (..., C); weight: (C,) or None. Returns x's shape and dtype.
    """
    checks.validate_norm(x, weight, None, eps)
    unsupported = checks.triton_norm_unsupported(x, weight)
    if choose_backend("rms_norm", x.device, unsupported) == "triton":
        from llmcourse.kernels import triton_norms

        return triton_norms.rms_norm(x, weight, eps)
    out = builtin.rms_norm(x, weight, eps) if _builtin_allowed() else None
    return out if out is not None else reference.rms_norm(x, weight, eps)


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy of ``logits`` (N, V) against class ids ``targets`` (N,).

    Rows with ``targets == ignore_index`` count 0 and are left out of the mean.
    ``reduction``: ``"mean"`` (scalar), ``"sum"`` (scalar) or ``"none"`` (N,).
    """
    checks.validate_cross_entropy(logits, targets, reduction)
    unsupported = checks.triton_dtype_unsupported(logits)
    if choose_backend("cross_entropy", logits.device, unsupported) == "triton":
        from llmcourse.kernels import triton_cross_entropy

        return triton_cross_entropy.cross_entropy(
            logits, targets, ignore_index=ignore_index, reduction=reduction
        )
    if _builtin_allowed():
        out = builtin.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
        if out is not None:
            return out
    return reference.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step from pre-activations.

    gates: (B, 4H) = x W_ih^T + h W_hh^T + biases, in torch.nn.LSTM order i, f, g, o;
    c_prev: (B, H). Returns (h, c), each (B, H).
    """
    checks.validate_lstm_cell(gates, c_prev)
    unsupported = checks.triton_dtype_unsupported(gates, c_prev)
    if choose_backend("lstm_cell", gates.device, unsupported) == "triton":
        from llmcourse.kernels import triton_lstm

        return triton_lstm.lstm_cell(gates, c_prev)
    return reference.lstm_cell(gates, c_prev)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, "rotate half" layout (pairs x[..., i], x[..., i + D/2]).

    x: (B, H, T, D); cos, sin: (T, D/2) or (B, T, D/2) from :func:`rope_cos_sin`.
    The Triton path does not differentiate with respect to cos/sin; when they require grad,
    ``auto`` uses the reference (and a forced ``triton`` raises).
    """
    checks.validate_rope(x, cos, sin)
    unsupported = checks.triton_dtype_unsupported(x, cos, sin)
    if unsupported is None and (cos.requires_grad or sin.requires_grad):
        unsupported = "cos/sin that require grad (the kernel treats them as constants)"
    if choose_backend("apply_rope", x.device, unsupported) == "triton":
        from llmcourse.kernels import triton_rope

        return triton_rope.apply_rope(x, cos, sin)
    return reference.apply_rope(x, cos, sin)


def rope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for :func:`apply_rope`: angle = position * base^(-2i / head_dim).

    positions: (T,) or (B, T) integer. Returns (cos, sin), each positions.shape + (head_dim/2,).
    """
    if positions.dim() not in (1, 2) or positions.is_floating_point():
        raise ValueError(
            f"positions must be a (T,) or (B, T) integer tensor, got shape "
            f"{tuple(positions.shape)} and dtype {positions.dtype}"
        )
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    if not base > 0:
        raise ValueError(f"base must be positive, got {base}")
    return reference.rope_cos_sin(positions, head_dim, base=base, dtype=dtype)
