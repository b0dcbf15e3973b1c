"""The buffer between rollout and trainer in `rollout.mode: one_step`.

One-step off-policy (as in verl's one-step off-policy trainer and AReaL's bounded
staleness): step k+1's prompts start generating on the engines, with the weights of step
k's start, while step k trains; the trainer takes that batch at step k+1, one weight
version old. Its samples record the version that produced them (`Batch.weight_version`);
the actor corrects with truncated importance weights between the trainer's proximal
log-probs and the rollout's behaviour log-probs (decoupled PPO, Hilton et al. 2022,
arXiv:2110.00641; truncated IS, Yao et al. 2025 "Your efficient RL framework secretly
brings you off-policy RL training"): `algorithm.tis_cap`.

    launch(next step)  ─┐  generation + tools run on the engines ...
    train this step     │  ... while the trainer updates
    finish()           ─┘  collect and score before the weight sync (the engine is free)
    take()                 next step's batch

A finished batch is part of the checkpoint (`save`/`load`): a resumed run trains on the
very samples the interrupted one would have.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch

from rlhf.batch import Batch
from rlhf.data import PromptSet
from rlhf.group_filter import SampledRound


class TrajectoryBuffer:
    def __init__(self):
        self._launched = None                 # a generation under way, with what finish() needs
        self._ready: SampledRound | None = None

    @property
    def in_flight(self) -> bool:
        return self._launched is not None

    def launch(self, launched) -> None:
        if self._launched is not None or self._ready is not None:
            raise RuntimeError("one batch ahead at most: take() the ready one before launching the next")
        self._launched = launched

    def finish(self, collect_and_score: Callable[[object], SampledRound]) -> None:
        """Wait for the generation in flight (if any) and score it."""
        if self._launched is not None:
            launched, self._launched = self._launched, None
            self._ready = collect_and_score(launched)

    def take(self) -> SampledRound | None:
        ready, self._ready = self._ready, None
        return ready

    # ---------------------------------------------------------------- checkpoints
    def save(self, folder: Path) -> None:
        """The ready batch, if any, as `buffer.pt` (tensors only, loaded with
        weights_only) and `buffer.json` (rows, texts, metrics): no pickles."""
        if self._launched is not None:
            raise RuntimeError("finish() the generation in flight before saving the buffer")
        if self._ready is None:
            return
        r = self._ready
        torch.save({f.name: getattr(r.batch, f.name) for f in dataclasses.fields(r.batch)}, folder / "buffer.pt")
        rows = {"prompt_ids": r.rows.prompt_ids, "prompts": r.rows.prompts, "labels": r.rows.labels,
                "columns": r.rows.columns, "source": r.rows.source}
        (folder / "buffer.json").write_text(json.dumps({"rows": rows, "texts": r.texts, "finish": r.finish,
                                                        "metrics": r.metrics}))

    def load(self, folder: Path) -> None:
        self._launched = self._ready = None
        if not (folder / "buffer.json").exists():
            return
        state = json.loads((folder / "buffer.json").read_text())
        tensors = torch.load(folder / "buffer.pt", weights_only=True)
        rows = PromptSet(dropped_too_long=0, **state["rows"])
        self._ready = SampledRound(rows, Batch(**tensors), state["texts"], state["finish"], state["metrics"])


def staleness_metrics(sample_versions: torch.Tensor, trainer_version: int, max_staleness: int) -> dict[str, float]:
    """How many weight versions the batch's samples lag the policy that trains on them.

    >>> staleness_metrics(torch.tensor([3, 3, 2, 2]), 3, 1)
    {'async/staleness_mean': 0.5, 'async/staleness_max': 1.0, 'async/staleness_0': 0.5, 'async/staleness_1': 0.5}
    """
    lag = trainer_version - sample_versions.long()
    out = {"async/staleness_mean": float(lag.float().mean()), "async/staleness_max": float(lag.max())}
    out.update({f"async/staleness_{k}": float((lag == k).float().mean()) for k in range(max_staleness + 1)})
    return out
