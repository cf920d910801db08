"""Every Triton kernel against its reference and the PyTorch built-ins, values and gradients,
at odd sizes and in float32 / float16 / bfloat16.

Not collected by a plain ``pytest tests/``. Two ways to run it:

* on the CPU, through Triton's interpreter (what CI does: ``test_kernels_interpreter.py`` runs
  this file in a subprocess, because ``TRITON_INTERPRET=1`` must be set before Triton compiles
  anything)::

    TRITON_INTERPRET=1 python -m pytest tests/kernels/triton_cases.py -q

* on a GPU, with the real compiled kernels (for example in Colab)::

    LLMCOURSE_KERNEL_TEST_DEVICE=cuda python -m pytest tests/kernels/triton_cases.py -q

Shapes are small because the interpreter executes each program instance with NumPy; small tile
sizes (16) still give several tiles per sequence, so tile edges and the online softmax across
tiles are exercised. Every case runs under ``memory_guard.memory_checks`` (out-of-bounds loads
and stores raise under the interpreter; ``torch.empty`` memory reads as NaN), and
``compare_with_reference`` also checks that inputs and upstream gradients stay unchanged.
Layouts with gaps, canaries and a GPT training run are in ``triton_memory_cases.py``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from kernels_testing import assert_close, compare_with_reference, leaf, random_key_mask, upcast_leaf
from memory_guard import memory_checks  # noqa: F401 - autouse: bounds checks, NaN-filled empties

DEVICE = torch.device(os.environ.get("LLMCOURSE_KERNEL_TEST_DEVICE", "cpu"))
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError(
        "triton_cases.py on the CPU needs TRITON_INTERPRET=1 in the environment (set before "
        "Triton is imported; tests/kernels/test_kernels_interpreter.py does that), or "
        "LLMCOURSE_KERNEL_TEST_DEVICE=cuda on a GPU"
    )

import llmcourse.kernels as kernels  # noqa: E402
from llmcourse.kernels import flash_reference as fr  # noqa: E402
from llmcourse.kernels import reference as ref  # noqa: E402
from llmcourse.kernels import triton_attention as tri_attn  # noqa: E402
from llmcourse.kernels import triton_cross_entropy as tri_ce  # noqa: E402
from llmcourse.kernels import triton_lstm as tri_lstm  # noqa: E402
from llmcourse.kernels import triton_norms as tri_norms  # noqa: E402
from llmcourse.kernels import triton_rope as tri_rope  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def _gen(seed: int) -> torch.Generator:
    """CPU generator: inputs are drawn on the CPU (same values on every machine), then moved."""
    return torch.Generator().manual_seed(seed)


def _dev(*tensors: torch.Tensor | None):
    moved = tuple(t if t is None else t.to(DEVICE) for t in tensors)
    return moved if len(moved) > 1 else moved[0]


def check(kernel_fn, expected_fn, inputs, dtype, names, label):
    """compare_with_reference on DEVICE: inputs are moved there first."""
    inputs = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in inputs]
    compare_with_reference(kernel_fn, expected_fn, inputs, dtype, names, label)


# ============================================================================= attention

ATTENTION_CASES = [
    # causal, padded, seq_q, seq_k, head_dim
    (False, False, 37, 37, 16),
    (True, True, 29, 29, 24),  # head dim not a power of two (padded to 32)
    (True, True, 5, 37, 32),  # KV-cache: few queries aligned to the end of the keys
    (True, False, 33, 20, 16),  # more queries than keys: the first 13 see nothing
]


def _attention_inputs(dtype, seq_q, seq_k, dim, padded, batch=2, heads=2, seed=0):
    gen = _gen(seed)
    q = torch.randn(batch, heads, seq_q, dim, generator=gen).to(dtype)
    k = torch.randn(batch, heads, seq_k, dim, generator=gen).to(dtype)
    v = torch.randn(batch, heads, seq_k, dim, generator=gen).to(dtype)
    mask = random_key_mask(batch, seq_k, gen) if padded else None
    return _dev(q, k, v, mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal, padded, seq_q, seq_k, head_dim", ATTENTION_CASES)
def test_attention_matches_reference(dtype, causal, padded, seq_q, seq_k, head_dim):
    q, k, v, mask = _attention_inputs(dtype, seq_q, seq_k, head_dim, padded)
    opts = dict(causal=causal, key_padding_mask=mask)
    check(
        lambda q, k, v: tri_attn.attention(q, k, v, **opts, block_m=16, block_n=16),
        lambda q, k, v: ref.attention(q, k, v, **opts),
        [q, k, v],
        dtype,
        "qkv",
        f"attention {opts['causal']=} {padded=}",
    )


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_sdpa(causal):
    """Against torch's scaled_dot_product_attention, with a mask that leaves every query a key."""
    q, k, v, _ = _attention_inputs(torch.float32, 21, 21, 16, padded=False, seed=1)
    mask = torch.rand(2, 21, generator=_gen(2)) > 0.3
    mask[:, 0] = True
    mask = _dev(mask)
    allowed = mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(21, 21, dtype=torch.bool, device=DEVICE).tril()
    check(
        lambda q, k, v: tri_attn.attention(
            q, k, v, causal=causal, key_padding_mask=mask, scale=0.2, block_m=16, block_n=16
        ),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.2),
        [q, k, v],
        torch.float32,
        "qkv",
        "attention vs SDPA",
    )


