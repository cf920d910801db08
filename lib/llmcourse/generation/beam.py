"""Beam search: keep the ``beam_size`` most likely partial sequences at every step.

Greedy decoding commits to the single best next token and can miss a sequence whose first
token is less likely but whose continuation is much more likely; beam search keeps several
candidates. Finished hypotheses (ending in ``eos_id``) are ranked by the length-normalised
score ``log p(generated tokens) / n ** length_penalty`` (n = number of generated tokens):
``length_penalty`` > 0 favours longer outputs, 0 ranks by raw log-probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmcourse.generation.decoding import NextTokenLogits, check_prompt, eval_mode
from llmcourse.utils import ShapeError

__all__ = ["BeamHypothesis", "beam_search", "beam_search_hypotheses"]


@dataclass
class BeamHypothesis:
    """One finished candidate: ``tokens`` (T + n,) prompt and generated ids; ``log_prob``:
    sum of the generated tokens' log-probabilities; ``score``: log_prob / n ** length_penalty."""

    tokens: torch.Tensor
    log_prob: float
    score: float


class _Finished:
    """The best ``size`` finished hypotheses so far."""

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size = size
        self.length_penalty = length_penalty
        self.items: list[BeamHypothesis] = []

    def score(self, log_prob: float, n: int) -> float:
        return log_prob / (n**self.length_penalty)

    def add(self, tokens: torch.Tensor, log_prob: float, n: int) -> None:
        self.items.append(BeamHypothesis(tokens, log_prob, self.score(log_prob, n)))
        self.items.sort(key=lambda h: h.score, reverse=True)
        del self.items[self.size :]

    def is_done(self, best_running_log_prob: float, n: int) -> bool:
        """Full, and the best running beam's current score cannot enter the list (the usual
        heuristic, as Hugging Face's ``early_stopping=False``)."""
        if len(self.items) < self.size:
            return False
        return self.items[-1].score >= self.score(best_running_log_prob, n)


@torch.no_grad()
def beam_search_hypotheses(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    beam_size: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    use_kv_cache: bool = True,
) -> list[BeamHypothesis]:
    """Run beam search from one prompt idx (1, T); return up to ``beam_size`` hypotheses, best
    first. Without ``eos_id`` every hypothesis has exactly max_new_tokens new tokens."""
    check_prompt(idx, max_new_tokens)
    if idx.shape[0] != 1:
        raise ShapeError(
            f"beam_search: idx must hold one prompt, shape (1, T), got {tuple(idx.shape)}"
        )
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if max_new_tokens == 0:
        return [BeamHypothesis(idx[0].clone(), 0.0, 0.0)]
    finished = _Finished(beam_size, length_penalty)
    seq = idx  # (K, L): running beams (K = 1 before the first step)
    beam_log_prob = torch.zeros(1, device=idx.device)  # (K,)
    with eval_mode(model):
        next_logits = NextTokenLogits(model, 1, use_kv_cache)
        for step in range(1, max_new_tokens + 1):
            log_probs = torch.log_softmax(next_logits(seq).float(), dim=-1)  # (K, V)
            vocab = log_probs.shape[1]
            total = (beam_log_prob[:, None] + log_probs).flatten()  # (K*V,)
            top_lp, top_idx = torch.topk(total, min(2 * beam_size, total.numel()))
            keep_beam, keep_tok, keep_lp = [], [], []
            for rank, (lp, flat) in enumerate(zip(top_lp.tolist(), top_idx.tolist(), strict=True)):
                beam, tok = divmod(flat, vocab)
                if eos_id is not None and tok == eos_id:
                    if rank < beam_size:  # an EOS ranked below the top beam_size is not a contender
                        tokens = torch.cat([seq[beam], seq.new_tensor([tok])])
                        finished.add(tokens, lp, step)
                    continue
                keep_beam.append(beam)
                keep_tok.append(tok)
                keep_lp.append(lp)
                if len(keep_beam) == beam_size:
                    break
            if not keep_beam or step == max_new_tokens:
                # Last step (or nothing left to extend): running beams become hypotheses.
                for beam, tok, lp in zip(keep_beam, keep_tok, keep_lp, strict=True):
                    finished.add(torch.cat([seq[beam], seq.new_tensor([tok])]), lp, step)
                break
            beams = torch.tensor(keep_beam, device=idx.device)
            seq = torch.cat(
                [seq.index_select(0, beams), torch.tensor(keep_tok, device=idx.device)[:, None]],
                dim=1,
            )
            beam_log_prob = torch.tensor(keep_lp, device=idx.device)
            next_logits.reorder(beams)
            if eos_id is not None and finished.is_done(keep_lp[0], step):
                break
    return finished.items


def beam_search(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    beam_size: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    use_kv_cache: bool = True,
) -> torch.Tensor:
    """The best beam-search continuation of idx (1, T), as (1, T + n) token ids.

    See :func:`beam_search_hypotheses` for all candidates with their scores.
    """
    best = beam_search_hypotheses(
        model, idx, max_new_tokens, beam_size, length_penalty, eos_id, use_kv_cache
    )
    return best[0].tokens[None]
