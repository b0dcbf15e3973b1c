"""Advantage estimators: GAE, GRPO (and Dr. GRPO), RLOO, REINFORCE++ (and -baseline).

Every estimator takes one `AdvantageInputs` and returns `(advantages, returns)`,
both (B, T) and zero where `response_mask` is 0, so the controller can call
`ADV_ESTIMATORS.get(cfg.adv_estimator)(inputs)` without knowing which one it runs.

Masks may have holes (multi-turn data: tool/user tokens inside the response are
masked). Recursions over time skip masked tokens: a masked token contributes no
reward or value and does not break the discount chain, exactly as if the hole were
cut out of the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlhf.algorithms.masked import masked_whiten
from rlhf.algorithms.registry import Registry
from rlhf.algorithms.shaping import place_scores_on_last_token

ADV_ESTIMATORS = Registry("advantage estimator")


@dataclass(frozen=True)
class EstimatorNeeds:
    """What an advantage estimator reads, declared at registration; the config is
    validated against it and the controller derives its phases from it."""

    critic: bool = False  # reads `values`: the run needs a critic role (and trains it)
    token_rewards: bool = False  # reads `token_rewards`: a KL penalty in the reward reaches it
    groups: bool = False  # compares samples of one prompt: needs rollout.n >= 2


def estimator_needs(name: str) -> EstimatorNeeds:
    """The declared needs of the registered estimator `name` (KeyError if unknown)."""
    return ADV_ESTIMATORS.traits(name) or EstimatorNeeds()


@dataclass
class AdvantageInputs:
    """Everything an advantage estimator may read; each uses a subset."""

    token_rewards: (
        Tensor  # (B, T) per-token rewards: score at last valid token (+ KL penalty if any)
    )
    scores: Tensor  # (B,) sequence-level scores, before any KL penalty
    response_mask: Tensor  # (B, T) 1 for valid response tokens (multi-turn: holes allowed)
    group_ids: Tensor  # (B,) long; same id = responses to the same prompt
    values: Tensor | None = None  # (B, T) critic values (gae only)
    gamma: float = 1.0  # discount per valid token
    lam: float = 1.0  # GAE lambda
    norm_adv_by_std: bool = True  # grpo: False = Dr. GRPO (mean-centred only)
    whiten: bool = True  # gae / reinforce++: whiten advantages over the batch
    eps: float = 1e-6  # added to the group std (grpo)


def compute_advantages(name: str, inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Run the registered estimator `name`. Shape: -> advantages (B, T), returns (B, T)."""
    return ADV_ESTIMATORS.get(name)(inputs)


def _gae_scan(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Reverse scan A_t = delta_t + gamma*lam*A_next over valid tokens only.

    delta_t = r_t + gamma*V_next - V_t, where "next" is the next *valid* token
    (V = 0 after the last one). Masked tokens carry A_next and V_next through unchanged.
    Shape: rewards, values, mask (B, T) -> (B, T), 0 where mask is 0.
    """
    valid = mask.bool()
    zero = rewards.new_zeros(rewards.shape[0])
    next_value, next_adv = zero, zero
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(valid[:, t], adv_t, zero)
    return advantages


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Return-to-go G_t = r_t + gamma*G_next over valid tokens (GAE with V = 0, lam = 1).

    Shape: rewards, mask (B, T) -> (B, T).
    """
    values = torch.zeros_like(rewards)
    return _gae_scan(rewards, values, mask, gamma, 1.0)


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.float32)


