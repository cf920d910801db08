"""RLHF with PPO: value head, per-token KL penalty, GAE, clipped objectives, a trainer step.

PPO-based RLHF involves four models: the *policy* being trained, a frozen *reference* copy
of the starting (SFT) policy, a *reward* function or model, and a *value* model. Here the
value model is a linear head on the policy's hidden states (:class:`PolicyWithValue`), a
common memory-saving choice; the reward is any ``text -> float`` callable (e.g.
:meth:`llmcourse.alignment.reward.RewardModel.as_reward_fn`).

One :meth:`PPOTrainer.step`:

1. *Rollout*: sample a response for each prompt; score it with the reward function.
2. Per-token rewards: ``-kl_coef * KL_t`` at every response token, with the per-token KL
   estimate ``KL_t = log pi(y_t) - log pi_ref(y_t)``, plus the score at the last token. The
   KL penalty keeps the policy near the reference: without it the policy drifts to
   degenerate text that fools the reward (*reward hacking*).
3. Advantages by GAE(gamma, lambda) from the value estimates, whitened over the batch.
4. Several epochs of minibatch updates of the clipped surrogate
   ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` plus a clipped value loss.

The objective is optimised with the policy-gradient estimator: sampling is not
differentiable, but ``E[A * grad log pi]`` is an unbiased gradient of the expected reward.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from llmcourse.alignment.common import (
    entropy_from_logits,
    hidden_size_of,
    masked_mean,
    masked_whiten,
    token_logprobs,
)
from llmcourse.alignment.sampling import sample_responses
from llmcourse.finetune.sft import END
from llmcourse.utils import ShapeError

__all__ = [
    "ValueHead",
    "PolicyWithValue",
    "kl_per_token",
    "per_token_rewards",
    "gae",
    "ppo_policy_loss",
    "ppo_value_loss",
    "AdaptiveKLController",
    "PPOConfig",
    "PPOStepOutput",
    "PPOTrainer",
]


class ValueHead(nn.Module):
    """Linear map from hidden states to one value per position: (B, T, C) -> (B, T)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden).squeeze(-1)


class PolicyWithValue(nn.Module):
    """A policy LM plus a value head on its final hidden states (shared trunk).

    ``policy(idx)`` must return an object with ``.logits`` (B, T, V) and ``.hidden``
    (B, T, C), like the course GPT. ``forward(idx) -> (logits (B, T, V), values (B, T))``.
    """

    def __init__(self, policy: nn.Module, hidden_size: int | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = ValueHead(
            hidden_size if hidden_size is not None else hidden_size_of(policy)
        )

    def forward(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        out = self.policy(idx)
        if getattr(out, "hidden", None) is None:
            raise TypeError(f"{type(self.policy).__name__} must return .hidden for the value head")
        return out.logits, self.value_head(out.hidden)


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of the *sampled* tokens.

    ``"k1"``: ``logp - ref_logp`` (unbiased, can be negative per token); ``"k3"``:
    ``exp(ref_logp - logp) - 1 - (ref_logp - logp)`` (unbiased, always >= 0, lower variance).
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")


def per_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Rewards (B, T): ``-kl_coef * kl`` on response tokens, plus ``scores`` (B,) at the last one.

    ``kl``, ``mask``: (B, T); ``mask`` marks response tokens (a contiguous run per row).
    """
    if kl.shape != mask.shape or scores.shape != (kl.shape[0],):
        raise ShapeError(
            f"per_token_rewards: expected scores (B,), kl and mask (B, T); got "
            f"{tuple(scores.shape)}, {tuple(kl.shape)}, {tuple(mask.shape)}"
        )
    if torch.any(mask.sum(dim=1) == 0):
        raise ValueError("per_token_rewards: a row has no response tokens")
    rewards = -kl_coef * kl * mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)  # (B,)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the masked (response) positions of each row.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V`` after the last response token is 0) and
    ``A_t = delta_t + gamma * lam * A_{t+1}``; returns ``(advantages, returns = A + V)``,
    both (B, T) and 0 outside the mask. lam = 1 gives Monte-Carlo returns minus V, lam = 0
    the one-step TD error.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ShapeError(
            f"gae: rewards, values, mask must share a (B, T) shape; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    m = mask.to(values.dtype)
    values = values * m
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
        next_value = values[:, t]  # 0 outside the mask, so padding acts as episode end
    return advantages, (advantages + values) * m


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate loss, mean over masked tokens; all inputs (B, T).

    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` with
    ``ratio = exp(logp - old_logp)``. Also returns ``clipfrac`` (share of tokens where the
    clipped term was used) and ``approx_kl`` (``mean((ratio - 1) - log ratio)``, >= 0).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask).item(),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))``; inputs (B, T).

    ``V_clip = old_V + clip(V - old_V, -c, c)`` keeps one update from moving the value
    estimates far from the rollout's.
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"value_clipfrac": masked_mean((err_clipped > err).float(), mask).item()}
    return loss, stats


class AdaptiveKLController:
    """Adjust ``kl_coef`` towards a target KL (Ziegler et al. 2019).

    ``kl_coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_samples / horizon``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int = 10_000) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_samples: int) -> float:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_samples / self.horizon
        return self.value


