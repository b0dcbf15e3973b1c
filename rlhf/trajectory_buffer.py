"""The buffer between rollout and trainer: batches of upcoming steps, oldest first.

Each slot holds the batch of one future step, either in flight on the engines (the
launch handle) or ready (collected and scored, a `SampledRound`). Every sample records
the weight version that produced it (`Batch.weight_version`); `rlhf.overlap` decides
when slots are launched and collected. Ready batches are part of the checkpoint
(`save`/`load`): a resumed run trains on the very samples the interrupted one would have.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhf.batch import Batch
from rlhf.data import PromptSet
from rlhf.group_filter import SampledRound


@dataclass
class _Slot:
    step: int                           # the step that trains on this batch
    launched: object = None             # the generation under way (what collect needs)
    ready: SampledRound | None = None


class TrajectoryBuffer:
    def __init__(self):
        self._slots: list[_Slot] = []

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def in_flight(self) -> int:
        return sum(s.launched is not None for s in self._slots)

    @property
    def next_step(self) -> int | None:
        """The step after the newest slot's (None when empty)."""
        return self._slots[-1].step + 1 if self._slots else None

    def launch(self, step: int, launched) -> None:
        if self._slots and step != self._slots[-1].step + 1:
            raise RuntimeError(f"batches launch in step order: step {step} after {self._slots[-1].step}")
        self._slots.append(_Slot(step, launched=launched))

    def finish(self, collect_and_score: Callable[[object], SampledRound]) -> None:
        """Wait for every generation in flight, oldest first, and score it."""
        for slot in self._slots:
            if slot.launched is not None:
                launched, slot.launched = slot.launched, None
                slot.ready = collect_and_score(launched)

    def take(self, step: int, collect_and_score: Callable[[object], SampledRound]) -> SampledRound | None:
        """Step `step`'s batch (collected now if still in flight); None when not held."""
        if not self._slots or self._slots[0].step != step:
            if any(s.step == step for s in self._slots):
                raise RuntimeError(f"step {step}'s batch is not the oldest in the buffer")
            return None
        slot = self._slots.pop(0)
        return slot.ready if slot.launched is None else collect_and_score(slot.launched)

    # ---------------------------------------------------------------- checkpoints
    def save(self, folder: Path) -> None:
        """The ready batches, if any, as `buffer.pt` (tensors only, loaded with
        weights_only) and `buffer.json` (steps, rows, texts, metrics): no pickles."""
        if self.in_flight:
            raise RuntimeError("finish() the generations in flight before saving the buffer")
        if not self._slots:
            return
        tensors, meta = {}, []
        for k, slot in enumerate(self._slots):
            r = slot.ready
            tensors[str(k)] = {f.name: getattr(r.batch, f.name) for f in dataclasses.fields(r.batch)}
            rows = {"prompt_ids": r.rows.prompt_ids, "prompts": r.rows.prompts, "labels": r.rows.labels,
                    "columns": r.rows.columns, "source": r.rows.source}
            meta.append({"step": slot.step, "rows": rows, "texts": r.texts, "finish": r.finish, "metrics": r.metrics})
        torch.save(tensors, folder / "buffer.pt")
        (folder / "buffer.json").write_text(json.dumps({"batches": meta}))

    def load(self, folder: Path, step: int) -> None:
        """`step`: the checkpoint's step (the oldest batch of a one-batch buffer is its)."""
        self._slots = []
        if not (folder / "buffer.json").exists():
            return
        state = json.loads((folder / "buffer.json").read_text())
        tensors = torch.load(folder / "buffer.pt", weights_only=True)
        if "batches" not in state:  # a checkpoint of the one-batch buffer
            state, tensors = {"batches": [{"step": step, **state}]}, {"0": tensors}
        for k, b in enumerate(state["batches"]):
            rows = PromptSet(dropped_too_long=0, **b["rows"])
            ready = SampledRound(rows, Batch(**tensors[str(k)]), b["texts"], b["finish"], b["metrics"])
            self._slots.append(_Slot(b["step"], ready=ready))


def staleness_metrics(sample_versions: torch.Tensor, trainer_version: int, max_staleness: int,
                      token_versions: torch.Tensor | None = None) -> dict[str, float]:
    """How many weight versions the batch's samples (their oldest tokens) lag the policy
    that trains on them: mean, max and the fraction of samples at each lag
    0..max_staleness; with `token_versions` (B, R) (-1: no sampled token) also
    `async/resumed_frac`, the fraction of samples written by more than one version
    (rollout.partial resume).

    >>> staleness_metrics(torch.tensor([3, 3, 2, 2]), 3, 1)
    {'async/staleness_mean': 0.5, 'async/staleness_max': 1.0, 'async/staleness_0': 0.5, 'async/staleness_1': 0.5}
    >>> staleness_metrics(torch.tensor([2, 3]), 3, 1, torch.tensor([[2, 3, -1], [3, 3, 3]]))["async/resumed_frac"]
    0.5
    """
    lag = trainer_version - sample_versions.long()
    out = {"async/staleness_mean": float(lag.float().mean()), "async/staleness_max": float(lag.max())}
    out.update({f"async/staleness_{k}": float((lag == k).float().mean()) for k in range(max_staleness + 1)})
    if token_versions is not None:
        out["async/resumed_frac"] = float((token_versions.max(-1).values > sample_versions.long()).float().mean())
    return out
