"""Knowledge distillation: against torch's kl_div, the T^2 factor, masking, teacher detached."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcourse.finetune import distillation_loss, soft_target_loss


def test_soft_term_matches_torch_kl_div():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10) * 2
    for temp in (1.0, 2.0, 5.0):
        ref = temp**2 * F.kl_div(
            F.log_softmax(s / temp, -1),
            F.log_softmax(t / temp, -1),
            log_target=True,
            reduction="batchmean",
        )
        torch.testing.assert_close(soft_target_loss(s, t, temp), ref, rtol=1e-6, atol=1e-7)


def test_full_loss_formula_and_ignore_index():
    torch.manual_seed(1)
    s = torch.randn(2, 5, 7)
    t = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    keep = labels != -100
    temp, alpha = 3.0, 0.3
    soft = temp**2 * F.kl_div(
        F.log_softmax(s[keep] / temp, -1),
        F.log_softmax(t[keep] / temp, -1),
        log_target=True,
        reduction="batchmean",
    )
    hard = F.cross_entropy(s[keep], labels[keep])
    got = distillation_loss(s, t, labels, temperature=temp, alpha=alpha)
    torch.testing.assert_close(got, alpha * soft + (1 - alpha) * hard, rtol=1e-6, atol=1e-6)
    assert soft_target_loss(s, s, 2.0).abs() < 1e-6


def _soft_grad_norm(temp: float, scale: bool) -> float:
    torch.manual_seed(2)
    s = torch.randn(32, 50, requires_grad=True)
    t = torch.randn(32, 50)
    loss = soft_target_loss(s, t, temp)
    if not scale:
        loss = loss / temp**2  # what a missing T^2 factor would give
    loss.backward()
    return s.grad.norm().item()


def test_t_squared_keeps_soft_gradients_the_same_size():
    with_factor = [_soft_grad_norm(t, True) for t in (8.0, 16.0, 32.0)]
    without = [_soft_grad_norm(t, False) for t in (8.0, 16.0, 32.0)]
    # with T^2: within a few percent across temperatures
    assert max(with_factor) / min(with_factor) < 1.1
    # without it: each doubling of T shrinks the gradient about 4x
    for lo, hi in zip(without[1:], without[:-1], strict=True):
        assert hi / lo == pytest.approx(4.0, rel=0.1)


def test_teacher_gets_no_gradient_and_bad_input_is_reported():
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    distillation_loss(s, t, torch.randint(0, 6, (4,))).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(s, t, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha=1.0"):
        distillation_loss(s, t, None, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_loss(s, t, 0.0)
