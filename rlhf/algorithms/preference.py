"""Preference math (pure torch): the Bradley-Terry reward-model loss and the DPO family.

A reward model r is trained so that P(chosen > rejected) = sigmoid(r_c - r_r - m)
(Bradley & Terry 1952; as used for RLHF reward models by Ouyang et al. 2022, eq. 1).
The optional margin m asks for a gap of at least m between the two scores
(Touvron et al. 2023, Llama 2, sec. 3.2.2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.algorithms.registry import Registry


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: float | Tensor = 0.0,
                       normalizer: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged over pairs, and the
    fraction of pairs ranked correctly (r_chosen > r_rejected; ties count as wrong).

    `normalizer`: divide the summed loss and hits by this count instead of the local
    number of pairs (the global pair count when a batch is split over micro-batches
    and ranks, so the parts add up to the batch mean).
    Shape: chosen, rejected (B,), margin scalar or (B,) -> loss (), acc ().

    >>> loss, acc = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]))
    >>> round(float(loss), 4), float(acc)   # log 2: an undecided pair
    (0.6931, 0.0)
    """
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} scores differ in shape")
    diff = chosen.float() - rejected.float()
    losses = -F.logsigmoid(diff - margin)  # logsigmoid: stable for large |diff|
    hits = (diff > 0).float()
    count = chosen.numel() if normalizer is None else normalizer
    return losses.sum() / count, hits.sum() / count


# ==================================================================== DPO family
DPO_LOSSES = Registry("DPO loss")


@DPO_LOSSES.register("sigmoid")
def _dpo_sigmoid(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7): -log sigmoid(beta * h)."""
    return -F.logsigmoid(beta * h)


@DPO_LOSSES.register("cdpo")
def _dpo_label_smoothed(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): each label
    is flipped with probability eps = label_smoothing,
    -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h)."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


@DPO_LOSSES.register("ipo")
def _ipo(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17): (h - 1/(2 beta))^2, a squared loss
    that pulls the log-ratio gap to a finite target instead of to infinity. Here beta is
    the paper's regularisation tau; h uses summed sequence log-probs, as in the paper."""
    return (h - 1.0 / (2.0 * beta)).square()


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, *,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             normalizer: Tensor | float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """A DPO-family loss on sequence log-probs (sums over each response's tokens).

        h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
        sigmoid: -log sigmoid(beta h); cdpo: label-smoothed; ipo: (h - 1/(2 beta))^2

    Implicit rewards r = beta * (log pi - log pi_ref). Metrics (sums / normalizer, like
    the loss, so parts over micro-batches and ranks add up): reward_acc (pairs with
    r_w > r_l; a tie counts as wrong), margin (mean r_w - r_l), chosen_reward,
    rejected_reward (means). `normalizer`: the global pair count (default: local).
    Shape: four (B,) -> loss (), metrics of ().

    >>> z = torch.zeros(1)
    >>> loss, m = dpo_loss(z, z, z, z)   # the policy is the reference: log 2, no margin
    >>> round(float(loss), 4), float(m["margin"])
    (0.6931, 0.0)
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_reward = beta * (policy_chosen.float() - ref_chosen.float())
    rejected_reward = beta * (policy_rejected.float() - ref_rejected.float())
    h = (chosen_reward - rejected_reward) / beta
    losses = DPO_LOSSES.get(loss_type)(h, beta, label_smoothing)
    count = chosen_reward.numel() if normalizer is None else normalizer
    metrics = {"reward_acc": (chosen_reward > rejected_reward).float().sum() / count,
               "margin": (chosen_reward - rejected_reward).detach().sum() / count,
               "chosen_reward": chosen_reward.detach().sum() / count,
               "rejected_reward": rejected_reward.detach().sum() / count}
    return losses.sum() / count, metrics
