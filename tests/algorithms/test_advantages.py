"""CPU-only. Advantage estimators: reference numbers, loop references, invariances."""

import itertools
import statistics

import pytest
import torch

from rlhf.algorithms import (
    ADV_ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    masked_whiten,
    place_scores_on_last_token,
)

# ---- slow, obviously-correct references ---------------------------------------------


def gae_loop(rewards, values, mask, gamma, lam):
    """Per row: cut out the masked tokens, run textbook GAE, scatter back."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        last_gae, next_value = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            last_gae = delta + gamma * lam * last_gae
            next_value = values[b, t].item()
            adv[b, t] = last_gae
    return adv


def group_loop(scores, group_ids):
    """Per sample: (mean, unbiased std, mean of the others) of its group, in plain Python."""
    out = []
    for i, gid in enumerate(group_ids.tolist()):
        members = [j for j, g in enumerate(group_ids.tolist()) if g == gid]
        vals = [scores[j].item() for j in members]
        others = [scores[j].item() for j in members if j != i]
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        loo = sum(others) / len(others) if others else None
        out.append((statistics.mean(vals), std, loo))
    return out


def random_batch(seed, b, t, hole_prob=0.25, n_groups=None):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t) < lengths[:, None]).float()
    holes = (torch.rand(b, t, generator=g) < hole_prob) & (torch.arange(t) > 0)
    mask = mask * (~holes)
    mask[:, 0] = 1.0  # keep every row non-empty
    scores = torch.randint(0, 3, (b,), generator=g).double() / 2
    token_rewards = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.1 * mask
    token_rewards = token_rewards + place_scores_on_last_token(scores, mask)
    values = torch.randn(b, t, generator=g, dtype=torch.float64)
    group_ids = torch.randint(0, n_groups or max(1, b // 2), (b,), generator=g) * 7 + 3
    return AdvantageInputs(token_rewards, scores, mask, group_ids, values=values)


# ---- reference numbers (verl core_algos on CPU) ---------------------------------------

REF_REWARDS = torch.tensor([[0, 0, 0, 1.0], [0, 0, 0.5, 0]])
REF_VALUES = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0]])
REF_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def test_gae_reference_numbers():
    inputs = AdvantageInputs(
        REF_REWARDS,
        REF_REWARDS.sum(-1),
        REF_MASK,
        torch.tensor([0, 1]),
        values=REF_VALUES,
        lam=0.95,
    )
    adv, ret = compute_advantages("gae", inputs)
    expected_ret = torch.tensor([[0.899675, 0.9365, 0.97, 1.0], [0.4855, 0.49, 0.5, 0]])
    expected_adv = torch.tensor(
        [[1.065766, 0.878446, 0.681266, 0.473708], [-1.348352, -1.038498, -0.712336, 0]]
    )
    torch.testing.assert_close(ret, expected_ret, atol=1e-5, rtol=0)
    torch.testing.assert_close(adv, expected_adv, atol=1e-5, rtol=0)
    inputs.gamma = 0.99
    _, ret = compute_advantages("gae", inputs)
    torch.testing.assert_close(
        ret[0], torch.tensor([0.87329, 0.918012, 0.9603, 1.0]), atol=1e-5, rtol=0
    )


def test_grpo_and_rloo_reference_numbers():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.5])
    mask = torch.ones(4, 3)
    inputs = AdvantageInputs(
        place_scores_on_last_token(scores, mask), scores, mask, torch.tensor([0, 0, 1, 1])
    )
    adv, ret = compute_advantages("grpo", inputs)
    torch.testing.assert_close(
        adv[:, 0], torch.tensor([0.707106, -0.707106] * 2), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(ret, adv)
    adv, _ = compute_advantages("rloo", inputs)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand(4, 3))


# ---- closed forms and loop references --------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_gae_gamma_lam_one_is_reward_to_go_minus_value(seed):
    inputs = random_batch(seed, 4, 6, hole_prob=0.0)
    inputs.whiten = False
    adv, ret = compute_advantages("gae", inputs)
    m = inputs.response_mask
    reward_to_go = (inputs.token_rewards * m).flip(-1).cumsum(-1).flip(-1) * m
    torch.testing.assert_close(ret, reward_to_go)
    torch.testing.assert_close(adv, (reward_to_go - inputs.values) * m)


@pytest.mark.parametrize(
    "b,t,seed,gamma,lam",
    [
        (b, t, s, g, lam)
        for b, t in [(1, 1), (2, 5), (5, 9)]
        for s in range(3)
        for g, lam in [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)]
    ],
)
def test_gae_matches_loop_with_holes(b, t, seed, gamma, lam):
    inputs = random_batch(seed, b, t)
    inputs.gamma, inputs.lam, inputs.whiten = gamma, lam, False
    adv, ret = compute_advantages("gae", inputs)
    expected = gae_loop(inputs.token_rewards, inputs.values, inputs.response_mask, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + inputs.values) * inputs.response_mask)
    inputs.whiten = True
    adv, _ = compute_advantages("gae", inputs)
    torch.testing.assert_close(adv, masked_whiten(expected, inputs.response_mask))


def test_gae_hole_neither_contributes_nor_breaks_chain():
    rewards = torch.tensor([[0.0, 99.0, 1.0]])
    values = torch.tensor([[0.2, 99.0, 0.5]])
    inputs = AdvantageInputs(
        rewards, rewards.sum(-1), torch.tensor([[1, 0, 1]]), torch.tensor([0]), values=values
    )
    inputs.whiten = False
    adv, ret = compute_advantages("gae", inputs)
    cut = AdvantageInputs(
        rewards[:, [0, 2]],
        rewards.sum(-1),
        torch.ones(1, 2),
        torch.tensor([0]),
        values=values[:, [0, 2]],
    )
    cut.whiten = False
    adv_cut, ret_cut = compute_advantages("gae", cut)
    torch.testing.assert_close(adv[:, [0, 2]], adv_cut)
    assert adv[0, 1] == 0 and ret[0, 1] == 0


@pytest.mark.parametrize("b,seed,norm", list(itertools.product([1, 4, 9], range(4), [True, False])))
def test_grpo_and_rloo_match_loop(b, seed, norm):
    inputs = random_batch(seed, b, 3, n_groups=3)
    inputs.norm_adv_by_std = norm
    grpo_adv, _ = compute_advantages("grpo", inputs)
    rloo_adv, _ = compute_advantages("rloo", inputs)
    for i, (mean, std, loo) in enumerate(group_loop(inputs.scores, inputs.group_ids)):
        s = inputs.scores[i].item()
        expected = (s - mean) / (std + inputs.eps) if norm else s - mean
        m = inputs.response_mask[i].bool()
        torch.testing.assert_close(
            grpo_adv[i][m], torch.full((int(m.sum()),), expected, dtype=torch.float64)
        )
        expected_loo = 0.0 if loo is None else s - loo
        torch.testing.assert_close(
            rloo_adv[i][m], torch.full((int(m.sum()),), expected_loo, dtype=torch.float64)
        )


@pytest.mark.parametrize("seed", range(3))
def test_reinforce_pp_matches_loop(seed):
    inputs = random_batch(seed, 5, 7)
    inputs.gamma = 0.9
    m = inputs.response_mask
    zeros = torch.zeros_like(inputs.token_rewards)
    expected_ret = gae_loop(inputs.token_rewards, zeros, m, 0.9, 1.0)
    adv, ret = compute_advantages("reinforce++", inputs)
    torch.testing.assert_close(ret, expected_ret)
    torch.testing.assert_close(adv, masked_whiten(expected_ret, m))
    # baseline variant: same as reinforce++ on rewards whose score is replaced by score - group mean
    baselined = inputs.scores - torch.tensor(
        [mean for mean, _, _ in group_loop(inputs.scores, inputs.group_ids)], dtype=torch.float64
    )
    shifted = (
        inputs.token_rewards
        - place_scores_on_last_token(inputs.scores, m)
        + place_scores_on_last_token(baselined, m)
    )
    expected_ret = gae_loop(shifted, zeros, m, 0.9, 1.0)
    adv, ret = compute_advantages("reinforce++-baseline", inputs)
    torch.testing.assert_close(ret, expected_ret)
    torch.testing.assert_close(adv, masked_whiten(expected_ret, m))


# ---- invariances ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce++-baseline"])
def test_equal_scores_and_singleton_groups_give_zero(name):
    # group 0: seven equal scores whose float mean is not exactly 0.1; group 1: a singleton
    scores = torch.tensor([0.1] * 7 + [0.3])
    mask = torch.ones(8, 2)
    group_ids = torch.tensor([0] * 7 + [1])
    inputs = AdvantageInputs(place_scores_on_last_token(scores, mask), scores, mask, group_ids)
    inputs.whiten = False
    adv, ret = compute_advantages(name, inputs)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv == 0).all()


@pytest.mark.parametrize("name", ADV_ESTIMATORS.names())
@pytest.mark.parametrize("seed", range(2))
def test_padding_after_eos_changes_nothing(name, seed):
    inputs = random_batch(seed, 4, 6)
    adv, ret = compute_advantages(name, inputs)
    pad = ~inputs.response_mask.bool()
    inputs.token_rewards = inputs.token_rewards.masked_fill(pad, 1e6)
    inputs.values = inputs.values.masked_fill(pad, 1e6)
    adv_pad, ret_pad = compute_advantages(name, inputs)
    torch.testing.assert_close(adv_pad, adv)
    torch.testing.assert_close(ret_pad, ret)
    assert (adv[pad] == 0).all() and (ret[pad] == 0).all()


def test_gae_without_values_is_an_error():
    inputs = random_batch(0, 2, 3)
    inputs.values = None
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", inputs)
