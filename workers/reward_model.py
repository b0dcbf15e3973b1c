"""A reward model (HF sequence-classification checkpoint, one output) scoring sequences.

The score is the head's output at the last real token of each row (the last column
with attention_mask 1). transformers' own sequence-classification pooling looks for
the first pad token, which is wrong for our left-padded prompts, so the checkpoint is
loaded as a per-token head (same `score` weights) and read at that column.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlhf.batch import Batch
from rlhf.packing import packing_mode
from rlhf.trace import traced
from workers import device as dev
from workers.forwards import last_token_scores, load_value_model
from workers.trainer_base import RankWorker

_EPS = 1e-6


class RewardModelWorker(RankWorker):
    role = "reward_model"

    def __init__(self, model_path: str, normalize: bool = False, micro_batch_size: int = 16,
                 dtype: str = "auto", seed: int = 1, packing: str = "auto", max_tokens: int = 0) -> None:
        super().__init__()
        self.model_path, self.normalize, self.micro_batch_size = model_path, normalize, micro_batch_size
        self.dtype_name, self.seed = dtype, seed
        self.packing, self.max_tokens = packing_mode(packing), max_tokens  # train.packing, train.max_tokens_per_infer_batch
        self.model = None

    def setup(self) -> None:
        dtype = dev.trainer_dtype(self.dtype_name)
        self.model = load_value_model(self.model_path, self.seed, dtype).to(self.device).eval()
        self.model.requires_grad_(False)

    @traced("reward")
    @torch.no_grad()
    def score(self, batch: Batch) -> Tensor:
        """Sequence scores of this rank's rows. Shape: (b, P+R) -> (b,) float32 on CPU.

        normalize=True standardises the scores over the WHOLE batch of this call: the
        mean and std are all-reduced over the group's ranks, so the result does not
        depend on how the batch was split (per-batch, no running statistics: the score
        scale then cannot drift with the policy, at the cost of batch-size dependence).
        """
        scores = self.run_micro_batches(
            batch, lambda mb: last_token_scores(self.model, mb, device=self.device, packed=self.packing),
            rows=self.micro_batch_size, max_tokens=self.max_tokens, packed=self.packing, lockstep=False)
        if not self.normalize:
            return scores
        moments = self.all_reduce_sum(torch.stack([
            torch.tensor(float(scores.numel())), scores.sum(), scores.square().sum()]).double()).cpu()
        n, total, total_sq = moments.tolist()
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
        return ((scores - mean) / (var ** 0.5 + _EPS)).float()
