"""Attention: scaled dot-product vs torch's SDPA, multi-head vs torch.nn.MultiheadAttention,
masks, the KV cache, and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.nn import (
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    attention_weights,
    scaled_dot_product_attention,
)
from llmcourse.utils import ShapeError

ATOL = 1e-5


def _qkv(b=2, h=3, tq=5, tk=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=g) for t in (tq, tk, tk))


def _padding(b: int, tk: int) -> torch.Tensor:
    mask = torch.ones(b, tk, dtype=torch.bool)
    mask[0, -2:] = False  # row 0: last two keys are padding
    return mask


@pytest.mark.parametrize(
    ("causal", "padded"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_sdpa_matches_torch_values_and_grads(causal: bool, padded: bool) -> None:
    q, k, v = _qkv()
    kpm = _padding(2, 5) if padded else None
    ref_mask = None
    if padded:
        ref_mask = kpm[:, None, None, :]
        if causal:
            ref_mask = ref_mask & torch.ones(5, 5, dtype=torch.bool).tril()
    ins1 = [t.clone().requires_grad_() for t in (q, k, v)]
    ins2 = [t.clone().requires_grad_() for t in (q, k, v)]
    ours = scaled_dot_product_attention(*ins1, causal=causal, key_padding_mask=kpm)
    ref = F.scaled_dot_product_attention(*ins2, attn_mask=ref_mask, is_causal=causal and not padded)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    g = torch.randn_like(ours)
    ours.backward(g)
    ref.backward(g)
    for a, b in zip(ins1, ins2, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=ATOL, rtol=0)


def test_sdpa_custom_scale_matches_torch() -> None:
    q, k, v = _qkv(tq=4, tk=6)
    ours = scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(
        ours, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=ATOL, rtol=0
    )


def test_sdpa_worked_example_with_sqrt_dk_scaling() -> None:
    """The corrected worked example (ERRATA): Q = K = V = [[1,0],[0,1],[1,1]], d_k = 2."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])[None, None]
    weights = attention_weights(x, x)[0, 0]
    expected_w = torch.tensor([[0.401, 0.198, 0.401], [0.198, 0.401, 0.401], [0.248, 0.248, 0.503]])
    torch.testing.assert_close(weights, expected_w, atol=1.5e-3, rtol=0)
    out = scaled_dot_product_attention(x, x, x)[0, 0]
    expected = torch.tensor([[0.802, 0.599], [0.599, 0.802], [0.752, 0.752]])
    torch.testing.assert_close(out, expected, atol=1.5e-3, rtol=0)


def test_causal_with_fewer_queries_aligns_to_the_end() -> None:
    """The KV-cache case: the last Tq queries against all Tk keys = the last rows of full causal."""
    q, k, v = _qkv(tq=6, tk=6)
    full = scaled_dot_product_attention(q, k, v, causal=True)
    tail = scaled_dot_product_attention(q[:, :, -2:], k, v, causal=True)
    torch.testing.assert_close(tail, full[:, :, -2:], atol=ATOL, rtol=0)


def test_fully_masked_query_gets_zeros() -> None:
    q, k, v = _qkv(b=1, tq=3, tk=4)
    out = scaled_dot_product_attention(
        q, k, v, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool)
    )
    assert torch.equal(out, torch.zeros_like(out))


def test_attention_weights_rows_and_masks() -> None:
    q, k, v = _qkv(tq=5, tk=5)
    kpm = _padding(2, 5)
    w = attention_weights(q, k, causal=True, key_padding_mask=kpm)
    assert w.shape == (2, 3, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    assert torch.equal(w.triu(1), torch.zeros_like(w))  # no query sees a later key
    assert torch.equal(w[0, :, :, -2:], torch.zeros_like(w[0, :, :, -2:]))  # padding unseen
    out = scaled_dot_product_attention(q, k, v, causal=True, key_padding_mask=kpm)
    torch.testing.assert_close(w @ v, out, atol=ATOL, rtol=0)


def test_sdpa_errors_name_shapes_and_dtypes() -> None:
    q, k, v = _qkv()
    with pytest.raises(ShapeError, match=r"\(B, H, \*, D\).*\(3, 5, 8\)"):
        scaled_dot_product_attention(q[0], k, v)
    with pytest.raises(ShapeError, match=r"k.*\(2, 3, 5, 4\)"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, k, v, key_padding_mask=torch.ones(2, 5))
    with pytest.raises(ShapeError, match=r"\(2, 5\).*\(2, 4\)"):
        scaled_dot_product_attention(q, k, v, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))


