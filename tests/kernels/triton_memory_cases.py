"""Memory safety of the Triton kernels, and a few training steps of a GPT on them.

Run like ``triton_cases.py`` (CI: ``test_kernels_interpreter.py`` runs both files in one child
process with ``TRITON_INTERPRET=1``; on a GPU: ``LLMCOURSE_KERNEL_TEST_DEVICE=cuda``).

Why this file exists: the attention backward once stored dK, dV and dQ with the *input's*
strides. In a GPT, q, k and v are views into one fused (B, T, 3C) projection (row stride 3C)
while the gradients are fresh (B, H, T, D) tensors (row stride C), so the kernel wrote up to
three times past their end. Every kernel test passed (their inputs were contiguous); a GPT on a
GPU died one step later in cuBLAS ("CUBLAS_STATUS_EXECUTION_FAILED", "illegal instruction")
and PPO got NaN weights. The cases below give every kernel inputs that are views with gaps
(the layouts models really pass), surround them with canary values, and run under the checks of
``memory_guard`` (autouse here and in ``triton_cases.py``): out-of-bounds loads/stores raise,
memory from ``torch.empty`` reads as NaN, inputs must stay bit-identical.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from kernels_testing import TOLERANCES, assert_close, upcast_leaf
from memory_guard import assert_storages_unchanged, memory_checks, storage_bytes  # noqa: F401

DEVICE = torch.device(os.environ.get("LLMCOURSE_KERNEL_TEST_DEVICE", "cpu"))
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError(
        "triton_memory_cases.py on the CPU needs TRITON_INTERPRET=1 in the environment (set "
        "before Triton is imported; tests/kernels/test_kernels_interpreter.py does that), or "
        "LLMCOURSE_KERNEL_TEST_DEVICE=cuda on a GPU"
    )

import llmcourse.kernels as kernels  # noqa: E402
from llmcourse.kernels import reference as ref  # noqa: E402
from llmcourse.kernels import triton_attention as tri_attn  # noqa: E402
from llmcourse.kernels import triton_cross_entropy as tri_ce  # noqa: E402
from llmcourse.kernels import triton_lstm as tri_lstm  # noqa: E402
from llmcourse.kernels import triton_norms as tri_norms  # noqa: E402
from llmcourse.kernels import triton_rope as tri_rope  # noqa: E402
from llmcourse.models.gpt import GPT, GPTConfig  # noqa: E402

CANARY = 1000.0  # far outside the test data: a kernel that reads it gives a visibly wrong value


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed)).to(DEVICE, dtype)


def _in_canary_buffer(t: torch.Tensor, pad: int = 2) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """A leaf ``buffer`` holding ``t``'s values at ``buffer[interior]``, with ``pad`` canaries
    on both sides of every dim (so every stride of the view exceeds its width)."""
    buffer = torch.full([n + 2 * pad for n in t.shape], CANARY, dtype=t.dtype, device=t.device)
    interior = tuple(slice(pad, pad + n) for n in t.shape)
    buffer[interior] = t
    return buffer.requires_grad_(True), interior


def check_in_canary_buffers(kernel_fn, expected_fn, inputs, dtype, names, label):
    """The kernel gets its floating inputs as views into canary buffers (other inputs as
    given); ``expected_fn`` gets float32 copies. Outputs and gradients must match, every
    canary must keep its value and get exactly zero gradient, and no input may change."""
    floats = [isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs]
    wrapped = {n: _in_canary_buffer(t) for n, t, f in zip(names, inputs, floats, strict=True) if f}
    before = {n: storage_bytes(buffer) for n, (buffer, _) in wrapped.items()}
    views = [
        wrapped[n][0][wrapped[n][1]] if f else t
        for n, t, f in zip(names, inputs, floats, strict=True)
    ]
    exp_in = [upcast_leaf(t) if f else t for t, f in zip(inputs, floats, strict=True)]

    ours, expected = kernel_fn(*views), expected_fn(*exp_in)
    ours = ours if isinstance(ours, tuple) else (ours,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    grads = [torch.randn(o.shape, generator=_gen(99)).to(DEVICE, o.dtype) for o in ours]
    torch.autograd.backward(ours, grads)
    torch.autograd.backward(expected, [g.float() for g in grads])

    for i, (o, e) in enumerate(zip(ours, expected, strict=True)):
        assert_close(o, e, dtype, f"{label} output {i}")
    for name, e in zip(names, exp_in, strict=True):
        if name not in wrapped:
            continue
        buffer, interior = wrapped[name]
        assert_close(buffer.grad[interior], e.grad, dtype, f"{label} d{name}")
        spill = buffer.grad.clone()
        spill[interior] = 0
        assert torch.count_nonzero(spill) == 0, f"{label}: gradient outside the view of {name}"
    assert_storages_unchanged({n: buffer for n, (buffer, _) in wrapped.items()}, before, label)


# ============================================================================= attention


def _fused_qkv(batch: int, seq: int, heads: int, dim: int, dtype: torch.dtype, seed: int):
    """A (B, T, 3C) leaf, as a model's fused projection, and its q, k, v views (B, H, T, D)."""
    qkv = _randn(batch, seq, 3 * heads * dim, seed=seed, dtype=dtype).requires_grad_(True)
    q, k, v = qkv.view(batch, seq, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
    return qkv, (q, k, v)


def _attention_on_fused_qkv(attention_fn, dtype, batch, seq, heads, dim, mask, **opts):
    """(out, dqkv) of ``attention_fn`` on views of a fused projection, plus the storage check."""
    qkv, (q, k, v) = _fused_qkv(batch, seq, heads, dim, dtype, seed=20)
    before = {"qkv": storage_bytes(qkv)}
    out = attention_fn(q, k, v, key_padding_mask=mask, **opts)
    grad_out = torch.randn(out.shape, generator=_gen(21)).to(DEVICE, dtype)
    grad_before = {"upstream gradient": storage_bytes(grad_out)}
    out.backward(grad_out)
    assert_storages_unchanged({"qkv": qkv}, before, "attention on fused qkv")
    assert_storages_unchanged({"upstream gradient": grad_out}, grad_before, "attention backward")
    return out, qkv.grad, grad_out


def _check_fused_qkv(dtype, batch, seq, heads, dim, padded, repeat=1, **opts):
    mask = None
    if padded:
        mask = torch.rand(batch, seq, generator=_gen(22)) > 0.3
        mask[:, 0] = True
        mask = mask.to(DEVICE)
    runs = [
        _attention_on_fused_qkv(tri_attn.attention, dtype, batch, seq, heads, dim, mask, **opts)
        for _ in range(repeat)
    ]
    out, dqkv, grad_out = runs[0]
    for other_out, other_dqkv, _ in runs[1:]:  # bit-identical: no races, no atomics
        assert torch.equal(other_out, out) and torch.equal(other_dqkv, dqkv), "not deterministic"
    qkv32, (q, k, v) = _fused_qkv(batch, seq, heads, dim, dtype, seed=20)
    qkv32 = upcast_leaf(qkv32)
    q, k, v = qkv32.view(batch, seq, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
    causal = opts.get("causal", False)
    expected = ref.attention(q, k, v, causal=causal, key_padding_mask=mask)
    expected.backward(grad_out.float())
    assert_close(out, expected, dtype, "attention on fused qkv views")
    assert_close(dqkv, qkv32.grad, dtype, "d(fused qkv) through the attention backward")


def test_attention_fused_qkv_views_small_gpt_shape():
    """The failing GPT's shape (B=8, H=4, T=64, D=32), default tiles; on a GPU run twice (the
    interpreter runs programs one by one, so a second run there proves nothing)."""
    repeat = 2 if DEVICE.type == "cuda" else 1
    _check_fused_qkv(torch.float32, 8, 64, 4, 32, padded=False, repeat=repeat, causal=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_fused_qkv_views_odd_sizes_and_padding(dtype):
    """T = 21 over 16-wide tiles, head dim 24 padded to 32, a key padding mask."""
    _check_fused_qkv(dtype, 2, 21, 3, 24, padded=True, causal=True, block_m=16, block_n=16)


def test_attention_kv_cache_shape_inside_canary_buffers():
    """5 new queries against 29 cached keys (causal, aligned to the end), as views with gaps."""
    q, k, v = (
        _randn(2, 2, 5, 16, seed=23),
        _randn(2, 2, 29, 16, seed=24),
        _randn(2, 2, 29, 16, seed=25),
    )
    check_in_canary_buffers(
        lambda q, k, v: tri_attn.attention(q, k, v, causal=True, block_m=16, block_n=16),
        lambda q, k, v: ref.attention(q, k, v, causal=True),
        [q, k, v],
        torch.float32,
        "qkv",
        "attention, KV-cache shape",
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_attention_inputs_inside_canary_buffers(dtype):
    q, k, v = (_randn(2, 2, 19, 16, seed=s, dtype=dtype) for s in (26, 27, 28))
    mask = (torch.rand(2, 19, generator=_gen(29)) > 0.3).to(DEVICE)
    mask[:, 0] = True
    check_in_canary_buffers(
        lambda q, k, v: tri_attn.attention(
            q, k, v, causal=True, key_padding_mask=mask, block_m=16, block_n=16
        ),
        lambda q, k, v: ref.attention(q, k, v, causal=True, key_padding_mask=mask),
        [q, k, v],
        dtype,
        "qkv",
        "attention in canary buffers",
    )


# ============================================================================= cross-entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_inputs_inside_canary_buffers(dtype, reduction):
    """Row stride V + 4 (as ``logits[:, :-1]`` of a (B, T, V) tensor has), V = 97."""
    logits = _randn(23, 97, seed=30, dtype=dtype) * 3
    targets = torch.randint(0, 97, (23,), generator=_gen(31)).to(DEVICE)
    targets[3] = -100
    check_in_canary_buffers(
        lambda lg: tri_ce.cross_entropy(lg, targets, reduction=reduction, block_v=64),
        lambda lg: F.cross_entropy(lg, targets, reduction=reduction),
        [logits],
        dtype,
        ["logits"],
        f"cross_entropy in canary buffers ({reduction})",
    )


def test_cross_entropy_gpt_vocab_deterministic():
    """V = 97 (the failing GPT's vocabulary), default chunk; two runs bit-identical."""
    logits = _randn(96, 97, seed=32) * 2
    targets = torch.randint(0, 97, (96,), generator=_gen(33)).to(DEVICE)
    runs = []
    for _ in range(2):
        x = logits.clone().requires_grad_(True)
        loss = tri_ce.cross_entropy(x, targets)
        loss.backward()
        runs.append((loss.detach(), x.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    x = logits.clone().requires_grad_(True)
    F.cross_entropy(x, targets).backward()
    assert_close(runs[0][1], x.grad, torch.float32, "dlogits at (96, 97)")


# ============================================================================= norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_layer_norm_inputs_inside_canary_buffers(dtype):
    x = _randn(3, 6, 40, seed=40, dtype=dtype)
    w, b = _randn(40, seed=41, dtype=dtype), _randn(40, seed=42, dtype=dtype)
    check_in_canary_buffers(
        lambda x, w, b: tri_norms.layer_norm(x, w, b),
        lambda x, w, b: F.layer_norm(x, (40,), w, b),
        [x, w, b],
        dtype,
        ["x", "weight", "bias"],
        "layer_norm in canary buffers",
    )


def test_rms_norm_inputs_inside_canary_buffers():
    x, w = _randn(5, 7, 33, seed=43), _randn(33, seed=44)
    check_in_canary_buffers(
        lambda x, w: tri_norms.rms_norm(x, w),
        lambda x, w: F.rms_norm(x, (33,), w, 1e-6),
        [x, w],
        torch.float32,
        ["x", "weight"],
        "rms_norm in canary buffers",
    )


def test_norms_strided_weight():
    """A weight with stride 2 (a view) must be read element by element, not contiguously."""
    x, w_pairs = _randn(4, 16, seed=45), _randn(16, 2, seed=46)
    w = w_pairs[:, 0]
    assert w.stride(0) == 2
    assert_close(tri_norms.rms_norm(x, w), F.rms_norm(x, (16,), w, 1e-6), torch.float32, "rms")


def test_norms_gpt_width_backward_deterministic():
    """C = 128 (the failing GPT's width), 96 rows shared by the backward's programs (partial
    dw/db rows summed afterwards); two runs bit-identical."""
    x, w, b = _randn(2, 48, 128, seed=47), _randn(128, seed=48), _randn(128, seed=49)
    grad_y = _randn(2, 48, 128, seed=50)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        tri_norms.layer_norm(*leaves).backward(grad_y)
        runs.append([t.grad for t in leaves])
    assert all(torch.equal(a, c) for a, c in zip(*runs, strict=True)), "not deterministic"
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    F.layer_norm(leaves[0], (128,), leaves[1], leaves[2]).backward(grad_y)
    for name, ours, theirs in zip(("dx", "dw", "db"), runs[0], leaves, strict=True):
        torch.testing.assert_close(ours, theirs.grad, atol=1e-4, rtol=1e-4, msg=name)


# ============================================================================= LSTM cell and RoPE


def test_lstm_cell_inputs_inside_canary_buffers():
    gates, c_prev = _randn(3, 4 * 20, seed=60), _randn(3, 20, seed=61)
    check_in_canary_buffers(
        tri_lstm.lstm_cell,
        ref.lstm_cell,
        [gates, c_prev],
        torch.float32,
        ["gates", "c_prev"],
        "lstm_cell in canary buffers",
    )


@pytest.mark.parametrize("batched_positions", [False, True])
def test_rope_inputs_inside_canary_buffers(batched_positions):
    """x as a view with gaps (like q or k of a fused projection); cos/sin as given."""
    positions = torch.arange(19, device=DEVICE)
    if batched_positions:
        positions = torch.stack([positions, positions + 3])
    cos, sin = ref.rope_cos_sin(positions, 16)
    check_in_canary_buffers(
        lambda x: tri_rope.apply_rope(x, cos, sin),
        lambda x: ref.apply_rope(x, cos, sin),
        [_randn(2, 3, 19, 16, seed=62)],
        torch.float32,
        ["x"],
        "rope in canary buffers",
    )


# ============================================================================= a GPT training


GPT_CONFIGS = {
    "gpt2-style": dict(positions="learned", norm="layernorm", mlp="gelu"),
    "llama-style": dict(positions="rope", norm="rmsnorm", mlp="swiglu"),
}


def _train(backend: str, config: GPTConfig, steps: int, monkeypatch) -> list[dict]:
    """AdamW steps from one seed; per step: loss, gradients and parameters after the step."""
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, backend)
    torch.manual_seed(0)
    model = GPT(config).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, config.vocab_size, (steps, 2, 17), generator=_gen(70)).to(DEVICE)
    history = []
    for batch in data:
        loss = model(batch[:, :-1], batch[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        history.append(dict(loss=loss.detach(), grads=grads, params=params))
    return history


@pytest.mark.parametrize("style", list(GPT_CONFIGS))
def test_gpt_training_triton_matches_reference_step_by_step(style, monkeypatch):
    """Three AdamW steps of a tiny GPT (fp32), LLMCOURSE_KERNELS=triton against reference:
    the failure this file was written for showed up at the second step's backward."""
    config = GPTConfig(
        vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, **GPT_CONFIGS[style]
    )
    used = []
    choose = kernels.choose_backend

    def spy(kernel, device, unsupported):
        backend = choose(kernel, device, unsupported)
        used.append((kernel, backend))
        return backend

    monkeypatch.setattr(kernels, "choose_backend", spy)
    tri = _train("triton", config, 3, monkeypatch)
    expected_kernels = {"attention", "cross_entropy"} | (
        {"layer_norm"} if style == "gpt2-style" else {"rms_norm", "apply_rope"}
    )
    ran = {kernel for kernel, backend in used if backend == "triton"}
    assert ran == expected_kernels, f"Triton ran {ran}, expected {expected_kernels}"
    ref_run = _train("reference", config, 3, monkeypatch)

    tol = TOLERANCES[torch.float32]
    loose = dict(atol=2e-4, rtol=2e-4)  # Adam divides by sqrt(v): tiny grad noise grows a bit
    for step, (ours, theirs) in enumerate(zip(tri, ref_run, strict=True)):
        torch.testing.assert_close(ours["loss"], theirs["loss"], **tol, msg=f"loss, step {step}")
        for kind, limits in (("grads", dict(atol=1e-5, rtol=1e-4)), ("params", loose)):
            for name, value in ours[kind].items():
                assert torch.isfinite(value).all(), f"step {step}: non-finite {kind} of {name}"
                torch.testing.assert_close(
                    value, theirs[kind][name], **limits, msg=f"{kind} of {name}, step {step}"
                )
