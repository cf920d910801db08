"""The plain-PyTorch references against PyTorch built-ins, and the tiled FlashAttention reference
(forward, dK/dV stage, dQ stage) against autograd. Runs in the main test process (no Triton)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernels_testing import assert_close, leaf

from llmcourse.kernels import flash_reference as fr
from llmcourse.kernels import reference as ref

F64 = torch.float64


def _qkv(batch, heads, seq_q, seq_k, dim, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_q, dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, heads, seq_k, dim, generator=gen, dtype=dtype)
    v = torch.randn(batch, heads, seq_k, dim, generator=gen, dtype=dtype)
    return q, k, v


def _bottom_right_causal(seq_q: int, seq_k: int) -> torch.Tensor:
    """Causal mask for queries that are the last seq_q of seq_k positions, built with tril."""
    return torch.ones(seq_q, seq_k, dtype=torch.bool).tril(diagonal=seq_k - seq_q)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize(
    "causal, padded, seq_q, seq_k, dim",
    [
        (False, False, 7, 7, 16),
        (True, False, 9, 9, 8),
        (True, False, 3, 11, 16),  # KV-cache case: queries aligned to the end of the keys
        (False, True, 5, 13, 32),
        (True, True, 6, 10, 16),
    ],
)
def test_reference_attention_matches_sdpa(causal, padded, seq_q, seq_k, dim):
    q, k, v = _qkv(2, 3, seq_q, seq_k, dim)
    gen = torch.Generator().manual_seed(1)
    key_mask = None
    allowed = torch.ones(2, 1, seq_q, seq_k, dtype=torch.bool)
    if padded:
        key_mask = torch.rand(2, seq_k, generator=gen) > 0.4
        key_mask[:, 0] = True  # SDPA returns NaN for queries that see no key; keep one
        allowed = allowed & key_mask[:, None, None, :]
    if causal:
        allowed = allowed & _bottom_right_causal(seq_q, seq_k)
    grad = torch.randn(2, 3, seq_q, dim, generator=gen, dtype=F64)

    ours_in, sdpa_in = [leaf(t) for t in (q, k, v)], [leaf(t) for t in (q, k, v)]
    ours = ref.attention(*ours_in, causal=causal, key_padding_mask=key_mask)
    expected = F.scaled_dot_product_attention(*sdpa_in, attn_mask=allowed)
    assert_close(ours, expected, F64, "attention output")
    ours.backward(grad)
    expected.backward(grad)
    for name, a, b in zip("qkv", ours_in, sdpa_in, strict=True):
        assert_close(a.grad, b.grad, F64, f"d{name}")


def test_reference_attention_custom_scale_matches_sdpa():
    q, k, v = _qkv(1, 2, 5, 5, 16)
    ours = ref.attention(q, k, v, causal=True, scale=0.3)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    assert_close(ours, expected, F64, "attention with scale=0.3")


def test_reference_attention_rows_without_keys_are_zero_with_finite_grads():
    q, k, v = _qkv(2, 2, 6, 4, 8)
    key_mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    inputs = [leaf(t) for t in (q, k, v)]
    out = ref.attention(*inputs, causal=True, key_padding_mask=key_mask)
    # batch 1: every key is padding; batch 0 with Tq > Tk: queries 0 and 1 see no key
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0, :, :2], torch.zeros_like(out[0, :, :2]))
    out.sum().backward()
    for t in inputs:
        assert torch.isfinite(t.grad).all()
    assert torch.equal(inputs[0].grad[1], torch.zeros_like(inputs[0].grad[1]))


def test_reference_attention_seed_worked_example():
    """The corrected worked example of the course (ERRATA): Q = K = V, d_k = 2, scaled."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)[None, None]
    out = ref.attention(x, x, x)[0, 0]
    expected = torch.tensor([[0.802, 0.599], [0.599, 0.802], [0.752, 0.752]], dtype=F64)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- flash reference

