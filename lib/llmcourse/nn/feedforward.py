"""The position-wise feed-forward network (FFN) of a Transformer block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.nn.layers import Dropout, Linear

__all__ = ["FeedForward", "ACTIVATIONS"]

#: Supported values of ``FeedForward(activation=...)``.
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu")


class FeedForward(nn.Module):
    """Two-layer MLP applied to every position independently.

    * ``"relu"`` / ``"gelu"`` / ``"gelu_tanh"`` / ``"silu"``: ``fc2(act(fc1(x)))``, the
      original Transformer (ReLU), BERT (GELU) and GPT-2 (tanh-approximated GELU) FFN.
    * ``"swiglu"``: ``fc2(silu(x W_gate^T) * (x W_up^T))`` (LLaMA). ``fc1`` holds the gate and
      up projections stacked: ``fc1.weight`` rows ``[:hidden]`` are W_gate, ``[hidden:]`` are
      W_up, so one matmul computes both.

    State dict: ``fc1.weight`` (hidden or 2*hidden, dim), ``fc1.bias``, ``fc2.weight``
    (dim, hidden), ``fc2.bias`` (biases only with ``bias=True``).
    Input (*, dim) -> (*, dim). ``dropout`` is applied to the output.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        activation: str = "gelu",
        *,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"FeedForward: activation must be one of {ACTIVATIONS}, got {activation!r}"
            )
        self.activation = activation
        self.hidden = hidden
        n_in = 2 * hidden if activation == "swiglu" else hidden
        self.fc1 = Linear(dim, n_in, bias=bias)
        self.fc2 = Linear(hidden, dim, bias=bias)
        self.dropout = Dropout(dropout)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            gate, up = h.split(self.hidden, dim=-1)
            return F.silu(gate) * up
        if self.activation == "relu":
            return F.relu(h)
        if self.activation == "gelu":
            return F.gelu(h)
        if self.activation == "gelu_tanh":
            return F.gelu(h, approximate="tanh")
        return F.silu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self._act(self.fc1(x))))  # (*, dim)
