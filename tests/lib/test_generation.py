"""Decoding: logits filters vs transformers' processors, sampling frequencies, KV-cache
equivalence, greedy and beam search vs Hugging Face generate, stop sequences, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmcourse.generation import (
    apply_penalties,
    apply_temperature,
    beam_search,
    beam_search_hypotheses,
    generate,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.utils import ShapeError

NEG_INF = float("-inf")


class MarkovLM(nn.Module):
    """A toy LM whose next-token logits depend only on the last token: logits = table[last]."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(log_probs, requires_grad=False)  # (V, V)

    def forward(self, idx: torch.Tensor, kv_cache=None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[idx])  # (B, T, V)


def _logits(seed: int = 0, b: int = 4, v: int = 50) -> torch.Tensor:
    return 3 * torch.randn(b, v, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- logits functions
@pytest.mark.parametrize("k", [1, 5, 49, 50, 80])
def test_top_k_matches_transformers(k: int) -> None:
    logits = _logits()
    expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(top_k_filter(logits, k), expected)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7, 0.9, 0.99])
def test_top_p_matches_transformers(p: float) -> None:
    logits = _logits(seed=1)
    expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(top_p_filter(logits, p), expected)


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]  # 0.5 >= 0.5 already
    assert kept(0.79) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]  # 0.8 < 0.81 needs the third token
    assert kept(0.96) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [True, False, False, False]  # never empty


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty: float) -> None:
    logits = _logits(seed=2)
    context = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(3))
    expected = RepetitionPenaltyLogitsProcessor(penalty=penalty)(context, logits.clone())
    torch.testing.assert_close(
        apply_penalties(logits, context, repetition_penalty=penalty), expected
    )


def test_temperature_matches_transformers() -> None:
    logits = _logits(seed=4)
    expected = TemperatureLogitsWarper(0.7)(None, logits.clone())
    torch.testing.assert_close(apply_temperature(logits, 0.7), expected)
    with pytest.raises(ValueError, match="greedy"):
        apply_temperature(logits, 0.0)


def test_frequency_and_presence_penalties() -> None:
    logits = torch.zeros(1, 5)
    context = torch.tensor([[1, 1, 1, 3]])
    out = apply_penalties(logits, context, frequency_penalty=0.5, presence_penalty=2.0)
    assert out.tolist() == [[0.0, -(1.5 + 2.0), 0.0, -(0.5 + 2.0), 0.0]]
    assert apply_penalties(logits, context) is logits  # all off: unchanged


def test_sampling_frequencies_follow_filtered_distribution() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04])
    logits = probs.log().expand(20_000, 5)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, top_k=3, generator=gen)
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([4 / 9, 3 / 9, 2 / 9, 0, 0]), atol=0.015, rtol=0)
    draws = sample_next(logits, top_p=0.65, generator=gen)  # 0.4 + 0.3 >= 0.65: two tokens
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([4 / 7, 3 / 7, 0, 0, 0]), atol=0.015, rtol=0)
    draws = sample_next(logits, temperature=0.5, generator=gen)  # p^2, renormalised
    sharp = probs**2 / (probs**2).sum()
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq, sharp, atol=0.015, rtol=0)
    assert torch.equal(sample_next(logits[:3], temperature=0), torch.zeros(3, dtype=torch.long))


def test_filter_errors() -> None:
    logits = _logits()
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        top_p_filter(logits, 0.0)
    with pytest.raises(ValueError, match="positive int"):
        top_k_filter(logits, 0)
    with pytest.raises(ShapeError, match=r"\(B, V\).*\(50,\)"):
        top_k_filter(logits[0], 3)


# ---------------------------------------------------------------- generate with models
@pytest.fixture(scope="module")
def gpt2_pair() -> tuple[GPT2LMHeadModel, GPT]:
    """A random GPT-2 with peaked predictions (init std 0.3) and our copy of it."""
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=23,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    return hf, GPT.from_hf_gpt2(hf).eval()


def test_greedy_matches_transformers_generate(gpt2_pair) -> None:
    hf, ours = gpt2_pair
    idx = torch.randint(0, 23, (2, 4), generator=torch.Generator().manual_seed(0))
    expected = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=12, do_sample=False
    )
    assert torch.equal(generate(ours, idx, 12, temperature=0), expected)


@pytest.mark.parametrize(
    ("length_penalty", "eos_id"), [(1.0, None), (0.0, 3), (2.0, 3), (1.0, 0), (-1.0, 5)]
)
def test_beam_search_matches_transformers(
    gpt2_pair, length_penalty: float, eos_id: int | None
) -> None:
    hf, ours = gpt2_pair
    for seed in (4, 11, 22):
        idx = torch.randint(0, 23, (1, 4), generator=torch.Generator().manual_seed(seed))
        kw = {} if eos_id is None else {"pad_token_id": eos_id}
        ref = hf.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=10,
            do_sample=False,
            num_beams=3,
            length_penalty=length_penalty,
            eos_token_id=eos_id,
            early_stopping=False,
            **kw,
        )[0]
        if eos_id is not None and eos_id in ref[4:].tolist():  # drop HF's padding after EOS
            ref = ref[: 4 + ref[4:].tolist().index(eos_id) + 1]
        got = beam_search(ours, idx, 10, beam_size=3, length_penalty=length_penalty, eos_id=eos_id)
        assert got[0].tolist() == ref.tolist(), f"seed {seed}"


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_kv_cache_generation_equals_uncached(positions: str) -> None:
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32, positions=positions)
    )
    with torch.no_grad():  # make predictions peaked so the sequences are not trivial
        model.tok_emb.weight.mul_(20)
    idx = torch.randint(0, 40, (3, 5))
    # 30 new tokens: the context outgrows block_size (24) and the window slides.
    for kwargs in (
        dict(temperature=0),
        dict(temperature=0.9, top_k=10, top_p=0.95, repetition_penalty=1.2),
    ):
        cached = generate(
            model, idx, 30, use_kv_cache=True, generator=torch.Generator().manual_seed(1), **kwargs
        )
        plain = generate(
            model, idx, 30, use_kv_cache=False, generator=torch.Generator().manual_seed(1), **kwargs
        )
        assert cached.shape == (3, 35)
        assert torch.equal(cached, plain)
        assert torch.equal(cached[:, :5], idx)


