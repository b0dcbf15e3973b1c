"""Reward-model math: the Bradley-Terry pairwise loss (pure torch).

A reward model r is trained so that P(chosen > rejected) = sigmoid(r_c - r_r - m)
(Bradley & Terry 1952; as used for RLHF reward models by Ouyang et al. 2022, eq. 1).
The optional margin m asks for a gap of at least m between the two scores
(Touvron et al. 2023, Llama 2, sec. 3.2.2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
