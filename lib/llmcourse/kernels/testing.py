"""Comparing a kernel with its reference: the tolerances per dtype and one checking helper.

Used by the tests (``tests/kernels``) and by ``benchmarks/bench_kernels.py``; the book page
``book/kernels_on_gpu.md`` quotes the same table.

The tolerances compare a kernel run in ``dtype`` against the reference run in float32 (float64
for float64) on the *same rounded inputs*, so they measure only the kernel's own rounding: its
outputs are stored in ``dtype`` (unit roundoff 2^-11 for float16, 2^-8 for bfloat16) and, as on
the GPU, some intermediate products are rounded to ``dtype`` (attention's probabilities before
P @ V). Elementwise: ``|actual - expected| <= atol + rtol * |expected|``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["TOLERANCES", "assert_close", "leaf", "upcast_leaf", "compare_with_reference"]

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """Compare in float64 with the tolerance of ``dtype``; the message names ``what``."""
    torch.testing.assert_close(
        actual.detach().double(),
        expected.detach().double(),
        **TOLERANCES[dtype],
        msg=lambda m: f"{what} [{str(dtype).replace('torch.', '')}]: {m}",
    )


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy that requires grad."""
    return t.detach().clone().requires_grad_(True)


def upcast_leaf(t: torch.Tensor) -> torch.Tensor:
    """The same (already rounded) values in float32 at least, as a leaf that requires grad."""
    return t.detach().to(torch.promote_types(t.dtype, torch.float32)).requires_grad_(True)


def _as_tuple(x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t`` (exact and NaN-safe, unlike ``==``)."""
    return t.detach().reshape(-1).view(torch.uint8).clone()


def _assert_untouched(
    tensors: dict[str, torch.Tensor], before: dict[str, torch.Tensor], label: str
) -> None:
    """Each tensor must still hold the bytes recorded in ``before``."""
    for name, t in tensors.items():
        assert torch.equal(_bits(t), before[name]), (
            f"{label}: {name} changed during forward/backward; a kernel must not write into its "
            f"inputs or into the upstream gradient (autograd may still need them)"
        )


def compare_with_reference(
    kernel_fn: Callable[..., Any],
    expected_fn: Callable[..., Any],
    inputs: Sequence[Any],
    dtype: torch.dtype,
    names: Sequence[str],
    label: str,
    grad_seed: int = 99,
) -> None:
    """Check ``kernel_fn`` against ``expected_fn``: outputs and the gradients of every input.

    ``kernel_fn`` gets leaf copies of the floating-point ``inputs`` (in their own dtype),
    ``expected_fn`` float32 upcasts of the same values; other inputs (integer targets, masks,
    ``None``) are passed unchanged. One random upstream gradient per output (drawn on the CPU
    from ``grad_seed``) is backpropagated through both. The kernel's inputs and upstream
    gradients must come out bit-identical (no writes into them). ``names`` labels the inputs in
    error messages. Raises ``AssertionError`` naming the first mismatch.
    """

    def leaves(make):
        return [
            make(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs
        ]

    ours_in, exp_in = leaves(leaf), leaves(upcast_leaf)
    watched = {f"input {i}": t for i, t in enumerate(ours_in) if isinstance(t, torch.Tensor)}
    before = {name: _bits(t) for name, t in watched.items()}
    ours, expected = _as_tuple(kernel_fn(*ours_in)), _as_tuple(expected_fn(*exp_in))
    assert len(ours) == len(expected), f"{label}: {len(ours)} outputs, expected {len(expected)}"
    gen = torch.Generator().manual_seed(grad_seed)
    grads = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in ours]
    watched |= {f"upstream gradient {i}": g for i, g in enumerate(grads)}
    before |= {f"upstream gradient {i}": _bits(g) for i, g in enumerate(grads)}
    torch.autograd.backward(ours, grads)
    _assert_untouched(watched, before, label)
    torch.autograd.backward(expected, [g.to(e.dtype) for g, e in zip(grads, expected, strict=True)])

    for i, (o, e) in enumerate(zip(ours, expected, strict=True)):
        assert o.dtype == dtype, f"{label}: output {i} has dtype {o.dtype}, expected {dtype}"
        assert_close(o, e, dtype, f"{label} output {i}")
    for name, a, e in zip(names, ours_in, exp_in, strict=False):  # names may be fewer
        if isinstance(a, torch.Tensor) and a.requires_grad:
            assert a.grad is not None, f"{label}: no gradient reached {name}"
            assert_close(a.grad, e.grad, dtype, f"{label} d{name}")