def _group_stats(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (score - group mean, group size, unbiased group std).

    Deviations are taken from the group minimum first, so a group of equal scores
    gives exactly 0 (sum/n rounding would leave ~1e-8, which dividing by a ~1e-8 std
    would blow up). A group of one has std 0. Shape: (B,) -> three (B,).
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    scores = _as_float(scores)
    pivot = scores.new_full((n_groups,), float("inf")).scatter_reduce(0, inverse, scores, "amin")
    shifted = scores - pivot[inverse]
    counts = scores.new_zeros(n_groups).index_add_(0, inverse, torch.ones_like(scores))
    shifted_mean = scores.new_zeros(n_groups).index_add_(0, inverse, shifted) / counts
    centred = shifted - shifted_mean[inverse]
    sq_dev = scores.new_zeros(n_groups).index_add_(0, inverse, centred.square())
    std = torch.sqrt(sq_dev / (counts - 1).clamp_min(1))
    return centred, counts[inverse], std[inverse]


def _broadcast(seq_adv: Tensor, mask: Tensor) -> Tensor:
    """Shape: (B,) -> (B, T), copied onto valid tokens, 0 elsewhere."""
    return torch.where(mask.bool(), seq_adv.unsqueeze(-1), 0.0)


@ADV_ESTIMATORS.register("gae", EstimatorNeeds(critic=True, token_rewards=True))
def gae(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    returns = unwhitened advantages + values (the critic's regression target);
    advantages are then whitened over all valid tokens of the batch if `whiten`.
    """
    if inputs.values is None:
        raise ValueError("gae needs AdvantageInputs.values (critic values)")
    mask = inputs.response_mask
    advantages = _gae_scan(inputs.token_rewards, inputs.values, mask, inputs.gamma, inputs.lam)
    returns = torch.where(mask.bool(), advantages + inputs.values, 0.0)
    if inputs.whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns


@ADV_ESTIMATORS.register("grpo", EstimatorNeeds(groups=True))
def grpo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Group-relative advantage (GRPO, Shao et al. 2024 DeepSeekMath, arXiv:2402.03300).

    A_i = (s_i - mean_group) / (std_group + eps), unbiased std, same value on every
    valid token. `norm_adv_by_std=False` is Dr. GRPO (Liu et al. 2025, arXiv:2503.20783):
    dividing by the std up-weights near-unanimous groups, a difficulty bias.
    All-equal groups and groups of one get 0. returns = advantages.
    """
    centred, _, std = _group_stats(inputs.scores, inputs.group_ids)
    seq_adv = centred / (std + inputs.eps) if inputs.norm_adv_by_std else centred
    advantages = _broadcast(seq_adv, inputs.response_mask)
    return advantages, advantages.clone()


@ADV_ESTIMATORS.register("rloo", EstimatorNeeds(groups=True))
def rloo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, arXiv:2402.14740).

    A_i = s_i - mean of the other k-1 scores of the group, so the baseline is
    independent of the sample it corrects (unbiased). A group of one has no baseline
    and gets 0. returns = advantages.
    """
    centred, counts, _ = _group_stats(inputs.scores, inputs.group_ids)
    # s_i - (sum - s_i)/(k-1) == k/(k-1) * (s_i - mean): reuses the exactly-centred scores.
    seq_adv = centred * counts / (counts - 1).clamp_min(1)
    advantages = _broadcast(seq_adv, inputs.response_mask)
    return advantages, advantages.clone()


def _reinforce_returns(rewards: Tensor, inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    mask = inputs.response_mask
    returns = discounted_returns(rewards, mask, inputs.gamma)
    advantages = masked_whiten(returns, mask) if inputs.whiten else returns.clone()
    return advantages, returns


@ADV_ESTIMATORS.register("reinforce++", EstimatorNeeds(token_rewards=True))
def reinforce_pp(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu et al. 2025, arXiv:2501.03262): critic-free PPO.

    returns = discounted return-to-go of token_rewards (score + per-token KL penalty);
    advantages = returns whitened over the whole batch (global, not per group).
    """
    return _reinforce_returns(inputs.token_rewards, inputs)


@ADV_ESTIMATORS.register("reinforce++-baseline", EstimatorNeeds(token_rewards=True, groups=True))
def reinforce_pp_baseline(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE++ with a group-mean baseline (Hu et al. 2025, arXiv:2501.03262).

    Only the score is baselined: token_rewards - placed(score) + placed(score - group_mean),
    i.e. the group mean is subtracted at the last valid token while the caller's
    per-token KL penalty stays where it is. Then return-to-go and global whitening.
    """
    centred, _, _ = _group_stats(inputs.scores, inputs.group_ids)
    mask = inputs.response_mask
    shaped = (
        inputs.token_rewards
        - place_scores_on_last_token(inputs.scores, mask)
        + place_scores_on_last_token(centred, mask)
    )
    return _reinforce_returns(shaped, inputs)
