"""Fused softmax cross-entropy in Triton, chunked over the vocabulary.

For one row of logits x (length V) and target t the loss is ``logsumexp(x) - x[t]`` and the
gradient is ``softmax(x) - onehot(t)``. PyTorch eager computes log_softmax (an N x V tensor),
keeps it for the backward, and then builds the gradient (another N x V tensor). Here:

* forward: one program per row sweeps the row in chunks of BLOCK_V, keeping a running maximum
  and a running sum of exponentials (the same online softmax as FlashAttention). It stores only
  the row's log-sum-exp and loss: two floats per row instead of a V-wide row of probabilities.
* backward: one program per (row, chunk) recomputes ``softmax = exp(x - lse)`` from the saved
  lse and writes the gradient chunk directly. The gradient is the only N x V tensor created.

Rows whose target equals ``ignore_index`` get loss 0 and gradient 0. A target outside
[0, V) that is not ``ignore_index`` gives a NaN loss for that row (never a silent wrong
value; the check costs no GPU-to-CPU synchronisation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = [
    "cross_entropy",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "CrossEntropyFunction",
]

MAX_BLOCK_V = 4096  # chunk width: big enough to stream memory fast, small enough for registers


@triton.jit
def _cross_entropy_forward_kernel(
    LOGITS, TARGETS, LOSS, LSE,
    stride_row,
    vocab_size,
    ignore_index,
    BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride can pass 2**31 for big vocabularies
    row_ptr = LOGITS + row * stride_row
    target = tl.load(TARGETS + row).to(tl.int64)

    # Online log-sum-exp over the chunks: m = running max, s = sum of exp(x - m).
    m = float("-inf")
    s = 0.0
    for start in range(0, vocab_size, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offs, mask=offs < vocab_size, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    ignored = target == ignore_index
    in_range = (target >= 0) & (target < vocab_size)
    target_logit = tl.load(row_ptr + target, mask=in_range, other=0.0).to(tl.float32)
    loss = tl.where(in_range, lse - target_logit, float("nan"))  # bad target -> NaN, loudly
    loss = tl.where(ignored, 0.0, loss)
    tl.store(LOSS + row, loss)
    tl.store(LSE + row, lse)


@triton.jit
def _cross_entropy_backward_kernel(
    LOGITS, TARGETS, LSE, ROW_SCALE, GRAD,
    stride_row, stride_grad_row,
    vocab_size,
    BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK_V + tl.arange(0, BLOCK_V)
    in_vocab = offs < vocab_size

    x = tl.load(LOGITS + row * stride_row + offs, mask=in_vocab, other=0.0).to(tl.float32)
    lse = tl.load(LSE + row)
    target = tl.load(TARGETS + row).to(tl.int64)
    # d(loss_row)/dx = softmax(x) - onehot(target); ROW_SCALE holds dL/d(loss_row), which is
    # 0 for ignored rows and already includes the 1/count of the "mean" reduction.
    probs = tl.exp(x - lse)
    grad = probs - tl.where(offs == target, 1.0, 0.0)
    grad = grad * tl.load(ROW_SCALE + row)
    tl.store(GRAD + row * stride_grad_row + offs, grad.to(GRAD.dtype.element_ty), mask=in_vocab)


def _block_v(vocab_size: int, block_v: int | None) -> int:
    return block_v or min(triton.next_power_of_2(vocab_size), MAX_BLOCK_V)


def cross_entropy_forward(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, block_v: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses (N,) and log-sum-exps (N,), both float32."""
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    targets = targets.contiguous()
    n_rows, vocab_size = logits.shape
    losses = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(losses)
    block = _block_v(vocab_size, block_v)
    _cross_entropy_forward_kernel[(n_rows,)](
        logits, targets, losses, lse,
        logits.stride(0), vocab_size, ignore_index,
        BLOCK_V=block,
        num_warps=8 if block >= 2048 else 4,
    )  # fmt: skip
    return losses, lse


def cross_entropy_backward(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    row_scale: torch.Tensor,
    block_v: int | None = None,
) -> torch.Tensor:
    """dL/dlogits (N, V) in logits' dtype, given dL/d(loss_row) as ``row_scale`` (N,) float32."""
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    n_rows, vocab_size = logits.shape
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    block = _block_v(vocab_size, block_v)
    grid = (n_rows, triton.cdiv(vocab_size, block))
    _cross_entropy_backward_kernel[grid](
        logits, targets.contiguous(), lse, row_scale.contiguous(), grad,
        logits.stride(0), grad.stride(0), vocab_size,
        BLOCK_V=block,
        num_warps=8 if block >= 2048 else 4,
    )  # fmt: skip
    return grad


class CrossEntropyFunction(torch.autograd.Function):
    """Saves logits, targets and the per-row lse; the backward writes the gradient once."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, reduction, block_v):  # type: ignore[override]
        losses, lse = cross_entropy_forward(logits, targets, ignore_index, block_v)
        kept = targets != ignore_index  # (N,) bool
        ctx.save_for_backward(logits, targets, lse, kept)
        ctx.reduction = reduction
        ctx.block_v = block_v
        if reduction == "none":
            return losses.to(logits.dtype)
        total = losses.sum()
        if reduction == "sum":
            return total.to(logits.dtype)
        return (total / kept.sum()).to(logits.dtype)  # 0/0 = nan when every row is ignored

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        logits, targets, lse, kept = ctx.saved_tensors
        grad_out = grad_out.float()
        if ctx.reduction == "mean":
            grad_out = grad_out / kept.sum()
        # dL/d(loss_row): the upstream gradient for that row, 0 where the row is ignored.
        row_scale = torch.where(kept, grad_out.expand_as(lse), 0.0)
        grad = cross_entropy_backward(logits, targets, lse, row_scale, ctx.block_v)
        return grad, None, None, None, None


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    block_v: int | None = None,
) -> torch.Tensor:
    """Triton path of :func:`llmcourse.kernels.cross_entropy`; ``block_v`` overrides the chunk."""
    return CrossEntropyFunction.apply(logits, targets, ignore_index, reduction, block_v)
