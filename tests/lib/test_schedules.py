"""Warm-up + cosine schedule: shape of the curve, LambdaLR compatibility, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse.optim import AdamW, WarmupCosine, lr_at, warmup_cosine_scheduler

KW = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110)


def test_warmup_is_linear_and_reaches_peak():
    assert lr_at(0, **KW) == pytest.approx(1e-4)
    assert lr_at(4, **KW) == pytest.approx(5e-4)
    assert lr_at(9, **KW) == pytest.approx(1e-3)
    assert lr_at(10, **KW) == pytest.approx(1e-3)  # start of the cosine = peak


def test_cosine_midpoint_end_and_floor():
    assert lr_at(60, **KW) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(110, **KW) == pytest.approx(1e-4)
    assert lr_at(10_000, **KW) == pytest.approx(1e-4)
    r = 0.25
    expected = 1e-4 + 0.5 * (1 + math.cos(math.pi * r)) * 9e-4
    assert lr_at(35, **KW) == pytest.approx(expected)


def test_monotone_after_warmup():
    lrs = [lr_at(t, **KW) for t in range(10, 200)]
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


def test_no_warmup():
    assert lr_at(0, max_lr=1.0, decay_steps=10) == 1.0
    assert lr_at(10, max_lr=1.0, decay_steps=10) == 0.0


def test_object_gives_lr_and_multiplier():
    s = WarmupCosine(**KW)
    for t in (0, 5, 10, 50, 109, 500):
        assert s.lr(t) == lr_at(t, **KW)
        assert s(t) == pytest.approx(lr_at(t, **KW) / 1e-3)


def test_lambdalr_follows_lr_at():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = AdamW([p], lr=1e-3)
    sched = warmup_cosine_scheduler(opt, warmup_steps=10, decay_steps=110, min_lr=1e-4)
    for t in range(150):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(t, **KW), rel=1e-12), t
        p.grad = torch.ones(2)
        opt.step()
        sched.step()


def test_lambdalr_with_torch_class_and_two_groups():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(max_lr=1.0, decay_steps=20))
    for _ in range(10):
        opt.step()
        sched.step()
    g0, g1 = (g["lr"] for g in opt.param_groups)
    assert g0 == pytest.approx(0.5) and g1 == pytest.approx(0.05)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_lr=1.0, warmup_steps=20, decay_steps=10), "warmup_steps <= decay_steps"),
        (dict(max_lr=1.0, min_lr=2.0, decay_steps=10), "min_lr <= max_lr"),
        (dict(max_lr=1.0, warmup_steps=-1, decay_steps=10), "warmup_steps"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_at(0, **kwargs)
    with pytest.raises(ValueError, match=match):
        WarmupCosine(**kwargs)


def test_negative_step():
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_at(-1, **KW)
