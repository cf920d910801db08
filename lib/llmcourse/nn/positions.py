"""Position information for attention: sinusoidal, learned and rotary (RoPE).

* :class:`SinusoidalPositions` (Vaswani et al. 2017) and :class:`LearnedPositions` (GPT-2,
  BERT) give a vector per position that is added to the token embeddings.
* :class:`RotaryEmbedding` (RoPE, Su et al. 2021; LLaMA) rotates queries and keys instead,
  so that q . k depends on the positions only through their difference.

All three accept arbitrary integer positions, shape (T,) or (B, T), e.g. for left-padded
batches or a KV cache that starts at an offset.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmcourse import kernels
from llmcourse.utils import ShapeError, check_dtype

__all__ = ["sinusoidal_encoding", "SinusoidalPositions", "LearnedPositions", "RotaryEmbedding"]

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_positions(positions: torch.Tensor, who: str) -> None:
    check_dtype(positions, _INDEX_DTYPES, f"{who} positions (integer token positions)")
    if positions.dim() not in (1, 2):
        raise ShapeError(
            f"{who}: positions must have shape (T,) or (B, T), got {tuple(positions.shape)}"
        )


def sinusoidal_encoding(
    positions: torch.Tensor, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / base^(2i/dim)), PE[pos, 2i+1] = cos(pos / base^(2i/dim)).

    ``i`` indexes pairs of dimensions, so PE(pos + k) is a fixed rotation of PE(pos) in each
    pair. positions: (T,) or (B, T) integers -> positions.shape + (dim,). ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_encoding: dim must be even, got {dim}")
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64)
        * (-math.log(base) / dim)
    )  # (dim/2,)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (..., dim/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # interleave sin, cos
    return pe.to(dtype)


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings (no parameters).

    A table for positions ``0 .. max_len-1`` is precomputed (a non-persistent buffer, so it
    is not in the state dict); larger positions are computed on the fly.
    forward(positions (T,) or (B, T)) -> (T, dim) or (B, T, dim).
    """

    def __init__(self, dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        table = sinusoidal_encoding(torch.arange(max_len), dim, base)
        self.register_buffer("table", table, persistent=False)  # (max_len, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        _check_positions(positions, "SinusoidalPositions")
        if positions.numel() and int(positions.max()) < self.table.shape[0]:
            return self.table[positions]
        return sinusoidal_encoding(positions, self.dim, self.base, self.table.dtype)


class LearnedPositions(nn.Module):
    """One trained vector per position (GPT-2, BERT): ``weight`` (max_len, dim).

    Initialised with std 0.02 (GPT-2). Positions at or beyond ``max_len`` have no vector and
    raise an error: learned positions cannot extrapolate.
    forward(positions (T,) or (B, T)) -> (T, dim) or (B, T, dim).
    """

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        _check_positions(positions, "LearnedPositions")
        if positions.numel() and (int(positions.max()) >= self.max_len or int(positions.min()) < 0):
            raise IndexError(
                f"LearnedPositions: positions must be in [0, {self.max_len}), got range "
                f"[{int(positions.min())}, {int(positions.max())}]; learned positions only exist "
                f"up to max_len={self.max_len} (crop the sequence to the model's block size)"
            )
        return self.weight[positions]

    def span(self, start: int, length: int) -> torch.Tensor:
        """Vectors of positions ``start .. start+length-1`` as a view, shape (length, dim)."""
        if start < 0 or start + length > self.max_len:
            raise IndexError(
                f"LearnedPositions: positions {start}..{start + length - 1} are outside "
                f"[0, {self.max_len}); crop the sequence to max_len={self.max_len}"
            )
        return self.weight[start : start + length]

    def extra_repr(self) -> str:
        return f"{self.max_len}, {self.dim}"


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) for heads of size ``head_dim``.

    Rotates each pair (x[..., i], x[..., i + head_dim/2]) of queries and keys by the angle
    pos * base^(-2i/head_dim) (the "rotate half" layout of Hugging Face LLaMA). cos/sin for
    positions ``0 .. max_positions-1`` are cached (non-persistent buffers); other positions
    are computed on the fly. No parameters.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, max_positions: int = 4096) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        cos, sin = kernels.rope_cos_sin(torch.arange(max_positions), head_dim, base)
        self.register_buffer("cos_table", cos, persistent=False)  # (max_positions, head_dim/2)
        self.register_buffer("sin_table", sin, persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for ``positions`` (T,) or (B, T) -> each positions.shape + (head_dim/2,)."""
        _check_positions(positions, "RotaryEmbedding")
        if (
            positions.numel()
            and 0 <= int(positions.min())
            and int(positions.max()) < self.cos_table.shape[0]
        ):
            return self.cos_table[positions], self.sin_table[positions]
        return kernels.rope_cos_sin(positions, self.head_dim, self.base, dtype=self.cos_table.dtype)

    def span(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions ``start .. start+length-1``, each (length, head_dim/2)."""
        if 0 <= start and start + length <= self.cos_table.shape[0]:
            return self.cos_table[start : start + length], self.sin_table[start : start + length]
        return self.cos_sin(torch.arange(start, start + length, device=self.cos_table.device))

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Apply the rotation to x (B, H, T, head_dim); cos/sin (T, head_dim/2) or (B, T, head_dim/2)."""
        return kernels.apply_rope(x, cos, sin)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k (B, H, T, head_dim) for token ``positions`` (T,) or (B, T)."""
        for name, t in (("q", q), ("k", k)):
            if t.dim() != 4 or t.shape[-1] != self.head_dim:
                raise ShapeError(
                    f"RotaryEmbedding: {name} must have shape (B, H, T, {self.head_dim}), got {tuple(t.shape)}"
                )
        cos, sin = self.cos_sin(positions)
        return kernels.apply_rope(q, cos, sin), kernels.apply_rope(k, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
