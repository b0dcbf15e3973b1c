"""The DPO trainer: a causal LM trained on preference pairs against a frozen copy of itself.

The reference policy is the model as loaded (the SFT export, typically): this worker
keeps a frozen, gradient-free copy next to the DeepSpeed engine, in the engine's
compute dtype, so at step 0 the policy and the reference give identical log-probs
(every margin starts at exactly 0). The copy is a full plain module on every rank
(not ZeRO-sharded): fine for the models this CPU stage trains; on big models use
ZeRO-0/1/2, whose engines hold full weights anyway. Reference log-probs are computed
once per micro-batch, without gradients, in the same forward layout as the policy's.

Batches hold pairs as adjacent rows (2k chosen, 2k+1 rejected:
`rlhf.preference_data.pair_batch`). Verbs: train_step, eval_margins, save_hf.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms import dpo_loss, masked_sum
from rlhf.batch import Batch
from workers.forwards import load_causal_lm, micro_batches, response_logprobs
from workers.trainer_base import DeepSpeedTrainer


class DPOTrainerWorker(DeepSpeedTrainer):
    role = "dpo"

    def load_model(self, dtype: torch.dtype):
        return load_causal_lm(self.model_path, dtype)

    def setup(self) -> None:
        super().setup()
        compute_dtype = next(self.engine.module.parameters()).dtype
        self.reference = load_causal_lm(self.model_path, compute_dtype).to(self.device).eval()
        self.reference.requires_grad_(False)

    def _sequence_logprobs(self, model, batch: Batch) -> Tensor:
        """Summed log-probs of each row's response tokens (incl. EOS). Shape: (b, P+R) -> (b,) float32."""
        logprobs, _ = response_logprobs(model, batch, 1.0, device=self.device, packed=self.packing)
        return masked_sum(logprobs, batch.response_mask.to(self.device), -1)

    def train_step(self, batch: Batch, beta: float, loss_type: str = "sigmoid",
                   label_smoothing: float = 0.0) -> dict[str, float]:
        """One optimizer step on this rank's pairs; same metrics on every rank."""
        def loss_fn(mb: Batch, n_tokens: Tensor, n_seqs: Tensor, stats) -> Tensor:
            policy = self._sequence_logprobs(self.engine, mb)
            with torch.no_grad():
                ref = self._sequence_logprobs(self.reference, mb)
            loss, metrics = dpo_loss(policy[0::2], policy[1::2], ref[0::2], ref[1::2], beta=beta,
                                     loss_type=loss_type, label_smoothing=label_smoothing,
                                     normalizer=n_seqs / 2)  # every row is non-empty (EOS)
            stats.add("share", "dpo/loss", loss.detach())
            for name, value in metrics.items():
                stats.add("share", f"dpo/{name}", value)
            return loss

        return self._train(batch, 1, loss_fn)

    @torch.no_grad()
    def eval_margins(self, batch: Batch) -> Tensor:
        """h = (log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l) of this rank's pairs.
        ZeRO-3: collective (same row count on every rank). Shape: (2b, P+R) -> (b,) float32 on CPU."""
        self.engine.eval()
        parts = []
        for mb in micro_batches(batch, self.train_cfg.micro_batch_size):
            diff = self._sequence_logprobs(self.engine, mb) - self._sequence_logprobs(self.reference, mb)
            parts.append((diff[0::2] - diff[1::2]).float().cpu())
        return torch.cat(parts)
