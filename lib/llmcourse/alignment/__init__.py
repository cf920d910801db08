"""llmcourse.alignment: learning from preferences.

- :mod:`~llmcourse.alignment.reward`: :class:`RewardModel` (GPT + scalar head), the
  Bradley-Terry loss, ranking -> C(K, 2) pairs
- :mod:`~llmcourse.alignment.ppo`: value head, per-token KL penalty, GAE, clipped PPO
  losses, :class:`PPOTrainer`
- :mod:`~llmcourse.alignment.best_of_n`: best-of-n and rejection sampling
- :mod:`~llmcourse.alignment.dpo`: DPO, IPO, SimPO, KTO and ORPO losses,
  preference batches
- :mod:`~llmcourse.alignment.sampling`: sampling responses to text prompts
- :mod:`~llmcourse.alignment.common`: log-probs of responses, masked statistics
"""

from llmcourse.alignment.best_of_n import BestOfN, best_of_n, best_of_n_kl_bound, rejection_sampling
from llmcourse.alignment.common import (
    entropy_from_logits,
    masked_mean,
    masked_whiten,
    pad_right,
    sequence_logprobs,
    token_logprobs,
)
from llmcourse.alignment.dpo import (
    KTOLossOutput,
    ORPOLossOutput,
    PreferenceBatch,
    PreferenceLossOutput,
    build_preference_batch,
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    preference_logps,
    preference_loss,
    simpo_loss,
)
from llmcourse.alignment.ppo import (
    AdaptiveKLController,
    PolicyWithValue,
    PPOConfig,
    PPOStepOutput,
    PPOTrainer,
    ValueHead,
    gae,
    kl_per_token,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from llmcourse.alignment.reward import (
    RewardModel,
    bradley_terry_loss,
    num_comparison_pairs,
    preference_accuracy,
    ranking_to_pairs,
)
from llmcourse.alignment.sampling import Rollout, sample_responses

__all__ = [
    "BestOfN",
    "best_of_n",
    "best_of_n_kl_bound",
    "rejection_sampling",
    "entropy_from_logits",
    "masked_mean",
    "masked_whiten",
    "pad_right",
    "sequence_logprobs",
    "token_logprobs",
    "KTOLossOutput",
    "ORPOLossOutput",
    "PreferenceBatch",
    "PreferenceLossOutput",
    "build_preference_batch",
    "dpo_loss",
    "ipo_loss",
    "kto_loss",
    "orpo_loss",
    "preference_logps",
    "preference_loss",
    "simpo_loss",
    "AdaptiveKLController",
    "PolicyWithValue",
    "PPOConfig",
    "PPOStepOutput",
    "PPOTrainer",
    "ValueHead",
    "gae",
    "kl_per_token",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "RewardModel",
    "bradley_terry_loss",
    "num_comparison_pairs",
    "preference_accuracy",
    "ranking_to_pairs",
    "Rollout",
    "sample_responses",
]
