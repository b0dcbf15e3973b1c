"""`rlhf rm`: reward-model training on preference pairs (Bradley-Terry).

    stage = RMRun(load_config("recipes/rm_tiny.yaml")); stage.setup(); stage.train(); stage.finish()

Loss -log sigmoid(r_chosen - r_rejected - margin) with r read at the last real token
of a one-output head; held-out pairwise accuracy (r_chosen > r_rejected; chance = 0.5)
and mean reward gap; HF export `reward_model/` (AutoModelForSequenceClassification),
usable as `model.reward_model=` of a PPO recipe and by scripts/serve_reward_model.py.
"""
from __future__ import annotations

from rlhf.preference_data import load_preferences, pair_batch, train_eval_split
from rlhf.stage_run import StageRun, say
from workers.rm_trainer import RewardTrainerWorker


class RMRun(StageRun):
    worker_cls = RewardTrainerWorker
    export_name = "reward_model"
    progress_keys = ("rm/loss", "rm/acc", "rm/eval_acc", "rm/eval_gap", "timing/step")

    row_name = "preference pairs"

    @property
    def rows_per_step(self) -> int:
        return self.cfg.train.mini_batch_size  # pairs

    def load_data(self) -> None:
        d = self.cfg.data
        load = lambda path: load_preferences(path, d, self.tokenizer)  # noqa: E731
        full = load(d.train_path)
        self.train_set, self.eval_set = train_eval_split(full, d.eval_path, d.eval_size, load)
        say(f"preference pairs from {d.train_path}: {full.summary()}; {len(self.train_set)} train, "
            f"{len(self.eval_set)} held out")

    def step(self, indices: list[int]) -> dict:
        # one optimizer step; each rank gets whole (chosen, rejected) pairs
        batch = pair_batch(self.train_set, indices, self.tokenizer.pad_token_id)
        metrics = self.group.gather(self.group.call_split("train_step", batch, margin=self.cfg.train.margin))[0]
        return {k: metrics[k] for k in ("rm/loss", "rm/acc", "rm/gap", "rm/lr", "rm/grad_norm")}

    def evaluate(self) -> dict:
        """Held-out pairwise accuracy and mean gap r_chosen - r_rejected."""
        batch = pair_batch(self.eval_set, range(self.even_rows(len(self.eval_set))), self.tokenizer.pad_token_id)
        scores = self.group.gather_cat(self.group.call_split("score", batch))
        gap = scores[0::2] - scores[1::2]
        return {"rm/eval_acc": float((gap > 0).float().mean()), "rm/eval_gap": float(gap.mean()),
                "rm/eval_ties": float((gap == 0).float().mean())}  # low-precision scores tie; ties count as wrong
