"""Plain-PyTorch reference implementations of every kernel.

These are the definitions the Triton kernels must reproduce. They are written for clarity,
not speed: each one is a few lines of ordinary tensor code and autograd computes its
gradients. Inputs are assumed valid here; :mod:`llmcourse.kernels` checks them first.
"""

from __future__ import annotations

import torch

__all__ = [
    "attention",
    "attention_allowed_mask",
    "layer_norm",
    "rms_norm",
    "cross_entropy",
    "lstm_cell",
    "apply_rope",
    "rope_cos_sin",
]


def attention_allowed_mask(
    tq: int,
    tk: int,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean mask of the (query, key) pairs that may attend, or ``None`` when all may.

    Shape (B, 1, Tq, Tk) with a key padding mask, else (1, 1, Tq, Tk). With ``causal`` and
    Tq < Tk the queries are the LAST Tq positions (KV-cache decoding): query i sees the keys
    j <= Tk - Tq + i.
    """
    allowed = None
    if causal:
        q_pos = torch.arange(tq, device=device)[:, None] + (tk - tq)  # absolute query position
        k_pos = torch.arange(tk, device=device)[None, :]
        allowed = (k_pos <= q_pos)[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        real_keys = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        allowed = real_keys if allowed is None else allowed & real_keys
        allowed = allowed.expand(-1, -1, tq, -1)
    return allowed


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, materialising the full (Tq, Tk) score matrix.

    q: (B, H, Tq, D), k/v: (B, H, Tk, D), key_padding_mask: (B, Tk) bool (True = real token).
    A query that may see no key at all (every key padded, or causal with Tq > Tk) gets an
    all-zero output row and zero gradients, instead of the NaN of a softmax over nothing.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # Compute in float32 at least: fp16 scores overflow and bf16 sums lose digits.
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(compute_dtype) @ k.to(compute_dtype).transpose(-2, -1)) * scale  # (B,H,Tq,Tk)
    allowed = attention_allowed_mask(
        q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=key_padding_mask, device=q.device
    )
    if allowed is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        # Masked logits become -inf so they get probability 0. A row with no allowed key would
        # be softmax(-inf, ..., -inf) = NaN, so such rows are replaced by zeros before the
        # softmax and their (uniform) probabilities are multiplied by 0 afterwards.
        row_has_key = allowed.any(dim=-1, keepdim=True)
        scores = scores.masked_fill(~allowed, float("-inf"))
        scores = torch.where(row_has_key, scores, torch.zeros_like(scores))
        probs = torch.softmax(scores, dim=-1) * allowed
    return (probs @ v.to(compute_dtype)).to(q.dtype)  # (B, H, Tq, D)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim; biased variance."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = xf.mean(dim=-1, keepdim=True)
    var = (xf - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim (no mean subtraction, no bias)."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y.to(x.dtype)


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy: logsumexp(logits) - logits[target], per row.

    logits: (N, V), targets: (N,) long. Rows whose target is ``ignore_index`` contribute 0 and
    are left out of the ``"mean"`` denominator (as in ``torch.nn.functional.cross_entropy``).
    """
    lf = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    keep = targets != ignore_index  # (N,)
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    target_logit = lf.gather(1, safe_targets[:, None]).squeeze(1)  # (N,)
    losses = (torch.logsumexp(lf, dim=-1) - target_logit) * keep  # (N,)
    if reduction == "none":
        return losses.to(logits.dtype)
    if reduction == "sum":
        return losses.sum().to(logits.dtype)
    return (losses.sum() / keep.sum()).to(logits.dtype)  # 0/0 = nan when all are ignored


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step from pre-activations ``gates`` (B, 4H) in the order i, f, g, o.

    c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c).
    Returns (h, c), both (B, H).
    """
    gf = gates.float() if gates.dtype in (torch.float16, torch.bfloat16) else gates
    cf = c_prev.to(gf.dtype)
    i, f, g, o = gf.chunk(4, dim=-1)
    c = torch.sigmoid(f) * cf + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.to(gates.dtype), c.to(c_prev.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[..., i], x[..., i + D/2]) by the angle whose cos/sin are given.

    x: (B, H, T, D); cos/sin: (T, D/2) or (B, T, D/2). This is the "rotate half" layout of
    Hugging Face LLaMA: out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin.
    """
    half = x.shape[-1] // 2
    if cos.dim() == 3:  # (B, T, D/2) -> (B, 1, T, D/2) broadcasts over heads
        cos, sin = cos[:, None], sin[:, None]
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles pos * base^(-2i / head_dim), i = 0 .. head_dim/2 - 1.

    positions: (T,) or (B, T) integer; returns two tensors of shape positions.shape + (D/2,).
    Angles are computed in float32 (float64 if requested) and only then cast to ``dtype``.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=work) / head_dim
    inv_freq = base**-exponents  # (D/2,)
    angles = positions.to(work)[..., None] * inv_freq  # (..., T, D/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)
