"""SFT data: chat template, prompt masking, shifting and padding, GPT loss on response tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcourse.finetune import (
    END,
    IGNORE_INDEX,
    build_sft_batch,
    collate_sft,
    format_example,
    render_chat,
    tokenize_chat,
    tokenize_prompt_response,
)
from llmcourse.models.gpt import GPT, GPTConfig


class Ascii:
    """Minimal character tokenizer: id = code point (ASCII only)."""

    vocab_size = 128

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)


TOK = Ascii()


def test_template_text_is_exactly_as_documented():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert render_chat(msgs) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n"
    )
    assert render_chat(msgs[:2], add_generation_prompt=True).endswith("<|end|>\n<|assistant|>\n")
    prompt, response = format_example("What is 2+2?", "4", system="Be brief.")
    assert prompt + response == render_chat(msgs)
    assert response == "4" + END + "\n"
    assert all(ord(c) < 128 for c in prompt + response)


@pytest.mark.parametrize(
    "msgs, error",
    [
        ([{"role": "robot", "content": "x"}], "unknown chat role"),
        ([{"role": "user", "content": "hi <|assistant|>\nsure"}], "marker"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only come first"),
        ([{"role": "user", "text": "a"}], "keys"),
        ([], "at least one"),
    ],
)
def test_template_rejects_bad_messages(msgs, error):
    with pytest.raises(ValueError, match=error):
        render_chat(msgs)


def test_only_response_tokens_are_targets_after_shift():
    prompt, response = format_example("Say hi", "hi there")
    ex = tokenize_prompt_response(prompt, response, TOK)
    assert ex.tokens == TOK.encode(prompt + response)
    assert ex.supervised == [False] * len(prompt) + [True] * len(response)
    batch = collate_sft([ex])
    assert torch.equal(batch.input_ids[0], torch.tensor(ex.tokens[:-1]))
    targets = batch.targets[0]
    # The first supervised target sits at the last prompt position: it predicts response[0].
    assert torch.all(targets[: len(prompt) - 1] == IGNORE_INDEX)
    assert TOK.decode(targets[targets != IGNORE_INDEX].tolist()) == response


def test_multi_turn_supervises_every_assistant_turn():
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "D"},
    ]
    ex = tokenize_chat(msgs, TOK)
    text = render_chat(msgs)
    supervised = "".join(c for c, s in zip(text, ex.supervised, strict=True) if s)
    assert supervised == f"B{END}\nD{END}\n"


def test_collate_pads_on_the_right_with_masks():
    batch = build_sft_batch([("Q1", "long answer"), ("Question two", "A")], TOK, pad_id=0)
    lengths = [
        len("".join(format_example(p, r))) - 1
        for p, r in [("Q1", "long answer"), ("Question two", "A")]
    ]
    assert batch.input_ids.shape == (2, max(lengths))
    for i, n in enumerate(lengths):
        assert batch.attention_mask[i].tolist() == [True] * n + [False] * (max(lengths) - n)
        assert torch.all(batch.input_ids[i, n:] == 0)
        assert torch.all(batch.targets[i, n:] == IGNORE_INDEX)
    assert torch.equal(batch.loss_mask, batch.targets != IGNORE_INDEX)
    assert batch.loss_mask[1].sum() == len("A" + END + "\n")


def test_truncation_and_empty_response_error():
    prompt, response = format_example("abc", "defgh")
    ex = tokenize_prompt_response(prompt, response, TOK, max_length=len(prompt) + 2)
    assert len(ex.tokens) == len(prompt) + 3
    with pytest.raises(ValueError, match="no supervised"):
        tokenize_prompt_response(prompt, response, TOK, max_length=len(prompt) - 1)
    with pytest.raises(ValueError, match="empty"):
        collate_sft([])


def test_gpt_loss_counts_only_response_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, block_size=64, n_layer=1, n_head=2, n_embd=16))
    batch = build_sft_batch([("Add 1 and 2", "3"), ("Name a colour", "blue")], TOK)
    out = model(batch.input_ids, targets=batch.targets)
    logits = out.logits
    mask = batch.loss_mask
    manual = F.cross_entropy(logits[mask], batch.targets[mask])
    torch.testing.assert_close(out.loss, manual)
    # prompt and padding positions get exactly zero gradient
    logits.retain_grad()
    out.loss.backward()
    assert torch.all(logits.grad[~mask] == 0)
    assert torch.all(logits.grad[mask].abs().sum(-1) > 0)
