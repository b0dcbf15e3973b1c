"""CPU-only. Score placement, KL-shaped token rewards, DAPO overlong penalty, truncated IS."""

import pytest
import torch

from rlhf.algorithms import (
    last_token_index,
    overlong_penalty,
    place_scores_on_last_token,
    token_rewards_with_kl,
    truncated_is_weights,
)

MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])


def test_last_token_index_with_holes_and_empty_rows():
    assert last_token_index(MASK).tolist() == [2, 2, -1, 3]


def test_place_scores():
    placed = place_scores_on_last_token(torch.tensor([1.0, 2.0, 3.0, 4.0]), MASK)
    expected = torch.zeros(4, 4)
    expected[0, 2], expected[1, 2], expected[3, 3] = 1.0, 2.0, 4.0
    torch.testing.assert_close(placed, expected)  # the empty row drops its score


def test_token_rewards_with_kl():
    scores = torch.tensor([1.0, 0.5, 0.0, -1.0])
    logp = torch.full((4, 4), -1.0)
    ref = torch.full((4, 4), -1.5)
    rewards, kl = token_rewards_with_kl(scores, MASK, logp, ref, kl_coef=0.1, estimator="k1")
    torch.testing.assert_close(kl, 0.5 * MASK.float())
    torch.testing.assert_close(rewards, place_scores_on_last_token(scores, MASK) - 0.05 * MASK)
    rewards, kl = token_rewards_with_kl(scores, MASK)
    torch.testing.assert_close(rewards, place_scores_on_last_token(scores, MASK))
    assert (kl == 0).all()


def test_overlong_penalty_table():
    lengths = torch.tensor([0, 12, 16, 18, 20, 25])
    expected = torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -0.5])
    torch.testing.assert_close(
        overlong_penalty(lengths, max_length=20, buffer_length=4, penalty_factor=0.5), expected
    )
    with pytest.raises(ValueError):
        overlong_penalty(lengths, max_length=20, buffer_length=0)


def test_truncated_is_weights():
    old = torch.tensor([[-1.0, -1.0, 0.0], [-3.0, -1.0, 5.0]], requires_grad=True)
    rollout = torch.tensor([[-1.0, -1.5, -5.0], [-1.0, -1.0, -5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = truncated_is_weights(old, rollout, mask, cap=2.0)
    expected = torch.tensor([[1.0, 0.5, 2.0], [0.0, 1.0, 0.0]])
    expected[0, 1] = torch.exp(torch.tensor(0.5))
    expected[1, 0] = torch.exp(torch.tensor(-2.0))
    torch.testing.assert_close(w, expected)
    assert not w.requires_grad
