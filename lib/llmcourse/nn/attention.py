"""Scaled dot-product attention and multi-head attention (self and cross, with a KV cache).

The attention itself runs in :func:`llmcourse.kernels.attention` (FlashAttention in Triton on
CUDA, PyTorch elsewhere); this module projects to heads and back and manages the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcourse import kernels
from llmcourse.nn.kv_cache import LayerKVCache
from llmcourse.nn.layers import Dropout, Linear
from llmcourse.utils import ShapeError

__all__ = ["scaled_dot_product_attention", "attention_weights", "MultiHeadAttention"]


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v.

    q: (B, H, Tq, D), k and v: (B, H, Tk, D) -> (B, H, Tq, D).
    ``causal``: query i sees keys j <= i (with Tq < Tk the queries are the last Tq positions,
    the KV-cache case). ``key_padding_mask`` (B, Tk) bool: True = real token, False = padding
    that no query may see. ``scale`` defaults to 1/sqrt(D). A query that may see no key gets an
    all-zero output. Equals ``torch.nn.functional.scaled_dot_product_attention`` with
    ``is_causal`` / a boolean ``attn_mask``. Inputs are checked by :mod:`llmcourse.kernels`
    (errors name the expected and actual shapes).
    """
    return kernels.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale)


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The attention probabilities (B, H, Tq, Tk): row i = how much query i attends to each key.

    For plots and teaching (the fast path never builds this matrix). The masks follow
    :func:`scaled_dot_product_attention`: masked keys get probability 0, and a query that may
    see no key gets an all-zero row.
    """
    kernels.checks.validate_attention(q, k, k, key_padding_mask, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    allowed = kernels.reference.attention_allowed_mask(
        q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=key_padding_mask, device=q.device
    )
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows: NaN -> 0


class MultiHeadAttention(nn.Module):
    """Multi-head attention: h heads of size d_model/h attend in parallel, then mix.

    Self-attention (``cross_attention=False``) projects q, k, v from the same input with one
    fused matmul; cross-attention projects q from ``x`` and k, v from ``memory`` (the encoder
    output, width ``kv_dim``). State dict (biases only with ``bias=True``):

    * self: ``qkv.weight`` (3*d_model, d_model), rows [W_q; W_k; W_v]; ``qkv.bias`` (3*d_model,)
    * cross: ``q.weight`` (d_model, d_model); ``kv.weight`` (2*d_model, kv_dim), rows [W_k; W_v]
    * both: ``out.weight`` (d_model, d_model), ``out.bias``

    Inside each W_q/W_k/W_v, rows ``h*D .. (h+1)*D - 1`` belong to head h (D = d_model/h), the
    layout of ``torch.nn.MultiheadAttention.in_proj_weight`` and of Hugging Face models.
    ``dropout`` is applied to the output (residual dropout, as in Vaswani et al. 2017); the
    attention probabilities are not dropped.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        bias: bool = True,
        causal: bool = False,
        cross_attention: bool = False,
        kv_dim: int | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(
                f"MultiHeadAttention: d_model={d_model} is not divisible by n_heads={n_heads}"
            )
        if kv_dim is not None and not cross_attention:
            raise ValueError("MultiHeadAttention: kv_dim is only used with cross_attention=True")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.causal = causal
        self.cross_attention = cross_attention
        self.kv_dim = kv_dim if kv_dim is not None else d_model
        self.scale = scale
        if cross_attention:
            self.q = Linear(d_model, d_model, bias=bias)
            self.kv = Linear(self.kv_dim, 2 * d_model, bias=bias)
        else:
            self.qkv = Linear(d_model, 3 * d_model, bias=bias)
        self.out = Linear(d_model, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def _heads(self, t: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(B, T, n*C) -> n tensors (B, H, T, D) (views, no copy)."""
        b, s, _ = t.shape
        t = t.view(b, s, n, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return t.unbind(0)

    def _memory_kv(self, memory: torch.Tensor | None, cache: LayerKVCache | None):
        if cache is not None and cache.cross is not None:
            return cache.cross
        if memory is None:
            raise ValueError("MultiHeadAttention: cross-attention needs memory (B, S, kv_dim)")
        if memory.dim() != 3 or memory.shape[-1] != self.kv_dim:
            raise ShapeError(
                f"MultiHeadAttention: memory must have shape (B, S, {self.kv_dim}), got {tuple(memory.shape)}"
            )
        k, v = self._heads(self.kv(memory), 2)
        if cache is not None:
            cache.cross = (k, v)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        kv_cache: LayerKVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model).

        memory: (B, S, kv_dim), cross-attention only (may be omitted once ``kv_cache`` holds it).
        key_padding_mask: (B, Tk) bool, True = real token; Tk = S for cross-attention, else the
        number of keys (cached + new). causal: overrides the constructor's default.
        kv_cache: this layer's :class:`LayerKVCache`; new keys/values are appended to it.
        rope: (cos, sin) of the new tokens' positions, (T, D/2) or (B, T, D/2), to rotate q
        and k (self-attention only).
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ShapeError(
                f"MultiHeadAttention: x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}"
            )
        b, t, c = x.shape
        causal = self.causal if causal is None else causal
        if self.cross_attention:
            if rope is not None:
                raise ValueError("MultiHeadAttention: rope is for self-attention only")
            (q,) = self._heads(self.q(x), 1)
            k, v = self._memory_kv(memory, kv_cache)
        else:
            if memory is not None:
                raise ValueError(
                    "MultiHeadAttention: memory given to a self-attention layer; "
                    "build it with cross_attention=True for encoder-decoder attention"
                )
            q, k, v = self._heads(self.qkv(x), 3)  # each (B, H, T, D)
            if rope is not None:
                q = kernels.apply_rope(q, *rope)
                k = kernels.apply_rope(k, *rope)
            if kv_cache is not None:
                k, v = kv_cache.update(k, v)  # (B, H, cached + T, D)
        if causal and t == 1 and k.shape[2] >= 1:
            causal = False  # a single newest query may see every key: no mask needed
        y = scaled_dot_product_attention(
            q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=self.scale
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, d_model)
        return self.dropout(self.out(y))

    def load_projections(
        self,
        w_q: torch.Tensor,
        w_k: torch.Tensor,
        w_v: torch.Tensor,
        w_out: torch.Tensor,
        b_q: torch.Tensor | None = None,
        b_k: torch.Tensor | None = None,
        b_v: torch.Tensor | None = None,
        b_out: torch.Tensor | None = None,
    ) -> None:
        """Copy separate W_q, W_k, W_v, W_out (out, in) and biases into the fused layout.

        For loading checkpoints that store the projections separately (e.g. BERT's
        ``query``/``key``/``value``/``output.dense``).
        """
        with torch.no_grad():
            if self.cross_attention:
                pairs = [(self.q, [w_q], [b_q]), (self.kv, [w_k, w_v], [b_k, b_v])]
            else:
                pairs = [(self.qkv, [w_q, w_k, w_v], [b_q, b_k, b_v])]
            pairs.append((self.out, [w_out], [b_out]))
            for layer, ws, bs in pairs:
                w = torch.cat(ws, dim=0)
                if w.shape != layer.weight.shape:
                    raise ShapeError(
                        f"load_projections: stacked weights have shape {tuple(w.shape)}, "
                        f"expected {tuple(layer.weight.shape)}"
                    )
                layer.weight.copy_(w)
                if layer.bias is None and any(bb is not None for bb in bs):
                    raise ValueError("load_projections: this layer has no biases (bias=False)")
                if layer.bias is not None:
                    if any(bb is None for bb in bs):
                        raise ValueError("load_projections: this layer has biases; pass every b_*")
                    layer.bias.copy_(torch.cat(bs, dim=0))

    def extra_repr(self) -> str:
        kind = "cross" if self.cross_attention else "self"
        return f"d_model={self.d_model}, n_heads={self.n_heads}, {kind}, causal={self.causal}"
