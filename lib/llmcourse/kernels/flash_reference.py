"""FlashAttention-2, written in plain PyTorch one tile at a time (the algorithm of the kernel).

:func:`llmcourse.kernels.reference.attention` builds the whole (Tq, Tk) score matrix. This
module computes the same result while only ever holding one (block_m, block_n) tile of scores,
exactly as the Triton kernel in :mod:`llmcourse.kernels.triton_attention` does, so that the
algorithm can be read (and stepped through) without a GPU. It is slow: Python loops over tiles.

The three stages, each with its own function and test:

1. **Forward** (:func:`flash_forward`): for each block of queries, sweep the key blocks and keep
   an *online softmax*: the running row maximum ``m``, the running sum of exponentials ``l`` and
   the running un-normalised output ``acc``. When a new tile raises the maximum from ``m`` to
   ``m_new``, everything accumulated so far is rescaled by ``exp(m - m_new)``. At the end
   ``out = acc / l`` and the log-sum-exp ``lse = m + log(l)`` is saved for the backward.
2. **dK and dV** (:func:`flash_backward_dkdv`): for each block of keys, sweep the query blocks.
   The probabilities are rebuilt from the saved lse, ``P = exp(S - lse)``, so the forward never
   stored P. Then ``dV += P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - delta)`` and
   ``dK += scale * dS^T Q``, where ``delta = rowsum(dO * O)`` (:func:`attention_delta`).
3. **dQ** (:func:`flash_backward_dq`): for each block of queries, sweep the key blocks again and
   accumulate ``dQ += scale * dS K``.

Why ``delta``: the softmax backward for one row is ``dS_j = P_j (dP_j - sum_k P_k dP_k)``, and
``sum_k P_k dP_k = sum_k P_k (dO . V_k) = dO . O``: one dot product per row, known before any
tile is visited.

Masks: a (query, key) pair is allowed when the key is not padding and, for ``causal``, when the
key position is <= the query's absolute position ``i + (Tk - Tq)``. A query row with no allowed
key gets output 0 and ``lse = +inf`` (so that ``exp(S - lse) = 0`` in the backward).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "tile_allowed",
    "flash_forward",
    "attention_delta",
    "flash_backward_dkdv",
    "flash_backward_dq",
    "flash_attention",
]


def tile_allowed(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    *,
    seq_q: int,
    seq_k: int,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Which (query, key) pairs of one tile may attend: (B or 1, 1, len(q_idx), len(k_idx)) bool."""
    allowed = torch.ones(len(q_idx), len(k_idx), dtype=torch.bool, device=q_idx.device)
    if causal:
        allowed &= k_idx[None, :] <= q_idx[:, None] + (seq_k - seq_q)
    allowed = allowed[None, None]  # (1, 1, bm, bn)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, k_idx][:, None, None, :]  # (B, 1, bm, bn)
    return allowed


def _tiles(length: int, block: int, device: torch.device) -> list[torch.Tensor]:
    """Index ranges [0, block), [block, 2 block), ...; the last one may be shorter."""
    return [torch.arange(s, min(s + block, length), device=device) for s in range(0, length, block)]


def flash_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled attention forward. Returns out (B, H, Tq, D) in q's dtype and lse (B, H, Tq) float32+.

    Accumulation is in float32 (float64 for float64 inputs), as in the kernel.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    batch, heads, seq_q, dim = q.shape
    seq_k = k.shape[2]
    out = torch.empty(batch, heads, seq_q, dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, seq_q, dtype=acc_dtype, device=q.device)
    mask = None if key_padding_mask is None else key_padding_mask.to(q.device)
    for qi in _tiles(seq_q, block_m, q.device):
        q_tile = q[:, :, qi].to(acc_dtype)  # (B, H, bm, D)
        m = torch.full((batch, heads, len(qi)), -math.inf, dtype=acc_dtype, device=q.device)
        l = torch.zeros_like(m)  # noqa: E741 - the paper's name for the running sum
        acc = torch.zeros(batch, heads, len(qi), dim, dtype=acc_dtype, device=q.device)
        for ki in _tiles(seq_k, block_n, q.device):
            s = q_tile @ k[:, :, ki].to(acc_dtype).transpose(-2, -1) * scale  # (B, H, bm, bn)
            allowed = tile_allowed(
                qi, ki, seq_q=seq_q, seq_k=seq_k, causal=causal, key_padding_mask=mask
            )
            s = s.masked_fill(~allowed, -math.inf)
            m_new = torch.maximum(m, s.amax(dim=-1))
            # A row that has seen only masked keys still has m_new = -inf; subtracting -inf
            # would give NaN, so such rows use 0 (their exponentials are all exp(-inf) = 0).
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - m_safe[..., None])  # (B, H, bm, bn), un-normalised
            correction = torch.exp(m - m_safe)  # rescales what was summed under the old max
            l = l * correction + p.sum(dim=-1)  # noqa: E741
            acc = acc * correction[..., None] + p @ v[:, :, ki].to(acc_dtype)
            m = m_new
        empty = l == 0
        out[:, :, qi] = (acc / torch.where(empty, 1.0, l)[..., None]).to(q.dtype)
        lse[:, :, qi] = torch.where(empty, math.inf, m + torch.log(l))
    return out, lse


