"""Direct preference optimisation and its variants: DPO, IPO, SimPO, KTO, ORPO.

All take *sequence* log-probabilities of responses (summed over response tokens, prompt and
padding excluded; see :func:`llmcourse.alignment.common.sequence_logprobs`).

- **DPO** (Rafailov et al. 2023): with implicit rewards ``r = beta * (log pi(y|x) -
  log pi_ref(y|x))``, ``loss = -log sigmoid(r_w - r_l)``. Worked example: beta = 0.1,
  log pi(y_w) = -10, log pi(y_l) = -12, both reference log-probs -11: the margin is
  0.1 * (1 - (-1)) = 0.2 and the loss ``-log sigmoid(0.2) = 0.598``.
- **IPO** (Azar et al. 2023): a squared loss ``(h - 1 / (2 beta))^2`` on the log-ratio
  difference ``h``; it stops pushing once the margin reaches its target, where DPO keeps
  pushing deterministic preferences towards infinity.
- **SimPO** (Meng et al. 2024): no reference model; the reward is the *length-normalised*
  log-probability ``beta * log pi(y|x) / |y|`` and the loss ``-log sigmoid(r_w - r_l - gamma)``
  asks for a margin ``gamma``.
- **KTO** (Ethayarajh et al. 2024): an *offline* loss on *unpaired binary* labels (thumbs up /
  down), not an RL method and not PPO. Each example is judged against a reference point
  ``z0`` (an estimate of KL(pi || pi_ref)): desirable responses should have implicit reward
  above it, undesirable ones below, through a sigmoid "value function" from prospect theory.

- **ORPO** (Hong et al. 2024): no reference model and no separate SFT stage. The SFT loss on
  the chosen response plus ``lam`` times ``-log sigmoid(log odds(y_w) - log odds(y_l))``, where
  ``odds(y) = P(y) / (1 - P(y))`` and ``P(y) = exp(log pi(y|x) / |y|)`` is the
  *length-normalised* (per-token geometric mean) likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.alignment.common import sequence_logprobs
from llmcourse.finetune.sft import SFTBatch, collate_sft, format_example, tokenize_prompt_response
from llmcourse.utils import ShapeError

__all__ = [
    "PreferenceLossOutput",
    "dpo_loss",
    "ipo_loss",
    "simpo_loss",
    "KTOLossOutput",
    "kto_loss",
    "ORPOLossOutput",
    "orpo_loss",
    "PreferenceBatch",
    "build_preference_batch",
    "preference_logps",
    "preference_loss",
]


@dataclass
class PreferenceLossOutput:
    """A pairwise preference loss and what to log.

    ``loss``: scalar (differentiable); ``chosen_rewards`` / ``rejected_rewards``: (B,)
    implicit rewards (detached); ``accuracy``: share of pairs with chosen reward > rejected;
    ``margin``: mean of ``chosen_rewards - rejected_rewards``.
    """

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def accuracy(self) -> float:
        return (self.chosen_rewards > self.rejected_rewards).float().mean().item()

    @property
    def margin(self) -> float:
        return (self.chosen_rewards - self.rejected_rewards).mean().item()


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if any(len(s) != 1 for s in shapes.values()) or any(s != first for s in shapes.values()):
        listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ShapeError(f"expected 1-D tensors (B,) of one shape, got {listed}")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """DPO: ``-log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))``, mean over pairs.

    All inputs: (B,) sequence log-probs. ``beta`` sets how far the policy may move from the
    reference (small beta: the KL constraint is weak).
    """
    _check_same_shape(
        policy_chosen=policy_chosen_logps,
        policy_rejected=policy_rejected_logps,
        ref_chosen=ref_chosen_logps,
        ref_rejected=ref_rejected_logps,
    )
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return PreferenceLossOutput(loss, chosen.detach(), rejected.detach())


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """IPO: ``(h - 1 / (2 beta))^2`` with ``h = (pi_w - ref_w) - (pi_l - ref_l)``.

    Here ``beta`` is IPO's regularisation strength (the paper's tau): the target log-ratio
    margin is ``1 / (2 beta)``. Rewards are reported as ``beta * log-ratio`` like DPO's.
    Some implementations pass length-averaged log-probs; pass whichever you intend.
    """
    _check_same_shape(
        policy_chosen=policy_chosen_logps,
        policy_rejected=policy_rejected_logps,
        ref_chosen=ref_chosen_logps,
        ref_rejected=ref_rejected_logps,
    )
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    loss = ((chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2).mean()
    return PreferenceLossOutput(
        loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
    )


def _per_token_means(
    name: str,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> tuple[Tensor, Tensor]:
    """(B,) mean log-prob per token of the chosen and rejected responses, after input checks."""
    _check_same_shape(
        policy_chosen=chosen_logps,
        policy_rejected=rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    if torch.any(chosen_lengths <= 0) or torch.any(rejected_lengths <= 0):
        raise ValueError(f"{name}: response lengths must be > 0")
    return chosen_logps / chosen_lengths, rejected_logps / rejected_lengths


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> PreferenceLossOutput:
    """SimPO: ``-log sigmoid(beta * lp_w / |y_w| - beta * lp_l / |y_l| - gamma)``.

    ``*_logps``: (B,) summed response log-probs; ``*_lengths``: (B,) response token counts.
    No reference model. The defaults follow the scale the SimPO paper uses (beta around 2,
    gamma / beta around 0.5); tune both.
    """
    chosen_mean, rejected_mean = _per_token_means(
        "simpo_loss", policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths
    )
    chosen, rejected = beta * chosen_mean, beta * rejected_mean
    loss = -F.logsigmoid(chosen - rejected - gamma).mean()
    return PreferenceLossOutput(loss, chosen.detach(), rejected.detach())


@dataclass
class KTOLossOutput:
    """KTO loss (scalar), per-example implicit rewards (B,) and the reference point used."""

    loss: Tensor
    rewards: Tensor
    reference_point: Tensor
    desirable: Tensor

    @property
    def accuracy(self) -> float:
        """Share of examples on the side of the reference point their label asks for."""
        right = torch.where(
            self.desirable, self.rewards > self.reference_point, self.rewards < self.reference_point
        )
        return right.float().mean().item()


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    beta: float = 0.1,
    *,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reference_point: Tensor | float | None = None,
) -> KTOLossOutput:
    """KTO on unpaired examples labelled desirable (True) or undesirable (False).

    With ``r = log pi(y|x) - log pi_ref(y|x)`` and reference point ``z0``::

        desirable:   loss = w_D * (1 - sigmoid(beta * (r - z0)))
        undesirable: loss = w_U * (1 - sigmoid(beta * (z0 - r)))

    averaged over the batch. ``z0`` estimates KL(pi || pi_ref) and carries no gradient. The
    paper estimates it from *mismatched* prompt/response pairs of the batch; pass such an
    estimate as ``reference_point``. By default the detached batch mean of ``r``, clamped at
    0, is used: a simpler, biased stand-in. ``rewards`` in the output are ``beta * r``.
    """
    _check_same_shape(policy=policy_logps, reference=ref_logps, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise TypeError(f"desirable must be a bool tensor, got {desirable.dtype}")
    ratio = policy_logps - ref_logps
    if reference_point is None:
        z0 = ratio.detach().mean().clamp(min=0)
    else:
        z0 = torch.as_tensor(reference_point, dtype=ratio.dtype, device=ratio.device).detach()
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    loss = torch.where(desirable, good, bad).mean()
    return KTOLossOutput(loss, (beta * ratio).detach(), beta * z0, desirable)


@dataclass
class ORPOLossOutput(PreferenceLossOutput):
    """ORPO loss and its two parts.

    ``loss``: scalar, ``nll + lam * odds_ratio_loss``; ``nll``: mean per-token NLL of the chosen
    responses (the SFT term); ``odds_ratio_loss``: mean of ``-log sigmoid(log odds ratio)``;
    ``log_odds_ratio``: (B,) detached. ``chosen_rewards`` / ``rejected_rewards``: (B,) mean
    per-token log-probs (detached), so ``accuracy`` counts pairs whose chosen response is the
    more likely per token.
    """

    nll: Tensor
    odds_ratio_loss: Tensor
    log_odds_ratio: Tensor


def _log_odds(mean_logps: Tensor) -> Tensor:
    """``log(P / (1 - P))`` for ``P = exp(mean_logps)`` (< 1), computed stably: (B,) -> (B,)."""
    if torch.any(mean_logps >= 0):
        raise ValueError(
            "orpo_loss: a mean log-probability is >= 0 (probability 1); the odds P / (1 - P) "
            "are infinite. Pass log-probs of response tokens summed by sequence_logprobs"
        )
    return mean_logps - torch.log(-torch.expm1(mean_logps))


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    lam: float = 0.1,
) -> ORPOLossOutput:
    """ORPO: ``NLL(y_w) + lam * -log sigmoid(log odds(y_w) - log odds(y_l))``, mean over pairs.

    ``*_logps``: (B,) summed response log-probs; ``*_lengths``: (B,) response token counts.
    With the per-token mean ``m = logp / |y|`` the length-normalised likelihood is
    ``P = exp(m)`` and ``log odds = m - log(1 - exp(m))``. The SFT term is the per-token NLL
    ``-m_w`` of the chosen response. No reference model. ``lam`` is the paper's lambda
    (0.1 in most of its experiments).
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    chosen_mean, rejected_mean = _per_token_means(
        "orpo_loss", policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths
    )
    log_odds_ratio = _log_odds(chosen_mean) - _log_odds(rejected_mean)  # (B,)
    nll = -chosen_mean.mean()
    odds_ratio_loss = -F.logsigmoid(log_odds_ratio).mean()
    return ORPOLossOutput(
        nll + lam * odds_ratio_loss,
        chosen_mean.detach(),
        rejected_mean.detach(),
        nll.detach(),
        odds_ratio_loss.detach(),
        log_odds_ratio.detach(),
    )