def test_attention_head_dim_128_and_default_tiles():
    """Largest supported head dim, default tile configuration (64 x 64), odd length."""
    q, k, v, mask = _attention_inputs(torch.float16, 70, 70, 128, padded=True, batch=1, heads=1)
    check(
        lambda q, k, v: tri_attn.attention(q, k, v, causal=True, key_padding_mask=mask),
        lambda q, k, v: ref.attention(q, k, v, causal=True, key_padding_mask=mask),
        [q, k, v],
        torch.float16,
        "qkv",
        "attention D=128",
    )


def test_attention_forward_stage_saves_logsumexp():
    q, k, v, mask = _attention_inputs(torch.float32, 19, 23, 16, padded=True)
    opts = dict(causal=True, key_padding_mask=mask, block_m=16, block_n=16)
    out, lse = tri_attn.attention_forward(q, k, v, **opts)
    out_ref, lse_ref = fr.flash_forward(q, k, v, **opts)
    assert_close(out, out_ref, torch.float32, "forward stage output")
    assert lse.dtype == torch.float32
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref)), "rows without keys: lse = +inf"
    finite = torch.isfinite(lse_ref)
    assert_close(lse[finite], lse_ref[finite], torch.float32, "forward stage log-sum-exp")


def _backward_stage_inputs():
    q, k, v, mask = _attention_inputs(torch.float32, 19, 23, 16, padded=True, seed=3)
    opts = dict(causal=True, key_padding_mask=mask, block_m=16, block_n=16)
    out, lse = fr.flash_forward(q, k, v, **opts)
    grad_out = _dev(torch.randn(out.shape, generator=_gen(4)))
    delta = fr.attention_delta(out, grad_out)
    return (q, k, v, lse, grad_out, delta), opts


def test_attention_backward_stage_dkdv_matches_tiled_reference():
    args, opts = _backward_stage_inputs()
    dk, dv = tri_attn.attention_backward_dkdv(*args, **opts)
    dk_ref, dv_ref = fr.flash_backward_dkdv(*args, **opts)
    assert_close(dv, dv_ref, torch.float32, "dV stage")
    assert_close(dk, dk_ref, torch.float32, "dK stage")


def test_attention_backward_stage_dq_matches_tiled_reference():
    args, opts = _backward_stage_inputs()
    dq = tri_attn.attention_backward_dq(*args, **opts)
    assert_close(dq, fr.flash_backward_dq(*args, **opts), torch.float32, "dQ stage")


