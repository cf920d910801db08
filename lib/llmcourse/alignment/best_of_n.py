"""Best-of-n sampling and rejection sampling with a reward function.

Best-of-n draws ``n`` responses and returns the one with the highest reward: no training,
``n`` times the generation cost. Its distribution stays close to the policy's; the KL from
the policy is at most ``log n - (n - 1) / n`` (Beirami et al. 2024), which makes it a useful
baseline for RL methods at the same KL. *Rejection sampling fine-tuning* keeps the best
responses (optionally only those above a reward threshold) as new SFT data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llmcourse.alignment.sampling import sample_responses
from llmcourse.finetune.sft import END

__all__ = ["RewardFn", "BestOfN", "best_of_n", "rejection_sampling", "best_of_n_kl_bound"]

RewardFn = Callable[[str], float]


@dataclass
class BestOfN:
    """All ``n`` sampled responses of one prompt with their rewards."""

    prompt: str
    responses: list[str]
    rewards: list[float]

    @property
    def best_index(self) -> int:
        """Index of the highest reward (the first one on ties)."""
        return max(range(len(self.rewards)), key=self.rewards.__getitem__)

    @property
    def best(self) -> str:
        return self.responses[self.best_index]

    @property
    def best_reward(self) -> float:
        return self.rewards[self.best_index]


def best_of_n_kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || policy): ``log n - (n - 1) / n`` nats."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    n: int = 4,
    *,
    max_new_tokens: int = 32,
    stop: str | None = END,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    include_prompt: bool = False,
) -> list[BestOfN]:
    """Sample ``n`` responses per prompt, score each with ``reward_fn(response_text)``.

    With ``include_prompt`` the reward function gets prompt + response (stop string
    included) instead, as a reward model trained on whole conversations expects. Returns
    one :class:`BestOfN` per prompt; ``.best`` is the chosen response.
    """
    rollout = sample_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        num_samples=n,
        stop=stop,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    )
    texts = rollout.full_texts(tokenizer) if include_prompt else rollout.responses
    rewards = [float(reward_fn(text)) for text in texts]
    return [
        BestOfN(prompt, rollout.responses[i * n : (i + 1) * n], rewards[i * n : (i + 1) * n])
        for i, prompt in enumerate(prompts)
    ]


def rejection_sampling(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    n: int = 4,
    *,
    threshold: float | None = None,
    **sampling,
) -> list[tuple[str, str, float]]:
    """Best-of-n per prompt, kept only when its reward is ``>= threshold`` (if given).

    Returns ``(prompt, best_response, reward)`` triples, e.g. as data for another SFT round.
    ``sampling`` is passed to :func:`best_of_n` (max_new_tokens, temperature, ...).
    """
    results = best_of_n(model, tokenizer, prompts, reward_fn, n, **sampling)
    return [
        (r.prompt, r.best, r.best_reward)
        for r in results
        if threshold is None or r.best_reward >= threshold
    ]
