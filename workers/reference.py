"""The frozen reference policy: log-probs only.

zero_stage 0 keeps a plain module on every rank; zero_stage 3 shards it with a
DeepSpeed ZeRO-3 inference engine (no optimizer), optionally offloading parameters
to CPU, for references too large to replicate.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlhf.batch import Batch
from rlhf.packing import packing_mode
from rlhf.config.schema import ReferenceSection
from rlhf.trace import traced
from workers import device as dev
from workers.forwards import load_causal_lm, response_logprobs
from workers.trainer_base import RankWorker, zero3_sharded_loading


class ReferenceWorker(RankWorker):
    role = "reference"

    def __init__(self, model_path: str, cfg: ReferenceSection, micro_batch_size: int = 16,
                 dtype: str = "auto", seed: int = 1, packing: str = "auto", max_tokens: int = 0) -> None:
        super().__init__()
        if cfg.zero_stage not in (0, 3):
            raise ValueError(f"reference.zero_stage must be 0 or 3, got {cfg.zero_stage}")
        self.model_path, self.cfg, self.micro_batch_size = model_path, cfg, micro_batch_size
        self.dtype_name, self.seed = dtype, seed
        self.packing, self.max_tokens = packing_mode(packing), max_tokens  # train.packing, train.max_tokens_per_infer_batch
        self.model = None

    def setup(self) -> None:
        torch.manual_seed(self.seed)
        dtype = dev.trainer_dtype(self.dtype_name)
        if self.cfg.zero_stage == 0:
            self.model = load_causal_lm(self.model_path, dtype).to(self.device).eval()
            self.model.requires_grad_(False)
            return
        import deepspeed

        zero = {"stage": 3, "stage3_param_persistence_threshold": 0}
        if self.cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": dev.detect().is_gpu}
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                  "train_batch_size": self.world_size, "zero_optimization": zero,
                  "bf16": {"enabled": dtype == torch.bfloat16}, "steps_per_print": 1 << 30}
        self._hf_ds_config = zero3_sharded_loading(config)  # keep alive while loading
        model = load_causal_lm(self.model_path, torch.float32)
        model.requires_grad_(False)
        self.model, *_ = deepspeed.initialize(model=model, config=config)
        self.model.eval()

    @traced("logprobs")
    @torch.no_grad()
    def compute_logprobs(self, batch: Batch, temperature: float = 1.0) -> Tensor:
        """Reference log-probs of this rank's response tokens (ZeRO-3: collective).
        Shape: (b, P+R) -> (b, R) float32 on CPU."""
        return self.run_micro_batches(
            batch, lambda mb: response_logprobs(self.model, mb, temperature, device=self.device, packed=self.packing)[0],
            rows=self.micro_batch_size, max_tokens=self.max_tokens, packed=self.packing,
            lockstep=self.cfg.zero_stage == 3)
