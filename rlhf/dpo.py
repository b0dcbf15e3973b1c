"""`rlhf dpo`: Direct Preference Optimization (Rafailov et al. 2023) on preference pairs.

    stage = DPORun(load_config("recipes/dpo_tiny.yaml")); stage.setup(); stage.train(); stage.finish()

No reward model and no sampling: the policy is trained on (prompt, chosen, rejected)
pairs against a frozen copy of its initial weights (workers.dpo_trainer), with the
loss of train.loss (DPO, IPO or label-smoothed cDPO: rlhf.algorithms.DPO_LOSSES).
Held-out accuracy: the fraction of pairs whose implicit reward
beta * (log pi - log pi_ref) is higher for the chosen response (chance = 0.5; at
step 0 every margin is 0, a tie, which counts as wrong). HF export `dpo_policy/`
(a causal LM, usable as `model.policy` of a PPO recipe).
"""
from __future__ import annotations

from rlhf.pair_stage import PairStageRun
from workers.dpo_trainer import DPOTrainerWorker


class DPORun(PairStageRun):
    worker_cls = DPOTrainerWorker
    export_name = "dpo_policy"
    progress_keys = ("dpo/loss", "dpo/reward_acc", "dpo/margin", "dpo/eval_acc", "timing/step")

    def step(self, indices: list[int]) -> dict:
        # one optimizer step; each rank gets whole (chosen, rejected) pairs
        t = self.cfg.train
        batch = self.pairs(indices)
        metrics = self.group.gather(self.group.call_split("train_step", batch, beta=t.beta, loss_type=t.loss,
                                                          label_smoothing=t.label_smoothing))[0]
        return {k: v for k, v in metrics.items() if k.startswith("dpo/") and k != "dpo/skipped_steps"}

    def evaluate(self) -> dict:
        """Held-out implicit-reward accuracy and mean margin beta * h."""
        batch = self.held_out_pairs()
        h = self.group.gather_cat(self.group.call_split("eval_margins", batch))
        return {"dpo/eval_acc": float((h > 0).float().mean()),
                "dpo/eval_margin": float(self.cfg.train.beta * h.mean())}
