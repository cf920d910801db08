"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017).

The encoder reads the source sequence with (unmasked) self-attention; the decoder reads the
target prefix with masked self-attention, attends to the encoder output with cross-attention,
and predicts the next target token. Each decoder layer has three sub-layers, each followed
(post-norm, the paper's layout, ``norm_first=False``) or preceded (pre-norm,
``norm_first=True``) by its own Add & Norm step. Positions are sinusoidal; token embeddings are
multiplied by sqrt(d_model) before the encodings are added.

State-dict names (``N`` = layer index)::

    src_emb.weight, tgt_emb.weight                    (vocab, d_model)
    encoder.N.self_attn.{qkv,out}.{weight,bias}       see MultiHeadAttention
    encoder.N.norm1 / ffn.{fc1,fc2} / norm2
    decoder.N.self_attn / norm1 / cross_attn.{q,kv,out} / norm2 / ffn / norm3
    encoder_norm, decoder_norm                        pre-norm only (final LayerNorms)
    out_bias                                          tie_output=True: logits = x tgt_emb^T + out_bias
    out_proj.weight, out_proj.bias                    tie_output=False
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.models.gpt import LMOutput, check_token_ids, lm_loss
from llmcourse.nn import (
    Dropout,
    Embedding,
    FeedForward,
    KVCache,
    LayerKVCache,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    SinusoidalPositions,
)
from llmcourse.utils import ShapeError

__all__ = ["TransformerConfig", "Transformer", "EncoderLayer", "DecoderLayer"]


@dataclass
class TransformerConfig:
    """Hyperparameters of :class:`Transformer`; the defaults are the paper's base model.

    ``norm_first``: False = post-norm (the paper), True = pre-norm. ``activation``: the FFN's
    ("relu" in the paper). ``tie_output``: the output layer reuses the target embedding.
    ``pad_id``: padding token of both vocabularies (masked in attention, ignored in the loss).
    ``max_len``: longest sequence (sizes the position table and the decoding cache).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    dropout: float = 0.1
    max_len: int = 512
    norm_first: bool = False
    activation: str = "relu"
    tie_output: bool = True
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig: d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if self.n_encoder_layers < 0 or self.n_decoder_layers < 1:
            raise ValueError(
                "TransformerConfig: need n_encoder_layers >= 0 and n_decoder_layers >= 1"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> TransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TransformerConfig.from_dict: unknown keys {unknown}")
        return cls(**dict(d))


class EncoderLayer(nn.Module):
    """Self-attention then FFN, each with residual + LayerNorm. (B, S, d_model) -> same.

    Also the layer of BERT (post-norm, GELU, ``eps=1e-12``). ``eps``: the LayerNorms' epsilon.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.0,
        norm_first: bool = False,
        activation: str = "relu",
        bias: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout)
        self.norm1 = LayerNorm(d_model, eps=eps, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, activation, bias=bias, dropout=dropout)
        self.norm2 = LayerNorm(d_model, eps=eps, bias=bias)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, S, d_model); key_padding_mask: (B, S) bool, True = real token."""
        if self.norm_first:
            x = x + self.self_attn(self.norm1(x), key_padding_mask=key_padding_mask)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.self_attn(x, key_padding_mask=key_padding_mask))
        return self.norm2(x + self.ffn(x))


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, FFN: three Add & Norm steps.

    (B, T, d_model) -> same.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.0,
        norm_first: bool = False,
        activation: str = "relu",
        bias: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(
            d_model, n_heads, bias=bias, causal=True, dropout=dropout
        )
        self.norm1 = LayerNorm(d_model, eps=eps, bias=bias)
        self.cross_attn = MultiHeadAttention(
            d_model, n_heads, bias=bias, cross_attention=True, dropout=dropout
        )
        self.norm2 = LayerNorm(d_model, eps=eps, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, activation, bias=bias, dropout=dropout)
        self.norm3 = LayerNorm(d_model, eps=eps, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model) target states; memory: (B, S, d_model) encoder output;
        memory_padding_mask: (B, S) bool, True = real source token."""
        cross = dict(key_padding_mask=memory_padding_mask, kv_cache=kv_cache)
        if self.norm_first:
            x = x + self.self_attn(self.norm1(x), kv_cache=kv_cache)
            x = x + self.cross_attn(self.norm2(x), memory, **cross)
            return x + self.ffn(self.norm3(x))
        x = self.norm1(x + self.self_attn(x, kv_cache=kv_cache))
        x = self.norm2(x + self.cross_attn(x, memory, **cross))
        return self.norm3(x + self.ffn(x))


