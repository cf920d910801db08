"""Checkpoints: safetensors + JSON round trip, unwrapped names, integrity and config errors."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.optim import SGD, AdamW
from llmcourse.tokenizers import CharTokenizer
from llmcourse.train import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_checkpoint_tokenizer,
    restore_rng_state,
    save_checkpoint,
)
from llmcourse.train.checkpoint import META_FILE, MODEL_FILE, STATE_FILE
from llmcourse.train.state import pack, unpack

CFG = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine extra threads thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trained(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**CFG, **overrides}))
    opt = AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        x = torch.randint(0, 20, (4, 16))
        model(x, targets=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_model_optimizer_step_config(tmp_path):
    model, opt = _trained()
    tok = CharTokenizer.from_text("abcdefghijklmnopqrst")
    save_checkpoint(
        tmp_path / "ck",
        model,
        opt,
        step=3,
        config={"lr": 1e-2},
        tokenizer=tok,
        metrics={"val_loss": 2.5},
    )
    fresh, fresh_opt = _trained(seed=1)
    ck = load_checkpoint(tmp_path / "ck", fresh, fresh_opt)
    assert _same(_snapshot(fresh), _snapshot(model))
    assert (ck.step, ck.config, ck.metrics) == (3, {"lr": 1e-2}, {"val_loss": 2.5})
    assert ck.model_config == GPTConfig(**CFG).to_dict()
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        s, t = opt.state[p], fresh_opt.state[q]
        assert s["step"] == t["step"] == 3
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(
            s["exp_avg_sq"], t["exp_avg_sq"]
        )
    assert fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)  # tuples survive JSON
    assert load_checkpoint_tokenizer(tmp_path / "ck") == tok


def test_torch_optimizer_state_round_trips(tmp_path):
    model, _ = _trained()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(
        torch.zeros(1, 4, dtype=torch.long), targets=torch.zeros(1, 4, dtype=torch.long)
    ).loss.backward()
    opt.step()
    save_checkpoint(tmp_path, model, opt)
    opt2 = torch.optim.AdamW(model.parameters(), lr=5.0)
    load_checkpoint(tmp_path, model, opt2)
    assert opt2.param_groups[0]["lr"] == 1e-3
    assert torch.equal(next(iter(opt2.state.values()))["step"], torch.tensor(1.0))


def test_saved_names_are_unwrapped(tmp_path):
    model, _ = _trained()
    wrapped = torch.compile(model)  # lazily compiled: wrapping alone adds the _orig_mod. prefix
    assert any(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    save_checkpoint(tmp_path, wrapped)
    from safetensors import safe_open

    with safe_open(str(tmp_path / MODEL_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    assert "tok_emb.weight" in keys


def test_tied_weights_saved_once_and_restored(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    a, b = Tied(), Tied()
    save_checkpoint(tmp_path, a)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["aliases"] == {"head.weight": "emb.weight"}
    load_checkpoint(tmp_path, b)
    assert torch.equal(b.emb.weight, a.emb.weight) and b.head.weight is b.emb.weight


def test_other_configuration_is_rejected_and_model_untouched(tmp_path):
    model, _ = _trained()
    save_checkpoint(tmp_path, model)
    other, _ = _trained(seed=3, n_embd=48)
    before = _snapshot(other)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, other)
    msg = str(err.value)
    assert "tok_emb.weight: checkpoint (20, 32), model (20, 48)" in msg
    assert "n_embd: checkpoint 32, model 48" in msg
    assert _same(before, _snapshot(other))


def test_architecture_change_names_the_keys(tmp_path):
    model, _ = _trained()
    save_checkpoint(tmp_path, model)
    rope, _ = _trained(positions="rope")
    before = _snapshot(rope)
    with pytest.raises(
        CheckpointError,
        match=r"not in the model: \['pos_emb.weight'\].*positions: checkpoint 'learned', model 'rope'",
    ):
        load_checkpoint(tmp_path, rope)
    assert _same(before, _snapshot(rope))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("target", [MODEL_FILE, STATE_FILE])
def test_damaged_files_are_detected_and_nothing_changes(tmp_path, damage, target):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, step=3)
    path = tmp_path / target
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        path.unlink()
    fresh, fresh_opt = _trained(seed=7)
    before, opt_before = _snapshot(fresh), json.dumps(str(fresh_opt.state_dict()))
    expected = {"truncate": "truncated", "flip": "corrupt", "delete": "missing"}[damage]
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path, fresh, fresh_opt)
    assert _same(before, _snapshot(fresh))
    assert json.dumps(str(fresh_opt.state_dict())) == opt_before


def test_corrupt_or_missing_metadata(tmp_path):
    model, _ = _trained()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", model)
    save_checkpoint(tmp_path, model)
    meta = tmp_path / META_FILE
    meta.write_text(meta.read_text()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path, model)
    meta.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an llmcourse checkpoint"):
        load_checkpoint(tmp_path, model)
    with pytest.raises(CheckpointError, match="pass the checkpoint's directory"):
        load_checkpoint(tmp_path / MODEL_FILE, model)


def test_optimizer_mismatch_is_rejected_before_anything_changes(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt)
    fresh, _ = _trained(seed=5)
    before = _snapshot(fresh)
    with pytest.raises(CheckpointError, match="holds AdamW state; cannot load it into SGD"):
        load_checkpoint(tmp_path, fresh, SGD(fresh.parameters(), lr=0.1))
    params = list(fresh.parameters())
    two_groups = AdamW([{"params": params[:3]}, {"params": params[3:]}])
    with pytest.raises(CheckpointError, match="parameter groups of sizes"):
        load_checkpoint(tmp_path, fresh, two_groups)
    assert _same(before, _snapshot(fresh))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, tokenizer=CharTokenizer.from_text("abc"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_checkpoint(tmp_path, model, opt, restore_rng=True)
    load_checkpoint_tokenizer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        META_FILE,
        MODEL_FILE,
        STATE_FILE,
        "tokenizer.json",
    ]


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, step=1)
    import llmcourse.train.checkpoint as ckmod

    real = ckmod.save_file
    calls = []

    def crash_on_state(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash while writing the optimizer state")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckmod, "save_file", crash_on_state)
    changed, _ = _trained(seed=9)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, changed, opt, step=2)
    monkeypatch.setattr(ckmod, "save_file", real)
    fresh, fresh_opt = _trained(seed=4)
    assert load_checkpoint(tmp_path, fresh, fresh_opt).step == 1
    assert _same(_snapshot(fresh), _snapshot(model))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_rng_states_round_trip(tmp_path):
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    model, opt = _trained()
    torch.manual_seed(123)
    save_checkpoint(tmp_path, model, opt)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_checkpoint(tmp_path, model, opt, restore_rng=True)
    assert torch.equal(torch.rand(3), expected)


def test_pack_unpack_keeps_types():
    obj = {
        "state": {0: {"step": 3, "m": torch.ones(2)}, 1: {}},
        "groups": [{"betas": (0.9, 0.99), "x": None}],
    }
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(obj, "o", tensors)
    back = unpack(json.loads(json.dumps(skeleton)), tensors)
    assert back["groups"][0]["betas"] == (0.9, 0.99) and list(back["state"]) == [0, 1]
    assert torch.equal(back["state"][0]["m"], torch.ones(2))
    with pytest.raises(TypeError, match="cannot save"):
        pack({"f": object()}, "o", {})
