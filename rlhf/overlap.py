"""Rollout/trainer overlap: what is generated ahead, when it is collected, what the
weight sync waits for. The controller calls only `batch_for`, `before_sync`, `drain`,
`save` and `load`; this is the one place that knows `rollout.mode`.

- `sync` (and `async` with max_staleness 0): nothing ahead; the controller generates
  each step's batch itself (this class is not used).
- `one_step`: step i+1's batch launches on the engines at step i's start, with the
  weights of step i, and runs while step i trains; it is collected and scored before
  step i's weight sync (the engines are free then). As in verl's one-step off-policy
  trainer.
- `async` with max_staleness k >= 1: up to k batches ahead; at step i, every batch up to
  step i+k is launched (continuous generation), and the weight sync does not collect:
  a batch is collected when its step takes it. Batch j launches before step j-k's sync,
  so it was sampled by weights of version >= j-k and trains at version j (one sync per
  step): its lag is <= k by construction, checked on every take (AReaL's bounded
  staleness, arXiv:2505.24298).

What the engines do with requests in flight when the weights change is
`rollout.partial` (workers/partial.py): `finish`, the engine runs its calls in order and
applies the update after the batches launched before it (their tokens keep the old
version; reproducible); `resume`, the update pauses the engine between two steps and
the requests in flight go on under the new weights (each token records its version; a
sample's lag is its oldest token's, so the bound above still holds).

    step i:  take(i)  launch(..i+k)  [train i]  before_sync  sync -> version i+1
    checkpoint: drain (collect in flight), save every ready batch with its versions
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlhf.group_filter import SampledRound
from rlhf.trajectory_buffer import TrajectoryBuffer, staleness_metrics


def batches_ahead(mode: str, max_staleness: int) -> int:
    """How many steps' batches may be generated ahead of the step that trains."""
    return {"sync": 0, "one_step": 1, "async": max_staleness}[mode]


class RolloutOverlap:
    def __init__(self, mode: str, max_staleness: int, total_steps: int, *,
                 launch: Callable[[int], object], collect: Callable[[object], SampledRound],
                 generate: Callable[[int], SampledRound]):
        """`launch(step)` starts step's batch on the engines and returns a handle;
        `collect(handle)` waits for and scores it; `generate(step)` does both now
        (a step with nothing ahead: the first, or after a resume without a buffer)."""
        self.ahead = batches_ahead(mode, max_staleness)
        self.max_staleness = max_staleness
        self.collect_before_sync = mode == "one_step"
        self.total_steps = total_steps
        self._launch, self._collect, self._generate = launch, collect, generate
        self.buffer = TrajectoryBuffer()

    @property
    def enabled(self) -> bool:
        return self.ahead > 0

    def batch_for(self, step: int, trainer_version: int) -> SampledRound:
        """Step `step`'s batch, with its staleness metrics; launches what now fits ahead."""
        sampled = self.buffer.take(step, self._collect) or self._generate(step)
        lag = trainer_version - int(sampled.batch.weight_version.min())
        if lag > self.max_staleness:  # the schedule makes this impossible: a bug if seen
            raise RuntimeError(f"step {step + 1}: a sample {lag} weight versions behind the trainer, over "
                               f"rollout.max_staleness={self.max_staleness}")
        batch = sampled.batch
        sampled.metrics.update(staleness_metrics(batch.weight_version, trainer_version, self.max_staleness,
                                                 batch.token_version))
        first = self.buffer.next_step or step + 1
        for ahead in range(first, min(step + self.ahead, self.total_steps - 1) + 1):
            self.buffer.launch(ahead, self._launch(ahead))
        return sampled

    def before_sync(self) -> None:
        """one_step: collect and score the batch in flight before the weights change."""
        if self.collect_before_sync:
            self.buffer.finish(self._collect)

    def drain(self) -> None:
        """A checkpoint: wait for what is in flight (saved with the versions it had)."""
        self.buffer.finish(self._collect)

    def save(self, folder: Path) -> None:
        self.buffer.save(folder)

    def load(self, folder: Path, step: int) -> None:
        self.buffer.load(folder, step)
