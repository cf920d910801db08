"""A key/value cache for incremental (token-by-token) decoding.

At generation step t a decoder only needs the query of the new token, but the keys and values
of every earlier token. Recomputing those each step costs O(t) extra work per layer; the cache
stores them instead. Buffers are preallocated to ``max_len`` positions and filled in place, so
a step copies only the new token's keys and values. Inference only: write into a cache under
``torch.no_grad()``.
"""

from __future__ import annotations

import torch

from llmcourse.utils import ShapeError

__all__ = ["KVCache", "LayerKVCache"]


class LayerKVCache:
    """Cached keys and values of one attention layer.

    ``k``/``v``: (B, H, max_len, D) buffers, of which the first ``length`` positions are filled
    (allocated on the first :meth:`update`, with that call's dtype and device).
    ``cross``: the (k, v) of a cross-attention layer's encoder memory, computed once per input.
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H, T, D) and return all cached keys and values (B, H, length, D)."""
        if k.shape != v.shape or k.dim() != 4:
            raise ShapeError(
                f"KVCache.update: k and v must have the same shape (B, H, T, D), got "
                f"k {tuple(k.shape)} and v {tuple(v.shape)}"
            )
        b, h, t, d = k.shape
        if self.k is None:
            self.k = k.new_zeros(b, h, self.max_len, d)
            self.v = v.new_zeros(b, h, self.max_len, d)
        elif (b, h, d) != (self.k.shape[0], self.k.shape[1], self.k.shape[3]):
            raise ShapeError(
                f"KVCache.update: cache holds (B, H, *, D) = {tuple(self.k.shape[:2])} + "
                f"(*, {self.k.shape[3]}), got k of shape {tuple(k.shape)}; create the cache with "
                f"the batch size you decode with"
            )
        end = self.length + t
        if end > self.max_len:
            raise ValueError(
                f"KVCache is full: it holds {self.length} of max_len={self.max_len} positions and "
                f"cannot take {t} more; reset() it or create a larger cache"
            )
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Forget every cached position (the buffers are kept for reuse)."""
        self.length = 0
        self.cross = None

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (B_new,) in that order (beam search); B may change."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)
        if self.cross is not None:
            self.cross = (
                self.cross[0].index_select(0, index),
                self.cross[1].index_select(0, index),
            )


class KVCache:
    """The caches of all ``n_layers`` attention layers of a model; ``cache[i]`` is layer i's.

    ``length`` is the number of positions cached so far, i.e. the position of the next token.
    Create it with the model's ``new_kv_cache(batch_size)`` rather than by hand.
    """

    def __init__(self, n_layers: int, max_len: int, batch_size: int | None = None) -> None:
        if n_layers < 1 or max_len < 1:
            raise ValueError(
                f"KVCache: n_layers and max_len must be >= 1, got {n_layers}, {max_len}"
            )
        self.max_len = max_len
        self.batch_size = batch_size
        self.layers = [LayerKVCache(max_len) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def reset(self) -> None:
        """Empty every layer's cache."""
        for layer in self.layers:
            layer.reset()

    def reorder(self, index: torch.Tensor) -> None:
        """Select and reorder batch rows in every layer (beam search): index (B_new,) long."""
        for layer in self.layers:
            layer.reorder(index)
        self.batch_size = int(index.numel())

    def check_batch(self, batch_size: int) -> None:
        """Raise if the cache was made for a different batch size."""
        if self.batch_size is not None and batch_size != self.batch_size:
            raise ShapeError(
                f"KVCache was created for batch size {self.batch_size}, got a batch of "
                f"{batch_size}; create it with new_kv_cache({batch_size})"
            )

    def __repr__(self) -> str:
        return f"KVCache(n_layers={len(self.layers)}, length={self.length}, max_len={self.max_len})"
