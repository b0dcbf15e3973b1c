"""The SFT trainer: next-token loss on the response tokens (and EOS) of prompt/response rows.

Verbs: train_step, eval_loss, save_hf (from DeepSpeedTrainer). The prompt tokens are
context only: the loss is the mean negative log-likelihood over all response tokens
of the global batch (every rank, every micro-batch), as `DeepSpeedTrainer._train`
normalises it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms import masked_sum
from rlhf.batch import Batch
from workers.forwards import load_causal_lm, micro_batches, response_logprobs
from workers.trainer_base import DeepSpeedTrainer


class SFTWorker(DeepSpeedTrainer):
    role = "sft"

    def load_model(self, dtype: torch.dtype):
        return load_causal_lm(self.model_path, dtype)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step on this rank's part of the global batch; same metrics on every rank."""
        def loss_fn(mb: Batch, n_tokens: Tensor, n_seqs: Tensor, stats) -> Tensor:
            logprobs, _ = response_logprobs(self.engine, mb, 1.0, device=self.device, packed=self.packing)
            loss = masked_sum(-logprobs, mb.response_mask.to(self.device)) / n_tokens
            stats.add("share", "sft/loss", loss.detach())
            return loss

        return self._train(batch, 1, loss_fn)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> Tensor:
        """Summed response NLL and token count of this rank's rows. Shape: () x 2 -> (2,) float64.
        ZeRO-3: collective, every rank must call it with the same number of rows."""
        self.engine.eval()
        total = torch.zeros(2, dtype=torch.float64)
        for mb in micro_batches(batch, self.train_cfg.micro_batch_size):
            logprobs, _ = response_logprobs(self.engine, mb, 1.0, device=self.device, packed=self.packing)
            mask = mb.response_mask.to(self.device)
            total += torch.stack([masked_sum(-logprobs, mask), mask.sum()]).double().cpu()
        return total