FLASH_CASES = [
    # causal, padded, seq_q, seq_k, block_m, block_n
    (False, False, 13, 13, 4, 4),
    (True, False, 11, 11, 4, 8),
    (True, True, 5, 14, 4, 4),  # Tq < Tk, end-aligned
    (True, True, 9, 6, 8, 4),  # Tq > Tk: the first queries see nothing
    (False, True, 10, 7, 16, 16),  # one tile bigger than the sequence
]


def _flash_case(causal, padded, seq_q, seq_k):
    q, k, v = _qkv(2, 2, seq_q, seq_k, 8, seed=3)
    gen = torch.Generator().manual_seed(4)
    key_mask = None
    if padded:
        key_mask = torch.rand(2, seq_k, generator=gen) > 0.3
        key_mask[1] = False
    grad = torch.randn(2, 2, seq_q, 8, generator=gen, dtype=F64)
    return q, k, v, key_mask, grad


@pytest.mark.parametrize("causal, padded, seq_q, seq_k, block_m, block_n", FLASH_CASES)
def test_flash_forward_stage_matches_naive(causal, padded, seq_q, seq_k, block_m, block_n):
    q, k, v, key_mask, _ = _flash_case(causal, padded, seq_q, seq_k)
    out, lse = fr.flash_forward(
        q, k, v, causal=causal, key_padding_mask=key_mask, block_m=block_m, block_n=block_n
    )
    assert_close(out, ref.attention(q, k, v, causal=causal, key_padding_mask=key_mask), F64, "out")
    scores = q @ k.transpose(-2, -1) / 8**0.5
    allowed = ref.attention_allowed_mask(
        seq_q, seq_k, causal=causal, key_padding_mask=key_mask, device=q.device
    )
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    expected_lse = torch.logsumexp(scores, dim=-1)
    expected_lse = torch.where(torch.isinf(expected_lse), float("inf"), expected_lse)  # no key
    assert_close(lse, expected_lse, F64, "log-sum-exp")


@pytest.mark.parametrize("causal, padded, seq_q, seq_k, block_m, block_n", FLASH_CASES)
def test_flash_backward_stages_match_autograd(causal, padded, seq_q, seq_k, block_m, block_n):
    q, k, v, key_mask, grad = _flash_case(causal, padded, seq_q, seq_k)
    inputs = [leaf(t) for t in (q, k, v)]
    ref.attention(*inputs, causal=causal, key_padding_mask=key_mask).backward(grad)
    opts = dict(causal=causal, key_padding_mask=key_mask, block_m=block_m, block_n=block_n)
    out, lse = fr.flash_forward(q, k, v, **opts)
    delta = fr.attention_delta(out, grad)
    dk, dv = fr.flash_backward_dkdv(q, k, v, lse, grad, delta, **opts)  # stage 2
    assert_close(dv, inputs[2].grad, F64, "dV stage")
    assert_close(dk, inputs[1].grad, F64, "dK stage")
    dq = fr.flash_backward_dq(q, k, v, lse, grad, delta, **opts)  # stage 3
    assert_close(dq, inputs[0].grad, F64, "dQ stage")


def test_flash_reference_passes_gradcheck():
    q, k, v = (leaf(t) for t in _qkv(1, 1, 5, 6, 4, seed=5))
    key_mask = torch.tensor([[True, True, False, True, True, True]])

    def fn(q, k, v):
        return fr.flash_attention(
            q, k, v, causal=True, key_padding_mask=key_mask, block_m=2, block_n=4
        )

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_flash_reference_low_precision_matches_float32():
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(1, 2, 9, 9, 16))
    out, _ = fr.flash_forward(q, k, v, causal=True, block_m=4, block_n=4)
    assert out.dtype == torch.bfloat16
    expected = ref.attention(q.float(), k.float(), v.float(), causal=True)
    assert_close(out, expected, torch.bfloat16, "bf16 tiled forward")


