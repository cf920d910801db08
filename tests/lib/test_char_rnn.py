"""Char-RNN language model: equals an nn.Embedding + torch.nn RNN + nn.Linear stack, carries state,
samples with a CharTokenizer, learns a repeating text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.models.char_rnn import CharRNN
from llmcourse.recurrent import detach_state, to_torch
from llmcourse.tokenizers import CharTokenizer
from llmcourse.utils import ShapeError

TEXT = "hello world! " * 40


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_matches_a_torch_nn_stack(cell):
    torch.manual_seed(0)
    model = CharRNN(11, embed_dim=6, hidden_size=8, num_layers=2, cell=cell).eval()
    emb = nn.Embedding(11, 6)
    emb.load_state_dict(model.embedding.state_dict())
    rnn = to_torch(model.rnn)
    head = nn.Linear(8, 11)
    head.load_state_dict(model.head.state_dict())
    idx = torch.randint(0, 11, (3, 9))
    logits, state = model(idx)
    out, ref_state = rnn(emb(idx))
    torch.testing.assert_close(logits, head(out), atol=1e-5, rtol=1e-5)
    assert logits.shape == (3, 9, 11)
    first = state[0] if isinstance(state, tuple) else state
    assert first.shape == (2, 3, 8)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_state_carries_across_calls_and_loss(cell):
    torch.manual_seed(1)
    model = CharRNN(7, embed_dim=5, hidden_size=6, num_layers=2, cell=cell)
    idx = torch.randint(0, 7, (2, 10))
    full, _ = model(idx)
    first, state = model(idx[:, :4])
    second, _ = model(idx[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-6, rtol=1e-5)
    targets = torch.randint(0, 7, (2, 10))
    loss, _ = model.loss(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(full.reshape(-1, 7), targets.reshape(-1)))
    # truncated BPTT: gradients stop at a detached state
    _, state = model(idx[:, :4])
    loss2, _ = model.loss(idx[:, 4:], targets[:, 4:], detach_state(state))
    loss2.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sample_is_seeded_and_greedy_matches_a_manual_rollout():
    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(2)
    model = CharRNN(tok.vocab_size, embed_dim=8, hidden_size=16, num_layers=1, cell="gru")
    a = model.sample(tok, "he", 30, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.sample(tok, "he", 30, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert a == b and a.startswith("he") and len(a) == 32
    greedy = model.sample(tok, "he", 12, temperature=0.0)
    ids = tok.encode("he")
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert greedy == tok.decode(ids)
    top1 = model.sample(tok, "he", 12, temperature=1.3, top_k=1, generator=torch.Generator())
    assert top1 == greedy
    assert model.training, "sample restores the training mode"


def test_bad_inputs():
    tok = CharTokenizer.from_text("abc")
    model = CharRNN(3, embed_dim=4, hidden_size=4, num_layers=1)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        model(torch.tensor([[0, 5]]))
    with pytest.raises(TypeError, match="dtype float32"):
        model(torch.zeros(1, 3))
    with pytest.raises(ShapeError, match=r"expected \(B, T\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ShapeError, match="targets"):
        model.loss(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty start"):
        model.sample(tok, "", 5)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(tok, "a", 5, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.sample(tok, "a", 5, top_k=4)
    with pytest.raises(ValueError, match="cell must be one of"):
        CharRNN(3, cell="transformer")


def test_learns_a_repeating_text(one_thread):
    tok = CharTokenizer.from_text(TEXT)
    data = torch.tensor(tok.encode(TEXT))
    torch.manual_seed(3)
    model = CharRNN(tok.vocab_size, embed_dim=16, hidden_size=48, num_layers=1, cell="lstm")
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        starts = torch.randint(0, len(data) - 33, (16,), generator=g)
        window = torch.stack([data[s : s + 33] for s in starts.tolist()])
        loss, _ = model.loss(window[:, :-1], window[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1, f"loss {loss.item():.3f} on a text that repeats every 13 characters"
    assert model.sample(tok, "hello", 26, temperature=0.0) == "hello world! hello world! hello"
