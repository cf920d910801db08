"""GPT: config, Hugging Face GPT-2 logits, variants, KV cache, loss, init, parameter counts, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from llmcourse.models.gpt import GPT, GPTConfig, LMOutput, swiglu_hidden
from llmcourse.utils import ShapeError

VARIANTS = [
    dict(positions="learned", norm="layernorm", mlp="gelu", tie_weights=True, bias=True),
    dict(positions="rope", norm="rmsnorm", mlp="swiglu", tie_weights=False, bias=False),
    dict(positions="rope", norm="layernorm", mlp="gelu", tie_weights=True, bias=True),
    dict(positions="learned", norm="rmsnorm", mlp="swiglu", tie_weights=False, bias=True),
    dict(positions="learned", norm="layernorm", mlp="gelu_exact", tie_weights=True, bias=False),
]


def _tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


@pytest.fixture(scope="module")
def hf_gpt2() -> GPT2LMHeadModel:
    """A small random GPT-2 (no download) with non-trivial LayerNorm parameters."""
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=97,
        n_positions=24,
        n_embd=48,
        n_layer=3,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))  # so LayerNorm weights/biases are really tested
    return model


@pytest.mark.parametrize("mlp, approximate", [("gelu", "tanh"), ("gelu_exact", "none")])
def test_gelu_mlp_variants_use_the_named_gelu(mlp: str, approximate: str) -> None:
    """mlp="gelu" is GPT-2's tanh GELU, mlp="gelu_exact" the erf GELU (nanoGPT, BERT)."""
    torch.manual_seed(0)
    ffn = GPT(_tiny(mlp=mlp)).blocks[0].mlp
    x = 40 * torch.randn(2, 5, 32)  # (B, T, C); large, so pre-activations reach |h| ~ 1-3

    def mlp_with(approx: str) -> torch.Tensor:
        h = F.gelu(F.linear(x, ffn.fc1.weight, ffn.fc1.bias), approximate=approx)
        return F.linear(h, ffn.fc2.weight, ffn.fc2.bias)

    torch.testing.assert_close(ffn(x), mlp_with(approximate), rtol=0, atol=1e-6)
    wrong = mlp_with("none" if approximate == "tanh" else "tanh")
    assert (ffn(x) - wrong).abs().max() > 1e-5  # the two GELUs differ by up to ~1e-3


def test_config_round_trip_and_validation() -> None:
    cfg = _tiny(positions="rope", norm="rmsnorm", mlp="swiglu", dropout=0.1)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys.*'n_heads'"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_heads": 4})
    with pytest.raises(ValueError, match="divisible"):
        _tiny(n_embd=30)
    with pytest.raises(ValueError, match="positions"):
        _tiny(positions="alibi")
    with pytest.raises(ValueError, match="vocab_size"):
        _tiny(vocab_size=0)


