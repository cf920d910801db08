"""Recurrent cells and layers against torch.nn (values and gradients), packing, interop, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import llmcourse.kernels
from llmcourse.recurrent import (
    GRU,
    LSTM,
    RNN,
    GRUCell,
    LSTMCell,
    RNNCell,
    copy_weights,
    detach_state,
    from_torch,
    layer_class,
    select_state,
    to_torch,
)
from llmcourse.utils import ShapeError

ATOL = 1e-5
TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def _sum_state(state) -> torch.Tensor:
    """A scalar that depends on every part of a state, with distinct weights per part."""
    if isinstance(state, tuple):
        return (state[0] * 0.7).sum() + (state[1] * 1.3).sum()
    return (state * 0.7).sum()


@pytest.mark.parametrize(
    ("ours_cls", "ref_cls", "kwargs"),
    [
        (RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
        (RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
        (LSTMCell, nn.LSTMCell, {}),
        (GRUCell, nn.GRUCell, {}),
        (GRUCell, nn.GRUCell, {"bias": False}),
    ],
)
def test_cells_match_torch_values_and_gradients(ours_cls, ref_cls, kwargs):
    torch.manual_seed(0)
    ref = ref_cls(6, 5, **kwargs)
    ours = from_torch(ref)
    assert isinstance(ours, ours_cls)
    x = torch.randn(4, 6)
    h = torch.randn(4, 5)
    state = (h, torch.randn(4, 5)) if ours_cls is LSTMCell else h
    xs = [x.clone().requires_grad_() for _ in range(2)]
    states = [
        tuple(s.clone().requires_grad_() for s in state)
        if isinstance(state, tuple)
        else state.clone().requires_grad_()
        for _ in range(2)
    ]
    out_ref = ref(xs[0], states[0])
    out_ours = ours(xs[1], states[1])
    for a, b in zip(
        out_ours if isinstance(out_ours, tuple) else (out_ours,),
        out_ref if isinstance(out_ref, tuple) else (out_ref,),
        strict=True,
    ):
        _assert_close(a, b, "cell output")
    _sum_state(out_ref).backward()
    _sum_state(out_ours).backward()
    _assert_close(xs[1].grad, xs[0].grad, "d input")
    for a, b in zip(
        states[1] if isinstance(state, tuple) else (states[1],),
        states[0] if isinstance(state, tuple) else (states[0],),
        strict=True,
    ):
        _assert_close(a.grad, b.grad, "d initial state")
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        _assert_close(p.grad, q.grad, f"d {name}")


def test_cells_default_state_is_zero():
    torch.manual_seed(1)
    cell = LSTMCell(3, 4)
    x = torch.randn(2, 3)
    h, c = cell(x)
    h0, c0 = cell(x, (torch.zeros(2, 4), torch.zeros(2, 4)))
    assert torch.equal(h, h0) and torch.equal(c, c0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first"),
    [(1, False, False), (2, True, True), (3, True, False), (2, False, True)],
)
def test_layers_match_torch_values_and_gradients(cell, num_layers, bidirectional, batch_first):
    torch.manual_seed(0)
    hidden, batch, steps, features = 6, 3, 7, 5
    ref = TORCH_LAYERS[cell](
        features, hidden, num_layers, bidirectional=bidirectional, batch_first=batch_first
    )
    ours = from_torch(ref)
    assert type(ours) is layer_class(cell)
    assert list(ours.state_dict()) == list(ref.state_dict())
    shape = (batch, steps, features) if batch_first else (steps, batch, features)
    x = torch.randn(shape)
    n_dir = 2 if bidirectional else 1
    h0 = torch.randn(num_layers * n_dir, batch, hidden)
    state = (h0, torch.randn_like(h0)) if cell == "lstm" else h0

    def run(module):
        xi = x.clone().requires_grad_()
        si = (
            tuple(s.clone().requires_grad_() for s in state)
            if isinstance(state, tuple)
            else state.clone().requires_grad_()
        )
        out, final = module(xi, si)
        # weight the outputs so every time step and feature gets a distinct gradient
        w = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
        ((out * w).sum() + _sum_state(final)).backward()
        grads_state = [s.grad for s in (si if isinstance(si, tuple) else (si,))]
        return out, final, xi.grad, grads_state

    out_r, fin_r, gx_r, gs_r = run(ref)
    out_o, fin_o, gx_o, gs_o = run(ours)
    _assert_close(out_o, out_r, "output")
    for a, b in zip(
        fin_o if isinstance(fin_o, tuple) else (fin_o,),
        fin_r if isinstance(fin_r, tuple) else (fin_r,),
        strict=True,
    ):
        _assert_close(a, b, "final state")
    _assert_close(gx_o, gx_r, "d input")
    for a, b in zip(gs_o, gs_r, strict=True):
        _assert_close(a, b, "d initial state")
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        _assert_close(p.grad, q.grad, f"d {name}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lengths_match_packed_sequences(cell):
    """Variable lengths behave like torch's pack_padded_sequence, both directions."""
    torch.manual_seed(2)
    ref = TORCH_LAYERS[cell](4, 5, num_layers=2, bidirectional=True, batch_first=True)
    ours = from_torch(ref)
    lengths = torch.tensor([6, 2, 4, 1])
    x = torch.randn(4, 6, 4)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_packed, fin_r = ref(packed)
    out_r, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=6)
    out_o, fin_o = ours(x, lengths=lengths)
    _assert_close(out_o, out_r, "padded output")
    for a, b in zip(
        fin_o if isinstance(fin_o, tuple) else (fin_o,),
        fin_r if isinstance(fin_r, tuple) else (fin_r,),
        strict=True,
    ):
        _assert_close(a, b, "final state with lengths")
    # and each sequence on its own gives the same as inside the padded batch
    alone, _ = ours(x[1:2, :2])
    _assert_close(out_o[1:2, :2], alone, "sequence alone vs in a padded batch")
    assert torch.all(out_o[1, 2:] == 0), "outputs at padded positions must be zero"