def attention_delta(out: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """delta = rowsum(dO * O): (B, H, Tq), in float32 (float64 for float64 input)."""
    acc_dtype = torch.promote_types(out.dtype, torch.float32)
    return (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(dim=-1)


def _probs_tile(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    qi: torch.Tensor,
    ki: torch.Tensor,
    scale: float,
    causal: bool,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Rebuild P = exp(S - lse) for one tile from the saved log-sum-exp: (B, H, bm, bn)."""
    acc_dtype = lse.dtype
    s = q[:, :, qi].to(acc_dtype) @ k[:, :, ki].to(acc_dtype).transpose(-2, -1) * scale
    allowed = tile_allowed(
        qi, ki, seq_q=q.shape[2], seq_k=k.shape[2], causal=causal, key_padding_mask=mask
    )
    return torch.where(allowed, torch.exp(s - lse[:, :, qi, None]), 0.0)


def flash_backward_dkdv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    delta: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 of the backward: (dK, dV), each (B, H, Tk, D) in k's dtype.

    The outer loop runs over key blocks, so each dK/dV tile is owned by one loop iteration
    (one GPU program) and is written once, without atomics.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    acc_dtype = lse.dtype
    grad_k = torch.empty_like(k)
    grad_v = torch.empty_like(v)
    for ki in _tiles(k.shape[2], block_n, q.device):
        dk = torch.zeros(*k.shape[:2], len(ki), k.shape[3], dtype=acc_dtype, device=k.device)
        dv = torch.zeros_like(dk)
        for qi in _tiles(q.shape[2], block_m, q.device):
            p = _probs_tile(q, k, lse, qi, ki, scale, causal, key_padding_mask)  # (B,H,bm,bn)
            do = grad_out[:, :, qi].to(acc_dtype)  # (B, H, bm, D)
            dv += p.transpose(-2, -1) @ do
            dp = do @ v[:, :, ki].to(acc_dtype).transpose(-2, -1)  # (B, H, bm, bn)
            ds = p * (dp - delta[:, :, qi, None])  # softmax backward, one tile
            dk += ds.transpose(-2, -1) @ q[:, :, qi].to(acc_dtype)
        grad_k[:, :, ki] = (dk * scale).to(k.dtype)
        grad_v[:, :, ki] = dv.to(v.dtype)
    return grad_k, grad_v


def flash_backward_dq(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    delta: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """Stage 3 of the backward: dQ (B, H, Tq, D) in q's dtype; outer loop over query blocks."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    acc_dtype = lse.dtype
    grad_q = torch.empty_like(q)
    for qi in _tiles(q.shape[2], block_m, q.device):
        dq = torch.zeros(*q.shape[:2], len(qi), q.shape[3], dtype=acc_dtype, device=q.device)
        do = grad_out[:, :, qi].to(acc_dtype)
        for ki in _tiles(k.shape[2], block_n, q.device):
            p = _probs_tile(q, k, lse, qi, ki, scale, causal, key_padding_mask)
            dp = do @ v[:, :, ki].to(acc_dtype).transpose(-2, -1)
            ds = p * (dp - delta[:, :, qi, None])
            dq += ds @ k[:, :, ki].to(acc_dtype)
        grad_q[:, :, qi] = (dq * scale).to(q.dtype)
    return grad_q


class _FlashAttentionReference(torch.autograd.Function):
    """Autograd wrapper: forward = stage 1, backward = stages 2 and 3."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, scale, block_m, block_n):  # type: ignore[override]
        opts = dict(
            causal=causal,
            key_padding_mask=key_padding_mask,
            scale=scale,
            block_m=block_m,
            block_n=block_n,
        )
        out, lse = flash_forward(q, k, v, **opts)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.opts = opts
        return out

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        delta = attention_delta(out, grad_out)
        dk, dv = flash_backward_dkdv(q, k, v, lse, grad_out, delta, **ctx.opts)
        dq = flash_backward_dq(q, k, v, lse, grad_out, delta, **ctx.opts)
        return dq, dk, dv, None, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """Differentiable tiled attention (forward and staged backward above); (B, H, Tq, D).

    Works in float64 too, so ``torch.autograd.gradcheck`` can verify the hand-written backward.
    """
    return _FlashAttentionReference.apply(
        q, k, v, key_padding_mask, causal, scale, block_m, block_n
    )
