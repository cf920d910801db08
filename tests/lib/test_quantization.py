"""Quantization: int8 absmax, affine uint8, NF4 (codebook, packing, double quant), layers, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.finetune import (
    NF4_CODE,
    Linear4bit,
    Linear8bit,
    affine_qparams,
    model_nbytes,
    nf4_bits_per_param,
    pack_4bit,
    prepare_qlora,
    qlora_linear,
    quantize_affine_uint8,
    quantize_int8_absmax,
    quantize_model,
    quantize_nf4,
    training_memory_bytes,
    unpack_4bit,
)
from llmcourse.finetune.quantization import (
    BlockwiseInt8,
    nf4_code_from_normal_quantiles,
    quantize_blockwise_int8,
)
from llmcourse.models.gpt import GPT, GPTConfig


def test_nf4_codebook_is_the_published_one_and_follows_from_normal_quantiles():
    assert NF4_CODE.shape == (16,)
    assert NF4_CODE[0] == -1 and NF4_CODE[7] == 0 and NF4_CODE[15] == 1
    assert torch.all(NF4_CODE[1:] > NF4_CODE[:-1])
    torch.testing.assert_close(NF4_CODE[8].item(), 0.07958029955625534)
    torch.testing.assert_close(NF4_CODE[1].item(), -0.6961928009986877)
    rebuilt = nf4_code_from_normal_quantiles()
    assert (rebuilt - NF4_CODE.double()).abs().max() < 1e-6


def test_affine_uint8_worked_example():
    q = quantize_affine_uint8(torch.tensor([0.34567]), lo=-1.0, hi=1.0)
    assert (q.scale, q.zero_point) == (pytest.approx(2 / 255), 128)
    assert q.data.item() == 172
    assert q.dequantize().item() == pytest.approx(44 * 2 / 255, abs=1e-7)  # 0.3451
    assert abs(q.dequantize().item() - 0.34567) <= q.scale / 2


def test_affine_uint8_matches_torch_fake_quantize():
    torch.manual_seed(0)
    x = torch.randn(1000) * 3 + 0.5
    q = quantize_affine_uint8(x)
    ref = torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, 0, 255)
    torch.testing.assert_close(q.dequantize(), ref, rtol=0, atol=1e-6)
    assert (q.dequantize() - x).abs().max() <= q.scale / 2 + 1e-6
    # the range is widened to contain zero, and zero is exact
    scale, zp = affine_qparams(0.5, 2.0)
    assert zp == 0 and scale == pytest.approx(2.0 / 255)
    assert quantize_affine_uint8(torch.tensor([0.0, 1.0]), 0.5, 2.0).dequantize()[0] == 0


@pytest.mark.parametrize("per_row", [False, True])
def test_int8_absmax_error_bound(per_row):
    torch.manual_seed(1)
    x = torch.randn(16, 64) * torch.logspace(-2, 1, 16)[:, None]
    q = quantize_int8_absmax(x, per_row=per_row)
    assert q.data.dtype == torch.int8 and q.data.shape == x.shape
    absmax = x.abs().amax(dim=1, keepdim=True) if per_row else x.abs().max()
    err = (q.dequantize() - x).abs()
    assert torch.all(err <= absmax / 254 + 1e-7)
    assert q.data.abs().max() == 127


def test_int8_per_row_beats_per_tensor_on_rows_of_different_scale():
    torch.manual_seed(2)
    x = torch.randn(8, 128) * torch.tensor([1e-3, 1e-2, 0.1, 1, 1, 1, 10, 100])[:, None]
    small_rows = slice(0, 3)
    per_tensor = (quantize_int8_absmax(x).dequantize() - x)[small_rows].abs().mean()
    per_row = (quantize_int8_absmax(x, per_row=True).dequantize() - x)[small_rows].abs().mean()
    assert per_row < per_tensor / 100


def test_int8_all_zero_tensor_has_no_nan():
    q = quantize_int8_absmax(torch.zeros(3, 4), per_row=True)
    assert torch.equal(q.dequantize(), torch.zeros(3, 4))


def test_pack_unpack_4bit():
    codes = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.tolist() == [0x12, 0xF0, 0x70]  # first code in the high nibble, odd length padded
    assert torch.equal(unpack_4bit(packed, 5), codes)
    rand = torch.randint(0, 16, (1001,), dtype=torch.uint8)
    assert torch.equal(unpack_4bit(pack_4bit(rand), 1001), rand)
    with pytest.raises(ValueError, match="0..15"):
        pack_4bit(torch.tensor([16], dtype=torch.uint8))


def test_nf4_picks_nearest_code_and_error_bound():
    torch.manual_seed(3)
    w = torch.randn(40, 80)
    q = quantize_nf4(w, 64, double_quant=False)
    deq = q.dequantize()
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    normalized = blocks / absmax
    nearest = NF4_CODE[(normalized[..., None] - NF4_CODE).abs().argmin(dim=-1)]
    torch.testing.assert_close(deq.reshape(-1, 64), nearest * absmax, rtol=0, atol=1e-6)
    max_gap = (NF4_CODE[1:] - NF4_CODE[:-1]).max()
    assert torch.all((deq - w).abs().reshape(-1, 64) <= absmax * max_gap / 2 + 1e-6)
    # Each block's absmax is represented exactly (code +-1).
    torch.testing.assert_close(deq.reshape(-1, 64).abs().amax(dim=1), absmax.squeeze(1))


def test_nf4_beats_uniform_4bit_on_normal_weights():
    torch.manual_seed(4)
    w = torch.randn(256, 256)
    nf4_err = (quantize_nf4(w, 64, double_quant=False).dequantize() - w).pow(2).mean()
    blocks = w.reshape(-1, 64)
    step = blocks.abs().amax(dim=1, keepdim=True) / 7  # symmetric int4 with the same blocks
    int4_err = ((torch.round(blocks / step) * step) - blocks).pow(2).mean()
    assert nf4_err < int4_err


def test_double_quantization_of_absmax():
    torch.manual_seed(5)
    absmax = torch.rand(1000) * 2 + 0.5
    dq = quantize_blockwise_int8(absmax, 256)
    assert isinstance(dq, BlockwiseInt8) and dq.data.dtype == torch.int8
    assert dq.scale.shape == (4,)
    step = ((absmax - absmax.mean()).abs().reshape(-1)).max() / 127
    assert (dq.dequantize() - absmax).abs().max() <= step / 2 + 1e-6

    w = torch.randn(128, 257)  # numel not a multiple of 64: padding is handled
    single = quantize_nf4(w, double_quant=False).dequantize()
    double = quantize_nf4(w, double_quant=True).dequantize()
    assert double.shape == w.shape
    assert (double - single).abs().max() < 0.02
    assert (double - w).pow(2).mean() < 1.02 * (single - w).pow(2).mean()


def test_nf4_bits_and_bytes():
    assert nf4_bits_per_param(64, double_quant=False) == 4.5
    assert nf4_bits_per_param(64, double_quant=True) == pytest.approx(4.127, abs=5e-4)
    w = torch.randn(256, 1024)  # 262,144 weights, 4096 blocks of 64, 16 second-level blocks
    q = quantize_nf4(w)
    assert q.nbytes == 262_144 // 2 + 4096 + 16 * 4 + 4
    assert q.nbytes * 8 / w.numel() == pytest.approx(nf4_bits_per_param(), abs=1e-3)


@pytest.mark.parametrize("cls, tol", [(Linear8bit, 0.02), (Linear4bit, 0.15)])
def test_quantized_linear_close_to_float_and_state_dict_roundtrip(cls, tol):
    torch.manual_seed(6)
    lin = nn.Linear(96, 40)
    layer = cls.from_linear(lin)
    x = torch.randn(5, 3, 96)
    ref = lin(x)
    out = layer(x)
    assert out.shape == ref.shape
    assert (out - ref).norm() / ref.norm() < tol
    torch.testing.assert_close(out, F.linear(x, layer.dequantized_weight(), lin.bias))
    assert not any(p.requires_grad for p in layer.parameters())

    fresh = cls(96, 40)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)

    x.requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "gradients must flow to the input"


def test_quantize_model_memory_and_refusals():
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Linear(512, 512, bias=False), nn.ReLU(), nn.Linear(512, 512, bias=False)
    )
    full = model_nbytes(model)
    assert full == 2 * 512 * 512 * 4
    x = torch.randn(4, 512)
    ref = model(x)
    names = quantize_model(model, ["0", "2"], "nf4")
    assert names == ["0", "2"] and isinstance(model[0], Linear4bit)
    # per layer: 131,072 packed bytes + 4096 int8 absmax + 16 fp32 scales + 1 fp32 mean
    assert model_nbytes(model) == 2 * (131_072 + 4096 + 16 * 4 + 4)
    assert full / model_nbytes(model) > 7.7
    assert (model(x) - ref).norm() / ref.norm() < 0.15

    int8 = nn.Sequential(nn.Linear(512, 512, bias=False))
    quantize_model(int8, "0", "int8")
    assert model_nbytes(int8) == 512 * 512 + 512 * 4

    tied = nn.Module()
    tied.emb = nn.Embedding(10, 8)
    tied.head = nn.Linear(8, 10, bias=False)
    tied.head.weight = tied.emb.weight
    with pytest.raises(ValueError, match="tied"):
        quantize_model(tied, "head")
    with pytest.raises(ValueError, match="kind"):
        quantize_model(model, "0", "int3")


def test_qlora_layer_trains_only_adapters_in_full_precision():
    torch.manual_seed(8)
    lin = nn.Linear(64, 32)
    layer = qlora_linear(lin, r=4, alpha=8)
    assert isinstance(layer.base, Linear4bit)
    assert layer.lora_A.dtype == torch.float32
    x = torch.randn(6, 64)
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0 at start
    layer(x).pow(2).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    assert set(grads) == {"lora_A", "lora_B"}, "only the adapters may receive gradients"
    assert grads["lora_B"].abs().sum() > 0
    assert torch.all(grads["lora_A"] == 0)  # dL/dA = B^T (...) = 0 while B is still zero
    with pytest.raises(TypeError, match="re-quantize"):
        layer.merge()


def test_prepare_qlora_on_gpt_and_memory_of_full_lora_qlora():
    from llmcourse.finetune import apply_lora

    torch.manual_seed(9)
    cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=64)
    idx = torch.randint(0, 32, (2, 16))
    full = GPT(cfg)
    lora = GPT(cfg)
    lora.load_state_dict(full.state_dict())
    qlora = GPT(cfg)
    qlora.load_state_dict(full.state_dict())
    apply_lora(lora, ["qkv", "out", "fc1", "fc2"], r=4)
    mods = prepare_qlora(qlora, ["qkv", "out", "fc1", "fc2"], r=4)
    assert len(mods.quantized) == len(mods.adapted) == 8

    ref = full(idx).logits
    assert (qlora(idx).logits - ref).norm() / ref.norm() < 0.1
    loss = qlora(idx, targets=idx).loss
    loss.backward()
    trained = {n for n, p in qlora.named_parameters() if p.grad is not None}
    assert trained == {n for n in dict(qlora.named_parameters()) if "lora_" in n}

    mem = {
        name: training_memory_bytes(m)
        for name, m in (("full", full), ("lora", lora), ("qlora", qlora))
    }
    assert mem["full"] == 4 * full.num_parameters() * 4  # weights, grads, two Adam moments
    assert mem["qlora"] < mem["lora"] < mem["full"] / 3


def test_quantized_untied_output_layer_exposes_its_weight():
    torch.manual_seed(10)
    cfg = GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=64, tie_weights=False)
    model = GPT(cfg)
    idx = torch.randint(0, 40, (2, 8))
    ref = model(idx).logits
    quantize_model(model, "lm_head", "int8")
    assert isinstance(model.lm_head, Linear8bit)
    torch.testing.assert_close(model.lm_head.weight, model.lm_head.dequantized_weight())
    assert (model(idx).logits - ref).norm() / ref.norm() < 0.02
