"""FlashAttention-2 forward and backward in Triton.

The algorithm is the one spelled out in plain PyTorch in
:mod:`llmcourse.kernels.flash_reference`; read that first. Here each loop over tiles becomes a
GPU *program* (one instance per output tile, launched on a grid):

* forward: grid (query blocks, B*H). A program loads its (BLOCK_M, D) block of queries once,
  sweeps the key/value blocks with an online softmax, writes its output block and the row
  log-sum-exp (lse). The (Tq, Tk) score matrix never exists in memory: only one
  (BLOCK_M, BLOCK_N) tile lives in registers at a time.
* backward, stage dK/dV: grid (key blocks, B*H). A program owns one block of keys and values,
  sweeps all query blocks, rebuilds P = exp(S - lse), and accumulates dV and dK.
* backward, stage dQ: grid (query blocks, B*H). A program owns one block of queries, sweeps
  the key blocks and accumulates dQ.

Splitting the backward into two passes recomputes S and P once more, but every output tile is
then written by exactly one program: no atomic adds, deterministic results.

Numerics: the matrix products run in the input dtype (fp16/bf16 on tensor cores; fp32 in full
IEEE precision unless PyTorch's TF32 switch is on) and accumulate in float32; the softmax
statistics (m, l, lse, delta) are float32. Exponentials use exp2 with the scale pre-multiplied by log2(e), which is what
the hardware computes natively.

Padding: head dims that are not a power of two are padded up to BLOCK_D with masked loads
(zeros add nothing to dot products); sequence lengths that are not a multiple of the block
size are handled the same way at the edges, and out-of-range keys are masked to -inf.

Strides: q, k, v may be views with gaps (in the models they are slices of one fused (B, T, 3C)
projection); every tensor, inputs and outputs alike, is addressed with its *own* strides.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from llmcourse.kernels.backend import interpreter_enabled
from llmcourse.kernels.flash_reference import attention_delta
from llmcourse.kernels.launch import launch_first_fitting

__all__ = [
    "attention",
    "attention_forward",
    "attention_backward_dkdv",
    "attention_backward_dq",
    "FlashAttentionFunction",
]

LOG2_E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2_E)


@triton.jit
def _matmul(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with a float32 result. ``UPCAST`` works around the CPU interpreter, whose dot
    multiplies the raw bits of bfloat16 values; on a GPU it is False and compiles away."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _allowed_tile(
    offs_m,
    offs_n,
    seq_q,
    seq_k,
    keep_row_ptr,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) bool: which (query, key) pairs of this tile may attend."""
    allowed = (offs_m[:, None] < seq_q) & (offs_n[None, :] < seq_k)
    if HAS_KEY_MASK:
        keep = tl.load(keep_row_ptr + offs_n, mask=offs_n < seq_k, other=0)
        allowed = allowed & (keep[None, :] != 0)
    if CAUSAL:
        # queries are the last seq_q positions: absolute position of query i is i + seq_k - seq_q
        allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + (seq_k - seq_q))
    return allowed


