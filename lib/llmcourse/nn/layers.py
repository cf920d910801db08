"""Basic layers written out: Linear, Embedding, LayerNorm, RMSNorm, GELU, SiLU, Dropout.

Each layer holds the same parameters, under the same names, as its ``torch.nn`` counterpart
(``weight``, ``bias``), so weights move between them with ``load_state_dict`` and the outputs
agree exactly. Normalisation goes through :mod:`llmcourse.kernels` (Triton on CUDA, plain
PyTorch elsewhere).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse import kernels
from llmcourse.utils import ShapeError, check_dtype

__all__ = ["Linear", "Embedding", "LayerNorm", "RMSNorm", "GELU", "SiLU", "Dropout", "gelu", "silu"]

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_last_dim(x: torch.Tensor, size: int, name: str, layer: str) -> None:
    if x.dim() == 0 or x.shape[-1] != size:
        raise ShapeError(
            f"{layer}: {name} must have last dimension {size} (shape (*, {size})), "
            f"got shape {tuple(x.shape)}"
        )


class Linear(nn.Module):
    """y = x W^T + b.

    Parameters: ``weight`` (out_features, in_features), ``bias`` (out_features,) or absent.
    Initialised like ``torch.nn.Linear``: uniform in +-1/sqrt(in_features).
    Input (*, in_features) -> output (*, out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.in_features, "input", "Linear")
        return F.linear(x, self.weight, self.bias)  # (*, out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(nn.Module):
    """A lookup table: row ``i`` of ``weight`` (num_embeddings, embedding_dim) is token ``i``'s vector.

    Initialised like ``torch.nn.Embedding``: standard normal. Input: integer ids of any shape
    (*,) -> output (*, embedding_dim).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_dtype(ids, _INDEX_DTYPES, "Embedding ids (token indices; convert with .long())")
        return F.embedding(ids, self.weight)  # (*, embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(nn.Module):
    """Normalise the last dimension to zero mean, unit variance, then scale and shift.

    y = (x - mean) / sqrt(var + eps) * weight + bias, with the biased variance, as
    ``torch.nn.LayerNorm(normalized_shape)``. Parameters ``weight`` (dim,) = 1 and
    ``bias`` (dim,) = 0 (``bias=False`` drops it). Input (*, dim) -> (*, dim).
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.dim, "input", "LayerNorm")
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """Scale the last dimension by its root mean square: y = x / sqrt(mean(x^2) + eps) * weight.

    No mean subtraction and no bias (LLaMA's norm), as ``torch.nn.RMSNorm(dim, eps)``.
    Parameter ``weight`` (dim,) = 1. Input (*, dim) -> (*, dim).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.dim, "input", "RMSNorm")
        return kernels.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(x) = x * Phi(x). ``approximate="tanh"`` is GPT-2's
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return F.gelu(x, approximate=approximate)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish): x * sigmoid(x)."""
    return F.silu(x)


class GELU(nn.Module):
    """Module form of :func:`gelu` (matches ``torch.nn.GELU(approximate=...)``)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(nn.Module):
    """Module form of :func:`silu` (matches ``torch.nn.SiLU``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class Dropout(nn.Module):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale the
    survivors by 1 / (1 - p) so the expected value is unchanged; in eval mode, the identity."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p)  # 1 = kept, 0 = dropped
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
