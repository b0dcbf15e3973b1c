"""DAPO dynamic sampling (Yu et al. 2025, arXiv:2503.14476, sec. 3.2): keep only groups
whose rewards differ.

A group whose n responses all got the same reward has zero group-relative advantage,
so it adds no policy gradient and only dilutes the batch. With `algorithm.filter_groups`
the controller generates rounds of `train.prompts_per_step` prompts and feeds each
scored round to a `GroupFilter` until it holds that many informative groups, or
`algorithm.max_gen_batches` rounds were generated. At the cap the batch is topped up
with dropped groups (zero advantage: they change only the KL/entropy terms and the
loss normalisation), so every batch keeps the shape the batch arithmetic was checked
for; `rollout/filter_cap_hit` = 1 flags such a step.

Pure logic on `rlhf.batch.Batch` / `rlhf.data.PromptSet`: no Ray, no workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlhf.batch import Batch
from rlhf.data import PromptSet


@dataclass
class SampledRound:
    """One generation round: prompt i owns batch rows i*n .. i*n+n-1 (and those texts)."""
    rows: PromptSet
    batch: Batch                       # with `scores`
    texts: list[str]
    finish: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def informative_groups(scores: Tensor, n: int) -> Tensor:
    """True for groups whose scores are not all equal. NaN counts as different, so a
    NaN reward reaches the step's NaN check instead of being filtered away.
    Shape: scores (G*n,) -> (G,) bool."""
    groups = scores.view(-1, n)
    return ~(groups == groups[:, :1]).all(dim=1)


def concat_batches(batches: list[Batch], pad_id: int) -> Batch:
    """Rows of all `batches`, prompts re-left-padded to the longest (responses share R).
    Tensor fields set on every batch are kept; a field missing from any is dropped."""
    prompt_len = max(b.prompt_len for b in batches)
    padded = []
    for b in batches:
        extra = prompt_len - b.prompt_len
        padded.append(b.replace(
            input_ids=torch.nn.functional.pad(b.input_ids, (extra, 0), value=pad_id),
            attention_mask=torch.nn.functional.pad(b.attention_mask, (extra, 0), value=0)))
    names = [k for k, _ in padded[0]._fields()]
    fields = {k: [getattr(b, k) for b in padded] for k in names}
    return Batch(**{k: torch.cat(v) if all(x is not None for x in v) else None for k, v in fields.items()})


def concat_prompt_sets(sets: list[PromptSet]) -> PromptSet:
    join = lambda name: [x for s in sets for x in getattr(s, name)]  # noqa: E731
    columns = {k: [x for s in sets for x in s.columns[k]] for k in sets[0].columns}
    return PromptSet(join("prompt_ids"), join("prompts"), join("labels"), columns, 0, sets[0].source)


class GroupFilter:
    """Accumulates informative groups over generation rounds (see the module doc).

        keep = GroupFilter(target_groups=16, n=8, max_rounds=4, pad_id=0)
        while not keep.done:
            keep.add(generate_and_score_a_round())
        step_round = keep.result()
    """

    def __init__(self, target_groups: int, n: int, max_rounds: int, pad_id: int) -> None:
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.target, self.n, self.max_rounds, self.pad_id = target_groups, n, max_rounds, pad_id
        self.kept: list[tuple[SampledRound, list[int]]] = []     # (round, its informative group indices)
        self.dropped: list[tuple[SampledRound, list[int]]] = []
        self.rounds = self.generated = self.informative = 0
        self.metric_sums: dict[str, list[float]] = {}

    @property
    def done(self) -> bool:
        return self.informative >= self.target or self.rounds >= self.max_rounds

    def add(self, sampled: SampledRound) -> None:
        mask = informative_groups(sampled.batch.scores, self.n)
        good = mask.nonzero().flatten().tolist()
        bad = (~mask).nonzero().flatten().tolist()
        self.kept.append((sampled, good))
        self.dropped.append((sampled, bad))
        self.rounds += 1
        self.generated += len(mask)
        self.informative += len(good)
        for k, v in sampled.metrics.items():
            self.metric_sums.setdefault(k, []).append(v)

    def result(self) -> SampledRound:
        """The step's `target` groups: informative ones in generation order, then (cap
        hit) dropped ones. Group ids are renumbered 0..target-1 in row order."""
        picks = self._take(self.kept, self.target)
        short = self.target - sum(len(groups) for _, groups in picks)
        if short:
            picks += self._take(self.dropped, short)
        parts = [self._select(sampled, groups) for sampled, groups in picks if groups]
        batch = concat_batches([p.batch for p in parts], self.pad_id)
        batch = batch.replace(group_ids=torch.arange(batch.size) // self.n)
        metrics = {k: sum(v) / len(v) for k, v in self.metric_sums.items()}  # reward metrics: mean over rounds
        metrics.update({"rollout/gen_rounds": float(self.rounds),
                        "rollout/groups_kept_frac": self.informative / max(self.generated, 1),
                        "rollout/filter_cap_hit": float(short > 0),
                        "rollout/informative_groups_frac": (self.target - short) / self.target})
        return SampledRound(concat_prompt_sets([p.rows for p in parts]), batch,
                            [x for p in parts for x in p.texts], [x for p in parts for x in p.finish], metrics)

    @staticmethod
    def _take(pool: list[tuple[SampledRound, list[int]]], count: int) -> list[tuple[SampledRound, list[int]]]:
        out = []
        for sampled, groups in pool:
            take = groups[:max(count, 0)]
            count -= len(take)
            out.append((sampled, take))
        return out

    def _select(self, sampled: SampledRound, groups: list[int]) -> SampledRound:
        rows = [g * self.n + j for g in groups for j in range(self.n)]
        return SampledRound(sampled.rows.rows(groups), sampled.batch.index(torch.tensor(rows)),
                            [sampled.texts[r] for r in rows], [sampled.finish[r] for r in rows])