@triton.jit
def _attention_forward_kernel(
    Q, K, V, OUT, LSE, KEEP,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_keep_b,
    n_heads, seq_q, seq_k, head_dim,
    scale,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    block_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this program
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < seq_q) & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    keep_row = KEEP + b * stride_keep_b

    # Online-softmax state for each query row, all float32.
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running sum of p @ v
    scale_log2 = scale * LOG2_E  # work in base 2: exp(x) = exp2(x * log2(e))

    # With a causal mask, key blocks beyond the last query's position are skipped entirely.
    kv_end = seq_k
    if CAUSAL:
        kv_end = tl.minimum(seq_k, (block_m + 1) * BLOCK_M + seq_k - seq_q)
    for start_n in range(0, kv_end, BLOCK_N):
        offs_n = start_n + offs_n0
        kv_mask = (offs_n[:, None] < seq_k) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)

        s = _matmul(q, tl.trans(k), PRECISION, UPCAST) * scale_log2  # (BLOCK_M, BLOCK_N)
        allowed = _allowed_tile(offs_m, offs_n, seq_q, seq_k, keep_row, CAUSAL, HAS_KEY_MASK)
        s = tl.where(allowed, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows that have seen no allowed key yet keep m = -inf; use 0 so that s - m is -inf
        # (giving p = 0) instead of -inf - (-inf) = NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])  # un-normalised probabilities of this tile
        correction = tl.math.exp2(m_i - m_safe)  # rescale the old sums to the new maximum
        l_i = l_i * correction + tl.sum(p, axis=1)
        acc = acc * correction[:, None] + _matmul(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new

    empty = l_i == 0.0  # no allowed key at all: output 0, lse = +inf (see flash_reference)
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) / LOG2_E)  # natural log

    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=(offs_m[:, None] < seq_q) & d_ok[None, :])
    tl.store(LSE + batch_head * seq_q + offs_m, lse, mask=offs_m < seq_q)


