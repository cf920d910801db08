"""PPO pieces (GAE, KL, clipped losses), response sampling, best-of-n, and a PPO training run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmcourse.alignment import (
    PolicyWithValue,
    PPOConfig,
    PPOTrainer,
    best_of_n,
    best_of_n_kl_bound,
    gae,
    kl_per_token,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    rejection_sampling,
    sample_responses,
)
from llmcourse.alignment.ppo import AdaptiveKLController
from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.tokenizers import CharTokenizer

TOK = CharTokenizer(list("abxy<|end>\n"))  # small alphabet: the toy policy learns fast


def tiny_gpt(seed: int = 0, vocab: int = TOK.vocab_size) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=1, n_head=2, n_embd=32))


# --------------------------------------------------------------------------- GAE and rewards


def test_gae_matches_hand_computed_example():
    # row 0: prompt position then three response tokens; row 1: two tokens then padding
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.5, 2.0, 0.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3], [1.0, 1.0, 7.0, 7.0]])
    mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=3: 1 - 0.3 = 0.7; t=2: 0.9*0.3 - 0.4 + 0.72*0.7 = 0.374; t=1: 0.9*0.4 - 0.5 + 0.72*0.374
    expected = torch.tensor([[0.0, 0.12928, 0.374, 0.7], [1.12, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        ret, torch.tensor([[0.0, 0.62928, 0.774, 1.0], [2.12, 2.0, 0.0, 0.0]])
    )


def test_gae_limits_lambda_one_and_zero():
    torch.manual_seed(0)
    r, v = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    adv, _ = gae(r, v, mask, gamma=1.0, lam=1.0)
    reward_to_go = r.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, reward_to_go - v)  # Monte-Carlo return minus baseline
    adv0, _ = gae(r, v, mask, gamma=0.9, lam=0.0)
    next_v = torch.cat([v[:, 1:], torch.zeros(3, 1)], dim=1)
    torch.testing.assert_close(adv0, r + 0.9 * next_v - v)  # one-step TD error


def test_per_token_rewards_put_score_on_last_response_token():
    kl = torch.tensor([[0.0, 0.2, -0.1, 0.0], [0.3, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True, False], [True, True, False, False]])
    rewards = per_token_rewards(torch.tensor([1.0, -2.0]), kl * mask, mask, kl_coef=0.5)
    expected = torch.tensor([[0.0, -0.1, 0.05 + 1.0, 0.0], [-0.15, -0.05 - 2.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_kl_estimators_are_unbiased():
    torch.manual_seed(1)
    p = torch.softmax(torch.randn(8), 0)
    q = torch.softmax(torch.randn(8), 0)
    true_kl = (p * (p.log() - q.log())).sum()
    samples = torch.multinomial(
        p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    logp, logq = p.log()[samples], q.log()[samples]
    k1 = kl_per_token(logp, logq, "k1").mean()
    k3 = kl_per_token(logp, logq, "k3")
    assert torch.all(k3 >= 0)
    assert k1.item() == pytest.approx(true_kl.item(), abs=0.02)
    assert k3.mean().item() == pytest.approx(true_kl.item(), abs=0.02)
    with pytest.raises(ValueError, match="k1"):
        kl_per_token(logp, logq, "k2")


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    w = masked_whiten(x, mask)
    sel = w[mask]
    assert sel.mean().abs() < 1e-6 and sel.std(unbiased=False).sub(1).abs() < 1e-4
    assert torch.all(w[~mask] == 0)


# --------------------------------------------------------------------------- clipped losses


def test_policy_loss_at_ratio_one_and_clipping():
    torch.manual_seed(2)
    adv = torch.randn(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    old = torch.randn(2, 5)
    loss, stats = ppo_policy_loss(old.clone(), old, adv, mask, 0.2)
    torch.testing.assert_close(loss, -adv.mean())
    assert stats == {"clipfrac": 0.0, "approx_kl": 0.0}

    # ratio 1.5 with a positive advantage: clipped at 1.2, no gradient through the ratio
    logp = (old + math.log(1.5)).requires_grad_(True)
    pos = torch.ones(2, 5)
    loss, stats = ppo_policy_loss(logp, old, pos, mask, 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-1.2) and stats["clipfrac"] == 1.0
    assert torch.all(logp.grad == 0)
    # ratio 1.5 with a negative advantage is *not* clipped (pessimistic bound)
    logp2 = (old + math.log(1.5)).requires_grad_(True)
    loss2, stats2 = ppo_policy_loss(logp2, old, -pos, mask, 0.2)
    loss2.backward()
    assert loss2.item() == pytest.approx(1.5) and stats2["clipfrac"] == 0.0
    assert torch.all(logp2.grad != 0)


def test_policy_loss_against_reference_formula():
    torch.manual_seed(3)
    logp, old, adv = torch.randn(4, 7) * 0.3, torch.randn(4, 7) * 0.3, torch.randn(4, 7)
    mask = torch.rand(4, 7) > 0.3
    ratio = (logp - old).exp()
    ref = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))[mask].mean()
    loss, _ = ppo_policy_loss(logp, old, adv, mask, 0.2)
    torch.testing.assert_close(loss, ref)


def test_value_loss_clipping():
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[0.5, -0.5]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    # pos 0: max((0.5-1)^2, (0.2-1)^2) = 0.64; pos 1: max(2.25, (-0.2-1)^2 = 1.44) = 2.25
    assert loss.item() == pytest.approx(0.5 * (0.64 + 2.25) / 2)
    assert stats["value_clipfrac"] == 0.5


def test_adaptive_kl_controller_moves_towards_target():
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert ctl.update(kl=5.0, n_samples=10) == pytest.approx(0.1 * 1.02)
    assert ctl.update(kl=0.0, n_samples=10) == pytest.approx(0.1 * 1.02 * 0.98)


# --------------------------------------------------------------------------- sampling, best-of-n


class ScriptedLM(nn.Module):
    """Emits a fixed script after the prompt, one character per step (for exact tests)."""

    def __init__(self, script: str, prompt_len: int) -> None:
        super().__init__()
        self.ids = TOK.encode(script)
        self.prompt_len = prompt_len
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(block_size=64)

    def forward(self, idx):
        b, t = idx.shape
        logits = torch.full((b, t, TOK.vocab_size), -1e4)
        for pos in range(t):
            k = pos + 1 - self.prompt_len
            if 0 <= k < len(self.ids):
                logits[:, pos, self.ids[k]] = 0.0
        return SimpleNamespace(logits=logits)


def test_sample_responses_cuts_at_the_stop_string():
    model = ScriptedLM("ab<|end|>xx", prompt_len=2)
    out = sample_responses(model, TOK, ["xy", "yx"], max_new_tokens=12, temperature=0.0)
    assert out.responses == ["ab", "ab"]
    assert out.finished == [True, True]
    assert TOK.decode(out.response_tokens[0]) == "ab<|end|>"
    batch = out.to_batch()
    assert TOK.decode(batch.targets[0][batch.loss_mask[0]].tolist()) == "ab<|end|>"
    unfinished = sample_responses(model, TOK, ["xy"], max_new_tokens=3, temperature=0.0)
    assert unfinished.responses == ["ab<"] and unfinished.finished == [False]
    with pytest.raises(ValueError, match="block_size"):
        sample_responses(model, TOK, ["xy"], max_new_tokens=63)


def test_best_of_n_and_rejection_sampling():
    model = tiny_gpt(4)

    def reward(text: str) -> float:
        return float(text.count("a"))

    gen = torch.Generator().manual_seed(0)
    results = best_of_n(model, TOK, ["x", "yy"], reward, n=6, max_new_tokens=8, generator=gen)
    assert [r.prompt for r in results] == ["x", "yy"]
    for r in results:
        assert len(r.responses) == 6 and r.rewards == [reward(t) for t in r.responses]
        assert r.best_reward == max(r.rewards) and r.best == r.responses[r.best_index]
    seen: list[str] = []
    best_of_n(
        model,
        TOK,
        ["yx"],
        lambda s: seen.append(s) or 0.0,
        n=2,
        max_new_tokens=4,
        include_prompt=True,
    )
    assert len(seen) == 2 and all(s.startswith("yx") for s in seen)
    kept = rejection_sampling(model, TOK, ["x", "yy"], reward, n=6, threshold=1e9, max_new_tokens=8)
    assert kept == []
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)


# --------------------------------------------------------------------------- trainer


def test_policy_with_value_shapes():
    model = PolicyWithValue(tiny_gpt())
    logits, values = model(torch.randint(0, TOK.vocab_size, (3, 5)))
    assert logits.shape == (3, 5, TOK.vocab_size) and values.shape == (3, 5)


def _run_ppo(kl_coef: float, steps: int = 12) -> tuple[PPOTrainer, list[dict[str, float]]]:
    policy = tiny_gpt(5)

    def reward(text: str) -> float:  # share of "a" in the response
        return text.count("a") / max(len(text), 1)

    cfg = PPOConfig(kl_coef=kl_coef, lr=1e-2, max_new_tokens=6, ppo_epochs=2, stop=None)
    trainer = PPOTrainer(policy, TOK, reward, cfg, generator=torch.Generator().manual_seed(0))
    return trainer, [trainer.step(["x", "y"] * 8).stats for _ in range(steps)]


def test_ppo_trainer_raises_reward_and_kl_penalty_holds_it_back():
    trainer, history = _run_ppo(kl_coef=0.01)
    first, last = history[0], history[-1]
    assert first["kl"] == 0.0, "policy and reference are equal before the first update"
    assert first["approx_kl"] < 0.05
    expected_keys = {
        "reward",
        "kl",
        "entropy",
        "policy_loss",
        "value_loss",
        "clipfrac",
        "approx_kl",
    }
    assert expected_keys <= set(first)
    assert all(math.isfinite(v) for s in history for v in s.values())
    early = sum(s["reward"] for s in history[:2]) / 2
    late = sum(s["reward"] for s in history[-2:]) / 2
    assert late > early + 0.4, [round(s["reward"], 3) for s in history]
    assert last["entropy"] < first["entropy"]
    assert not any(p.requires_grad for p in trainer.reference.parameters())

    # a strong KL penalty keeps the policy near the reference
    _, held = _run_ppo(kl_coef=0.3)
    assert held[-1]["kl"] < last["kl"] / 5
    assert held[-1]["reward"] < last["reward"] - 0.3
