"""Balanced token-budget partitions (rlhf.partition): every index exactly once, bins
within the budget, near-equal loads, a fixed number of bins on request."""
from __future__ import annotations

import random

import pytest

from rlhf.partition import balanced_partition, budget_partition, equal_count_partition, parts_for_budget


def loads(costs, bins):
    return [sum(costs[i] for i in b) for b in bins]


def assert_exact_cover(bins, n):
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(n))
    assert all(b == sorted(b) for b in bins)


def test_balanced_partition_is_even_on_a_long_tail():
    rng = random.Random(0)
    costs = [min(512, int(rng.paretovariate(1.2) * 16)) for _ in range(64)]
    bins = balanced_partition(costs, 4)
    assert_exact_cover(bins, 64)
    total = loads(costs, bins)
    # LPT: the largest bin exceeds the mean by less than the largest item placed last,
    # far better than contiguous chunks of the same long-tailed list
    assert max(total) - sum(costs) / 4 <= max(costs)
    chunks = [sum(costs[i:i + 16]) for i in range(0, 64, 16)]
    assert max(total) - min(total) < max(chunks) - min(chunks)


def test_balanced_partition_known_case_and_empty_bins():
    costs = [7, 5, 4, 3, 3, 2]  # total 24: LPT gives 7+3+2 = 12 | 5+4+3 = 12
    bins = balanced_partition(costs, 2)
    assert sorted(loads(costs, bins)) == [12, 12]
    assert balanced_partition([5], 3) == [[0], [], []]
    with pytest.raises(ValueError, match="parts"):
        balanced_partition([1], 0)


@pytest.mark.parametrize("seed", range(5))
def test_budget_partition_respects_budget_with_fewest_bins(seed):
    rng = random.Random(seed)
    costs = [rng.randint(1, 100) for _ in range(rng.randint(1, 40))]
    budget = 150
    bins = budget_partition(costs, budget)
    assert_exact_cover(bins, len(costs))
    assert max(loads(costs, bins)) <= budget
    assert len(bins) >= -(-sum(costs) // budget)  # at least the volume bound
    assert len(bins) == parts_for_budget(costs, budget)
    # one bin fewer cannot be balanced within the budget by the same rule
    if len(bins) > 1:
        assert max(loads(costs, balanced_partition(costs, len(bins) - 1))) > budget


def test_budget_partition_oversized_items_alone_and_fixed_parts():
    costs = [300, 10, 20, 400, 30]
    bins = budget_partition(costs, 100)
    assert_exact_cover(bins, 5)
    assert [0] in bins and [3] in bins and len(bins) == 3
    more = budget_partition(costs, 100, parts=5)  # lockstep with a rank that needs 5
    assert_exact_cover(more, 5)
    assert len(more) == 5 and all(more)  # no empty micro-batch
    with pytest.raises(ValueError, match="cannot hold"):
        budget_partition(costs, 100, parts=2)
    with pytest.raises(ValueError, match="budget"):
        budget_partition(costs, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_count_partition_deals_tokens_evenly_with_equal_rows(seed):
    """Data-parallel ranks: exactly n / parts rows each, loads far more even than the
    contiguous chunks of a long-tailed batch whose long rows sit together."""
    rng = random.Random(seed)
    costs = sorted(min(512, int(rng.paretovariate(1.2) * 16)) for _ in range(64))  # long rows last
    bins = equal_count_partition(costs, 4)
    assert_exact_cover(bins, 64)
    assert [len(b) for b in bins] == [16] * 4
    chunks = [list(range(i * 16, (i + 1) * 16)) for i in range(4)]
    spread, chunk_spread = max(loads(costs, bins)) - min(loads(costs, bins)), max(loads(costs, chunks)) - min(loads(costs, chunks))
    assert spread <= max(costs)
    assert spread < chunk_spread / 4


def test_equal_count_partition_known_case_and_refusal():
    assert equal_count_partition([9, 1, 8, 2], 2) == [[0, 1], [2, 3]]  # 10 and 10
    assert equal_count_partition([5, 5, 5], 1) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="do not split into 2 equal parts"):
        equal_count_partition([1, 2, 3], 2)
