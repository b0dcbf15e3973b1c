"""Balanced partitions of sequences into micro-batches by token cost (pure Python).

A micro-batch costs about its token count (packed) or rows x width (padded), and
the ranks of a data-parallel group wait for the slowest one at every collective, so
micro-batches are made as even as possible rather than filled greedily in order.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Sequence


def balanced_partition(costs: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of `costs` split into `parts` bins of near-equal total cost.

    Longest-processing-time greedy: items by decreasing cost, each into the bin with
    the smallest total so far (ties: the bin with fewer items, then the lower index).
    The largest bin is within 4/3 of the optimum (Graham 1969), in practice within
    one item's cost of the mean. Each bin's indices are ascending; bins may be empty
    when parts > len(costs).
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    heap = [(0, 0, b) for b in range(parts)]  # (total cost, items, bin)
    bins: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        total, count, b = heapq.heappop(heap)
        bins[b].append(i)
        heapq.heappush(heap, (total + costs[i], count + 1, b))
    return [sorted(b) for b in bins]


def equal_count_partition(costs: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of `costs` in `parts` bins of exactly len(costs) / parts items each, with
    near-equal total cost: longest-processing-time greedy among the bins that still have
    room. For data-parallel ranks, which must hold as many rows each (fixed micro-batch
    counts) but should hold about as many real tokens. Each bin's indices are ascending."""
    if parts < 1 or len(costs) % parts:
        raise ValueError(f"{len(costs)} items do not split into {parts} equal parts")
    room = len(costs) // parts
    heap = [(0, b) for b in range(parts)]  # (total cost, bin) of the bins with room
    bins: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        total, b = heapq.heappop(heap)
        bins[b].append(i)
        if len(bins[b]) < room:
            heapq.heappush(heap, (total + costs[i], b))
    return [sorted(b) for b in bins]


def parts_for_budget(costs: Sequence[int], budget: int) -> int:
    """The fewest bins `balanced_partition` fills with at most `budget` each (an item
    costlier than the budget gets a bin of its own and counts as fitting)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    oversized = sum(c > budget for c in costs)
    rest = [c for c in costs if c <= budget]
    parts = math.ceil(sum(rest) / budget) if rest else 0
    while rest and max(sum(rest[i] for i in b) for b in balanced_partition(rest, parts)) > budget:
        parts += 1
    return max(1, parts + oversized)


def budget_partition(costs: Sequence[int], budget: int, parts: int | None = None) -> list[list[int]]:
    """`costs` in bins of at most `budget` (an oversized item alone in its bin),
    balanced; `parts` given (>= the fewest that fit, e.g. the maximum over ranks so
    every rank runs as many micro-batches): exactly that many bins, none empty if
    parts <= len(costs)."""
    needed = parts_for_budget(costs, budget)
    parts = needed if parts is None else parts
    if parts < needed:
        raise ValueError(f"{parts} micro-batches cannot hold these sequences within {budget} tokens")
    big = [i for i, c in enumerate(costs) if c > budget]
    small = [i for i, c in enumerate(costs) if c <= budget]
    bins = [[i] for i in big]
    if parts > len(big):
        bins += [[small[j] for j in b] for b in balanced_partition([costs[i] for i in small], parts - len(big))]
    return _fill_empty(bins)


def _fill_empty(bins: list[list[int]]) -> list[list[int]]:
    """Move single items out of the fullest-by-count bins into empty ones, so every bin
    (hence every forward) has at least one sequence when there are enough items."""
    bins = [list(b) for b in bins]
    for empty in [b for b in bins if not b]:
        donor = max(bins, key=len)
        if len(donor) < 2:
            break
        empty.append(donor.pop())
    return [sorted(b) for b in bins]
