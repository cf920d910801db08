"""Written-out optimizers and clipping against torch.optim / torch.nn.utils over many steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmcourse.optim import SGD, Adam, AdamW, RMSProp, clip_grad_norm, global_grad_norm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _run(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randn(32, 4, generator=gen)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


CASES = [
    (SGD, torch.optim.SGD, dict(lr=0.05)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    (RMSProp, torch.optim.RMSprop, dict(lr=1e-3)),
    (RMSProp, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-2)),
    (Adam, torch.optim.Adam, dict(lr=1e-2)),
    (Adam, torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)),
    (AdamW, torch.optim.AdamW, dict(lr=1e-2)),
    (AdamW, torch.optim.AdamW, dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize(
    "ours,theirs,kwargs", CASES, ids=[f"{c[0].__name__}{i}" for i, c in enumerate(CASES)]
)
def test_matches_torch_over_100_steps(ours, theirs, kwargs, foreach):
    a, b = _model(), _model()
    la = _run(a, ours(a.parameters(), **kwargs, foreach=foreach), 100)
    _run(b, theirs(b.parameters(), **kwargs, foreach=False), 100)
    assert la[-1] < la[0], "the optimizer did not reduce the loss"
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        diff = (pa - pb).abs().max().item()
        assert diff <= 1e-7, f"{ours.__name__} {kwargs}: {name} differs from torch by {diff:.3g}"


def test_adamw_bit_for_bit_with_torch():
    a, b = _model(), _model()
    _run(a, AdamW(a.parameters(), lr=1e-2, weight_decay=0.1), 100)
    _run(b, torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, foreach=False), 100)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_adam_bias_correction_first_step_is_lr_times_sign():
    # With bias correction the first Adam step is lr * g / (|g| + eps) = lr * sign(g).
    # Without it, it would be lr * (1 - beta1) / sqrt(1 - beta2) = 3.16 lr: a common mistake.
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([0.5, -4.0, 1e-3])
    Adam([p], lr=0.1, eps=0.0).step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9, 2.9]))


def test_adamw_decay_is_decoupled_from_gradient_scale():
    # Zero gradient: Adam's L2 term still moves p through the adaptive step; AdamW only shrinks.
    p = nn.Parameter(torch.tensor([2.0]))
    p.grad = torch.zeros(1)
    AdamW([p], lr=0.1, weight_decay=0.5).step()
    assert p.item() == pytest.approx(2.0 * (1 - 0.1 * 0.5))


def test_state_dict_round_trip_continues_identically():
    a = _model()
    opt = AdamW(a.parameters(), lr=1e-2)
    _run(a, opt, 5)
    b = copy.deepcopy(a)
    opt_b = AdamW(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    _run(a, opt, 5)
    _run(b, opt_b, 5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_param_groups_and_skipped_params():
    m = _model()
    frozen = m[2].bias
    opt = SGD(
        [{"params": [m[0].weight, m[0].bias]}, {"params": [m[2].weight], "lr": 0.0}],
        lr=0.1,
    )
    before = m[2].weight.detach().clone(), frozen.detach().clone()
    _run(m, opt, 3)
    assert torch.equal(m[2].weight, before[0])  # lr 0
    assert torch.equal(frozen, before[1])  # not in any group


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: Adam(p, lr=-1.0), "lr must be"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda p: AdamW(p, eps=float("nan")), "eps must be"),
        (lambda p: SGD(p, lr=0.1, nesterov=True), "Nesterov"),
        (lambda p: RMSProp(p, alpha=1.5), "alpha"),
    ],
)
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make(_model().parameters())


def test_closure_returns_loss():
    m = _model()
    opt = SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(4, 8), torch.randn(4, 4)

    def closure():
        opt.zero_grad()
        loss = ((m(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    assert first.item() > opt.step(closure).item()


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.01, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    a, b = _model(), _model()
    x = torch.randn(16, 8)
    for m in (a, b):
        (m(x) ** 2).sum().backward()
    ours = clip_grad_norm(a.parameters(), max_norm, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm, norm_type)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0)
    if max_norm == 0.01:
        assert global_grad_norm(a.parameters(), norm_type).item() == pytest.approx(0.01, rel=1e-3)


def test_clip_grad_norm_nonfinite():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    with pytest.raises(RuntimeError, match="NaN or inf"):
        clip_grad_norm([p], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([p], 0.0)
