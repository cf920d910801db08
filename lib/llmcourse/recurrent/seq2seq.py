"""Encoder-decoder (seq2seq) model with optional attention, trained with teacher forcing.

Data layout: ``src`` (B, S) and ``tgt`` (B, T) are padded id tensors (``pad_id``, right padding).
``tgt`` starts with ``bos_id`` and ends with ``eos_id``; the model reads ``tgt[:, :-1]`` and
predicts ``tgt[:, 1:]``.

The decoder (Bahdanau ordering) at output step t, given the previous token y and state s:

    c_t, a_t = attention(query = s_{t-1}[top layer], keys = values = encoder outputs)
    s_t      = RNN([embed(y_{t-1}); c_t], s_{t-1})
    logits_t = W_out [s_t[top]; c_t; embed(y_{t-1})]

Without attention ``c_t`` is the same fixed vector at every step, the encoder's final state
(both directions concatenated): the whole source must squeeze through it (the bottleneck).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llmcourse import kernels
from llmcourse.recurrent.attention import (
    AdditiveAttention,
    Attention,
    DotAttention,
    GeneralAttention,
    check_mask,
)
from llmcourse.recurrent.decoding import DecodeResult, beam_search, greedy_decode
from llmcourse.recurrent.layers import LSTM, State, layer_class
from llmcourse.utils import ShapeError, check_dtype

__all__ = [
    "EncoderOutput",
    "DecoderMemory",
    "Encoder",
    "Decoder",
    "Seq2Seq",
    "Seq2SeqOutput",
    "make_attention",
]

ATTENTION_TYPES = ("additive", "dot", "general")


def _check_ids(ids: Tensor, name: str) -> None:
    check_dtype(ids, (torch.int64, torch.int32), name)
    if ids.dim() != 2:
        raise ShapeError(f"{name}: expected (B, T) token ids, got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ShapeError(f"{name}: the sequences are empty, shape {tuple(ids.shape)}")


@dataclass
class EncoderOutput:
    """What the encoder hands the decoder.

    outputs (B, S, C) every source position (C = directions * hidden); mask (B, S) bool, True =
    real token; summary (B, C) the top layer's final state, directions concatenated.
    """

    outputs: Tensor
    mask: Tensor
    summary: Tensor


@dataclass
class DecoderMemory:
    """Encoder output plus the attention's prepared keys; fixed during decoding."""

    outputs: Tensor
    mask: Tensor
    summary: Tensor
    prepared: Tensor | None

    def index_select(self, index: Tensor) -> DecoderMemory:
        """Reorder / repeat batch entries (used to expand a batch into beams)."""
        return DecoderMemory(
            self.outputs.index_select(0, index),
            self.mask.index_select(0, index),
            self.summary.index_select(0, index),
            None if self.prepared is None else self.prepared.index_select(0, index),
        )


