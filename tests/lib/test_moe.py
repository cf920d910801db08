"""Mixture of experts: routing, the sparse layer against dense references, the balancing loss."""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse.nn import (
    FeedForward,
    MoEFeedForward,
    Routing,
    load_balancing_loss,
    top_k_gating,
)
from llmcourse.utils import ShapeError


def _dense_reference(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax, sort, keep k, renormalise, sum the chosen experts (N, C)."""
    rows = []
    for token in x:
        probs = torch.softmax(moe.router.weight @ token, dim=0)  # (E,)
        order = sorted(range(moe.n_experts), key=lambda e: -probs[e].item())[: moe.top_k]
        total = sum(probs[e] for e in order)
        rows.append(sum(probs[e] / total * moe.experts[e](token[None])[0] for e in order))
    return torch.stack(rows)


def _layer(seed: int = 0, **kwargs) -> MoEFeedForward:
    torch.manual_seed(seed)
    moe = MoEFeedForward(**{"dim": 8, "hidden": 16, "n_experts": 4, "top_k": 2, **kwargs})
    torch.nn.init.normal_(moe.router.weight, std=1.0)  # decisive routing, no near-ties
    return moe.double()


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_forward_matches_dense_token_loop(activation, top_k):
    moe = _layer(activation=activation, top_k=top_k)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    got = moe(x)
    assert got.shape == x.shape
    want = _dense_reference(moe, x.reshape(-1, 8)).reshape(x.shape)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_k_equal_to_n_is_the_probability_weighted_sum_of_all_experts():
    moe = _layer(top_k=4)
    x = torch.randn(7, 8, dtype=torch.float64)
    probs = torch.softmax(x @ moe.router.weight.T, dim=-1)  # (N, E)
    outputs = torch.stack([expert(x) for expert in moe.experts], dim=1)  # (N, E, C)
    torch.testing.assert_close(moe(x), (probs[..., None] * outputs).sum(1), atol=1e-12, rtol=0)


def test_single_expert_reduces_to_that_ffn():
    moe = _layer(n_experts=1, top_k=1)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(moe(x), moe.experts[0](x), atol=1e-12, rtol=0)


def test_routing_weights_indices_and_probs():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 3.5]])
    r = top_k_gating(logits, 2)
    assert isinstance(r, Routing)
    assert r.indices.tolist() == [[0, 2], [3, 1]]  # most probable first
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(r.probs, p)
    want = torch.stack([p[0, [0, 2]] / p[0, [0, 2]].sum(), p[1, [3, 1]] / p[1, [3, 1]].sum()])
    torch.testing.assert_close(r.weights, want)
    # renormalised weights of the top 2 depend only on the logit difference: sigmoid(2 - 1)
    assert r.weights[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-6)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(2))


def test_gradients_reach_only_the_selected_experts_and_the_router():
    torch.manual_seed(0)
    moe = MoEFeedForward(dim=4, hidden=8, n_experts=4, top_k=2)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[1, 0] = 5.0  # coordinate 0 votes for expert 1
        moe.router.weight[3, 1] = 4.0  # coordinate 1 votes for expert 3
    x = torch.zeros(6, 4)
    x[:, 0], x[:, 1] = 1.0, 1.0
    x[:, 2:] = torch.randn(6, 2)
    moe(x).pow(2).sum().backward()
    assert moe.last_routing.indices.unique().tolist() == [1, 3]
    for e, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        if e in (1, 3):
            assert all(g is not None and g.abs().sum() > 0 for g in grads), f"expert {e}"
        else:
            assert all(g is None or not g.any() for g in grads), f"expert {e} got a gradient"
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_matches_hugging_face_mixtral_sparse_moe_block():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(
        hidden_size=8,
        intermediate_size=12,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_jitter_noise=0.0,
    )
    torch.manual_seed(1)
    hf = MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.5)
    moe = MoEFeedForward(8, 12, n_experts=4, top_k=2, activation="swiglu", bias=False)
    with torch.no_grad():
        moe.router.weight.copy_(hf.gate.weight)
        for e, expert in enumerate(moe.experts):
            expert.fc1.weight.copy_(hf.experts.gate_up_proj[e])
            expert.fc2.weight.copy_(hf.experts.down_proj[e])
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), hf(x), atol=1e-5, rtol=1e-5)


def test_load_balancing_loss_hand_example():
    # 4 tokens, 2 experts, top-1. Tokens 0-2 go to expert 0, token 3 to expert 1:
    # f = (3/4, 1/4); P = mean of the probability rows = (0.6, 0.4); loss = 2 (0.45 + 0.1) = 1.1
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    indices = torch.tensor([[0], [0], [0], [1]])
    assert load_balancing_loss(probs, indices).item() == pytest.approx(1.1)
    # perfectly balanced: uniform probabilities and equal counts give exactly 1
    uniform = torch.full((4, 4), 0.25)
    assert load_balancing_loss(uniform, torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]])).item() == (
        pytest.approx(1.0)
    )
    # collapsed: every token to expert 0 with probability 1 gives E
    collapsed = torch.tensor([[1.0, 0.0, 0.0]] * 5)
    assert load_balancing_loss(collapsed, torch.zeros(5, 1, dtype=torch.long)).item() == (
        pytest.approx(3.0)
    )


def test_load_balancing_loss_gradient_lowers_the_overused_expert():
    logits = torch.tensor([[2.0, 0.0], [1.5, 0.2], [1.0, 0.5]], requires_grad=True)
    r = top_k_gating(logits, 1)
    load_balancing_loss(r.probs, r.indices).backward()
    assert (logits.grad[:, 0] > 0).all()  # gradient descent lowers expert 0's logits


def test_aux_loss_is_k_times_smaller_than_hugging_face_mixtral():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(2)
    logits = torch.randn(32, 8)
    r = top_k_gating(logits, 2)
    hf = load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    assert load_balancing_loss(r.probs, r.indices).item() == pytest.approx(hf.item() / 2, rel=1e-6)


def test_layer_records_aux_loss_and_trains_through_it():
    moe = _layer()
    x = torch.randn(10, 8, dtype=torch.float64)
    y = moe(x)
    assert moe.aux_loss is not None and moe.aux_loss.dim() == 0
    r = moe.last_routing
    assert moe.aux_loss.item() == pytest.approx(load_balancing_loss(r.probs, r.indices).item())
    (y.sum() + 0.01 * moe.aux_loss).backward()
    assert moe.router.weight.grad is not None


def test_parameter_counts():
    moe = MoEFeedForward(dim=16, hidden=32, n_experts=8, top_k=2)
    per_expert = sum(p.numel() for p in FeedForward(16, 32).parameters())
    total, active = moe.parameter_counts()
    assert total == sum(p.numel() for p in moe.parameters()) == 8 * 16 + 8 * per_expert
    assert active == 8 * 16 + 2 * per_expert


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(8, 16, n_experts=4, top_k=5)
    with pytest.raises(ValueError, match="n_experts"):
        MoEFeedForward(8, 16, n_experts=0)
    with pytest.raises(ShapeError, match=r"\(\*, 8\)"):
        _layer()(torch.randn(3, 7, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"\(N, E\)"):
        top_k_gating(torch.randn(2, 3, 4), 2)
    with pytest.raises(ShapeError, match="same N"):
        load_balancing_loss(torch.rand(4, 3), torch.zeros(5, 1, dtype=torch.long))
