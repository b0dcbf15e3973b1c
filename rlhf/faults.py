"""What the controller does when a step or a worker goes wrong: NaN/Inf detection in a
batch, and restarting every role from the last checkpoint after a worker dies.
(README: "When things go wrong".)"""
from __future__ import annotations

import dataclasses

import torch

from rlhf.batch import Batch
from rlhf.config import RunConfig
from rlhf.metrics import say


def nonfinite_fields(batch: Batch) -> str:
    """'' if every float tensor the updates read is finite, else e.g. 'scores: 2 NaN'."""
    names = ("scores", "token_rewards", "old_logprobs", "ref_logprobs", "values", "advantages", "returns")
    found = []
    for name in names:
        tensor = getattr(batch, name)
        if tensor is not None and not torch.isfinite(tensor).all():
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            found.append(f"{name}: " + ", ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n))
    return "; ".join(found)


def train_with_restarts(cfg: RunConfig):
    """setup -> train -> finish (always cleanup). When a worker process dies or hangs (a
    call outlives run.call_timeout_s) and run.resume=auto, start all roles afresh in the
    same run directory from its last checkpoint, at most run.max_restarts times;
    otherwise the WorkerError ends the run."""
    from rlhf.controller import PPOTrainer
    from rlhf.stage_run import run_to_end
    from workers.group import WorkerError

    restarts = 0
    while True:
        trainer = PPOTrainer(cfg)
        try:
            return run_to_end(trainer)
        except WorkerError as err:
            run_dir = getattr(trainer, "run_dir", None)
            if not err.restartable or run_dir is None:
                raise
            if cfg.run.resume != "auto" or restarts >= cfg.run.max_restarts:
                raise WorkerError(f"{err}. Restarts used: {restarts} of run.max_restarts={cfg.run.max_restarts} "
                                  f"(restarting needs run.resume=auto). Resume by hand: rlhf train <recipe> "
                                  f"run.resume=auto run.run_dir={run_dir}", died=err.died, hung=err.hung) from err
            restarts += 1
            say(f"{err}\nrestart {restarts}/{cfg.run.max_restarts}: new roles, resuming from the last "
                f"checkpoint in {run_dir}")
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_dir=str(run_dir)))