# --------------------------------------------------------------------------- batching


@dataclass
class PreferenceBatch:
    """Chosen and rejected responses to the same prompts, padded to one common width.

    ``chosen`` and ``rejected`` are :class:`~llmcourse.finetune.sft.SFTBatch` es of B rows
    each, targets on response tokens only.
    """

    chosen: SFTBatch
    rejected: SFTBatch

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(self.chosen.to(device), self.rejected.to(device))

    def __len__(self) -> int:
        return len(self.chosen)


def build_preference_batch(
    triples: Sequence[tuple[str, str, str]],
    tokenizer,
    *,
    template: bool = True,
    system: str | None = None,
    max_length: int | None = None,
    pad_id: int = 0,
) -> PreferenceBatch:
    """``(prompt, chosen, rejected)`` texts -> :class:`PreferenceBatch`.

    With ``template`` (default) prompt and responses go through the chat template of
    :mod:`llmcourse.finetune.sft`, so the response targets end with ``<|end|>``; otherwise
    the texts are used as they are.
    """
    if not triples:
        raise ValueError("build_preference_batch: got no examples")
    examples = []
    for i, triple in enumerate(triples):
        if len(triple) != 3:
            raise ValueError(
                f"example {i}: expected (prompt, chosen, rejected), got {len(triple)} items"
            )
        prompt, *responses = triple
        for response in responses:
            if template:
                p, r = format_example(prompt, response, system)
            else:
                p, r = prompt, response
            examples.append(tokenize_prompt_response(p, r, tokenizer, max_length))
    both = collate_sft(examples, pad_id)  # rows: c0, r0, c1, r1, ...
    pick = (
        lambda start: SFTBatch(  # noqa: E731
            both.input_ids[start::2], both.targets[start::2], both.attention_mask[start::2]
        )
    )
    return PreferenceBatch(pick(0), pick(1))