class Encoder(nn.Module):
    """Embedding + (bidirectional) RNN / GRU / LSTM over the source ids.

    forward(src (B, S) long, mask (B, S) bool | None) -> EncoderOutput; the mask defaults to
    ``src != pad_id`` and must be right padding (every row True then False).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: str = "gru",
        bidirectional: bool = False,
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = layer_class(cell)(
            embed_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout,
            bidirectional=bidirectional,
        )
        self.drop = nn.Dropout(dropout)

    @property
    def output_size(self) -> int:
        """Feature size C of each encoder output: directions * hidden_size."""
        return self.rnn.output_size

    def forward(self, src: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        _check_ids(src, "src")
        if mask is None:
            mask = src != self.pad_id
        check_mask(mask, src.shape[0], src.shape[1], "Encoder")
        lengths = mask.sum(dim=1)  # (B,)
        steps = torch.arange(src.shape[1], device=src.device)
        if not torch.equal(mask, steps.unsqueeze(0) < lengths.unsqueeze(1)):
            raise ValueError(
                "Encoder mask: padding must be on the right (each row True...True False...False)"
            )
        outputs, state = self.rnn(self.drop(self.embedding(src)), lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
        rnn = self.rnn
        top = h.view(rnn.num_layers, rnn.num_directions, src.shape[0], rnn.hidden_size)[-1]
        summary = top.transpose(0, 1).reshape(src.shape[0], rnn.output_size)  # (B, D*H)
        return EncoderOutput(outputs, mask, summary)


def make_attention(
    kind: str | None, query_size: int, key_size: int, attn_size: int | None = None
) -> Attention | None:
    """Attention module by name: "additive", "dot", "general" or None (no attention)."""
    if kind is None:
        return None
    if kind == "additive":
        return AdditiveAttention(query_size, key_size, attn_size or query_size)
    if kind == "dot":
        if query_size != key_size:
            raise ValueError(
                f"dot attention needs query_size == key_size, got {query_size} and {key_size}; "
                "use 'general' attention or match the decoder hidden size to the encoder output"
            )
        return DotAttention(query_size)
    if kind == "general":
        return GeneralAttention(query_size, key_size)
    raise ValueError(f"attention must be one of {ATTENTION_TYPES} or None, got {kind!r}")


class Decoder(nn.Module):
    """Recurrent decoder, with attention over the encoder outputs or (``attention=None``) only
    the encoder's final state as a fixed context.

    ``context_size`` is the encoder's output size C. The initial state is
    ``tanh(W_bridge summary)`` for every layer (an LSTM's cell state starts at zero).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_size: int,
        context_size: int,
        num_layers: int = 1,
        cell: str = "gru",
        attention: Attention | None = None,
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if attention is not None and (
            attention.query_size != hidden_size or attention.key_size != context_size
        ):
            raise ValueError(
                f"attention expects queries of size {attention.query_size} and keys of size "
                f"{attention.key_size}, but the decoder hidden size is {hidden_size} and the "
                f"encoder output size is {context_size}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.bridge = nn.Linear(context_size, num_layers * hidden_size)
        self.rnn = layer_class(cell)(
            embed_dim + context_size, hidden_size, num_layers, batch_first=True, dropout=dropout
        )
        self.attention = attention
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size + context_size + embed_dim, vocab_size)

    def start(self, enc: EncoderOutput) -> tuple[State, DecoderMemory]:
        """Initial decoder state and the memory every step reads."""
        if enc.summary.shape[-1] != self.context_size:
            raise ShapeError(
                f"Decoder: encoder output size {enc.summary.shape[-1]} != context_size "
                f"{self.context_size}"
            )
        batch = enc.summary.shape[0]
        h0 = torch.tanh(self.bridge(enc.summary))  # (B, L*H)
        h0 = h0.view(batch, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        state: State = (h0, torch.zeros_like(h0)) if isinstance(self.rnn, LSTM) else h0
        prepared = None if self.attention is None else self.attention.prepare(enc.outputs)
        return state, DecoderMemory(enc.outputs, enc.mask, enc.summary, prepared)

    def step(
        self, y_prev: Tensor, state: State, memory: DecoderMemory
    ) -> tuple[Tensor, State, Tensor | None]:
        """One output step: y_prev (B,) ids -> (logits (B, V), new state, weights (B, S) | None)."""
        emb = self.drop(self.embedding(y_prev))  # (B, E)
        if self.attention is None:
            context, weights = memory.summary, None  # (B, C)
        else:
            h = state[0] if isinstance(state, tuple) else state
            context, weights = self.attention.attend(
                h[-1].unsqueeze(1), memory.prepared, memory.outputs, memory.mask
            )
            context, weights = context.squeeze(1), weights.squeeze(1)  # (B, C), (B, S)
        out, state = self.rnn(torch.cat([emb, context], dim=-1).unsqueeze(1), state)
        logits = self.out(torch.cat([self.drop(out[:, 0]), context, emb], dim=-1))  # (B, V)
        return logits, state, weights


@dataclass
class Seq2SeqOutput:
    """logits (B, T-1, V) for tgt[:, 1:]; loss: mean token cross-entropy (padding ignored);
    attention (B, T-1, S) | None: rows are output positions, columns source positions."""

    logits: Tensor
    loss: Tensor
    attention: Tensor | None


class Seq2Seq(nn.Module):
    """Encoder + decoder with teacher forcing, greedy decoding and beam search.

    Build one from sizes with :meth:`Seq2Seq.build`, or pass modules in.
    """

    def __init__(
        self, encoder: Encoder, decoder: Decoder, *, bos_id: int, eos_id: int, pad_id: int = 0
    ) -> None:
        super().__init__()
        if encoder.output_size != decoder.context_size:
            raise ValueError(
                f"encoder output size {encoder.output_size} != decoder context_size "
                f"{decoder.context_size}"
            )
        if len({bos_id, eos_id, pad_id}) != 3:
            raise ValueError(f"bos_id, eos_id and pad_id must differ, got {bos_id, eos_id, pad_id}")
        self.encoder, self.decoder = encoder, decoder
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    @classmethod
    def build(
        cls,
        src_vocab_size: int,
        tgt_vocab_size: int,
        *,
        embed_dim: int = 32,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "gru",
        bidirectional: bool = True,
        attention: str | None = "additive",
        attn_size: int | None = None,
        dropout: float = 0.0,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
    ) -> Seq2Seq:
        """Standard configuration: the decoder's hidden size equals the encoder output size
        (directions * hidden_size), so every attention kind fits."""
        encoder = Encoder(
            src_vocab_size, embed_dim, hidden_size, num_layers, cell, bidirectional, dropout, pad_id
        )
        dec_hidden = encoder.output_size
        decoder = Decoder(
            tgt_vocab_size,
            embed_dim,
            dec_hidden,
            encoder.output_size,
            num_layers,
            cell,
            make_attention(attention, dec_hidden, encoder.output_size, attn_size),
            dropout,
            pad_id,
        )
        return cls(encoder, decoder, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> EncoderOutput:
        """Run the encoder; src (B, S) ids, src_mask (B, S) bool or None (from pad_id)."""
        if src_mask is None:
            src_mask = src != self.pad_id
        return self.encoder(src, src_mask)

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None = None,
        teacher_forcing_ratio: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Seq2SeqOutput:
        """Decode ``tgt`` step by step; each step feeds the true previous token with probability
        ``teacher_forcing_ratio`` (per example), else the model's own previous prediction."""
        _check_ids(tgt, "tgt")
        if tgt.shape[0] != src.shape[0]:
            raise ShapeError(f"src and tgt batch sizes differ: {src.shape[0]} vs {tgt.shape[0]}")
        if tgt.shape[1] < 2:
            raise ShapeError(f"tgt needs at least [bos, token], got shape {tuple(tgt.shape)}")
        if not 0.0 <= teacher_forcing_ratio <= 1.0:
            raise ValueError(
                f"teacher_forcing_ratio must be in [0, 1], got {teacher_forcing_ratio}"
            )
        state, memory = self.decoder.start(self.encode(src, src_mask))
        y = tgt[:, 0]
        logits_all, weights_all = [], []
        for t in range(1, tgt.shape[1]):
            logits, state, weights = self.decoder.step(y, state, memory)
            logits_all.append(logits)
            if weights is not None:
                weights_all.append(weights)
            y = tgt[:, t]
            if teacher_forcing_ratio < 1.0 and t + 1 < tgt.shape[1]:
                coin = torch.rand(y.shape, generator=generator, device=y.device)
                y = torch.where(coin < teacher_forcing_ratio, y, logits.detach().argmax(-1))
        logits = torch.stack(logits_all, dim=1)  # (B, T-1, V)
        targets = tgt[:, 1:].masked_fill(tgt[:, 1:] == self.pad_id, -100)
        loss = kernels.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        attention = torch.stack(weights_all, dim=1) if weights_all else None
        return Seq2SeqOutput(logits, loss, attention)

    @torch.no_grad()
    def greedy_decode(
        self, src: Tensor, src_mask: Tensor | None = None, max_len: int = 50
    ) -> DecodeResult:
        """Greedy decoding; see :func:`llmcourse.recurrent.decoding.greedy_decode`."""
        return greedy_decode(self, src, src_mask, max_len=max_len)

    @torch.no_grad()
    def beam_search(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        beam_size: int = 4,
        max_len: int = 50,
        length_penalty: float = 1.0,
    ) -> DecodeResult:
        """Beam search; see :func:`llmcourse.recurrent.decoding.beam_search`."""
        return beam_search(
            self, src, src_mask, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty
        )