def test_beam_search_cache_equals_uncached(gpt2_pair) -> None:
    _, ours = gpt2_pair
    idx = torch.tensor([[5, 1, 7]])
    a = beam_search_hypotheses(ours, idx, 8, 4, eos_id=2, use_kv_cache=True)
    b = beam_search_hypotheses(ours, idx, 8, 4, eos_id=2, use_kv_cache=False)
    assert [h.tokens.tolist() for h in a] == [h.tokens.tolist() for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_beam_search_beats_greedy_on_constructed_case() -> None:
    """Token 1 looks best first (0.6 vs 0.4) but leads to a flat distribution; token 2 leads to a
    near-certain continuation. Greedy takes 1; beam search finds 2 with a higher total log-prob."""
    v = 6
    probs = torch.full((v, v), 1e-6)
    probs[0, 1], probs[0, 2] = 0.6, 0.4
    probs[1, :] = 1.0 / v  # after 1: uniform
    probs[2, 3] = 0.99  # after 2: almost surely 3
    probs[3, 4] = probs[4, 5] = probs[5, 3] = 0.99
    model = MarkovLM((probs / probs.sum(-1, keepdim=True)).log())
    idx = torch.tensor([[0]])
    greedy = generate(model, idx, 3, temperature=0)
    best = beam_search_hypotheses(model, idx, 3, beam_size=2, length_penalty=0.0)[0]

    def log_prob(seq: torch.Tensor) -> float:
        lp = model(seq[None]).logits[0, :-1].log_softmax(-1)
        return lp.gather(1, seq[1:, None]).sum().item()

    assert greedy[0, 1].item() == 1 and best.tokens[1].item() == 2
    assert best.log_prob == pytest.approx(log_prob(best.tokens), abs=1e-5)
    assert best.log_prob > log_prob(greedy[0]) + 1.0


def test_length_penalty_prefers_longer_hypotheses() -> None:
    v = 4  # 0 = prompt, 3 = EOS
    probs = torch.full((v, v), 1e-3)
    probs[0, 3], probs[0, 1] = 0.5, 0.45  # stop now (0.5) ...
    probs[1, 2] = 0.9  # ... or go on through 1, 2
    probs[2, 3] = 0.9
    model = MarkovLM((probs / probs.sum(-1, keepdim=True)).log())
    short = beam_search(model, torch.tensor([[0]]), 5, beam_size=3, length_penalty=0.0, eos_id=3)
    long = beam_search(model, torch.tensor([[0]]), 5, beam_size=3, length_penalty=2.0, eos_id=3)
    assert short.tolist() == [[0, 3]]
    assert long.tolist() == [[0, 1, 2, 3]]


def test_stop_sequences_and_padding_of_finished_rows() -> None:
    v = 5
    probs = torch.full((v, v), 0.01)
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 1), (4, 4)]:  # deterministic chains
        probs[a, b] = 1.0
    model = MarkovLM(probs.log())
    idx = torch.tensor([[0], [4]])
    out = generate(model, idx, 10, temperature=0, stop_sequences=[[2, 3]], pad_id=-1)
    assert out.shape == (2, 11)  # row 1 never stops: runs to max_new_tokens
    assert out[0].tolist()[:4] == [0, 1, 2, 3] and out[0, 4:].tolist() == [-1] * 7
    out = generate(model, idx[:1], 10, temperature=0, stop_sequences=[3])
    assert out.tolist() == [[0, 1, 2, 3]]  # ends with the stop token, then stops
    prompt_has_stop = torch.tensor([[2, 3]])  # stop sequences only count in generated tokens
    out = generate(model, prompt_has_stop, 2, temperature=0, stop_sequences=[[2, 3]])
    assert out.shape == (1, 4)


def test_generate_restores_training_mode_and_is_reproducible(gpt2_pair) -> None:
    _, ours = gpt2_pair
    ours.train()
    idx = torch.tensor([[1, 2]])
    a = generate(ours, idx, 6, generator=torch.Generator().manual_seed(7))
    b = generate(ours, idx, 6, generator=torch.Generator().manual_seed(7))
    assert ours.training
    ours.eval()
    assert torch.equal(a, b)


def test_generate_errors() -> None:
    model = MarkovLM(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="float32"):
        generate(model, torch.zeros(1, 3), 2)
    with pytest.raises(ShapeError, match=r"\(B, T\).*\(3,\)"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="empty stop sequence"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, stop_sequences=[[]])
    with pytest.raises(ShapeError, match=r"\(1, T\).*\(2, 3\)"):
        beam_search(model, torch.zeros(2, 3, dtype=torch.long), 2, beam_size=2)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, torch.zeros(1, 3, dtype=torch.long), 2, beam_size=0)
