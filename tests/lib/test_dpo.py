"""DPO and variants: worked example, formulas, response log-probs, batching, a DPO run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.alignment import (
    build_preference_batch,
    dpo_loss,
    ipo_loss,
    kto_loss,
    preference_logps,
    preference_loss,
    sequence_logprobs,
    simpo_loss,
)
from llmcourse.finetune import END, format_example
from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.tokenizers import CharTokenizer

TOK = CharTokenizer.ascii()


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=32))


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs)


def test_dpo_worked_example_of_the_chapter():
    out = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert out.loss.item() == pytest.approx(0.598, abs=5e-4)
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))), rel=1e-6)
    torch.testing.assert_close(out.chosen_rewards, t(0.1))
    torch.testing.assert_close(out.rejected_rewards, t(-0.1))
    assert out.accuracy == 1.0 and out.margin == pytest.approx(0.2)


def test_dpo_formula_and_gradient_direction():
    torch.manual_seed(0)
    pw, pl = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)
    rw, rl = torch.randn(5), torch.randn(5)
    out = dpo_loss(pw, pl, rw, rl, beta=0.5)
    ref = -F.logsigmoid(0.5 * ((pw - rw) - (pl - rl))).mean()
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    assert torch.all(pw.grad < 0) and torch.all(pl.grad > 0)  # raise chosen, lower rejected
    assert not out.chosen_rewards.requires_grad
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pw, pl, rw, rl, beta=0.0)
    with pytest.raises(ValueError, match="1-D"):
        dpo_loss(pw, pl[:3], rw, rl)


def test_ipo_simpo_kto_formulas():
    pw, pl, rw, rl = t(-10.0, -3.0), t(-12.0, -2.0), t(-11.0, -3.0), t(-11.0, -3.0)
    ipo = ipo_loss(pw, pl, rw, rl, beta=0.1)
    h = (pw - rw) - (pl - rl)  # [2, -1]
    assert ipo.loss.item() == pytest.approx(((h - 5.0) ** 2).mean().item())
    # at the target margin 1 / (2 beta) the IPO loss is zero
    assert ipo_loss(t(0.0), t(-5.0), t(0.0), t(0.0), beta=0.1).loss.item() == 0.0

    lw, ll = t(5.0, 2.0), t(4.0, 1.0)
    simpo = simpo_loss(pw, pl, lw, ll, beta=2.0, gamma=0.5)
    expected = -F.logsigmoid(2.0 * pw / lw - 2.0 * pl / ll - 0.5).mean()
    torch.testing.assert_close(simpo.loss, expected)
    torch.testing.assert_close(simpo.chosen_rewards, 2.0 * pw / lw)
    with pytest.raises(ValueError, match="lengths"):
        simpo_loss(pw, pl, t(0.0, 1.0), ll)

    policy, ref = t(-5.0, -9.0, -4.0), t(-6.0, -8.0, -4.0)
    good = torch.tensor([True, False, True])
    ratio = policy - ref  # [1, -1, 0]
    kto = kto_loss(policy, ref, good, beta=0.5, reference_point=0.2, undesirable_weight=2.0)
    manual = torch.stack(
        [
            1 - torch.sigmoid(0.5 * (ratio[0] - 0.2)),
            2.0 * (1 - torch.sigmoid(0.5 * (0.2 - ratio[1]))),
            1 - torch.sigmoid(0.5 * (ratio[2] - 0.2)),
        ]
    ).mean()
    torch.testing.assert_close(kto.loss, manual)
    assert kto.accuracy == pytest.approx(2 / 3)
    # default reference point: detached batch mean of the log-ratios, clamped at 0
    default = kto_loss(policy, ref, good, beta=0.5)
    assert default.reference_point.item() == 0.0
    with pytest.raises(TypeError, match="bool"):
        kto_loss(policy, ref, good.float())


def test_sequence_logprobs_sum_only_response_tokens():
    model = tiny_gpt().eval()
    batch = build_preference_batch(
        [("Say yes", "yes", "no"), ("Longer question here?", "a much longer answer", "x")], TOK
    )
    chosen, rejected = preference_logps(model, batch)
    pairs = [("Say yes", "yes", "no"), ("Longer question here?", "a much longer answer", "x")]
    for i, (prompt, *responses) in enumerate(pairs):
        for got, response in zip((chosen[i], rejected[i]), responses, strict=True):
            p, r = format_example(prompt, response)
            ids = torch.tensor([TOK.encode(p + r)])
            logp = F.log_softmax(model(ids[:, :-1]).logits, -1)[0]
            targets = ids[0, 1:]
            start = len(TOK.encode(p)) - 1  # the first response token is predicted here
            manual = logp[torch.arange(start, targets.numel()), targets[start:]].sum()
            torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-5)
    avg = sequence_logprobs(model, batch.chosen.input_ids, batch.chosen.targets, average=True)
    lengths = batch.chosen.loss_mask.sum(1)
    assert lengths.tolist() == [len("yes" + END + "\n"), len("a much longer answer" + END + "\n")]
    torch.testing.assert_close(avg, chosen / lengths)


def test_preference_batch_layout():
    batch = build_preference_batch([("q", "good", "bad"), ("qq", "fine", "no")], TOK, pad_id=0)
    assert len(batch) == 2
    assert batch.chosen.input_ids.shape == batch.rejected.input_ids.shape
    decode = lambda b, i: TOK.decode(b.targets[i][b.loss_mask[i]].tolist())  # noqa: E731
    assert decode(batch.chosen, 1) == "fine" + END + "\n"
    assert decode(batch.rejected, 0) == "bad" + END + "\n"
    raw = build_preference_batch([("q:", "a", "b")], TOK, template=False)
    assert TOK.decode(raw.chosen.input_ids[0].tolist()) == "q:"


def test_dpo_training_moves_policy_towards_chosen():
    policy = tiny_gpt(1)
    reference = copy.deepcopy(policy).requires_grad_(False)
    data = [("Greet:", "hello friend", "go away"), ("Reply:", "thank you", "whatever")]
    batch = build_preference_batch(data, TOK)
    start = preference_loss(policy, batch, reference, beta=0.1)
    assert start.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert start.margin == 0.0
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(15):
        out = preference_loss(policy, batch, reference, beta=0.1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    end = preference_loss(policy, batch, reference, beta=0.1)
    assert end.loss.item() < start.loss.item() - 0.1
    assert end.accuracy == 1.0 and end.margin > 0.2

    simpo = preference_loss(policy, batch, loss_type="simpo")  # reference-free
    assert simpo.loss.requires_grad
    ipo = preference_loss(policy, batch, reference, loss_type="ipo")
    assert math.isfinite(ipo.loss.item())
    with pytest.raises(ValueError, match="reference"):
        preference_loss(policy, batch, loss_type="dpo")
