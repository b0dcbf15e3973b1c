"""`rlhf rm`: reward-model training on preference pairs (Bradley-Terry).

    stage = RMRun(load_config("recipes/rm_tiny.yaml")); stage.setup(); stage.train(); stage.finish()

Loss -log sigmoid(r_chosen - r_rejected - margin) with r read at the last real token
of a one-output head; held-out pairwise accuracy (r_chosen > r_rejected; chance = 0.5)
and mean reward gap; HF export `reward_model/` (AutoModelForSequenceClassification),
usable as `model.reward_model=` of a PPO recipe and by scripts/serve_reward_model.py.
"""
from __future__ import annotations

from rlhf.pair_stage import PairStageRun
from workers.rm_trainer import RewardTrainerWorker


class RMRun(PairStageRun):
    worker_cls = RewardTrainerWorker
    export_name = "reward_model"
    progress_keys = ("rm/loss", "rm/acc", "rm/eval_acc", "rm/eval_gap", "timing/step")

    def step(self, indices: list[int]) -> dict:
        # one optimizer step; each rank gets whole (chosen, rejected) pairs
        batch = self.pairs(indices)
        metrics = self.group.gather(self.group.call_split("train_step", batch, margin=self.cfg.train.margin))[0]
        return {k: metrics[k] for k in ("rm/loss", "rm/acc", "rm/gap", "rm/lr", "rm/grad_norm")}

    def evaluate(self) -> dict:
        """Held-out pairwise accuracy and mean gap r_chosen - r_rejected."""
        batch = self.held_out_pairs()
        scores = self.group.gather_cat(self.group.call_split("score", batch))
        gap = scores[0::2] - scores[1::2]
        return {"rm/eval_acc": float((gap > 0).float().mean()), "rm/eval_gap": float(gap.mean()),
                "rm/eval_ties": float((gap == 0).float().mean())}  # low-precision scores tie; ties count as wrong
