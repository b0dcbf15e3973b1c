"""Pure PPO-family math on tensors: advantages, losses, KL, reward shaping, logprobs.

Imports torch only, so it loads (and is tested) without Ray, vLLM, DeepSpeed or
transformers. See docs/algorithms.md for the formulas and their papers.
"""

from rlhf.algorithms.advantages import (
    ADV_ESTIMATORS,
    AdvantageInputs,
    EstimatorNeeds,
    compute_advantages,
    discounted_returns,
    estimator_needs,
)
from rlhf.algorithms.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    make_kl_controller,
)
from rlhf.algorithms.logprobs import entropy_from_logits, logprobs_from_logits, sampling_mask
from rlhf.algorithms.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    aggregate_loss,
    entropy_loss,
    explained_variance,
    kl_loss,
    ppo_clip_loss,
    value_loss,
)
from rlhf.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlhf.algorithms.preference import DPO_LOSSES, bradley_terry_loss, dpo_loss
from rlhf.algorithms.registry import Registry
from rlhf.algorithms.shaping import (
    last_token_index,
    overlong_penalty,
    place_scores_on_last_token,
    token_rewards_with_kl,
    truncated_is_weights,
)

__all__ = [
    "ADV_ESTIMATORS",
    "AGG_MODES",
    "DPO_LOSSES",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AdaptiveKLController",
    "AdvantageInputs",
    "EstimatorNeeds",
    "FixedKLController",
    "Registry",
    "aggregate_loss",
    "bradley_terry_loss",
    "compute_advantages",
    "discounted_returns",
    "dpo_loss",
    "estimator_needs",
    "entropy_from_logits",
    "entropy_loss",
    "explained_variance",
    "kl_loss",
    "kl_penalty",
    "last_token_index",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "overlong_penalty",
    "place_scores_on_last_token",
    "ppo_clip_loss",
    "sampling_mask",
    "token_rewards_with_kl",
    "truncated_is_weights",
    "value_loss",
]
