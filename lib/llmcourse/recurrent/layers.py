"""Multi-layer, optionally bidirectional RNN / LSTM / GRU layers over whole sequences.

Parameters carry ``torch.nn``'s names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) and shapes,
so a state dict moves between these layers and ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` unchanged
(see :mod:`llmcourse.recurrent.interop`). Each direction of each layer projects all time steps
of its input in one matmul, then runs the cell's step function in a time loop.

Variable-length batches: pass ``lengths`` (B,) and every sequence behaves as if it were alone,
as with ``torch.nn.utils.rnn.pack_padded_sequence``: the state stops updating after the last
real step, the reverse direction starts at each sequence's own last step, and outputs at
padded positions are zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.recurrent.cells import FLOAT_DTYPES, NONLINEARITIES, gru_step, lstm_step, rnn_step
from llmcourse.utils import ShapeError, check_dtype

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RecurrentLayer",
    "State",
    "CELL_TYPES",
    "layer_class",
    "select_state",
    "detach_state",
]

State = Tensor | tuple[Tensor, Tensor]
"""(L*D, B, H) for RNN / GRU, a pair (h, c) of those for LSTM."""


def select_state(state: State, index: Tensor) -> State:
    """Pick batch entries of a recurrent state ((L, B, H) or a pair of them) by ``index`` (B',)."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)


def detach_state(state: State) -> State:
    """Cut the graph behind a state (truncated backpropagation through time)."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def _reverse_index(valid: Tensor, lengths: Tensor) -> Tensor:
    """Index (T, B) that reverses each sequence within its own length and leaves padding in place."""
    t = torch.arange(valid.shape[0], device=valid.device).unsqueeze(1)  # (T, 1)
    return torch.where(valid, lengths.unsqueeze(0) - 1 - t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x: (T, B, C), index: (T, B) -> x[index[t, b], b, :]."""
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


class RecurrentLayer(nn.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`.

    forward(x, state=None, lengths=None) -> (output, state)
      x: (B, T, I) if ``batch_first`` else (T, B, I)
      state: (L*D, B, H) (LSTM: a pair (h, c)); ``None`` means zeros. Index ``layer * D + d``.
      lengths: (B,) integer tensor or sequence, each in [1, T]; ``None`` means all T.
      output: (B, T, D*H) (or (T, B, D*H)), the top layer's states, both directions concatenated.
    """

    gate_mult = 1
    n_states = 1
    fold_hh_bias = True  # add b_hh to the precomputed input projection (not for GRU)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0 or num_layers <= 0:
            raise ValueError(
                "input_size, hidden_size and num_layers must be positive, got "
                f"{input_size}, {hidden_size}, {num_layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        gh = self.gate_mult * hidden_size
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * self.num_directions
            for d in range(self.num_directions):
                sfx = self._suffix(layer, d)
                self.register_parameter(f"weight_ih{sfx}", nn.Parameter(torch.empty(gh, in_size)))
                self.register_parameter(
                    f"weight_hh{sfx}", nn.Parameter(torch.empty(gh, hidden_size))
                )
                for name in (f"bias_ih{sfx}", f"bias_hh{sfx}"):
                    self.register_parameter(name, nn.Parameter(torch.empty(gh)) if bias else None)
        self.reset_parameters()

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    @property
    def output_size(self) -> int:
        """Feature size of the output: ``num_directions * hidden_size``."""
        return self.num_directions * self.hidden_size

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as ``torch.nn`` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    def weights(
        self, layer: int, direction: int
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction (0 fwd, 1 reverse)."""
        sfx = self._suffix(layer, direction)
        return tuple(
            getattr(self, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )  # type: ignore[return-value]

    def _step(
        self, gx: Tensor, state: tuple[Tensor, ...], w_hh: Tensor, b_hh: Tensor | None
    ) -> tuple[Tensor, ...]:
        """One time step: gx (B, G*H), state tuple of (B, H) -> new state tuple."""
        raise NotImplementedError

    # ----------------------------------------------------------------- checks
    def _check_inputs(
        self, x: Tensor, state: State | None, lengths: Tensor | Sequence[int] | None
    ) -> tuple[tuple[Tensor, ...] | None, Tensor | None]:
        name = type(self).__name__
        check_dtype(x, FLOAT_DTYPES, f"{name} input")
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ShapeError(
                f"{name} input: expected {layout} with I={self.input_size}, got shape "
                f"{tuple(x.shape)}; for one unbatched sequence add a batch dimension"
            )
        batch, steps = (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])
        if steps == 0:
            raise ShapeError(f"{name} input: the sequence is empty (T=0), shape {tuple(x.shape)}")
        states: tuple[Tensor, ...] | None = None
        if state is not None:
            if self.n_states == 2:
                if not (isinstance(state, tuple | list) and len(state) == 2):
                    raise TypeError(f"{name} state must be a pair (h0, c0) or None")
                states = tuple(state)
                names = ("h0", "c0")
            else:
                if not isinstance(state, Tensor):
                    raise TypeError(f"{name} state must be a tensor h0 or None, got {type(state)}")
                states = (state,)
                names = ("h0",)
            want = (self.num_layers * self.num_directions, batch, self.hidden_size)
            for s, n in zip(states, names, strict=True):
                if tuple(s.shape) != want:
                    raise ShapeError(
                        f"{name} {n}: expected (num_layers*num_directions, B, H) = {want}, "
                        f"got shape {tuple(s.shape)}"
                    )
        lens: Tensor | None = None
        if lengths is not None:
            lens = torch.as_tensor(lengths, device=x.device)
            if lens.dtype.is_floating_point or lens.dtype == torch.bool:
                raise TypeError(f"{name} lengths must be integers, got dtype {lens.dtype}")
            if tuple(lens.shape) != (batch,):
                raise ShapeError(
                    f"{name} lengths: expected shape ({batch},), got {tuple(lens.shape)}"
                )
            lo, hi = int(lens.min()), int(lens.max())
            if lo < 1 or hi > steps:
                raise ValueError(
                    f"{name} lengths must lie in [1, {steps}] (T of the input), got min {lo} "
                    f"and max {hi}"
                )
            lens = None if lo == steps else lens.long()
        return states, lens

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, State]:
        states, lens = self._check_inputs(x, state, lengths)
        if self.batch_first:
            x = x.transpose(0, 1)  # (T, B, I)
        steps, batch = x.shape[0], x.shape[1]
        valid = None
        rev_index = None
        if lens is not None:
            valid = torch.arange(steps, device=x.device).unsqueeze(1) < lens.unsqueeze(0)  # (T, B)
            rev_index = _reverse_index(valid, lens)
        zeros = x.new_zeros(batch, self.hidden_size)
        finals: list[tuple[Tensor, ...]] = []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                init = (
                    tuple(s[k] for s in states) if states is not None else (zeros,) * self.n_states
                )
                seq = layer_input
                if d == 1:
                    seq = seq.flip(0) if rev_index is None else _gather_time(seq, rev_index)
                out, final = self._run_direction(seq, init, layer, d, valid)
                if d == 1:
                    out = out.flip(0) if rev_index is None else _gather_time(out, rev_index)
                outs.append(out)
                finals.append(final)
            layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        stacked = tuple(torch.stack([f[i] for f in finals]) for i in range(self.n_states))
        return output, (stacked if self.n_states == 2 else stacked[0])

    def _run_direction(
        self,
        seq: Tensor,
        state: tuple[Tensor, ...],
        layer: int,
        direction: int,
        valid: Tensor | None,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run one direction of one layer over seq (T, B, I) -> (outputs (T, B, H), final state)."""
        w_ih, w_hh, b_ih, b_hh = self.weights(layer, direction)
        if self.fold_hh_bias and b_hh is not None:
            b_ih, b_hh = b_ih + b_hh, None  # type: ignore[operator]
        gx = F.linear(seq, w_ih, b_ih)  # (T, B, G*H): every time step in one matmul
        outs = []
        # unbind, not gx[t]: its backward is one stack instead of T full-size scatters
        for t, gx_t in enumerate(gx.unbind(0)):
            new = self._step(gx_t, state, w_hh, b_hh)
            if valid is not None:
                m = valid[t].unsqueeze(1)  # (B, 1)
                new = tuple(torch.where(m, n, s) for n, s in zip(new, state, strict=True))
            state = new
            outs.append(state[0])
        out = torch.stack(outs)  # (T, B, H)
        if valid is not None:
            out = out * valid.unsqueeze(-1).to(out.dtype)
        return out, state


class RNN(RecurrentLayer):
    """Elman RNN layer, ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Same constructor as :class:`RecurrentLayer` plus ``nonlinearity`` ("tanh" or "relu").
    """

    gate_mult = 1
    n_states = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be one of {sorted(NONLINEARITIES)}, got {nonlinearity!r}"
            )
        self.nonlinearity = nonlinearity
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional
        )

    def _step(
        self, gx: Tensor, state: tuple[Tensor, ...], w_hh: Tensor, b_hh: Tensor | None
    ) -> tuple[Tensor, ...]:
        return (rnn_step(gx, state[0], w_hh, b_hh, self.nonlinearity),)


class LSTM(RecurrentLayer):
    """LSTM layer (gate order i, f, g, o); the cell update runs in ``kernels.lstm_cell``.

    State is a pair ``(h, c)``, each (L*D, B, H).
    """

    gate_mult = 4
    n_states = 2

    def _step(
        self, gx: Tensor, state: tuple[Tensor, ...], w_hh: Tensor, b_hh: Tensor | None
    ) -> tuple[Tensor, ...]:
        return lstm_step(gx, state[0], state[1], w_hh, b_hh)


class GRU(RecurrentLayer):
    """GRU layer (gate order r, z, n, as ``torch.nn.GRU``)."""

    gate_mult = 3
    n_states = 1
    fold_hh_bias = False  # b_hn sits inside the reset gate's product

    def _step(
        self, gx: Tensor, state: tuple[Tensor, ...], w_hh: Tensor, b_hh: Tensor | None
    ) -> tuple[Tensor, ...]:
        return (gru_step(gx, state[0], w_hh, b_hh),)


CELL_TYPES: dict[str, type[RecurrentLayer]] = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


def layer_class(cell: str) -> type[RecurrentLayer]:
    """The layer class for ``cell`` = "rnn", "gru" or "lstm"."""
    if cell not in CELL_TYPES:
        raise ValueError(f"cell must be one of {sorted(CELL_TYPES)}, got {cell!r}")
    return CELL_TYPES[cell]