# ----------------------------------------------------------------------------- norms


@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 37), (1, 1)])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
def test_reference_layer_norm_matches_torch(shape, affine):
    gen = torch.Generator().manual_seed(0)
    width = shape[-1]
    x = torch.randn(*shape, generator=gen, dtype=F64) * 3 + 1
    w = torch.randn(width, generator=gen, dtype=F64) if affine != "none" else None
    b = torch.randn(width, generator=gen, dtype=F64) if affine == "weight+bias" else None
    grad = torch.randn(*shape, generator=gen, dtype=F64)
    ours_in = [leaf(t) if t is not None else None for t in (x, w, b)]
    torch_in = [leaf(t) if t is not None else None for t in (x, w, b)]
    ours = ref.layer_norm(*ours_in, eps=1e-5)
    expected = F.layer_norm(torch_in[0], (width,), torch_in[1], torch_in[2], eps=1e-5)
    assert_close(ours, expected, F64, "layer_norm")
    ours.backward(grad)
    expected.backward(grad)
    for name, a, e in zip(("dx", "dweight", "dbias"), ours_in, torch_in, strict=True):
        if a is not None:
            assert_close(a.grad, e.grad, F64, name)


@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 37)])
@pytest.mark.parametrize("with_weight", [True, False])
def test_reference_rms_norm_matches_torch(shape, with_weight):
    gen = torch.Generator().manual_seed(1)
    width = shape[-1]
    x = torch.randn(*shape, generator=gen, dtype=F64)
    w = torch.randn(width, generator=gen, dtype=F64) if with_weight else None
    ours_in = [leaf(x), leaf(w) if w is not None else None]
    torch_in = [leaf(x), leaf(w) if w is not None else None]
    ours = ref.rms_norm(*ours_in, eps=1e-6)
    expected = F.rms_norm(torch_in[0], (width,), torch_in[1], eps=1e-6)
    assert_close(ours, expected, F64, "rms_norm")
    grad = torch.randn(*shape, generator=gen, dtype=F64)
    ours.backward(grad)
    expected.backward(grad)
    for name, a, e in zip(("dx", "dweight"), ours_in, torch_in, strict=True):
        if a is not None:
            assert_close(a.grad, e.grad, F64, name)


def test_reference_norms_keep_low_precision_dtype():
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    w = torch.ones(8, dtype=torch.bfloat16)
    assert ref.layer_norm(x, w, None).dtype == torch.bfloat16
    assert ref.rms_norm(x, w).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_reference_cross_entropy_matches_torch(reduction, ignore_index):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 17, generator=gen, dtype=F64) * 4
    targets = torch.randint(0, 17, (9,), generator=gen)
    targets[2] = ignore_index
    targets[5] = ignore_index
    ours_in, torch_in = leaf(logits), leaf(logits)
    ours = ref.cross_entropy(ours_in, targets, ignore_index=ignore_index, reduction=reduction)
    expected = F.cross_entropy(torch_in, targets, ignore_index=ignore_index, reduction=reduction)
    assert_close(ours, expected, F64, f"cross_entropy {reduction}")
    grad = torch.randn(expected.shape, generator=gen, dtype=F64)
    ours.backward(grad)
    expected.backward(grad)
    assert_close(ours_in.grad, torch_in.grad, F64, "dlogits")


def test_reference_cross_entropy_all_ignored_mean_is_nan_like_torch():
    logits = torch.randn(3, 5)
    targets = torch.full((3,), -100)
    assert torch.isnan(F.cross_entropy(logits, targets))
    assert torch.isnan(ref.cross_entropy(logits, targets))
    assert ref.cross_entropy(logits, targets, reduction="sum").item() == 0.0


# ----------------------------------------------------------------------------- LSTM cell


