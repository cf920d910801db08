"""Compile every Triton kernel for real NVIDIA GPUs, ahead of time, on a machine without one.

The interpreter runs kernels with NumPy and accepts some code the GPU compiler rejects (and
the reverse). ``triton.compile`` with an explicit ``GPUTarget`` runs the whole compiler
pipeline (Triton IR, LLVM, PTX and ``ptxas`` to a cubin) on the CPU, so these cases catch
kernels that would only fail on a student's GPU. Targets: sm_80 (A100) and sm_75 (T4, the
free Colab GPU). ``test_kernels_compile.py`` runs this file in a child process without
``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` builds no compilable function).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise RuntimeError("compile_cases.py must run without TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from llmcourse.kernels import triton_attention as tri_attn  # noqa: E402
from llmcourse.kernels import triton_cross_entropy as tri_ce  # noqa: E402
from llmcourse.kernels import triton_lstm as tri_lstm  # noqa: E402
from llmcourse.kernels import triton_norms as tri_norms  # noqa: E402
from llmcourse.kernels import triton_rope as tri_rope  # noqa: E402

TARGETS = {"sm80": GPUTarget("cuda", 80, 32), "sm75": GPUTarget("cuda", 75, 32)}
FLOAT_ARGS = ("scale", "eps")  # every other non-pointer, non-constexpr argument is an int32


def compile_kernel(kernel, pointers: dict, constexprs: dict, target: str, **options):
    """Compile ``kernel`` to a cubin; ``pointers`` maps pointer argument -> element type."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=TARGETS[target], options=options)
    assert compiled.asm["cubin"], "no cubin produced"
    return compiled


def _attention_pointers(dtype: str) -> dict:
    pointers = {name: dtype for name in ("Q", "K", "V", "OUT", "DO", "DK", "DV", "DQ")}
    return pointers | {"LSE": "fp32", "DELTA": "fp32", "KEEP": "u8"}


ATTENTION_KERNELS = [
    tri_attn._attention_forward_kernel,
    tri_attn._attention_backward_dkdv_kernel,
    tri_attn._attention_backward_dq_kernel,
]


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_compile_attention_half_precision_sm80(kernel, dtype):
    config = dict(tri_attn.TILE_CONFIGS[0])
    options = {"num_warps": config.pop("num_warps"), "num_stages": config.pop("num_stages")}
    constexprs = dict(
        CAUSAL=True, HAS_KEY_MASK=True, BLOCK_D=64, PRECISION="tf32", UPCAST=False, **config
    )
    compiled = compile_kernel(kernel, _attention_pointers(dtype), constexprs, "sm80", **options)
    assert compiled.metadata.shared <= 163 * 1024, "the first tile config must fit an A100"


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS, ids=lambda k: k.__name__)
def test_compile_attention_fp32_ieee_sm80(kernel):
    constexprs = dict(
        CAUSAL=False, HAS_KEY_MASK=False, BLOCK_D=32, PRECISION="ieee", UPCAST=False,
        BLOCK_M=32, BLOCK_N=32,
    )  # fmt: skip
    compile_kernel(kernel, _attention_pointers("fp32"), constexprs, "sm80", num_warps=4)


@pytest.mark.parametrize("target", ["sm80", "sm75"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compile_cross_entropy(target, dtype):
    pointers = {"LOGITS": dtype, "GRAD": dtype, "TARGETS": "i64"}
    pointers |= {"LOSS": "fp32", "LSE": "fp32", "ROW_SCALE": "fp32"}
    for kernel in (tri_ce._cross_entropy_forward_kernel, tri_ce._cross_entropy_backward_kernel):
        compile_kernel(kernel, pointers, {"BLOCK_V": 4096}, target, num_warps=8)


@pytest.mark.parametrize(
    "center, has_weight, has_bias", [(True, True, True), (False, True, False), (True, False, False)]
)
def test_compile_norms(center, has_weight, has_bias):
    pointers = {name: "bf16" for name in ("X", "W", "B", "Y", "DY", "DX")}
    pointers |= {name: "fp32" for name in ("MEAN", "RSTD", "DW_PARTIAL", "DB_PARTIAL")}
    constexprs = dict(CENTER=center, HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, BLOCK_C=1024)
    for kernel in (tri_norms._norm_forward_kernel, tri_norms._norm_backward_kernel):
        compile_kernel(kernel, pointers, constexprs, "sm80", num_warps=4)


@pytest.mark.parametrize("target", ["sm80", "sm75"])
def test_compile_lstm_cell(target):
    names = ("GATES", "C_PREV", "H", "C", "DH", "DC", "DGATES", "DC_PREV")
    pointers = {name: "fp16" for name in names}
    for kernel in (tri_lstm._lstm_forward_kernel, tri_lstm._lstm_backward_kernel):
        compile_kernel(kernel, pointers, {"BLOCK": tri_lstm.BLOCK_H}, target)


@pytest.mark.parametrize("inverse", [False, True])
def test_compile_rope(inverse):
    pointers = {name: "bf16" for name in ("X", "COS", "SIN", "OUT")}
    constexprs = {"INVERSE": inverse, "BLOCK_T": tri_rope.BLOCK_T, "BLOCK_HALF": 64}
    compile_kernel(tri_rope._rope_kernel, pointers, constexprs, "sm80")
