"""ORPO: the odds-ratio loss of Hong et al. (2024) checked against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.alignment import (
    ORPOLossOutput,
    build_preference_batch,
    orpo_loss,
    preference_logps,
    preference_loss,
)
from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.tokenizers import CharTokenizer

TOK = CharTokenizer.ascii()


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_orpo_matches_a_hand_computation():
    # chosen: 4 tokens, summed log-prob -2 -> mean -0.5; rejected: 3 tokens, -6 -> mean -2.
    # P_w = e^-0.5 = 0.60653, odds_w = 0.60653 / 0.39347 = 1.54149
    # P_l = e^-2   = 0.13534, odds_l = 0.13534 / 0.86466 = 0.15652
    # log odds ratio = ln(1.54149 / 0.15652) = 2.28734
    # odds-ratio loss = -ln sigmoid(2.28734) = ln(1 + e^-2.28734) = 0.096706
    # SFT term = per-token NLL of the chosen response = 0.5
    # ORPO loss (lambda = 0.1) = 0.5 + 0.1 * 0.096706 = 0.509671
    out = orpo_loss(t(-2.0), t(-6.0), t(4.0), t(3.0), lam=0.1)
    assert isinstance(out, ORPOLossOutput)
    assert out.log_odds_ratio.item() == pytest.approx(2.287339, abs=1e-6)
    assert out.odds_ratio_loss.item() == pytest.approx(0.096706, abs=1e-6)
    assert out.nll.item() == pytest.approx(0.5)
    assert out.loss.item() == pytest.approx(0.509671, abs=1e-6)
    torch.testing.assert_close(out.chosen_rewards, t(-0.5))
    torch.testing.assert_close(out.rejected_rewards, t(-2.0))
    assert out.accuracy == 1.0
    # lambda = 0 is plain SFT on the chosen responses
    assert orpo_loss(t(-2.0), t(-6.0), t(4.0), t(3.0), lam=0.0).loss.item() == pytest.approx(0.5)


def test_orpo_against_the_paper_formula_on_a_batch():
    gen = torch.Generator().manual_seed(0)
    lengths_w = torch.randint(1, 20, (8,), generator=gen).double()
    lengths_l = torch.randint(1, 20, (8,), generator=gen).double()
    logp_w = -torch.rand(8, generator=gen, dtype=torch.float64) * 3 * lengths_w - 1e-3
    logp_l = -torch.rand(8, generator=gen, dtype=torch.float64) * 3 * lengths_l - 1e-3
    out = orpo_loss(logp_w, logp_l, lengths_w, lengths_l, lam=0.5)
    p_w, p_l = torch.exp(logp_w / lengths_w), torch.exp(logp_l / lengths_l)
    ratio = (p_w / (1 - p_w)) / (p_l / (1 - p_l))
    expected = (-(logp_w / lengths_w) - 0.5 * F.logsigmoid(torch.log(ratio))).mean()
    torch.testing.assert_close(out.loss, expected)


def test_orpo_gradient_direction_and_stability():
    w = t(-3.0, -0.5).requires_grad_()
    l_ = t(-4.0, -1e-9).requires_grad_()  # a rejected response with probability ~1
    out = orpo_loss(w, l_, t(3.0, 1.0), t(2.0, 1.0), lam=1.0)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.all(w.grad < 0) and torch.all(l_.grad > 0)  # raise chosen, lower rejected


def test_orpo_rejects_bad_inputs():
    with pytest.raises(ValueError, match="lengths"):
        orpo_loss(t(-1.0), t(-1.0), t(0.0), t(1.0))
    with pytest.raises(ValueError, match=">= 0"):
        orpo_loss(t(0.0), t(-1.0), t(1.0), t(1.0))
    with pytest.raises(ValueError, match="lam"):
        orpo_loss(t(-1.0), t(-1.0), t(1.0), t(1.0), lam=-0.1)
    with pytest.raises(Exception, match="1-D"):
        orpo_loss(t(-1.0, -2.0), t(-1.0), t(1.0), t(1.0))


def test_preference_loss_orpo_on_a_tiny_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32))
    batch = build_preference_batch([("Hi:", "hello there", "no"), ("Q?", "yes", "maybe not")], TOK)
    chosen, rejected = preference_logps(model, batch)
    lengths = [b.loss_mask.sum(1).float() for b in (batch.chosen, batch.rejected)]
    expected = orpo_loss(chosen, rejected, *lengths, lam=0.2).loss
    got = preference_loss(model, batch, loss_type="orpo", beta=0.2)
    torch.testing.assert_close(got.loss, expected)
    assert math.isfinite(got.loss.item())