def test_attention_rows_without_keys_output_zero_and_finite_grads():
    q, k, v, _ = _attention_inputs(torch.float32, 8, 5, 16, padded=False)
    mask = _dev(torch.tensor([[True, False, True, False, False], [False] * 5]))
    inputs = [leaf(t) for t in (q, k, v)]
    out = tri_attn.attention(*inputs, causal=True, key_padding_mask=mask, block_m=16, block_n=16)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0, :, :3], torch.zeros_like(out[0, :, :3]))  # Tq > Tk: 3 see nothing
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


def test_attention_strided_inputs():
    """(B, T, H, D) tensors viewed as (B, H, T, D) (the usual model layout) and a last dim with
    stride 2: both must give the contiguous result."""
    gen = _gen(5)
    q_bthd = _dev(torch.randn(2, 17, 2, 16, generator=gen))
    kv = _dev(torch.randn(2, 2, 17, 32, generator=gen))
    q, k, v = q_bthd.transpose(1, 2), kv[..., ::2], kv[..., 1::2]
    assert not q.is_contiguous() and k.stride(-1) == 2
    out = tri_attn.attention(q, k, v, causal=True, block_m=16, block_n=16)
    expected = ref.attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert_close(out, expected, torch.float32, "strided inputs")


# ============================================================================= cross-entropy


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_reference_and_torch(dtype, reduction):
    gen = _gen(6)
    logits = (torch.randn(7, 1000, generator=gen) * 3).to(dtype)  # 1000 = 3 chunks of 256 + 232
    targets = torch.randint(0, 1000, (7,), generator=gen)
    targets[2] = -100
    opts = dict(ignore_index=-100, reduction=reduction)
    for name, expected_fn in (("reference", ref.cross_entropy), ("torch", F.cross_entropy)):
        check(
            lambda lg, t: tri_ce.cross_entropy(lg, t, **opts, block_v=256),
            lambda lg, t, fn=expected_fn: fn(lg, t, **opts),
            [logits, targets],
            dtype,
            ["logits"],
            f"cross_entropy vs {name} ({reduction})",
        )


def test_cross_entropy_default_chunk_and_custom_ignore_index():
    gen = _gen(7)
    logits = torch.randn(5, 77, generator=gen)
    targets = torch.tensor([3, 0, 76, 0, 5])
    check(
        lambda lg, t: tri_ce.cross_entropy(lg, t, ignore_index=0),
        lambda lg, t: F.cross_entropy(lg, t, ignore_index=0),
        [logits, targets],
        torch.float32,
        ["logits"],
        "cross_entropy ignore_index=0",
    )


def test_cross_entropy_all_ignored_and_bad_targets():
    logits = _dev(torch.randn(3, 10))
    all_ignored = _dev(torch.full((3,), -100))
    assert torch.isnan(tri_ce.cross_entropy(logits, all_ignored))  # 0/0, as torch
    assert tri_ce.cross_entropy(logits, all_ignored, reduction="sum").item() == 0.0
    bad = _dev(torch.tensor([1, 10, -3]))  # 10 and -3 are outside [0, 10) and not ignore_index
    losses = tri_ce.cross_entropy(logits, bad, reduction="none")
    assert torch.isfinite(losses[0]) and torch.isnan(losses[1:]).all()