def preference_logps(
    model: nn.Module, batch: PreferenceBatch, *, average: bool = False
) -> tuple[Tensor, Tensor]:
    """Sequence log-probs of the chosen and rejected responses, each (B,), in one forward."""
    ids = torch.cat([batch.chosen.input_ids, batch.rejected.input_ids])
    targets = torch.cat([batch.chosen.targets, batch.rejected.targets])
    logps = sequence_logprobs(model, ids, targets, average=average)
    b = len(batch)
    return logps[:b], logps[b:]


def preference_loss(
    policy: nn.Module,
    batch: PreferenceBatch,
    reference: nn.Module | None = None,
    *,
    loss_type: str = "dpo",
    beta: float | None = None,
    gamma: float = 1.0,
) -> PreferenceLossOutput:
    """One DPO / IPO / SimPO / ORPO loss on a batch, computing the log-probs it needs.

    ``reference`` (frozen, evaluated without gradients) is required for "dpo" and "ipo" and
    ignored by "simpo" and "orpo". ``beta`` defaults to 0.1 for DPO/IPO, 2.0 for SimPO and
    0.1 for ORPO (where it is the weight lambda of the odds-ratio term).
    """
    if loss_type not in ("dpo", "ipo", "simpo", "orpo"):
        raise ValueError(f"loss_type must be 'dpo', 'ipo', 'simpo' or 'orpo', got {loss_type!r}")
    chosen, rejected = preference_logps(policy, batch)
    if loss_type in ("simpo", "orpo"):
        lengths = [b.loss_mask.sum(dim=1).to(chosen.dtype) for b in (batch.chosen, batch.rejected)]
        if loss_type == "orpo":
            return orpo_loss(chosen, rejected, *lengths, lam=0.1 if beta is None else beta)
        return simpo_loss(
            chosen, rejected, *lengths, beta=2.0 if beta is None else beta, gamma=gamma
        )
    if reference is None:
        raise ValueError(f"loss_type={loss_type!r} needs a reference model")
    with torch.no_grad():
        ref_chosen, ref_rejected = preference_logps(reference, batch)
    fn = dpo_loss if loss_type == "dpo" else ipo_loss
    return fn(chosen, rejected, ref_chosen, ref_rejected, beta=0.1 if beta is None else beta)