@pytest.mark.parametrize("batch, input_size, hidden", [(3, 5, 7), (1, 4, 1), (6, 3, 33)])
def test_reference_lstm_cell_matches_torch_lstm_cell(batch, input_size, hidden):
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(input_size, hidden, dtype=F64)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, input_size, generator=gen, dtype=F64)
    h0 = torch.randn(batch, hidden, generator=gen, dtype=F64)
    c0 = torch.randn(batch, hidden, generator=gen, dtype=F64)

    ours_in = [leaf(t) for t in (x, h0, c0)]
    gates = (
        ours_in[0] @ cell.weight_ih.T + cell.bias_ih + ours_in[1] @ cell.weight_hh.T + cell.bias_hh
    )
    h, c = ref.lstm_cell(gates, ours_in[2])
    ours_param_grads = torch.autograd.grad(
        (h.sum() + 2 * c.sum()), [*ours_in, cell.weight_ih, cell.weight_hh], retain_graph=True
    )

    torch_in = [leaf(t) for t in (x, h0, c0)]
    h_ref, c_ref = cell(torch_in[0], (torch_in[1], torch_in[2]))
    torch_param_grads = torch.autograd.grad(
        (h_ref.sum() + 2 * c_ref.sum()), [*torch_in, cell.weight_ih, cell.weight_hh]
    )
    assert_close(h, h_ref, F64, "h")
    assert_close(c, c_ref, F64, "c")
    names = ("dx", "dh0", "dc0", "dW_ih", "dW_hh")
    for name, a, e in zip(names, ours_param_grads, torch_param_grads, strict=True):
        assert_close(a, e, F64, name)


# ----------------------------------------------------------------------------- RoPE


def test_reference_rope_is_a_complex_rotation():
    """Pair (x_i, x_{i+D/2}) as the complex number x_i + i x_{i+D/2}; RoPE multiplies it by
    e^{i theta}, theta = pos * base^(-2i/D). An independent formulation of the same map."""
    gen = torch.Generator().manual_seed(4)
    batch, heads, seq, dim = 2, 3, 7, 12
    x = torch.randn(batch, heads, seq, dim, generator=gen, dtype=F64)
    cos, sin = ref.rope_cos_sin(torch.arange(seq), dim, dtype=F64)
    theta = torch.arange(seq, dtype=F64)[:, None] * 10000.0 ** (
        -torch.arange(0, dim, 2, dtype=F64) / dim
    )
    z = torch.complex(x[..., : dim // 2], x[..., dim // 2 :]) * torch.polar(
        torch.ones_like(theta), theta
    )
    expected = torch.cat([z.real, z.imag], dim=-1)
    assert_close(ref.apply_rope(x, cos, sin), expected, F64, "rope vs complex rotation")


def test_reference_rope_scores_depend_on_relative_position_only():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 1, 1, 16, generator=gen, dtype=F64)
    k = torch.randn(1, 1, 1, 16, generator=gen, dtype=F64)

    def score(m: int, n: int) -> torch.Tensor:
        cq, sq = ref.rope_cos_sin(torch.tensor([m]), 16, dtype=F64)
        ck, sk = ref.rope_cos_sin(torch.tensor([n]), 16, dtype=F64)
        return (ref.apply_rope(q, cq, sq) * ref.apply_rope(k, ck, sk)).sum()

    assert_close(score(7, 3), score(104, 100), F64, "score(7,3) vs score(104,100)")


def test_reference_rope_batched_positions_match_shared_table():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 2, 5, 8, generator=gen, dtype=F64)
    positions = torch.stack([torch.arange(5), torch.arange(3, 8)])  # (B, T)
    cos, sin = ref.rope_cos_sin(positions, 8, dtype=F64)
    assert cos.shape == (2, 5, 4)
    out = ref.apply_rope(x, cos, sin)
    for b in range(2):
        c1, s1 = ref.rope_cos_sin(positions[b], 8, dtype=F64)
        assert_close(out[b : b + 1], ref.apply_rope(x[b : b + 1], c1, s1), F64, f"batch {b}")