@dataclass
class PPOConfig:
    """Hyperparameters of :class:`PPOTrainer` (defaults sized for tiny course models)."""

    kl_coef: float = 0.1
    target_kl: float | None = None  # set to adapt kl_coef (AdaptiveKLController)
    kl_horizon: int = 10_000
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    ppo_epochs: int = 4
    minibatch_size: int | None = None  # None: the whole batch
    lr: float = 1e-4
    max_grad_norm: float | None = 1.0
    whiten_advantages: bool = True
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: str | None = END
    pad_id: int = 0
    reward_includes_prompt: bool = False  # reward_fn gets prompt + response if True


@dataclass
class PPOStepOutput:
    """What one PPO step produced: averaged statistics, responses and their scores."""

    stats: dict[str, float]
    responses: list[str]
    scores: list[float]


class PPOTrainer:
    """PPO for a causal LM on text prompts with a ``text -> float`` reward function.

    ``policy``: a model like the course GPT (``.logits`` and ``.hidden``); it is trained in
    place (with LoRA applied, only the adapters and the value head train). ``reference``: a
    frozen copy of the starting policy (made here when omitted). ``reward_fn`` receives the
    decoded response (stop string removed), or prompt + response with
    ``config.reward_includes_prompt``. All forward passes run in eval mode (dropout
    off), so the probability ratio is exactly 1 at the start of each step. ``generator``
    (on the policy's device) makes sampling and minibatch order reproducible.
    """

    def __init__(
        self,
        policy: nn.Module,
        tokenizer,
        reward_fn: Callable[[str], float],
        config: PPOConfig | None = None,
        *,
        reference: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.config = config or PPOConfig()
        self.model = PolicyWithValue(policy)
        device = next(policy.parameters()).device
        self.model.value_head.to(device)
        self.reference = reference if reference is not None else copy.deepcopy(policy)
        self.reference.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.generator = generator
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=self.config.lr)
        self.kl_controller = (
            AdaptiveKLController(self.config.kl_coef, self.config.target_kl, self.config.kl_horizon)
            if self.config.target_kl is not None
            else None
        )
        self.kl_coef = self.config.kl_coef

    def step(self, prompts: Sequence[str]) -> PPOStepOutput:
        """Rollout on ``prompts``, then ``ppo_epochs`` of minibatch updates."""
        cfg = self.config
        was_training = self.model.training
        self.model.eval()
        try:
            rollout = sample_responses(
                self.model.policy,
                self.tokenizer,
                prompts,
                cfg.max_new_tokens,
                stop=cfg.stop,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                generator=self.generator,
            )
            device = next(self.model.parameters()).device
            batch = rollout.to_batch(cfg.pad_id).to(device)
            ids, targets, mask = batch.input_ids, batch.targets, batch.loss_mask
            texts = (
                rollout.full_texts(self.tokenizer)
                if cfg.reward_includes_prompt
                else rollout.responses
            )
            scores = torch.tensor([float(self.reward_fn(t)) for t in texts], device=device)
            with torch.no_grad():
                logits, old_values = self.model(ids)
                old_logp = token_logprobs(logits, targets)
                ref_logp = token_logprobs(self.reference(ids).logits, targets)
                entropy = masked_mean(entropy_from_logits(logits), mask).item()
                kl = kl_per_token(old_logp, ref_logp, cfg.kl_estimator) * mask
                rewards = per_token_rewards(scores, kl, mask, self.kl_coef)
                advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                if cfg.whiten_advantages:
                    advantages = masked_whiten(advantages, mask)
            update_stats = self._update(
                ids, targets, mask, old_logp, old_values, advantages, returns
            )
        finally:
            self.model.train(was_training)

        kl_seq = kl.sum(dim=1).mean().item()
        stats = {
            "reward": scores.mean().item(),
            "reward_std": scores.std(unbiased=False).item(),
            "kl": kl_seq,
            "non_score_reward": -self.kl_coef * kl_seq,
            "kl_coef": self.kl_coef,
            "entropy": entropy,
            "response_length": mask.sum(dim=1).float().mean().item(),
            **update_stats,
        }
        if self.kl_controller is not None:
            self.kl_coef = self.kl_controller.update(kl_seq, len(prompts))
        return PPOStepOutput(stats, rollout.responses, scores.tolist())

    def _update(
        self,
        ids: Tensor,
        targets: Tensor,
        mask: Tensor,
        old_logp: Tensor,
        old_values: Tensor,
        advantages: Tensor,
        returns: Tensor,
    ) -> dict[str, float]:
        cfg = self.config
        n = ids.shape[0]
        size = cfg.minibatch_size or n
        totals: dict[str, float] = {}
        count = 0
        for _ in range(cfg.ppo_epochs):
            gen = self.generator
            perm_device = gen.device if gen is not None else ids.device
            order = torch.randperm(n, generator=gen, device=perm_device).to(ids.device)
            for start in range(0, n, size):
                mb = order[start : start + size]
                logits, values = self.model(ids[mb])
                logp = token_logprobs(logits, targets[mb])
                pg_loss, pg_stats = ppo_policy_loss(
                    logp, old_logp[mb], advantages[mb], mask[mb], cfg.clip_range
                )
                v_loss, v_stats = ppo_value_loss(
                    values, old_values[mb], returns[mb], mask[mb], cfg.clip_range_value
                )
                ent = masked_mean(entropy_from_logits(logits), mask[mb])
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    params = [p for p in self.model.parameters() if p.requires_grad]
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                step_stats = {
                    "policy_loss": pg_loss.item(),
                    "value_loss": v_loss.item(),
                    **pg_stats,
                    **v_stats,
                }
                for k, v in step_stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in totals.items()}

    def config_dict(self) -> dict:
        """The configuration as a plain dict (for logging)."""
        return asdict(self.config)