# ============================================================================= norms


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(3, 5, 37), (15, 64)])  # 15 rows > 4 backward programs
def test_layer_norm_matches_reference_and_torch(dtype, shape):
    gen = _gen(8)
    width = shape[-1]
    x = (torch.randn(*shape, generator=gen) * 2 + 0.5).to(dtype)
    w = torch.randn(width, generator=gen).to(dtype)
    b = torch.randn(width, generator=gen).to(dtype)
    for name, expected_fn in (
        ("reference", lambda x, w, b: ref.layer_norm(x, w, b, 1e-5)),
        ("torch", lambda x, w, b: F.layer_norm(x, (width,), w, b, 1e-5)),
    ):
        check(
            lambda x, w, b: tri_norms.layer_norm(x, w, b, 1e-5),
            expected_fn,
            [x, w, b],
            dtype,
            ["x", "weight", "bias"],
            f"layer_norm vs {name}",
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rms_norm_matches_reference_and_torch(dtype):
    gen = _gen(9)
    x = torch.randn(3, 5, 37, generator=gen).to(dtype)
    w = torch.randn(37, generator=gen).to(dtype)
    for name, expected_fn in (
        ("reference", lambda x, w: ref.rms_norm(x, w, 1e-6)),
        ("torch", lambda x, w: F.rms_norm(x, (37,), w, 1e-6)),
    ):
        check(
            lambda x, w: tri_norms.rms_norm(x, w, 1e-6),
            expected_fn,
            [x, w],
            dtype,
            ["x", "weight"],
            f"rms_norm vs {name}",
        )


def test_norms_without_affine_parameters():
    x = torch.randn(6, 33, generator=_gen(10))
    check(
        lambda x: tri_norms.layer_norm(x, None, None),
        lambda x: ref.layer_norm(x, None, None),
        [x],
        torch.float32,
        ["x"],
        "layer_norm without weight and bias",
    )
    w = torch.randn(33, generator=_gen(11))
    check(
        lambda x, w: tri_norms.layer_norm(x, w, None),
        lambda x, w: F.layer_norm(x, (33,), w, None),
        [x, w],
        torch.float32,
        ["x", "weight"],
        "layer_norm without bias",
    )
    check(
        lambda x: tri_norms.rms_norm(x, None),
        lambda x: ref.rms_norm(x, None),
        [x],
        torch.float32,
        ["x"],
        "rms_norm without weight",
    )


# ============================================================================= LSTM cell


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lstm_cell_matches_reference(dtype):
    gen = _gen(12)
    gates = (torch.randn(5, 4 * 300, generator=gen) * 2).to(dtype)  # 300 = 256 + 44: 2 blocks
    c_prev = torch.randn(5, 300, generator=gen).to(dtype)
    check(
        tri_lstm.lstm_cell, ref.lstm_cell, [gates, c_prev], dtype, ["gates", "c_prev"], "lstm_cell"
    )


def test_lstm_cell_matches_torch_lstm_cell():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(6, 9).to(DEVICE)
    gen = _gen(13)
    x, h0, c0 = (torch.randn(4, n, generator=gen) for n in (6, 9, 9))

    def ours(x, h0, c0):
        gates = x @ cell.weight_ih.T + cell.bias_ih + h0 @ cell.weight_hh.T + cell.bias_hh
        return tri_lstm.lstm_cell(gates, c0)

    check(
        ours,
        lambda x, h0, c0: cell(x, (h0, c0)),
        [x, h0, c0],
        torch.float32,
        ["x", "h0", "c0"],
        "lstm_cell vs nn.LSTMCell",
    )


def test_lstm_cell_mixed_dtypes_and_unused_output():
    """bf16 gates with a float32 cell state; a loss that uses h only (dc arrives as zeros)."""
    gen = _gen(14)
    gates = leaf(_dev(torch.randn(3, 4 * 20, generator=gen).to(torch.bfloat16)))
    c_prev = leaf(_dev(torch.randn(3, 20, generator=gen)))
    h, c = tri_lstm.lstm_cell(gates, c_prev)
    assert h.dtype == torch.bfloat16 and c.dtype == torch.float32
    h.float().sum().backward()
    g_ref, c_ref = upcast_leaf(gates), upcast_leaf(c_prev)
    h_ref, _ = ref.lstm_cell(g_ref, c_ref)
    h_ref.sum().backward()
    assert_close(h, h_ref, torch.bfloat16, "h")
    assert_close(gates.grad, g_ref.grad, torch.bfloat16, "dgates")
    assert_close(c_prev.grad, c_ref.grad, torch.float32, "dc_prev")


# ============================================================================= RoPE


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batched_positions", [False, True])
def test_rope_matches_reference(dtype, batched_positions):
    gen = _gen(15)
    x = torch.randn(2, 3, 19, 24, generator=gen).to(dtype)  # T=19 > one tile; D/2=12 padded
    positions = torch.arange(19)
    if batched_positions:
        positions = torch.stack([positions, positions + 5])
    cos, sin = ref.rope_cos_sin(_dev(positions), 24)
    check(
        lambda x: tri_rope.apply_rope(x, cos.to(dtype), sin.to(dtype)),
        lambda x: ref.apply_rope(x, cos.to(dtype).float(), sin.to(dtype).float()),
        [x],
        dtype,
        ["x"],
        f"rope {batched_positions=}",
    )


# ============================================================================= dispatch


@pytest.fixture
def forced_triton(monkeypatch):
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, "triton")


