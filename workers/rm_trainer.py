"""The reward-model trainer: Bradley-Terry loss on preference pairs.

The model is a one-output per-token head on a transformer backbone (`load_value_model`,
the head of a sequence-classification checkpoint reused as is) read at the last real
token of each row, exactly as `workers.reward_model.RewardModelWorker` scores PPO
samples. Batches hold pairs as adjacent rows (2k chosen, 2k+1 rejected:
`rlhf.preference_data.pair_batch`). The export is a sequence-classification
checkpoint (same `score` weights), loadable by AutoModelForSequenceClassification.

Verbs: train_step, score, save_hf.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from rlhf.algorithms import bradley_terry_loss
from rlhf.batch import Batch
from workers.forwards import last_token_scores, load_value_model, micro_batches
from workers.trainer_base import DeepSpeedTrainer


class RewardTrainerWorker(DeepSpeedTrainer):
    role = "rm"

    def load_model(self, dtype: torch.dtype):
        return load_value_model(self.model_path, self.seed, dtype)

    def _scores(self, batch: Batch) -> Tensor:
        """Head output at the last real token of each row. Shape: (b, P+R) -> (b,) float32."""
        return last_token_scores(self.engine, batch, device=self.device, packed=self.packing)

    def train_step(self, batch: Batch, margin: float = 0.0) -> dict[str, float]:
        """One optimizer step on this rank's pairs; same metrics on every rank."""
        def loss_fn(mb: Batch, n_tokens: Tensor, n_seqs: Tensor, stats) -> Tensor:
            scores = self._scores(mb)
            n_pairs = n_seqs / 2  # every row is non-empty (responses end with EOS)
            loss, acc = bradley_terry_loss(scores[0::2], scores[1::2], margin, normalizer=n_pairs)
            stats.add("share", "rm/loss", loss.detach())
            stats.add("share", "rm/acc", acc)
            stats.add("share", "rm/gap", (scores[0::2] - scores[1::2]).detach().sum() / n_pairs)
            return loss

        return self._train(batch, 1, loss_fn)

    @torch.no_grad()
    def score(self, batch: Batch) -> Tensor:
        """Scores of this rank's rows. ZeRO-3: collective (same row count on every rank).
        Shape: (b, P+R) -> (b,) float32 on CPU."""
        self.engine.eval()
        return torch.cat([self._scores(mb).cpu() for mb in micro_batches(batch, self.train_cfg.micro_batch_size)])

    def save_hf(self, path: str) -> str:
        """Export as `<Arch>ForSequenceClassification`: the per-token head shares its
        weight names with the sequence head, only the declared architecture changes
        (rewritten after `save_pretrained`, which records the class it was called on)."""
        super().save_hf(path)
        if self.rank == 0:
            config_file = Path(path) / "config.json"
            config = json.loads(config_file.read_text())
            config["architectures"] = [a.replace("TokenClassification", "SequenceClassification")
                                       for a in config.get("architectures") or []]
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return path
