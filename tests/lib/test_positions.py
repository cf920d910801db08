"""Position encodings: sinusoidal (formula, rotation property), learned, rotary (vs HF LLaMA)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from llmcourse.nn import LearnedPositions, RotaryEmbedding, SinusoidalPositions, sinusoidal_encoding
from llmcourse.utils import ShapeError


def test_sinusoidal_matches_paper_formula() -> None:
    dim = 8
    pe = SinusoidalPositions(dim, max_len=50)(torch.arange(50))
    assert pe.shape == (50, dim)
    for pos in (0, 1, 7, 49):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_shift_is_a_fixed_rotation() -> None:
    """PE(pos + k) = R_k PE(pos) in every (sin, cos) pair, with R_k independent of pos."""
    dim, k = 16, 5
    pe = sinusoidal_encoding(torch.arange(40), dim, dtype=torch.float64)
    freqs = 10000 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    c, s = torch.cos(k * freqs), torch.sin(k * freqs)
    sin_p, cos_p = pe[:-k, 0::2], pe[:-k, 1::2]
    torch.testing.assert_close(pe[k:, 0::2], sin_p * c + cos_p * s)
    torch.testing.assert_close(pe[k:, 1::2], cos_p * c - sin_p * s)


def test_sinusoidal_arbitrary_and_batched_positions() -> None:
    module = SinusoidalPositions(12, max_len=16)
    pos = torch.tensor([[3, 0, 20], [100, 15, 16]])  # some beyond the table
    out = module(pos)
    assert out.shape == (2, 3, 12)
    torch.testing.assert_close(out, sinusoidal_encoding(pos, 12), atol=1e-6, rtol=0)
    assert not list(module.state_dict())  # fixed encodings: no parameters, no saved buffers


def test_sinusoidal_rejects_float_positions() -> None:
    with pytest.raises(TypeError, match="float32"):
        SinusoidalPositions(8)(torch.zeros(3))


def test_learned_positions_lookup_and_span() -> None:
    torch.manual_seed(0)
    module = LearnedPositions(10, 4)
    assert module.weight.std().item() == pytest.approx(0.02, rel=0.5)
    pos = torch.tensor([[0, 9], [4, 4]])
    torch.testing.assert_close(module(pos), module.weight[pos])
    torch.testing.assert_close(module.span(3, 4), module.weight[3:7])


def test_learned_positions_out_of_range_names_limit() -> None:
    module = LearnedPositions(10, 4)
    with pytest.raises(IndexError, match=r"\[0, 10\).*12"):
        module(torch.tensor([0, 12]))
    with pytest.raises(IndexError, match="max_len=10"):
        module.span(8, 3)


def _hf_rope(q, k, positions, head_dim, base=10000.0):
    cfg = LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_theta=base
    )
    rotary = LlamaRotaryEmbedding(cfg)
    cos, sin = rotary(q, positions)
    return apply_rotary_pos_emb(q, k, cos, sin)


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_rope_matches_hf_llama_at_arbitrary_positions(base: float) -> None:
    torch.manual_seed(0)
    head_dim = 16
    q, k = torch.randn(2, 3, 5, head_dim), torch.randn(2, 3, 5, head_dim)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 3, 90, 2, 5000]])  # 5000 is past the cache
    rope = RotaryEmbedding(head_dim, base=base, max_positions=128)
    ours_q, ours_k = rope(q, k, positions)
    ref_q, ref_k = _hf_rope(q, k, positions, head_dim, base)
    # float32 angles at position 5000 carry ~1e-5 rounding in either implementation
    torch.testing.assert_close(ours_q, ref_q, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_k, ref_k, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_q[0], ref_q[0], atol=1e-6, rtol=0)  # small positions: tight


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> float:
        rq, _ = rope(q, q, torch.tensor([m]))
        _, rk = rope(k, k, torch.tensor([n]))
        return (rq * rk).sum().item()

    assert score(3, 1) == pytest.approx(score(103, 101), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_rope_preserves_norm_and_span_matches_positions() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, max_positions=16)
    x = torch.randn(2, 2, 4, 8)
    cos, sin = rope.span(10, 4)  # crosses the cached table (16) at no point
    torch.testing.assert_close(RotaryEmbedding.rotate(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    cos2, sin2 = rope.span(14, 4)  # partly beyond the table: computed on the fly
    ref = rope.cos_sin(torch.arange(14, 18))
    torch.testing.assert_close((cos2, sin2), ref)


def test_rope_errors() -> None:
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)
    rope = RotaryEmbedding(8)
    with pytest.raises(ShapeError, match=r"\(B, H, T, 8\).*\(2, 4, 6\)"):
        rope(torch.randn(2, 4, 6), torch.randn(2, 4, 6), torch.arange(4))