def test_lstm_runs_through_the_lstm_cell_kernel(monkeypatch):
    calls = []
    original = llmcourse.kernels.lstm_cell

    def counting(gates, c_prev):
        calls.append(tuple(gates.shape))
        return original(gates, c_prev)

    monkeypatch.setattr(llmcourse.kernels, "lstm_cell", counting)
    layer = LSTM(3, 4, num_layers=2, bidirectional=True)
    layer(torch.randn(5, 2, 3))
    assert len(calls) == 5 * 2 * 2, "one kernel call per time step, layer and direction"
    assert set(calls) == {(2, 16)}


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(3)
    layer = GRU(4, 8, num_layers=2, dropout=0.5, batch_first=True)
    x = torch.randn(2, 5, 4)
    layer.eval()
    a, _ = layer(x)
    b, _ = layer(x)
    assert torch.equal(a, b)
    reference = to_torch(layer).eval()
    _assert_close(a, reference(x)[0], "eval output with dropout configured")
    layer.train()
    c, _ = layer(x)
    assert not torch.allclose(a, c), "dropout between layers should change training outputs"
    single = GRU(4, 8, num_layers=1, dropout=0.5).train()
    xs = torch.randn(5, 2, 4)
    assert torch.equal(single(xs)[0], single(xs)[0]), "no dropout after the last layer"


def test_gradcheck_lstm_double():
    torch.manual_seed(4)
    layer = LSTM(2, 3, num_layers=2, bidirectional=True).double()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,))


def test_to_torch_round_trip_and_copy_weights():
    torch.manual_seed(5)
    ours = LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    theirs = to_torch(ours)
    assert isinstance(theirs, nn.LSTM) and theirs.batch_first and theirs.bidirectional
    x = torch.randn(2, 6, 3)
    _assert_close(ours(x)[0], theirs(x)[0], "to_torch output")
    other = LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    copy_weights(theirs, other)
    assert torch.equal(other(x)[0], ours(x)[0])
    rnn = RNN(3, 4, nonlinearity="relu")
    assert to_torch(rnn).nonlinearity == "relu"


def test_copy_weights_reports_mismatches():
    with pytest.raises(ValueError, match="missing in the source"):
        copy_weights(nn.LSTM(3, 4), LSTM(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="weight_ih_l0: source"):
        copy_weights(nn.GRU(3, 4), GRU(5, 4))
    with pytest.raises(TypeError, match="no counterpart"):
        from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="proj_size"):
        from_torch(nn.LSTM(3, 4, proj_size=2))


def test_select_and_detach_state():
    h = torch.randn(2, 3, 4, requires_grad=True)
    state = (h * 2, h * 3)
    picked = select_state(state, torch.tensor([2, 0]))
    assert picked[0].shape == (2, 2, 4)
    assert torch.equal(picked[1][:, 0], state[1][:, 2])
    detached = detach_state(state)
    assert not detached[0].requires_grad and not detach_state(h).requires_grad


def test_bad_inputs_raise_clear_errors():
    lstm = LSTM(3, 4, num_layers=2)
    with pytest.raises(ShapeError, match=r"expected \(T, B, I\) with I=3, got shape \(5, 2, 7\)"):
        lstm(torch.randn(5, 2, 7))
    with pytest.raises(ShapeError, match="add a batch dimension"):
        lstm(torch.randn(5, 3))
    with pytest.raises(TypeError, match="dtype int64"):
        lstm(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"pair \(h0, c0\)"):
        lstm(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ShapeError, match=r"h0: expected .* = \(2, 2, 4\), got shape \(1, 2, 4\)"):
        lstm(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    gru = GRU(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\]"):
        gru(torch.randn(2, 5, 3), lengths=torch.tensor([6, 1]))
    with pytest.raises(ShapeError, match=r"lengths: expected shape \(2,\)"):
        gru(torch.randn(2, 5, 3), lengths=torch.tensor([5, 1, 1]))
    with pytest.raises(ShapeError, match="T=0"):
        gru(torch.randn(2, 0, 3))
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="cell must be one of"):
        layer_class("transformer")
    with pytest.raises(ShapeError, match=r"expected \(B, 3\)"):
        LSTMCell(3, 4)(torch.randn(2, 5, 3))
    with pytest.raises(ShapeError, match=r"h: expected \(2, 4\)"):
        GRUCell(3, 4)(torch.randn(2, 3), torch.randn(3, 4))