class Transformer(nn.Module):
    """Encoder-decoder Transformer for sequence-to-sequence tasks (e.g. translation).

    Training uses teacher forcing: :meth:`forward` gets the whole target prefix at once and
    predicts every next token in parallel. :meth:`greedy_decode` generates with a KV cache.
    Initialisation: Xavier-uniform linear weights, zero biases, embeddings N(0, 1/d_model)
    (so that embedding * sqrt(d_model) has unit variance).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        layer_args = dict(dropout=c.dropout, norm_first=c.norm_first, activation=c.activation)
        self.src_emb = Embedding(c.src_vocab_size, c.d_model)
        self.tgt_emb = Embedding(c.tgt_vocab_size, c.d_model)
        self.positions = SinusoidalPositions(c.d_model, max_len=c.max_len)
        self.drop = Dropout(c.dropout)
        self.encoder = nn.ModuleList(
            EncoderLayer(c.d_model, c.n_heads, c.d_ff, **layer_args)
            for _ in range(c.n_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(c.d_model, c.n_heads, c.d_ff, **layer_args)
            for _ in range(c.n_decoder_layers)
        )
        if c.norm_first:  # pre-norm leaves the residual stream un-normalised: add final norms
            self.encoder_norm = LayerNorm(c.d_model)
            self.decoder_norm = LayerNorm(c.d_model)
        if c.tie_output:  # logits = x @ tgt_emb.weight^T + out_bias
            self.out_bias = nn.Parameter(torch.zeros(c.tgt_vocab_size))
        else:
            self.out_proj = Linear(c.d_model, c.tgt_vocab_size, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linear weights, zero biases, N(0, 1/d_model) embeddings."""
        if self.config.tie_output:
            nn.init.zeros_(self.out_bias)
        for module in self.modules():
            if isinstance(module, Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Embedding):
                nn.init.normal_(module.weight, std=self.config.d_model**-0.5)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, emb: Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        b, t = ids.shape
        if start + t > self.config.max_len:
            raise ShapeError(
                f"sequence of length {start + t} exceeds max_len={self.config.max_len}; "
                f"raise TransformerConfig.max_len or shorten the input"
            )
        pos = torch.arange(start, start + t, device=ids.device)
        x = emb(ids) * math.sqrt(self.config.d_model) + self.positions(pos)  # (B, T, d_model)
        return self.drop(x)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src: (B, S) ids -> (memory (B, S, d_model), src_padding_mask (B, S) bool, True = real)."""
        check_token_ids(src, "src", self.config.src_vocab_size)
        src_mask = src != self.config.pad_id
        x = self._embed(self.src_emb, src)
        for layer in self.encoder:
            x = layer(x, src_mask)
        if self.config.norm_first:
            x = self.encoder_norm(x)
        return x, src_mask

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_padding_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt: (B, T) target prefix ids (with a cache: only the new ones) ->
        (logits (B, T, tgt_vocab), hidden (B, T, d_model))."""
        check_token_ids(tgt, "tgt", self.config.tgt_vocab_size)
        if (
            memory.dim() != 3
            or memory.shape[0] != tgt.shape[0]
            or memory.shape[2] != self.config.d_model
        ):
            raise ShapeError(
                f"memory: expected shape ({tgt.shape[0]}, S, {self.config.d_model}), got {tuple(memory.shape)}"
            )
        start = 0
        if kv_cache is not None:
            kv_cache.check_batch(tgt.shape[0])
            start = kv_cache.length
        x = self._embed(self.tgt_emb, tgt, start)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, src_padding_mask, None if kv_cache is None else kv_cache[i])
        if self.config.norm_first:
            x = self.decoder_norm(x)
        if self.config.tie_output:
            logits = F.linear(x, self.tgt_emb.weight, self.out_bias)
        else:
            logits = self.out_proj(x)
        return logits, x  # (B, T, tgt_vocab), (B, T, d_model)

    def forward(
        self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None
    ) -> LMOutput:
        """Teacher forcing. src: (B, S); tgt: (B, T) decoder input (BOS + target[:-1]);
        targets: (B, T) (target tokens; pad_id and -100 are ignored) -> LMOutput
        (logits (B, T, tgt_vocab), mean loss or None, hidden (B, T, d_model))."""
        memory, src_mask = self.encode(src)
        logits, hidden = self.decode(tgt, memory, src_mask)
        loss = None
        if targets is not None:
            if targets.shape != tgt.shape:
                raise ShapeError(
                    f"targets: expected shape {tuple(tgt.shape)} (as tgt), got {tuple(targets.shape)}"
                )
            check_token_ids(targets, "targets")
            targets = targets.masked_fill(targets == self.config.pad_id, -100)
            loss = lm_loss(logits, targets)
        return LMOutput(logits=logits, loss=loss, hidden=hidden)

    def new_kv_cache(self, batch_size: int) -> KVCache:
        """An empty decoder cache (self-attention keys/values and encoder memory projections)."""
        return KVCache(self.config.n_decoder_layers, self.config.max_len, batch_size)

    @torch.no_grad()
    def greedy_decode(
        self, src: torch.Tensor, max_new_tokens: int, bos_id: int, eos_id: int | None = None
    ) -> torch.Tensor:
        """Translate by always taking the most likely next token.

        src: (B, S) -> (B, 1 + n) ids starting with ``bos_id``, n <= max_new_tokens. Stops once
        every row has produced ``eos_id``; later positions of finished rows hold ``pad_id``.
        The encoder runs once; the decoder runs one token per step with a KV cache.
        """
        if max_new_tokens + 1 > self.config.max_len:
            raise ValueError(
                f"greedy_decode: 1 + max_new_tokens = {max_new_tokens + 1} exceeds max_len={self.config.max_len}"
            )
        memory, src_mask = self.encode(src)
        b = src.shape[0]
        out = torch.full((b, 1), bos_id, dtype=torch.long, device=src.device)
        cache = self.new_kv_cache(b)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            logits, _ = self.decode(out[:, -1:], memory, src_mask, cache)
            nxt = logits[:, -1].argmax(dim=-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, self.config.pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_id is not None:
                done |= nxt == eos_id
                if bool(done.all()):
                    break
        return out
