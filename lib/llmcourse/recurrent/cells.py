"""Recurrent cells (Elman RNN, LSTM, GRU) and the single-step functions they share with the layers.

The step functions take the *input projection* ``gx = x @ W_ih^T + b_ih`` already computed, so a
layer can project every time step in one matmul before its time loop and call the same step
function a cell uses. Parameter names and gate orders follow ``torch.nn`` (LSTM: i, f, g, o;
GRU: r, z, n), so ``load_state_dict`` of a ``torch.nn.LSTMCell`` works on :class:`LSTMCell`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse import kernels
from llmcourse.utils import ShapeError, check_dtype

__all__ = [
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "rnn_step",
    "lstm_step",
    "gru_step",
    "NONLINEARITIES",
]

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _hidden_projection(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """Return ``gx + h @ w_hh^T (+ b_hh)`` in one fused call.  gx: (B, G*H), h: (B, H)."""
    gates = torch.addmm(gx, h, w_hh.t())
    return gates if b_hh is None else gates + b_hh


def rnn_step(
    gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, nonlinearity: str = "tanh"
) -> Tensor:
    """Elman step ``h' = act(gx + h W_hh^T + b_hh)``.  gx: (B, H), h: (B, H) -> (B, H)."""
    return NONLINEARITIES[nonlinearity](_hidden_projection(gx, h, w_hh, b_hh))


def lstm_step(
    gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> tuple[Tensor, Tensor]:
    """LSTM step; the gate nonlinearities run in :func:`llmcourse.kernels.lstm_cell`.

    gx: (B, 4H) input projection (gate order i, f, g, o), h, c: (B, H) -> (h', c') each (B, H).
    """
    return kernels.lstm_cell(_hidden_projection(gx, h, w_hh, b_hh), c)


def gru_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """GRU step (torch.nn.GRU convention, gate order r, z, n).

    ``r = sigma(x_r + h_r)``, ``z = sigma(x_z + h_z)``, ``n = tanh(x_n + r * h_n)``,
    ``h' = (1 - z) * n + z * h``, where ``x_*`` come from ``gx`` (B, 3H) and ``h_*`` from
    ``h W_hh^T + b_hh``; the reset gate multiplies the hidden part of ``n`` including its bias.
    """
    gh = F.linear(h, w_hh, b_hh)  # (B, 3H)
    x_r, x_z, x_n = gx.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


class _Cell(nn.Module):
    """Shared parameters and checks: ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), biases (G*H,)."""

    gate_mult = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        gh = self.gate_mult * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gh))
            self.bias_hh = nn.Parameter(torch.empty(gh))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as ``torch.nn`` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"

    def _check_input(self, x: Tensor) -> None:
        check_dtype(x, FLOAT_DTYPES, f"{type(self).__name__} input")
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ShapeError(
                f"{type(self).__name__} input: expected (B, {self.input_size}), got shape "
                f"{tuple(x.shape)}; cells take one time step, use the layer for sequences"
            )

    def _check_state(self, s: Tensor, batch: int, name: str) -> None:
        if tuple(s.shape) != (batch, self.hidden_size):
            raise ShapeError(
                f"{type(self).__name__} {name}: expected ({batch}, {self.hidden_size}), "
                f"got shape {tuple(s.shape)}"
            )

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.hidden_size)

    def _project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)


class RNNCell(_Cell):
    """Elman cell ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)`` (or ReLU).

    forward(x (B, I), h (B, H) | None) -> h' (B, H); ``None`` means a zero state.
    """

    gate_mult = 1

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be one of {sorted(NONLINEARITIES)}, got {nonlinearity!r}"
            )
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        self._check_input(x)
        h = self._zeros(x) if h is None else h
        self._check_state(h, x.shape[0], "h")
        return rnn_step(self._project(x), h, self.weight_hh, self.bias_hh, self.nonlinearity)


class LSTMCell(_Cell):
    """LSTM cell (gate order i, f, g, o, as ``torch.nn.LSTMCell``).

    forward(x (B, I), (h, c) each (B, H) | None) -> (h', c').
    """

    gate_mult = 4

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        if state is None:
            state = (self._zeros(x), self._zeros(x))
        h, c = state
        self._check_state(h, x.shape[0], "h")
        self._check_state(c, x.shape[0], "c")
        return lstm_step(self._project(x), h, c, self.weight_hh, self.bias_hh)


class GRUCell(_Cell):
    """GRU cell (gate order r, z, n, as ``torch.nn.GRUCell``).

    forward(x (B, I), h (B, H) | None) -> h' (B, H).
    """

    gate_mult = 3

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        self._check_input(x)
        h = self._zeros(x) if h is None else h
        self._check_state(h, x.shape[0], "h")
        return gru_step(self._project(x), h, self.weight_hh, self.bias_hh)
