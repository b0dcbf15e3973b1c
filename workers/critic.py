"""The value trainer: a one-output per-token head on a transformer backbone.

Initialised from a reward model (its `score` head is reused) or from the policy (new
head, seeded): see `workers.forwards.load_value_model`. The value of response
token j is read at column P+j-1, the state before the token is emitted, aligned
with the actor's log-prob of that token.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms import explained_variance, masked_mean, value_loss
from rlhf.batch import Batch
from rlhf.config.schema import AlgorithmSection, TrainerSection, TrainSection
from rlhf.trace import traced
from workers.forwards import load_value_model, response_values
from workers.trainer_base import DeepSpeedTrainer


class CriticWorker(DeepSpeedTrainer):
    role = "critic"
    lora_task_type = "TOKEN_CLS"  # critic.lora: peft keeps the value head (`score`) fully trainable

    def __init__(self, model_path: str, trainer_cfg: TrainerSection, algo_cfg: AlgorithmSection,
                 train_cfg: TrainSection, seed: int = 1, dtype: str = "auto") -> None:
        super().__init__(model_path, trainer_cfg, train_cfg, seed=seed, dtype=dtype)
        self.algo = algo_cfg

    def load_model(self, dtype: torch.dtype):
        return load_value_model(self.model_path, self.seed, dtype)

    @traced("values")
    @torch.no_grad()
    def compute_values(self, batch: Batch) -> Tensor:
        """Values of this rank's response tokens. Shape: (b, P+R) -> (b, R) float32 on CPU."""
        self.engine.eval()
        return self.infer(batch, lambda mb: response_values(self.engine, mb, device=self.device, packed=self.packing))

    @traced("update")
    def update(self, batch: Batch) -> dict[str, float]:
        """Clipped value regression towards batch.returns around batch.values (the values
        before the update), train.ppo_epochs passes. Same metrics on every rank."""
        if batch.values is None or batch.returns is None:
            raise ValueError("critic update needs batch.values and batch.returns")
        algo = self.algo

        def loss_fn(mb: Batch, n_tokens: Tensor, n_seqs: Tensor, stats) -> Tensor:
            mask = mb.response_mask.to(self.device)
            returns = mb.returns.to(self.device)
            values = response_values(self.engine, mb, device=self.device, packed=self.packing)
            loss, metrics = value_loss(values, mb.values.to(self.device), returns, mask, clip=algo.value_clip,
                                       agg_mode=algo.loss_agg_mode, global_token_count=n_tokens,
                                       global_seq_count=n_seqs, norm_length=mb.response_len)
            stats.add("share", "critic/vf_loss", loss.detach())
            stats.add("mean", "critic/vf_clipfrac", metrics["vf_clipfrac"])
            stats.add("mean", "critic/explained_var", explained_variance(values.detach(), returns, mask))
            stats.add("mean", "critic/values_mean", masked_mean(values.detach(), mask))
            return loss

        return self._train(batch, self.train_cfg.ppo_epochs, loss_fn)
