"""Reward shaping: score placement, KL-penalised token rewards, DAPO overlong
penalty, and truncated importance-sampling weights for rollout/trainer mismatch."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlhf.algorithms.kl import kl_penalty


def last_token_index(response_mask: Tensor) -> Tensor:
    """Index of the last valid token of each row; -1 for a row with none.

    Shape: (B, T) -> (B,) long.
    """
    positions = torch.arange(response_mask.shape[-1], device=response_mask.device)
    return torch.where(response_mask.bool(), positions, -1).amax(dim=-1)


def place_scores_on_last_token(scores: Tensor, response_mask: Tensor) -> Tensor:
    """Sparse token rewards: each score on its row's last valid token, 0 elsewhere.

    Rows without a valid token drop their score. Shape: (B,), (B, T) -> (B, T).
    """
    scores = scores if scores.is_floating_point() else scores.to(torch.float32)
    last = last_token_index(response_mask)
    positions = torch.arange(response_mask.shape[-1], device=response_mask.device)
    is_last = positions.unsqueeze(0) == last.unsqueeze(-1)
    return torch.where(is_last, scores.unsqueeze(-1), 0.0)


def token_rewards_with_kl(
    scores: Tensor,
    response_mask: Tensor,
    logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """r_t = score * [t is last] - kl_coef * KL_t (Ziegler et al. 2019; Ouyang et al. 2022).

    The KL penalty in the reward keeps the policy near the reference on every token
    it generates. Without logprobs the KL is 0.
    Shape: scores (B,), others (B, T) -> token_rewards (B, T), kl (B, T); both 0 under mask.
    """
    rewards = place_scores_on_last_token(scores, response_mask)
    if logprobs is None or ref_logprobs is None:
        return rewards, torch.zeros_like(rewards)
    kl = torch.where(response_mask.bool(), kl_penalty(estimator, logprobs, ref_logprobs), 0.0)
    return rewards - kl_coef * kl, kl


def overlong_penalty(
    response_lengths: Tensor, max_length: int, buffer_length: int, penalty_factor: float = 1.0
) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13).

    0 for L <= max - buffer, then linear down to -penalty_factor at L = max, and
    -penalty_factor beyond: a graded signal instead of a cliff at truncation.
    Shape: (B,) -> (B,) float.
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(f"need 0 < buffer_length <= max_length, got {buffer_length}, {max_length}")
    excess = response_lengths.to(torch.float32) - (max_length - buffer_length)
    return -penalty_factor * torch.clamp(excess / buffer_length, 0.0, 1.0)


@torch.no_grad()
def truncated_is_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor, cap: float = 2.0
) -> Tensor:
    """Truncated importance weights min(pi_old / pi_rollout, cap), 0 under mask, no gradient.

    The inference engine (vLLM) and the trainer compute slightly different
    probabilities for the same tokens, so "on-policy" rollouts are off-policy;
    Yao et al. 2025 ("Your efficient RL framework secretly brings you off-policy RL
    training") correct this with truncated IS. Shape: (B, T) -> (B, T).
    """
    log_ratio = torch.clamp(old_logprobs - rollout_logprobs, max=math.log(cap))
    return torch.where(response_mask.bool(), torch.exp(log_ratio), 0.0)
