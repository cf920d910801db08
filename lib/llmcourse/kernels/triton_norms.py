"""LayerNorm and RMSNorm forward and backward in Triton (one kernel pair serves both).

Both normalise each row of x (width C) and scale it by a learned weight:

* LayerNorm: ``xhat = (x - mean) * rstd``, ``rstd = 1 / sqrt(var + eps)``, ``y = xhat * w + b``
* RMSNorm:   ``xhat = x * rstd``,          ``rstd = 1 / sqrt(mean(x^2) + eps)``, ``y = xhat * w``

The constexpr flag ``CENTER`` (subtract the mean or not) is the only difference, so the same
kernels compile into two specialised versions.

Tiling: a row must fit in one block (C <= 16384), so the forward is one program per row with
the row in registers: one read of x, one write of y, plus two floats per row (mean, rstd) saved
for the backward. Statistics are computed in float32 whatever the input dtype.

Backward, for one row with ``g = dy * w``:
    LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
and over all rows ``dw = sum(dy * xhat)``, ``db = sum(dy)``. The weight gradients are sums over
rows: each of G programs handles rows pid, pid + G, ... and keeps its partial sums in
registers; the G partial rows are then added by PyTorch. No atomics, deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["layer_norm", "rms_norm", "norm_forward", "norm_backward", "NormFunction"]


@triton.jit
def _norm_forward_kernel(
    X, W, B, Y, MEAN, RSTD,
    stride_x, stride_y,
    width,
    eps,
    CENTER: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_C)
    in_row = offs < width
    x = tl.load(X + row * stride_x + offs, mask=in_row, other=0.0).to(tl.float32)

    if CENTER:
        mean = tl.sum(x, axis=0) / width
        x = tl.where(in_row, x - mean, 0.0)  # padding lanes must stay 0 for the variance
    else:
        mean = 0.0
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / width + eps)
    y = x * rstd
    if HAS_WEIGHT:
        y = y * tl.load(W + offs, mask=in_row, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(B + offs, mask=in_row, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty), mask=in_row)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _norm_backward_kernel(
    X, W, MEAN, RSTD, DY, DX, DW_PARTIAL, DB_PARTIAL,
    stride_x, stride_dy, stride_dx,
    n_rows, width,
    CENTER: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    offs = tl.arange(0, BLOCK_C)
    in_row = offs < width
    if HAS_WEIGHT:
        w = tl.load(W + offs, mask=in_row, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_C], dtype=tl.float32)  # this program's share of dL/dw
    db_acc = tl.zeros([BLOCK_C], dtype=tl.float32)

    for row in range(pid, n_rows, n_programs):
        row64 = tl.cast(row, tl.int64)  # 64-bit offsets: N * C can pass 2**31
        x = tl.load(X + row64 * stride_x + offs, mask=in_row, other=0.0).to(tl.float32)
        dy = tl.load(DY + row64 * stride_dy + offs, mask=in_row, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row64)
        if CENTER:
            x = x - tl.load(MEAN + row64)
        xhat = tl.where(in_row, x * rstd, 0.0)
        g = dy  # gradient with respect to xhat
        if HAS_WEIGHT:
            g = dy * w

        # Project out what the normalisation removes: the mean of g (LayerNorm only) and the
        # component of g along xhat (changing the scale of x does not change xhat).
        proj = tl.sum(g * xhat, axis=0) / width
        dx = g - xhat * proj
        if CENTER:
            dx = dx - tl.sum(g, axis=0) / width
        dx = dx * rstd
        tl.store(DX + row64 * stride_dx + offs, dx.to(DX.dtype.element_ty), mask=in_row)

        if HAS_WEIGHT:
            dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy

    if HAS_WEIGHT:
        tl.store(DW_PARTIAL + pid * width + offs, dw_acc, mask=in_row)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid * width + offs, db_acc, mask=in_row)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (N, C) with unit stride along C (a copy only when that needs one)."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _unit_stride(param: torch.Tensor | None) -> torch.Tensor | None:
    """weight/bias (C,) as the kernels read them: neighbouring features adjacent."""
    return param if param is None or param.stride(0) == 1 else param.contiguous()


def _num_programs(n_rows: int, device: torch.device) -> int:
    """Programs for the backward: a few per streaming multiprocessor, never more than rows."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the CPU interpreter: few programs keep it fast
        target = 4
    return max(1, min(n_rows, target))


def _num_warps(block: int) -> int:
    """More warps for wider rows, so each thread holds a bounded number of elements."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def norm_forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    center: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (x's shape and dtype) and the per-row mean and rstd (N,) float32."""
    rows = _as_rows(x)
    weight, bias = _unit_stride(weight), _unit_stride(bias)
    n_rows, width = rows.shape
    y = torch.empty_like(rows)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    dummy = rows  # never read: the HAS_* flags compile the loads away
    _norm_forward_kernel[(n_rows,)](
        rows, dummy if weight is None else weight, dummy if bias is None else bias,
        y, mean, rstd,
        rows.stride(0), y.stride(0),
        width, eps,
        CENTER=center,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_C=triton.next_power_of_2(width),
        num_warps=_num_warps(triton.next_power_of_2(width)),
    )  # fmt: skip
    return y.view(x.shape), mean, rstd


def norm_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    has_bias: bool,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    center: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dw, db); dw/db are float32 sums over rows (None when there is no weight/bias)."""
    rows, grad_rows = _as_rows(x), _as_rows(grad_y)
    weight = _unit_stride(weight)
    n_rows, width = rows.shape
    grad_x = torch.empty_like(rows)
    n_programs = _num_programs(n_rows, x.device)
    partial = dict(dtype=torch.float32, device=x.device)
    dw_partial = torch.empty(n_programs, width, **partial) if weight is not None else rows
    db_partial = torch.empty(n_programs, width, **partial) if has_bias else rows
    _norm_backward_kernel[(n_programs,)](
        rows, rows if weight is None else weight, mean, rstd, grad_rows, grad_x,
        dw_partial, db_partial,
        rows.stride(0), grad_rows.stride(0), grad_x.stride(0),
        n_rows, width,
        CENTER=center,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=has_bias,
        BLOCK_C=triton.next_power_of_2(width),
        num_warps=_num_warps(triton.next_power_of_2(width)),
    )  # fmt: skip
    grad_w = dw_partial.sum(dim=0) if weight is not None else None
    grad_b = db_partial.sum(dim=0) if has_bias else None
    return grad_x.view(x.shape), grad_w, grad_b


class NormFunction(torch.autograd.Function):
    """LayerNorm (center=True) or RMSNorm (center=False) with the Triton backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, center):  # type: ignore[override]
        y, mean, rstd = norm_forward(x, weight, bias, eps, center)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.center = center
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = norm_backward(
            grad_y, x, weight, ctx.has_bias, mean, rstd, ctx.center
        )
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """Triton path of :func:`llmcourse.kernels.layer_norm`."""
    return NormFunction.apply(x, weight, bias, eps, True)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Triton path of :func:`llmcourse.kernels.rms_norm`."""
    return NormFunction.apply(x, weight, None, eps, False)
