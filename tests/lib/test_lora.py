"""LoRA: forward against merged weights, merge/unmerge, targeting, counts, adapter files."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from llmcourse.finetune import (
    LoRALinear,
    apply_lora,
    count_trainable,
    load_adapter,
    lora_modules,
    lora_param_count,
    merge_lora,
    save_adapter,
    unload_lora,
    unmerge_lora,
)
from llmcourse.finetune.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from llmcourse.models.gpt import GPT, GPTConfig


class Attn(nn.Module):
    def __init__(self, d: int, device=None) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False, device=device)
        self.k_proj = nn.Linear(d, d, bias=False, device=device)
        self.v_proj = nn.Linear(d, d, bias=False, device=device)
        self.o_proj = nn.Linear(d, d, bias=False, device=device)

    def forward(self, x):
        return self.o_proj(self.q_proj(x) * torch.tanh(self.k_proj(x)) + self.v_proj(x))


class Toy(nn.Module):
    """A stack of LLaMA-named attention blocks (no real attention, just the Linear layers)."""

    def __init__(self, d: int = 16, n_layer: int = 2, device=None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Attn(d, device) for _ in range(n_layer))
        self.head = nn.Linear(d, 5, device=device)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


def randomize_lora(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_initial_lora_is_identity_and_init_follows_linear():
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 5, 32)
    assert torch.equal(layer.lora_B, torch.zeros(24, 4)), "B must start at zero"
    assert torch.equal(layer(x), base(x)), "with B = 0 LoRA must not change the output"
    bound = 1 / math.sqrt(32)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound
    assert layer.scaling == 2.0


def test_forward_equals_merged_linear_and_unmerge_restores():
    torch.manual_seed(1)
    base = nn.Linear(20, 12)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=3, alpha=6)
    randomize_lora(nn.Sequential(layer))
    x = torch.randn(7, 20)
    merged_w = w0 + (6 / 3) * layer.lora_B @ layer.lora_A
    expected = F.linear(x, merged_w, base.bias)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    layer.merge()
    assert layer.merged
    torch.testing.assert_close(base.weight, merged_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-6)


def test_dropout_only_on_lora_path():
    torch.manual_seed(2)
    layer = LoRALinear(nn.Linear(16, 16), r=4, alpha=4, dropout=0.5)
    x = torch.randn(4, 16)
    layer.train()
    assert torch.equal(layer(x), layer.base(x)), "B = 0: dropout must not touch the base path"
    randomize_lora(nn.Sequential(layer))
    assert not torch.allclose(layer(x), layer(x)), "train mode: dropout should vary the LoRA path"
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))


@pytest.mark.parametrize(
    "patterns, expected",
    [
        (
            ["q_proj", "v_proj"],
            ["layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj", "layers.1.v_proj"],
        ),
        (
            "layers.1.*",
            ["layers.1.q_proj", "layers.1.k_proj", "layers.1.v_proj", "layers.1.o_proj"],
        ),
        (re.compile(r"layers\.0\.[qk]_proj"), ["layers.0.q_proj", "layers.0.k_proj"]),
    ],
)
def test_apply_lora_targets_by_name_pattern(patterns, expected):
    model = Toy()
    names = apply_lora(model, patterns, r=2)
    assert names == expected
    assert sorted(lora_modules(model)) == sorted(expected)


def test_apply_lora_without_match_names_candidates():
    with pytest.raises(ValueError, match=r"no .*matches.*'qkv'.*layers\.0\.q_proj"):
        apply_lora(Toy(), ["qkv"])


def test_only_lora_parameters_train():
    torch.manual_seed(3)
    model = Toy()
    apply_lora(model, ["q_proj", "v_proj"], r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    model(torch.randn(2, 16)).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.endswith(("lora_A", "lora_B")), name
    # reapplying does not wrap the wrapped layers' bases
    with pytest.raises(ValueError, match="already carries"):
        apply_lora(model, ["q_proj", "v_proj"])


def test_parameter_counts_of_the_chapter():
    assert lora_param_count(4096, 4096, 8) == 65_536
    # A 32-layer 4096-wide model, LoRA r = 8 on q, k, v, o; built on the meta device (no memory).
    model = Toy(d=4096, n_layer=32, device="meta")
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=8)
    count = count_trainable(model)
    assert count.trainable == 8_388_608
    assert count.total == 8_388_608 + 32 * 4 * 4096 * 4096 + (4096 * 5 + 5)
    assert f"{count.trainable:,}" in str(count)


def test_save_load_roundtrip_only_lora_weights(tmp_path):
    torch.manual_seed(4)
    model = Toy()
    fresh = Toy()
    fresh.load_state_dict(model.state_dict())
    names = apply_lora(model, ["q_proj", "o_proj"], r=4, alpha=8)
    randomize_lora(model)
    x = torch.randn(3, 16)
    expected = model(x)

    save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    assert sorted(tensors) == sorted(f"{n}.{p}" for n in names for p in ("lora_A", "lora_B"))
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["modules"]["layers.0.q_proj"]["r"] == 4

    loaded = load_adapter(fresh, tmp_path)
    assert loaded == names
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    assert count_trainable(fresh).trainable == count_trainable(model).trainable


def test_load_adapter_errors_name_the_problem(tmp_path):
    model = Toy(d=16)
    apply_lora(model, ["q_proj"], r=4)
    save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj.*\(8, 8\).*\(16, 16\)"):
        load_adapter(Toy(d=8), tmp_path)
    with pytest.raises(ValueError, match=r"layers\.1\.q_proj.*does not have"):
        load_adapter(Toy(d=16, n_layer=1), tmp_path)
    other = Toy(d=16)
    apply_lora(other, ["q_proj"], r=2)
    with pytest.raises(ValueError, match="rank 2.*rank 4"):
        load_adapter(other, tmp_path)
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG):
        load_adapter(Toy(), tmp_path / "missing")


def test_merge_unmerge_unload_whole_model():
    torch.manual_seed(5)
    model = Toy()
    apply_lora(model, ["k_proj", "v_proj"], r=2)
    randomize_lora(model)
    x = torch.randn(4, 16)
    out = model(x)
    assert len(merge_lora(model)) == 4
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-6)
    assert len(unmerge_lora(model)) == 4
    unload_lora(model)
    assert not lora_modules(model)
    assert isinstance(model.layers[0].k_proj, nn.Linear)
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-6)


def test_lora_on_the_course_gpt_trains_only_adapters():
    torch.manual_seed(6)
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg)
    idx = torch.randint(0, 11, (2, 8))
    before = model(idx).logits
    names = apply_lora(model, ["attn.qkv", "attn.out"], r=4, alpha=8)
    assert names == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.out",
        "blocks.1.attn.qkv",
        "blocks.1.attn.out",
    ]
    assert torch.equal(model(idx).logits, before)
    count = count_trainable(model)
    assert count.trainable == 2 * (lora_param_count(16, 48, 4) + lora_param_count(16, 16, 4))

    # A learnable next-token task: one sequence counts up, the other down.
    seq = torch.stack([torch.arange(9), torch.arange(9).flip(0)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = []
    for _ in range(30):
        loss = model(seq[:, :-1], targets=seq[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} is frozen but changed"


def test_lora_on_an_untied_output_layer_read_through_weight():
    # The GPT multiplies by lm_head.weight directly; LoRALinear.weight is the effective weight.
    torch.manual_seed(7)
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_weights=False)
    model = GPT(cfg)
    idx = torch.randint(0, 11, (2, 8))
    before = model(idx).logits
    apply_lora(model, "lm_head", r=2)
    torch.testing.assert_close(model(idx).logits, before)
    randomize_lora(model)
    head = model.lm_head
    torch.testing.assert_close(head.weight, head.base.weight + head.delta_weight())
    model(idx, targets=idx).loss.backward()
    assert head.lora_B.grad is not None and head.lora_B.grad.abs().sum() > 0
