"""Greedy decoding and beam search for :class:`llmcourse.recurrent.Seq2Seq`.

Both run a whole batch at once and return a :class:`DecodeResult`. Output sequences exclude the
BOS token, include EOS when one was produced, and are padded with ``pad_id`` after it. Call
``model.eval()`` first if the model uses dropout.

Beam search keeps ``beam_size`` hypotheses per example. A hypothesis that emits EOS is frozen:
it stays in the beam with its score, competing with the live ones, until every beam is frozen
or ``max_len`` is reached. Hypotheses are ranked by ``log P(y) / len(y) ** length_penalty``
(``len`` counts EOS; ``length_penalty=0`` ranks by raw log-probability, larger values favour
longer outputs). With ``beam_size=1`` this is exactly greedy decoding. A beam larger than the
number of distinct hypotheses keeps the surplus at score -inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from llmcourse.recurrent.layers import select_state
from llmcourse.utils import ShapeError

if TYPE_CHECKING:  # pragma: no cover
    from llmcourse.recurrent.seq2seq import Seq2Seq

__all__ = ["DecodeResult", "greedy_decode", "beam_search"]


@dataclass
class DecodeResult:
    """Decoded sequences.

    tokens (B, L) long: best output per example (no BOS; EOS then pad_id).
    lengths (B,) long: tokens up to and including EOS (L when no EOS came).
    log_probs (B,): total log-probability of each returned sequence.
    attention (B, L, S) | None: attention weights per output step (zero rows after EOS).
    beam_tokens (B, K, L) | None and beam_scores (B, K) | None: every final hypothesis of beam
    search, best first, with its length-penalised score.
    """

    tokens: Tensor
    lengths: Tensor
    log_probs: Tensor
    attention: Tensor | None
    beam_tokens: Tensor | None = None
    beam_scores: Tensor | None = None


def _check_decode_args(src: Tensor, max_len: int) -> None:
    if src.dim() != 2:
        raise ShapeError(f"src: expected (B, S) token ids, got shape {tuple(src.shape)}")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, src: Tensor, src_mask: Tensor | None = None, max_len: int = 50
) -> DecodeResult:
    """Pick the most likely token at every step.  src (B, S) -> DecodeResult with L <= max_len."""
    _check_decode_args(src, max_len)
    state, memory = model.decoder.start(model.encode(src, src_mask))
    batch = src.shape[0]
    y = torch.full((batch,), model.bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    lengths = torch.full((batch,), max_len, dtype=torch.long, device=src.device)
    log_probs = torch.zeros(batch, device=src.device)
    tokens, attn = [], []
    for t in range(max_len):
        logits, state, weights = model.decoder.step(y, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        y = logp.argmax(dim=-1).masked_fill(finished, model.pad_id)
        log_probs += logp.gather(1, y.unsqueeze(1)).squeeze(1).masked_fill(finished, 0.0)
        tokens.append(y)
        if weights is not None:
            attn.append(weights.masked_fill(finished.unsqueeze(1), 0.0))
        done_now = ~finished & (y == model.eos_id)
        lengths = torch.where(done_now, t + 1, lengths)
        finished |= done_now
        if bool(finished.all()):
            break
    attention = torch.stack(attn, dim=1) if attn else None
    return DecodeResult(torch.stack(tokens, dim=1), lengths, log_probs, attention)


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor | None = None,
    beam_size: int = 4,
    max_len: int = 50,
    length_penalty: float = 1.0,
) -> DecodeResult:
    """Beam search over a batch.  src (B, S) -> DecodeResult with beam_tokens (B, K, L)."""
    _check_decode_args(src, max_len)
    vocab = model.decoder.vocab_size
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    device, batch, k = src.device, src.shape[0], beam_size
    state, memory = model.decoder.start(model.encode(src, src_mask))
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # (B*K,)
    state, memory = select_state(state, expand), memory.index_select(expand)

    sums = torch.full((batch, k), float("-inf"), device=device)
    sums[:, 0] = 0.0  # one live hypothesis at the start; -inf ones never win
    finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, k, dtype=torch.long, device=device)
    tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    attn: Tensor | None = None
    frozen = torch.full((vocab,), float("-inf"), device=device)
    frozen[model.pad_id] = 0.0  # a finished hypothesis extends only by padding, at no cost
    row_base = (torch.arange(batch, device=device) * k).unsqueeze(1)  # (B, 1)
    y = torch.full((batch * k,), model.bos_id, dtype=torch.long, device=device)
    rank = sums
    for _ in range(max_len):
        logits, state, weights = model.decoder.step(y, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1).view(batch, k, vocab)
        logp = torch.where(finished.unsqueeze(-1), frozen, logp)
        cand = sums.unsqueeze(-1) + logp  # (B, K, V)
        cand_len = (lengths + (~finished).long()).unsqueeze(-1)  # (B, K, 1)
        ranks = cand / cand_len.float().pow(length_penalty)
        rank, flat = ranks.view(batch, k * vocab).topk(k, dim=1)  # (B, K)
        beam, tok = flat // vocab, flat % vocab
        rows = (row_base + beam).view(-1)  # (B*K,) source hypothesis of each new one
        sums = cand.view(batch, k * vocab).gather(1, flat)
        lengths = cand_len.squeeze(-1).gather(1, beam)
        was_finished = finished.gather(1, beam)
        finished = was_finished | (tok == model.eos_id)
        tokens = torch.cat([tokens.index_select(0, rows), tok.view(-1, 1)], dim=1)
        if weights is not None:
            w = weights.index_select(0, rows).masked_fill(was_finished.view(-1, 1), 0.0)
            w = w.unsqueeze(1)  # (B*K, 1, S)
            attn = w if attn is None else torch.cat([attn.index_select(0, rows), w], dim=1)
        state = select_state(state, rows)
        y = tok.view(-1)
        if bool(finished.all()):
            break

    order = rank.argsort(dim=1, descending=True)  # topk is sorted already; keep it explicit
    steps = tokens.shape[1]
    pick = (row_base + order).view(-1)
    beam_tokens = tokens.index_select(0, pick).view(batch, k, steps)
    beam_scores = rank.gather(1, order)
    best = row_base.squeeze(1) + order[:, 0]  # (B,)
    attention = None
    if attn is not None:
        attention = attn.index_select(0, best)
    return DecodeResult(
        tokens=beam_tokens[:, 0],
        lengths=lengths.gather(1, order[:, :1]).squeeze(1),
        log_probs=sums.gather(1, order[:, :1]).squeeze(1),
        attention=attention,
        beam_tokens=beam_tokens,
        beam_scores=beam_scores,
    )
