"""llmcourse.nn layers against their torch.nn counterparts (values, gradients, state dicts)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.nn import (
    GELU,
    Dropout,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    RMSNorm,
    SiLU,
    gelu,
    silu,
)
from llmcourse.utils import ShapeError

ATOL = 1e-6


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in module.named_parameters()}


def _same_forward_backward(
    ours: nn.Module, ref: nn.Module, x: torch.Tensor, atol: float = ATOL
) -> None:
    """Load ref's weights into ours, compare outputs and every gradient."""
    ours.load_state_dict(ref.state_dict())
    x1 = x.clone().requires_grad_(x.is_floating_point())
    x2 = x.clone().requires_grad_(x.is_floating_point())
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2, atol=atol, rtol=0)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    if x.is_floating_point():
        torch.testing.assert_close(x1.grad, x2.grad, atol=atol, rtol=0)
    for name, grad in _grads(ref).items():
        torch.testing.assert_close(
            _grads(ours)[name], grad, atol=atol, rtol=0, msg=f"grad of {name}"
        )


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias: bool) -> None:
    torch.manual_seed(0)
    ref = nn.Linear(7, 5, bias=bias)
    ours = Linear(7, 5, bias=bias)
    assert set(ours.state_dict()) == set(ref.state_dict())
    _same_forward_backward(ours, ref, torch.randn(2, 3, 7), atol=0)


def test_linear_init_range_like_torch() -> None:
    torch.manual_seed(0)
    layer = Linear(64, 32)
    bound = 64**-0.5
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert layer.weight.std() > 0.5 * bound / 3**0.5  # uniform(-b, b) has std b/sqrt(3)


def test_linear_wrong_width_names_shapes() -> None:
    with pytest.raises(ShapeError, match=r"\(\*, 7\).*\(2, 6\)"):
        Linear(7, 5)(torch.randn(2, 6))


def test_embedding_matches_torch() -> None:
    torch.manual_seed(0)
    ref = nn.Embedding(11, 4)
    ours = Embedding(11, 4)
    assert set(ours.state_dict()) == set(ref.state_dict())
    _same_forward_backward(ours, ref, torch.randint(0, 11, (3, 5)), atol=0)


def test_embedding_rejects_float_ids() -> None:
    with pytest.raises(TypeError, match="float32.*int64"):
        Embedding(11, 4)(torch.zeros(2, 3))


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch(bias: bool) -> None:
    torch.manual_seed(0)
    ref = nn.LayerNorm(16, eps=1e-5, bias=bias)
    with torch.no_grad():  # non-trivial affine parameters
        ref.weight.normal_()
        if bias:
            ref.bias.normal_()
    ours = LayerNorm(16, eps=1e-5, bias=bias)
    assert set(ours.state_dict()) == set(ref.state_dict())
    _same_forward_backward(ours, ref, 3 * torch.randn(4, 5, 16) + 1, atol=1e-5)


def test_rms_norm_matches_torch() -> None:
    torch.manual_seed(0)
    ref = nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_()
    ours = RMSNorm(16, eps=1e-6)
    assert set(ours.state_dict()) == set(ref.state_dict())
    _same_forward_backward(ours, ref, 3 * torch.randn(4, 5, 16), atol=1e-5)


def test_rms_norm_has_unit_rms_and_no_mean_subtraction() -> None:
    x = torch.randn(3, 32) + 5.0
    y = RMSNorm(32)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3), atol=1e-4, rtol=0)
    assert (y.mean(-1) > 0.5).all()  # the mean survives, unlike LayerNorm


@pytest.mark.parametrize("norm", [LayerNorm, RMSNorm])
def test_norm_wrong_width_names_shapes(norm) -> None:
    with pytest.raises(ShapeError, match=r"\(\*, 8\).*\(2, 3, 6\)"):
        norm(8)(torch.randn(2, 3, 6))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(approximate: str) -> None:
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(GELU(approximate)(x), nn.GELU(approximate)(x), atol=0, rtol=0)
    torch.testing.assert_close(gelu(x, approximate), nn.GELU(approximate)(x), atol=0, rtol=0)
    exact = x * 0.5 * (1 + torch.erf(x / 2**0.5))
    torch.testing.assert_close(GELU()(x), exact, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="approximate"):
        GELU("fast")


def test_silu_matches_torch() -> None:
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(SiLU()(x), x * torch.sigmoid(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(silu(x), nn.SiLU()(x), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("activation", "act"),
    [("relu", F.relu), ("gelu", F.gelu), ("gelu_tanh", lambda h: F.gelu(h, approximate="tanh"))],
)
def test_feedforward_mlp_matches_torch_layers(activation: str, act) -> None:
    torch.manual_seed(0)
    ffn = FeedForward(8, 32, activation)
    fc1, fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
    fc1.load_state_dict(ffn.fc1.state_dict())
    fc2.load_state_dict(ffn.fc2.state_dict())
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ffn(x), fc2(act(fc1(x))), atol=ATOL, rtol=0)
    assert sum(p.numel() for p in ffn.parameters()) == 8 * 32 + 32 + 32 * 8 + 8


def test_feedforward_swiglu_matches_formula() -> None:
    torch.manual_seed(0)
    ffn = FeedForward(8, 12, "swiglu", bias=False)
    assert set(ffn.state_dict()) == {"fc1.weight", "fc2.weight"}
    assert ffn.fc1.weight.shape == (24, 8)
    w_gate, w_up = ffn.fc1.weight[:12], ffn.fc1.weight[12:]
    x = torch.randn(3, 8)
    expected = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ ffn.fc2.weight.T
    torch.testing.assert_close(ffn(x), expected, atol=ATOL, rtol=0)


def test_feedforward_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="swiglu"):
        FeedForward(8, 16, "tanh")


def test_dropout_train_and_eval() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(200_000)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))  # inverted scaling
    assert abs(y.mean().item() - 1.0) < 0.01  # expectation preserved
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_rejects_bad_p() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
