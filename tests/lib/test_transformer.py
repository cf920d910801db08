"""Encoder-decoder Transformer: layers vs torch.nn.Transformer*Layer, parameter counts,
teacher forcing vs cached greedy decoding, a learned copy task, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmcourse.models.transformer import DecoderLayer, EncoderLayer, Transformer, TransformerConfig
from llmcourse.utils import ShapeError

ATOL = 1e-5


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.weight.data.copy_(src.weight.data)
    if getattr(src, "bias", None) is not None:
        dst.bias.data.copy_(src.bias.data)


def _load_torch_attention(ref: nn.MultiheadAttention, ours) -> None:
    c = ref.embed_dim
    with torch.no_grad():
        if ours.cross_attention:
            ours.q.weight.copy_(ref.in_proj_weight[:c])
            ours.q.bias.copy_(ref.in_proj_bias[:c])
            ours.kv.weight.copy_(ref.in_proj_weight[c:])
            ours.kv.bias.copy_(ref.in_proj_bias[c:])
        else:
            ours.qkv.weight.copy_(ref.in_proj_weight)
            ours.qkv.bias.copy_(ref.in_proj_bias)
    _copy(ours.out, ref.out_proj)


def _randomise_norms(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)


def test_encoder_layer_parameter_count_base_model() -> None:
    assert sum(p.numel() for p in EncoderLayer(512, 8, 2048).parameters()) == 3_152_384
    # decoder layer: two attention blocks, one FFN, three LayerNorms
    assert sum(p.numel() for p in DecoderLayer(512, 8, 2048).parameters()) == 4_204_032


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(norm_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    _randomise_norms(ref)
    ref.train()  # the training path: torch's inference fast path zeroes padded positions
    ours = EncoderLayer(16, 4, 32, norm_first=norm_first)
    _load_torch_attention(ref.self_attn, ours.self_attn)
    for a, b in (
        (ours.ffn.fc1, ref.linear1),
        (ours.ffn.fc2, ref.linear2),
        (ours.norm1, ref.norm1),
        (ours.norm2, ref.norm2),
    ):
        _copy(a, b)
    x = torch.randn(2, 6, 16)
    real = torch.ones(2, 6, dtype=torch.bool)
    real[1, 4:] = False
    torch.testing.assert_close(ours(x, real), ref(x, src_key_padding_mask=~real), atol=ATOL, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(
        16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    _randomise_norms(ref)
    ref.train()
    ours = DecoderLayer(16, 4, 32, norm_first=norm_first)
    _load_torch_attention(ref.self_attn, ours.self_attn)
    _load_torch_attention(ref.multihead_attn, ours.cross_attn)
    pairs = [(ours.ffn.fc1, ref.linear1), (ours.ffn.fc2, ref.linear2)]
    pairs += [(ours.norm1, ref.norm1), (ours.norm2, ref.norm2), (ours.norm3, ref.norm3)]
    for a, b in pairs:
        _copy(a, b)
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    real = torch.ones(2, 7, dtype=torch.bool)
    real[0, 5:] = False
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    expected = ref(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~real)
    torch.testing.assert_close(ours(x, memory, real), expected, atol=ATOL, rtol=0)


def _tiny(**kw) -> TransformerConfig:
    base = dict(
        src_vocab_size=13,
        tgt_vocab_size=11,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_len=32,
    )
    base.update(kw)
    return TransformerConfig(**base)


@pytest.mark.parametrize("norm_first", [False, True])
def test_teacher_forcing_agrees_with_cached_greedy_decode(norm_first: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny(norm_first=norm_first)).eval()
    assert hasattr(model, "encoder_norm") == norm_first  # pre-norm needs final norms
    src = torch.randint(1, 13, (3, 6))
    src[2, 4:] = 0  # padding
    out = model.greedy_decode(src, max_new_tokens=8, bos_id=1)
    assert out.shape == (3, 9) and (out[:, 0] == 1).all()
    with torch.no_grad():
        logits = model(src, out[:, :-1]).logits  # all steps at once
    assert torch.equal(logits.argmax(-1), out[:, 1:])


def test_source_padding_is_ignored() -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny()).eval()
    src = torch.tensor([[3, 4, 5, 0, 0]])
    tgt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        a = model(src, tgt).logits
        b = model(src[:, :3], tgt).logits
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_loss_ignores_padding_targets() -> None:
    torch.manual_seed(0)
    model = Transformer(_tiny()).eval()
    src, tgt = torch.randint(1, 13, (2, 5)), torch.randint(1, 11, (2, 4))
    targets = torch.randint(1, 11, (2, 4))
    padded = targets.clone()
    padded[0, 2:] = 0
    with torch.no_grad():
        out = model(src, tgt, padded)
        per_token = nn.functional.cross_entropy(
            out.logits.reshape(-1, 11), targets.reshape(-1), reduction="none"
        )
    keep = (padded != 0).reshape(-1)
    torch.testing.assert_close(out.loss, per_token[keep].mean(), atol=1e-6, rtol=0)


def test_state_dict_names_and_tied_output() -> None:
    keys = set(Transformer(_tiny()).state_dict())
    for name in (
        "src_emb.weight",
        "tgt_emb.weight",
        "out_bias",
        "encoder.0.self_attn.qkv.weight",
        "decoder.1.cross_attn.kv.weight",
        "decoder.1.norm3.weight",
    ):
        assert name in keys
    untied = set(Transformer(_tiny(tie_output=False)).state_dict())
    assert {"out_proj.weight", "out_proj.bias"} <= untied and "out_bias" not in untied


def test_learns_to_copy_and_greedy_decodes_it() -> None:
    """A small post-norm model learns to copy 4-token sequences; greedy decoding reproduces them."""
    torch.manual_seed(0)
    bos, eos = 1, 2
    model = Transformer(
        _tiny(src_vocab_size=10, tgt_vocab_size=10, n_encoder_layers=1, n_decoder_layers=1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        src = torch.randint(3, 10, (64, 4))
        tgt = torch.cat([torch.full((64, 1), bos), src], dim=1)
        targets = torch.cat([src, torch.full((64, 1), eos)], dim=1)
        loss = model(src, tgt, targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src = torch.randint(3, 10, (32, 4), generator=torch.Generator().manual_seed(5))
    out = model.greedy_decode(src, max_new_tokens=8, bos_id=bos, eos_id=eos)
    assert out.shape[1] == 6  # stops as soon as every row has produced EOS
    accuracy = (out[:, 1:5] == src).float().mean().item()
    assert accuracy > 0.95, f"copy accuracy {accuracy:.2f}, loss {loss.item():.3f}"
    assert (out[:, 5] == eos).float().mean().item() > 0.95


def test_bad_inputs() -> None:
    model = Transformer(_tiny())
    with pytest.raises(TypeError, match="src.*float32"):
        model(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ShapeError, match="length 40 exceeds max_len=32"):
        model(torch.ones(1, 40, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(IndexError, match="11 tokens"):
        model(torch.ones(1, 3, dtype=torch.long), torch.full((1, 3), 11))
    with pytest.raises(ValueError, match="max_len=32"):
        model.greedy_decode(torch.ones(1, 3, dtype=torch.long), 40, bos_id=1)
    with pytest.raises(ValueError, match="divisible"):
        _tiny(d_model=30)
    assert TransformerConfig.from_dict(_tiny().to_dict()) == _tiny()
