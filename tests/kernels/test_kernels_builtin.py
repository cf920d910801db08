"""Under LLMCOURSE_KERNELS=auto on the CPU, PyTorch's fused built-ins stand in for the
reference: they must agree with it (values and gradients) in every case they accept, and hand
back to the reference where they would differ."""

from __future__ import annotations

import pytest
import torch

import llmcourse.kernels as K
from llmcourse.kernels import builtin, reference


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward(torch.ones_like(out) if out.dim() else None)
    return out.detach(), [leaf.grad for leaf in leaves]


def _both(monkeypatch, fn, *tensors):
    monkeypatch.setenv("LLMCOURSE_KERNELS", "auto")
    fast = _grads(fn, *tensors)
    monkeypatch.setenv("LLMCOURSE_KERNELS", "reference")
    slow = _grads(fn, *tensors)
    return fast, slow


def _assert_same(fast, slow, atol=1e-5):
    torch.testing.assert_close(fast[0], slow[0], atol=atol, rtol=1e-5)
    for a, b in zip(fast[1], slow[1], strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


@pytest.mark.parametrize(
    ("tq", "tk", "causal", "padding"),
    [(7, 7, False, False), (7, 7, True, False), (3, 9, True, False), (9, 9, True, True), (5, 8, False, True)],
    ids=["plain", "causal", "kv-cache", "causal+padding", "padding"],
)
def test_attention_builtin_matches_reference(monkeypatch, tq, tk, causal, padding):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, tq, 16, generator=g)
    k, v = torch.randn(2, 3, tk, 16, generator=g), torch.randn(2, 3, tk, 16, generator=g)
    mask = None
    if padding:
        mask = torch.ones(2, tk, dtype=torch.bool)
        mask[1, -3:] = False

    def fn(q_, k_, v_):
        return K.attention(q_, k_, v_, causal=causal, key_padding_mask=mask, scale=0.3)

    _assert_same(*_both(monkeypatch, fn, q, k, v))


def test_attention_builtin_declines_rows_without_keys():
    q = torch.randn(1, 1, 4, 8)
    k = v = torch.randn(1, 1, 4, 8)
    all_padding = torch.tensor([[False, False, False, False]])
    assert builtin.attention(q, k, v, causal=False, key_padding_mask=all_padding, scale=None) is None
    assert builtin.attention(torch.randn(1, 1, 6, 8), k, v, causal=True, key_padding_mask=None, scale=None) is None
    out = K.attention(q, k, v, key_padding_mask=all_padding)  # falls back: zeros, not NaN
    assert torch.equal(out, torch.zeros_like(out))


def test_norms_and_loss_builtin_match_reference(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(4, 5, 32, generator=g), torch.randn(32, generator=g), torch.randn(32, generator=g)
    _assert_same(*_both(monkeypatch, lambda x_, w_, b_: K.layer_norm(x_, w_, b_, 1e-5), x, w, b))
    _assert_same(*_both(monkeypatch, lambda x_, w_: K.rms_norm(x_, w_, 1e-6), x, w))
    logits = torch.randn(12, 97, generator=g)
    targets = torch.randint(0, 97, (12,), generator=g)
    targets[3] = -100
    for reduction in ("mean", "sum"):
        _assert_same(*_both(monkeypatch, lambda z, r=reduction: K.cross_entropy(z, targets, reduction=r), logits))


def test_forcing_reference_never_calls_builtins(monkeypatch):
    monkeypatch.setenv("LLMCOURSE_KERNELS", "reference")
    calls = []
    for name in ("attention", "layer_norm", "rms_norm", "cross_entropy"):
        monkeypatch.setattr(builtin, name, lambda *a, _n=name, **kw: calls.append(_n))
    x = torch.randn(2, 1, 4, 8)
    K.attention(x, x, x, causal=True)
    K.layer_norm(torch.randn(3, 8), None, None)
    K.rms_norm(torch.randn(3, 8), None)
    K.cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    assert calls == []
    assert reference.attention is not None
