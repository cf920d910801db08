"""Reward model: Bradley-Terry loss, C(K, 2) pairs, last-token head on the GPT, training."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from llmcourse.alignment import (
    RewardModel,
    bradley_terry_loss,
    num_comparison_pairs,
    pad_right,
    preference_accuracy,
    ranking_to_pairs,
)
from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.tokenizers import CharTokenizer

TOK = CharTokenizer(list("abxy "))


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))


def test_rankings_give_k_choose_2_pairs():
    assert num_comparison_pairs(4) == 6 and num_comparison_pairs(9) == 36
    pairs = ranking_to_pairs(["A", "B", "C", "D"])
    assert pairs == [("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")]
    assert len(ranking_to_pairs(list(range(9)))) == 36


def test_bradley_terry_loss_values_and_gradient():
    zero = torch.zeros(3)
    assert bradley_terry_loss(zero, zero).item() == pytest.approx(math.log(2))
    rw = torch.tensor([1.0, -0.5, 3.0], requires_grad=True)
    rl = torch.tensor([0.0, 0.5, -1.0])
    loss = bradley_terry_loss(rw, rl)
    torch.testing.assert_close(loss, -torch.log(torch.sigmoid(rw - rl)).mean())
    loss.backward()
    torch.testing.assert_close(rw.grad, -(1 - torch.sigmoid(rw - rl)).detach() / 3)
    # stable for huge gaps: no inf / nan
    big = torch.tensor([1000.0])
    assert bradley_terry_loss(big, -big).item() == 0.0
    assert bradley_terry_loss(-big, big).item() == pytest.approx(2000.0)
    assert preference_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_reward_reads_the_last_real_token():
    model = RewardModel(tiny_gpt()).eval()
    texts = ["ab", "xyxya", "b"]
    ids, mask = pad_right([TOK.encode(t) for t in texts], pad_id=0)
    batched = model(ids, mask)
    assert batched.shape == (3,)
    for i, t in enumerate(texts):
        single = model(torch.tensor([TOK.encode(t)]))
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-6)
    # whatever sits in the padding does not matter
    ids2 = ids.masked_fill(~mask, 3)
    torch.testing.assert_close(model(ids2, mask), batched)
    # manual: head applied to the GPT's hidden state at the last real token
    hidden = model.backbone(ids).hidden
    manual = model.head(hidden[torch.arange(3), mask.sum(1) - 1]).squeeze(-1)
    torch.testing.assert_close(batched, manual)
    with pytest.raises(ValueError, match="right-padded"):
        model(ids, mask.flip(1))


def test_training_learns_a_programmatic_preference():
    rng = random.Random(0)

    def sample() -> str:
        return "".join(rng.choice("abxy") for _ in range(rng.randint(3, 8)))

    def pair() -> tuple[str, str]:  # chosen = more "a" characters
        while True:
            s, t = sample(), sample()
            if s.count("a") != t.count("a"):
                return (s, t) if s.count("a") > t.count("a") else (t, s)

    train = [pair() for _ in range(32)]
    test = [pair() for _ in range(64)]
    model = RewardModel(tiny_gpt(1))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def rewards(pairs):
        ids_w, m_w = pad_right([TOK.encode(w) for w, _ in pairs])
        ids_l, m_l = pad_right([TOK.encode(lo) for _, lo in pairs])
        return model(ids_w, m_w), model(ids_l, m_l)

    with torch.no_grad():
        start_acc = preference_accuracy(*rewards(test))
    for _ in range(40):
        loss = bradley_terry_loss(*rewards(train))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test_acc = preference_accuracy(*rewards(test))
    assert test_acc >= 0.8 and test_acc > start_acc + 0.2, (start_acc, test_acc)
    assert loss.item() < F.softplus(torch.tensor(0.0)).item()  # below log 2

    reward_fn = model.as_reward_fn(TOK)
    assert reward_fn("aaaa") > reward_fn("xyxy")
    assert model.score(["aaaa", "xyxy"], TOK) == pytest.approx(
        [reward_fn("aaaa"), reward_fn("xyxy")], abs=1e-5
    )