def test_public_functions_run_triton_when_forced(forced_triton, monkeypatch):
    """LLMCOURSE_KERNELS=triton: the public names call the Triton path (spied)."""
    calls = []
    for module, name in [
        (tri_attn, "attention"),
        (tri_ce, "cross_entropy"),
        (tri_norms, "layer_norm"),
        (tri_norms, "rms_norm"),
        (tri_lstm, "lstm_cell"),
        (tri_rope, "apply_rope"),
    ]:
        original = getattr(module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    gen = _gen(16)
    q = _dev(torch.randn(1, 2, 9, 16, generator=gen))
    assert_close(
        kernels.attention(q, q, q, causal=True), ref.attention(q, q, q, causal=True),
        torch.float32, "attention",
    )  # fmt: skip
    logits, targets = _dev(torch.randn(4, 30, generator=gen), torch.tensor([1, 2, -100, 29]))
    assert_close(
        kernels.cross_entropy(logits, targets), F.cross_entropy(logits, targets),
        torch.float32, "cross_entropy",
    )  # fmt: skip
    x, w = _dev(torch.randn(3, 16, generator=gen), torch.randn(16, generator=gen))
    assert_close(kernels.layer_norm(x, w, w), F.layer_norm(x, (16,), w, w), torch.float32, "ln")
    assert_close(kernels.rms_norm(x, w), F.rms_norm(x, (16,), w, 1e-6), torch.float32, "rms")
    kernels.lstm_cell(*_dev(torch.randn(2, 8, generator=gen), torch.randn(2, 2, generator=gen)))
    cos, sin = kernels.rope_cos_sin(_dev(torch.arange(9)), 16)
    kernels.apply_rope(q, cos, sin)
    assert calls == [
        "attention", "cross_entropy", "layer_norm", "rms_norm", "lstm_cell", "apply_rope"
    ]  # fmt: skip


def test_auto_picks_reference_for_cpu_tensors(monkeypatch):
    """Even with the interpreter on, ``auto`` never sends CPU tensors to Triton."""
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, "auto")

    def fail(*args, **kwargs):
        raise AssertionError("auto must not run Triton on CPU tensors")

    monkeypatch.setattr(tri_attn, "attention", fail)
    q = torch.randn(1, 1, 4, 16)
    kernels.attention(q, q, q)


def test_forced_triton_unsupported_input_lists_what_is_supported(forced_triton):
    q = _dev(torch.randn(1, 1, 4, 8))
    with pytest.raises(ValueError, match=r"head dim 8 \(supported: 16 to 128\)"):
        kernels.attention(q, q, q)
    x = _dev(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="float64.*supported: float16, bfloat16, float32"):
        kernels.layer_norm(x, None, None)
    x = _dev(torch.randn(1, 1, 3, 8))
    cos, sin = kernels.rope_cos_sin(_dev(torch.arange(3)), 8)
    with pytest.raises(ValueError, match="require grad"):
        kernels.apply_rope(x, cos.requires_grad_(), sin)