def test_from_hf_gpt2_reproduces_logits_and_loss(hf_gpt2) -> None:
    model = GPT.from_hf_gpt2(hf_gpt2).eval()
    idx = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_gpt2(idx, labels=idx)
        out = model(idx[:, :-1], idx[:, 1:])
        full = model(idx)
    torch.testing.assert_close(full.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
    assert model.num_parameters() == sum(p.numel() for p in hf_gpt2.parameters())


def test_from_hf_gpt2_state_dict_and_config_checks(hf_gpt2) -> None:
    cfg = GPTConfig(vocab_size=97, block_size=24, n_layer=3, n_head=4, n_embd=48)
    model = GPT.from_hf_gpt2(hf_gpt2.state_dict(), cfg).eval()
    idx = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, hf_gpt2(idx).logits, atol=1e-5, rtol=0)
    with pytest.raises(ShapeError, match=r"tok_emb.weight.*\(97, 48\).*\(100, 48\)"):
        GPT.from_hf_gpt2(hf_gpt2.state_dict(), GPTConfig(100, 24, 3, 4, 48))
    with pytest.raises(KeyError, match="blocks.3"):
        GPT.from_hf_gpt2(hf_gpt2.state_dict(), GPTConfig(97, 24, 4, 4, 48))
    with pytest.raises(ValueError, match="rope"):
        GPT.from_hf_gpt2(hf_gpt2.state_dict(), GPTConfig(97, 24, 3, 4, 48, positions="rope"))
    with pytest.raises(ValueError, match="pass config"):
        GPT.from_hf_gpt2(hf_gpt2.state_dict())


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: f"{v['positions']}-{v['norm']}-{v['mlp']}"
)
def test_variants_train_and_cache(variant: dict) -> None:
    torch.manual_seed(0)
    model = GPT(_tiny(**variant))
    idx = torch.randint(0, 37, (2, 12))
    out = model(idx, idx)
    assert isinstance(out, LMOutput)
    assert out.logits.shape == (2, 12, 37) and out.hidden.shape == (2, 12, 32)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # KV cache: prompt, then one token at a time, gives the full-sequence logits.
    model.eval()
    with torch.no_grad():
        full = model(idx).logits
        cache = model.new_kv_cache(2)
        steps = [model(idx[:, :5], kv_cache=cache).logits]
        steps += [model(idx[:, t : t + 1], kv_cache=cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_state_dict_names_follow_the_documented_layout() -> None:
    tied = GPT(_tiny())
    keys = set(tied.state_dict())
    assert "lm_head.weight" not in keys and "tok_emb.weight" in keys and "pos_emb.weight" in keys
    for name in (
        "norm1.weight",
        "attn.qkv.weight",
        "attn.out.bias",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc2.bias",
    ):
        assert f"blocks.1.{name}" in keys
    assert "norm_f.weight" in keys
    untied = set(GPT(_tiny(tie_weights=False, positions="rope", bias=False)).state_dict())
    assert "lm_head.weight" in untied and "pos_emb.weight" not in untied
    assert not any(k.endswith("bias") for k in untied)


def test_causality_future_tokens_do_not_change_past_logits() -> None:
    torch.manual_seed(0)
    model = GPT(_tiny(positions="rope")).eval()
    a = torch.randint(0, 37, (1, 10))
    b = a.clone()
    b[0, 6:] = (b[0, 6:] + 1) % 37
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    torch.testing.assert_close(la[:, :6], lb[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(la[:, 6:], lb[:, 6:])


def test_parameter_counts() -> None:
    c = _tiny()
    model = GPT(c)
    c2 = c.n_embd * c.n_embd
    norms = 2 * 2 * c.n_embd
    attention = (3 * c2 + 3 * c.n_embd) + (c2 + c.n_embd)  # qkv, out
    mlp = (4 * c2 + 4 * c.n_embd) + (4 * c2 + c.n_embd)  # fc1, fc2
    per_block = norms + attention + mlp
    embeddings = c.vocab_size * c.n_embd + c.block_size * c.n_embd
    expected = embeddings + c.n_layer * per_block + 2 * c.n_embd
    assert model.num_parameters() == expected  # the tied output layer counted once
    assert model.num_parameters(non_embedding=True) == expected - embeddings
    untied = GPT(_tiny(tie_weights=False))
    assert untied.num_parameters() == expected + c.vocab_size * c.n_embd
    swiglu = GPT(_tiny(mlp="swiglu"))
    assert swiglu.blocks[0].mlp.fc2.weight.shape == (32, swiglu_hidden(32))
    assert swiglu_hidden(32) % 8 == 0 and swiglu_hidden(768) == 2048


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=8, n_head=4, n_embd=128)
    model = GPT(cfg)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / (2 * cfg.n_layer) ** 0.5
    assert model.blocks[3].attn.out.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[3].mlp.fc2.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros(3 * 128))
    assert torch.equal(model.norm_f.weight, torch.ones(128))
    # An untrained model predicts nearly uniformly: loss close to ln(V).
    idx, targets = torch.randint(0, 500, (2, 4, 64))
    with torch.no_grad():
        loss = model(idx, targets).loss.item()
    assert loss == pytest.approx(torch.log(torch.tensor(500.0)).item(), abs=0.1)


def test_loss_matches_torch_and_loss_mask() -> None:
    torch.manual_seed(0)
    model = GPT(_tiny()).eval()
    idx = torch.randint(0, 37, (2, 8))
    targets = torch.randint(0, 37, (2, 8))
    targets[1, :3] = -100
    with torch.no_grad():
        out = model(idx, targets)
        logits = out.logits.reshape(-1, 37)
        torch.testing.assert_close(
            out.loss, F.cross_entropy(logits, targets.reshape(-1)), atol=1e-6, rtol=0
        )
        mask = torch.zeros(2, 8, dtype=torch.bool)
        mask[:, 4:] = True  # e.g. SFT: only response tokens count
        masked = model(idx, targets, loss_mask=mask).loss
        expected = F.cross_entropy(logits, targets.masked_fill(~mask, -100).reshape(-1))
        torch.testing.assert_close(masked, expected, atol=1e-6, rtol=0)


def test_training_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    model = GPT(_tiny(positions="rope", norm="rmsnorm", mlp="swiglu"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.arange(17).repeat(2, 1) % 37
    first = None
    for _ in range(30):
        loss = model(data[:, :-1], data[:, 1:]).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bad_inputs_name_expected_and_actual() -> None:
    model = GPT(_tiny())
    with pytest.raises(TypeError, match="float32.*long"):
        model(torch.zeros(2, 4))
    with pytest.raises(ShapeError, match="length 20.*block_size=16"):
        model(torch.zeros(1, 20, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"\(B, T\).*\(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(IndexError, match=r"\[0, 40\].*37 tokens"):
        model(torch.tensor([[0, 40]]))
    with pytest.raises(ShapeError, match=r"targets.*\(2, 4\).*\(2, 3\)"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"loss_mask.*\(2, 4\)"):
        model(
            torch.zeros(2, 4, dtype=torch.long),
            torch.zeros(2, 4, dtype=torch.long),
            loss_mask=torch.ones(4),
        )
    model.eval()
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        model(torch.zeros(1, 12, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ShapeError, match="after 12 cached positions exceeds block_size=16"):
            model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ShapeError, match="batch size 1"):
            model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)