@triton.jit
def _attention_backward_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, KEEP, DK, DV,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    stride_keep_b,
    n_heads, seq_q, seq_k, head_dim,
    scale,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    block_n = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads

    offs_n = block_n * BLOCK_N + tl.arange(0, BLOCK_N)  # key rows owned by this program
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    kv_mask = (offs_n[:, None] < seq_k) & d_ok[None, :]

    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    keep_row = KEEP + b * stride_keep_b

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    scale_log2 = scale * LOG2_E

    # With a causal mask, query blocks that end before this key block's first key cannot see
    # it: start at the block holding query i = first_key - (seq_k - seq_q).
    q_start = 0
    if CAUSAL:
        first_query = tl.maximum(block_n * BLOCK_N - (seq_k - seq_q), 0)
        q_start = (first_query // BLOCK_M) * BLOCK_M
    for start_m in range(q_start, seq_q, BLOCK_M):
        offs_m = start_m + offs_m0
        q_mask = (offs_m[:, None] < seq_q) & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(
            do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=q_mask, other=0.0
        )
        lse = tl.load(LSE + batch_head * seq_q + offs_m, mask=offs_m < seq_q, other=float("inf"))
        delta = tl.load(DELTA + batch_head * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
        lse_log2 = lse * LOG2_E

        # Rebuild this tile's probabilities from the saved lse: P = exp(S - lse).
        s = _matmul(q, tl.trans(k), PRECISION, UPCAST)  # (BLOCK_M, BLOCK_N), unscaled
        allowed = _allowed_tile(offs_m, offs_n, seq_q, seq_k, keep_row, CAUSAL, HAS_KEY_MASK)
        p = tl.math.exp2(tl.where(allowed, s * scale_log2 - lse_log2[:, None], float("-inf")))

        dv += _matmul(tl.trans(p.to(do.dtype)), do, PRECISION, UPCAST)  # dV = P^T dO
        dp = _matmul(do, tl.trans(v), PRECISION, UPCAST)  # dP = dO V^T
        ds = p * (dp - delta[:, None])  # softmax backward: dS = P * (dP - rowsum(dO * O))
        dk += _matmul(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST)  # dK = dS^T Q

    dk = dk * scale  # S = scale * Q K^T, so dK picks up the scale once, at the end
    # dK and dV have their own strides: K and V are often views into a fused qkv projection
    # (row stride 3C), while the gradients are fresh dense tensors (row stride C).
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :]
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attention_backward_dq_kernel(
    Q, K, V, DO, LSE, DELTA, KEEP, DQ,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    stride_keep_b,
    n_heads, seq_q, seq_k, head_dim,
    scale,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    block_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows owned by this program
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_mask = (offs_m[:, None] < seq_q) & d_ok[None, :]

    q_offs = offs_m[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + q_offs, mask=q_mask, other=0.0)
    do_offs = offs_m[:, None] * stride_dot + offs_d[None, :]
    do = tl.load(DO + b * stride_dob + h * stride_doh + do_offs, mask=q_mask, other=0.0)
    lse = tl.load(LSE + batch_head * seq_q + offs_m, mask=offs_m < seq_q, other=float("inf"))
    delta = tl.load(DELTA + batch_head * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    lse_log2 = lse * LOG2_E
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    keep_row = KEEP + b * stride_keep_b

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    scale_log2 = scale * LOG2_E
    kv_end = seq_k
    if CAUSAL:
        kv_end = tl.minimum(seq_k, (block_m + 1) * BLOCK_M + seq_k - seq_q)
    for start_n in range(0, kv_end, BLOCK_N):
        offs_n = start_n + offs_n0
        kv_mask = (offs_n[:, None] < seq_k) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)

        s = _matmul(q, tl.trans(k), PRECISION, UPCAST)
        allowed = _allowed_tile(offs_m, offs_n, seq_q, seq_k, keep_row, CAUSAL, HAS_KEY_MASK)
        p = tl.math.exp2(tl.where(allowed, s * scale_log2 - lse_log2[:, None], float("-inf")))
        dp = _matmul(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _matmul(ds.to(k.dtype), k, PRECISION, UPCAST)  # dQ = dS K

    dq = dq * scale
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=q_mask)  # dQ's own strides, not Q's


# ----------------------------------------------------------------------------- host side


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels index rows with strides but assume neighbouring features are adjacent."""
    return t if t.stride(-1) == 1 else t.contiguous()


# Tile configurations, fastest first; launch_first_fitting falls back along the list on GPUs
# with less shared memory. BLOCK_M = query rows per tile, BLOCK_N = key rows per tile.
TILE_CONFIGS = (
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1),
    dict(BLOCK_M=16, BLOCK_N=16, num_warps=2, num_stages=1),
)


def _constexprs(q: torch.Tensor, causal: bool, key_padding_mask: torch.Tensor | None) -> dict:
    """Compile-time settings shared by the three kernels."""
    if q.dtype == torch.float32:
        # Follow PyTorch's own switch (torch.backends.cuda.matmul.allow_tf32, False by default):
        # TF32 tensor cores are much faster but keep only ~3 decimal digits of each product.
        # TF32 needs an Ampere or newer GPU (compute capability 8.0+).
        tf32_ok = q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 8
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 and tf32_ok else "ieee"
    else:
        precision = "tf32"  # ignored for fp16/bf16 inputs
    return dict(
        CAUSAL=causal,
        HAS_KEY_MASK=key_padding_mask is not None,
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[-1])),  # head dim padded to a power of 2
        PRECISION=precision,
        UPCAST=q.dtype == torch.bfloat16 and interpreter_enabled(),
    )


def _launch(
    kernel,
    grid: Callable[[dict], tuple[int, int]],
    args: tuple,
    constexprs: dict,
    block_m: int | None,
    block_n: int | None,
) -> None:
    """Run ``kernel`` with the given tile sizes, or the first default configuration that fits."""
    if block_m is not None or block_n is not None:
        configs = [dict(BLOCK_M=block_m or 64, BLOCK_N=block_n or 64, num_warps=4, num_stages=1)]
    else:
        configs = TILE_CONFIGS
    device = args[0].device
    key = (kernel.__name__, device.type, device.index, args[0].dtype, tuple(constexprs.items()))
    launch_first_fitting(kernel, grid, args, constexprs, configs, key)


def _keep_mask(key_padding_mask: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The key mask as uint8 (same bytes as bool) and its batch stride; a dummy when absent."""
    if key_padding_mask is None:
        return torch.empty(1, dtype=torch.uint8, device=q.device), 0
    keep = _unit_last_stride(key_padding_mask).view(torch.uint8)
    return keep, keep.stride(0)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass. Returns out (B, H, Tq, D) in q's dtype and lse (B, H, Tq) float32."""
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_q, dtype=torch.float32, device=q.device)
    keep, stride_keep = _keep_mask(key_padding_mask, q)
    args = (
        q, k, v, out, lse, keep,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        stride_keep,
        heads, seq_q, seq_k, head_dim,
        scale,
    )  # fmt: skip
    grid = lambda cfg: (triton.cdiv(seq_q, cfg["BLOCK_M"]), batch * heads)  # one per query block
    _launch(
        _attention_forward_kernel, grid, args, _constexprs(q, causal, key_padding_mask),
        block_m, block_n,
    )  # fmt: skip
    return out, lse


def _backward_args(q, k, v, lse, grad_out, delta, key_padding_mask):
    q, k, v, grad_out = (_unit_last_stride(t) for t in (q, k, v, grad_out))
    keep, stride_keep = _keep_mask(key_padding_mask, q)
    return q, k, v, grad_out, lse.contiguous(), delta.contiguous(), keep, stride_keep


def attention_backward_dkdv(
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
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward stage 1: (dK, dV), each (B, H, Tk, D). ``delta`` = rowsum(dO * O), float32."""
    q, k, v, grad_out, lse, delta, keep, stride_keep = _backward_args(
        q, k, v, lse, grad_out, delta, key_padding_mask
    )
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
    args = (
        q, k, v, grad_out, lse, delta, keep, grad_k, grad_v,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3],
        *grad_k.stride()[:3], *grad_v.stride()[:3],
        stride_keep,
        heads, seq_q, seq_k, head_dim,
        scale,
    )  # fmt: skip
    grid = lambda cfg: (triton.cdiv(seq_k, cfg["BLOCK_N"]), batch * heads)  # one per key block
    _launch(
        _attention_backward_dkdv_kernel, grid, args, _constexprs(q, causal, key_padding_mask),
        block_m, block_n,
    )  # fmt: skip
    return grad_k, grad_v


def attention_backward_dq(
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
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Backward stage 2: dQ (B, H, Tq, D)."""
    q, k, v, grad_out, lse, delta, keep, stride_keep = _backward_args(
        q, k, v, lse, grad_out, delta, key_padding_mask
    )
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    grad_q = torch.empty_like(q)
    args = (
        q, k, v, grad_out, lse, delta, keep, grad_q,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3],
        *grad_q.stride()[:3],
        stride_keep,
        heads, seq_q, seq_k, head_dim,
        scale,
    )  # fmt: skip
    grid = lambda cfg: (triton.cdiv(seq_q, cfg["BLOCK_M"]), batch * heads)  # one per query block
    _launch(
        _attention_backward_dq_kernel, grid, args, _constexprs(q, causal, key_padding_mask),
        block_m, block_n,
    )  # fmt: skip
    return grad_q


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd glue: the forward saves (q, k, v, out, lse); the backward runs both stages."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, scale, block_m, block_n):  # type: ignore[override]
        opts = dict(
            causal=causal,
            key_padding_mask=key_padding_mask,
            scale=scale,
            block_m=block_m,
            block_n=block_n,
        )
        out, lse = attention_forward(q, k, v, **opts)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.opts = opts
        return out

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        delta = attention_delta(out, grad_out)  # (B, H, Tq) float32, one dot product per row
        grad_k, grad_v = attention_backward_dkdv(q, k, v, lse, grad_out, delta, **ctx.opts)
        grad_q = attention_backward_dq(q, k, v, lse, grad_out, delta, **ctx.opts)
        return grad_q, grad_k, grad_v, None, None, None, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Differentiable FlashAttention: the Triton path of :func:`llmcourse.kernels.attention`.

    ``block_m``/``block_n`` override the tile sizes (powers of two >= 16; tests use small ones).
    """
    return FlashAttentionFunction.apply(q, k, v, key_padding_mask, causal, scale, block_m, block_n)
