"""Rotary position embedding (RoPE) forward and backward in Triton.

RoPE rotates each pair of features (x1, x2) = (x[..., i], x[..., i + D/2]) of the token at
position t by the angle theta_{t,i}:

    out1 = x1 cos - x2 sin
    out2 = x2 cos + x1 sin

A rotation is orthogonal, so its backward is the rotation by -theta (the transpose): the same
kernel with the sign of sin flipped (``INVERSE=True``). No activations need saving, only the
cos/sin tables, which the model keeps anyway.

Tiling: one program per (batch*head, block of BLOCK_T positions) loads the two halves of its
(BLOCK_T, D) tile of x plus the matching (BLOCK_T, D/2) tiles of cos and sin, and writes the
rotated tile. Half widths that are not a power of two are padded and masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["apply_rope", "rope_rotate", "RopeFunction"]

BLOCK_T = 16  # positions per program


@triton.jit
def _rope_kernel(
    X, COS, SIN, OUT,
    stride_xb, stride_xh, stride_xt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    n_heads, seq_len, half,
    INVERSE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    batch_head = tl.program_id(0)
    b = batch_head // n_heads
    h = batch_head % n_heads
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_i = tl.arange(0, BLOCK_HALF)
    mask = (offs_t[:, None] < seq_len) & (offs_i[None, :] < half)

    x_tile = X + b * stride_xb + h * stride_xh + offs_t[:, None] * stride_xt + offs_i[None, :]
    x1 = tl.load(x_tile, mask=mask, other=0.0).to(tl.float32)  # first halves
    x2 = tl.load(x_tile + half, mask=mask, other=0.0).to(tl.float32)  # second halves
    table = b * stride_cb + offs_t[:, None] * stride_ct + offs_i[None, :]  # stride_cb = 0: shared
    cos = tl.load(COS + table, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + table, mask=mask, other=0.0).to(tl.float32)
    if INVERSE:
        sin = -sin  # rotating by -theta undoes (and differentiates) the rotation by theta

    out_tile = OUT + b * stride_ob + h * stride_oh + offs_t[:, None] * stride_ot + offs_i[None, :]
    tl.store(out_tile, (x1 * cos - x2 * sin).to(OUT.dtype.element_ty), mask=mask)
    tl.store(out_tile + half, (x2 * cos + x1 * sin).to(OUT.dtype.element_ty), mask=mask)


def rope_rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the angles of cos/sin ((T, D/2) or (B, T, D/2)); -angles if inverse."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    batch, heads, seq_len, dim = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    stride_cb = cos.stride(0) if cos.dim() == 3 else 0
    grid = (batch * heads, triton.cdiv(seq_len, BLOCK_T))
    _rope_kernel[grid](
        x, cos, sin, out,
        *x.stride()[:3], *out.stride()[:3],
        stride_cb, cos.stride(-2),
        heads, seq_len, dim // 2,
        INVERSE=inverse,
        BLOCK_T=BLOCK_T,
        BLOCK_HALF=triton.next_power_of_2(dim // 2),
    )  # fmt: skip
    return out


class RopeFunction(torch.autograd.Function):
    """Forward rotates by theta, backward by -theta; cos/sin are treated as constants."""

    @staticmethod
    def forward(ctx, x, cos, sin):  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        return rope_rotate(x, cos, sin)

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return rope_rotate(grad_out, cos, sin, inverse=True), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Triton path of :func:`llmcourse.kernels.apply_rope`."""
    return RopeFunction.apply(x, cos, sin)
