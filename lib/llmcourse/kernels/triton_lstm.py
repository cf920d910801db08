"""Fused LSTM cell (the element-wise part of one time step) in Triton.

The matrix products ``x W_ih^T + h W_hh^T + b`` are left to cuBLAS; they produce ``gates``
(B, 4H) in the order i, f, g, o. What remains is a handful of element-wise operations that
PyTorch eager would run as ~10 separate kernels, each reading and writing a (B, H) tensor:

    i, f, o = sigmoid(gates_i), sigmoid(gates_f), sigmoid(gates_o)
    g = tanh(gates_g)
    c = f * c_prev + i * g
    h = o * tanh(c)

Here one program handles a (1, BLOCK_H) slice of one batch row: it reads the four gate slices
and c_prev once and writes h and c once. The backward recomputes the activations from the saved
gates (cheaper than storing them) and applies the chain rule, with ``dc_total = dc + dh * o *
(1 - tanh(c)^2)`` being the gradient reaching the cell state from both outputs:

    d gates_i = dc_total * g * i (1 - i)        d gates_f = dc_total * c_prev * f (1 - f)
    d gates_g = dc_total * i * (1 - g^2)        d gates_o = dh * tanh(c) * o (1 - o)
    d c_prev  = dc_total * f

All arithmetic is float32; h is stored in gates' dtype and c in c_prev's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["lstm_cell", "lstm_cell_forward", "lstm_cell_backward", "LSTMCellFunction"]

BLOCK_H = 256  # features per program; the last block of a row is masked


@triton.jit
def _tanh(x):
    # tanh(x) = 2 sigmoid(2x) - 1: exact in exact arithmetic, and sigmoid never overflows.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _load_gates(gates_row, offs, hidden, mask):
    """The four pre-activation slices of one row, as float32 (order i, f, g, o)."""
    pre_i = tl.load(gates_row + offs, mask=mask, other=0.0).to(tl.float32)
    pre_f = tl.load(gates_row + hidden + offs, mask=mask, other=0.0).to(tl.float32)
    pre_g = tl.load(gates_row + 2 * hidden + offs, mask=mask, other=0.0).to(tl.float32)
    pre_o = tl.load(gates_row + 3 * hidden + offs, mask=mask, other=0.0).to(tl.float32)
    return tl.sigmoid(pre_i), tl.sigmoid(pre_f), _tanh(pre_g), tl.sigmoid(pre_o)


@triton.jit
def _lstm_forward_kernel(
    GATES, C_PREV, H, C,
    stride_gates, stride_state,
    hidden,
    BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hidden
    i, f, g, o = _load_gates(GATES + row * stride_gates, offs, hidden, mask)
    c_prev = tl.load(C_PREV + row * stride_state + offs, mask=mask, other=0.0).to(tl.float32)

    c = f * c_prev + i * g
    h = o * _tanh(c)
    tl.store(C + row * stride_state + offs, c.to(C.dtype.element_ty), mask=mask)
    tl.store(H + row * stride_state + offs, h.to(H.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_backward_kernel(
    GATES, C_PREV, DH, DC, DGATES, DC_PREV,
    stride_gates, stride_state,
    hidden,
    BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hidden
    i, f, g, o = _load_gates(GATES + row * stride_gates, offs, hidden, mask)
    state = row * stride_state + offs
    c_prev = tl.load(C_PREV + state, mask=mask, other=0.0).to(tl.float32)
    dh = tl.load(DH + state, mask=mask, other=0.0).to(tl.float32)
    dc = tl.load(DC + state, mask=mask, other=0.0).to(tl.float32)

    tanh_c = _tanh(f * c_prev + i * g)  # recompute c in float32 rather than saving it
    dc_total = dc + dh * o * (1.0 - tanh_c * tanh_c)
    d_pre_i = dc_total * g * i * (1.0 - i)
    d_pre_f = dc_total * c_prev * f * (1.0 - f)
    d_pre_g = dc_total * i * (1.0 - g * g)
    d_pre_o = dh * tanh_c * o * (1.0 - o)

    dgates_row = DGATES + row * stride_gates
    out_ty = DGATES.dtype.element_ty
    tl.store(dgates_row + offs, d_pre_i.to(out_ty), mask=mask)
    tl.store(dgates_row + hidden + offs, d_pre_f.to(out_ty), mask=mask)
    tl.store(dgates_row + 2 * hidden + offs, d_pre_g.to(out_ty), mask=mask)
    tl.store(dgates_row + 3 * hidden + offs, d_pre_o.to(out_ty), mask=mask)
    tl.store(DC_PREV + state, (dc_total * f).to(DC_PREV.dtype.element_ty), mask=mask)


def _grid(batch: int, hidden: int) -> tuple[int, int]:
    return batch, triton.cdiv(hidden, BLOCK_H)


def lstm_cell_forward(
    gates: torch.Tensor, c_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c), each (B, H); h in gates' dtype, c in c_prev's dtype."""
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    batch, hidden = c_prev.shape
    h = torch.empty(batch, hidden, dtype=gates.dtype, device=gates.device)
    c = torch.empty_like(c_prev)
    _lstm_forward_kernel[_grid(batch, hidden)](
        gates, c_prev, h, c, gates.stride(0), c_prev.stride(0), hidden, BLOCK=BLOCK_H
    )
    return h, c


def lstm_cell_backward(
    gates: torch.Tensor, c_prev: torch.Tensor, grad_h: torch.Tensor, grad_c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d gates (B, 4H), d c_prev (B, H)) from the gradients of h and c."""
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    grad_h, grad_c = grad_h.contiguous(), grad_c.contiguous()
    batch, hidden = c_prev.shape
    grad_gates = torch.empty_like(gates)
    grad_c_prev = torch.empty_like(c_prev)
    _lstm_backward_kernel[_grid(batch, hidden)](
        gates, c_prev, grad_h, grad_c, grad_gates, grad_c_prev,
        gates.stride(0), c_prev.stride(0), hidden,
        BLOCK=BLOCK_H,
    )  # fmt: skip
    return grad_gates, grad_c_prev


class LSTMCellFunction(torch.autograd.Function):
    """Saves only the inputs (gates, c_prev); activations are recomputed in the backward."""

    @staticmethod
    def forward(ctx, gates, c_prev):  # type: ignore[override]
        h, c = lstm_cell_forward(gates, c_prev)
        ctx.save_for_backward(gates, c_prev)
        return h, c

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_h, grad_c):  # type: ignore[override]
        gates, c_prev = ctx.saved_tensors
        return lstm_cell_backward(gates, c_prev, grad_h, grad_c)


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path of :func:`llmcourse.kernels.lstm_cell`."""
    return LSTMCellFunction.apply(gates, c_prev)