def _torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """torch.nn.MultiheadAttention holding ours's weights (same fused q/k/v layout)."""
    ref = nn.MultiheadAttention(
        ours.d_model, ours.n_heads, batch_first=True, bias=ours.out.bias is not None
    )
    with torch.no_grad():
        if ours.cross_attention:
            ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.kv.weight]))
            if ref.in_proj_bias is not None:
                ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.kv.bias]))
        else:
            ref.in_proj_weight.copy_(ours.qkv.weight)
            if ref.in_proj_bias is not None:
                ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        if ref.out_proj.bias is not None:
            ref.out_proj.bias.copy_(ours.out.bias)
    return ref.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_torch_mha(bias: bool, causal: bool) -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4, bias=bias, causal=causal)
    ref = _torch_mha(ours)
    x = torch.randn(2, 6, 16)
    kpm = _padding(2, 6)
    blocked = torch.ones(6, 6, dtype=torch.bool).triu(1)  # torch's attn_mask: True = blocked
    attn_mask = blocked if causal else None
    expected, _ = ref(x, x, x, key_padding_mask=~kpm, attn_mask=attn_mask, need_weights=False)
    got = ours(x, key_padding_mask=kpm)
    torch.testing.assert_close(got[1], expected[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[0], expected[0], atol=ATOL, rtol=0)


def test_cross_attention_matches_torch_mha() -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4, cross_attention=True)
    assert set(ours.state_dict()) == {
        "q.weight",
        "q.bias",
        "kv.weight",
        "kv.bias",
        "out.weight",
        "out.bias",
    }
    ref = _torch_mha(ours)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    kpm = _padding(2, 7)
    expected, _ = ref(x, memory, memory, key_padding_mask=~kpm, need_weights=False)
    torch.testing.assert_close(ours(x, memory, key_padding_mask=kpm), expected, atol=ATOL, rtol=0)


def test_cross_attention_with_other_memory_width() -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4, cross_attention=True, kv_dim=10)
    assert ours.kv.weight.shape == (32, 10)
    assert ours(torch.randn(2, 3, 16), torch.randn(2, 5, 10)).shape == (2, 3, 16)


def test_state_dict_names() -> None:
    assert set(MultiHeadAttention(8, 2).state_dict()) == {
        "qkv.weight",
        "qkv.bias",
        "out.weight",
        "out.bias",
    }
    assert set(MultiHeadAttention(8, 2, bias=False).state_dict()) == {"qkv.weight", "out.weight"}


def test_load_projections_from_separate_matrices() -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(8, 2)
    wq, wk, wv, wo = (torch.randn(8, 8) for _ in range(4))
    bq, bk, bv, bo = (torch.randn(8) for _ in range(4))
    ours.load_projections(wq, wk, wv, wo, bq, bk, bv, bo)
    x = torch.randn(1, 4, 8)

    def heads(t):
        return t.view(1, 4, 2, 4).transpose(1, 2)

    q, k, v = heads(x @ wq.T + bq), heads(x @ wk.T + bk), heads(x @ wv.T + bv)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 4, 8)
    torch.testing.assert_close(ours(x), y @ wo.T + bo, atol=ATOL, rtol=0)
    with pytest.raises(ShapeError, match=r"\(24, 8\)"):
        ours.load_projections(wq[:4], wk, wv, wo, bq, bk, bv, bo)


@pytest.mark.parametrize("use_rope", [False, True])
def test_kv_cache_incremental_equals_full(use_rope: bool) -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, causal=True).eval()
    rope = RotaryEmbedding(4) if use_rope else None
    x = torch.randn(2, 7, 16)
    full = attn(x, rope=rope.span(0, 7) if rope else None)
    layer_cache = KVCache(1, max_len=8, batch_size=2)[0]
    with torch.no_grad():
        pieces = [attn(x[:, :3], kv_cache=layer_cache, rope=rope.span(0, 3) if rope else None)]
        for t in range(3, 7):
            pieces.append(
                attn(x[:, t : t + 1], kv_cache=layer_cache, rope=rope.span(t, 1) if rope else None)
            )
    assert layer_cache.length == 7
    torch.testing.assert_close(torch.cat(pieces, dim=1), full.detach(), atol=ATOL, rtol=0)


def test_cross_attention_cache_projects_memory_once() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, cross_attention=True).eval()
    x, memory = torch.randn(1, 2, 16), torch.randn(1, 5, 16)
    cache = KVCache(1, max_len=4)
    with torch.no_grad():
        first = attn(x, memory, kv_cache=cache[0])
        assert cache[0].cross is not None
        again = attn(x, None, kv_cache=cache[0])  # memory no longer needed
    torch.testing.assert_close(first, again)
    cache.reset()
    assert cache[0].cross is None and cache.length == 0


def test_kv_cache_full_and_batch_errors() -> None:
    cache = KVCache(2, max_len=4, batch_size=1)
    k = torch.zeros(1, 2, 3, 8)
    cache[0].update(k, k)
    with pytest.raises(ValueError, match="max_len=4"):
        cache[0].update(k, k)
    with pytest.raises(ShapeError, match="batch size 1, got a batch of 3"):
        cache.check_batch(3)
    with pytest.raises(ShapeError, match=r"\(3, 2, 1, 8\)"):
        cache[0].update(torch.zeros(3, 2, 1, 8), torch.zeros(3, 2, 1, 8))


def test_kv_cache_reorder_selects_rows() -> None:
    cache = KVCache(1, max_len=3, batch_size=2)
    k = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 2, 1)
    cache[0].update(k, k)
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.batch_size == 3
    assert cache[0].k[:, 0, 0, 0].tolist() == [1.0, 1.0, 0.0]


def test_mha_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    attn = MultiHeadAttention(8, 2)
    with pytest.raises(ShapeError, match=r"\(B, T, 8\).*\(2, 3, 6\)"):
        attn(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="cross_attention=True"):
        attn(torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="needs memory"):
        MultiHeadAttention(8, 2, cross_attention=True)(torch.randn(2, 3, 8))
