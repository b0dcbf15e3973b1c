"""The typed batch that flows between the phases of a PPO step.

Layout (B sequences, P prompt slots, R response slots):

    input_ids       [pad pad p1 p2 p3 | r1 r2 r3 eos pad]   prompt left-padded to P,
    attention_mask  [ 0   0  1  1  1 |  1  1  1   1   0 ]   response right-padded to R
    response_mask                      [ 1  1  1   1   0 ]

Response token j sits at column P + j of `input_ids`; its log-prob is read from
the logits at column P + j - 1. Position ids count real tokens only
(`position_ids()`), exactly as vLLM numbers them, so trainer and rollout
log-probs agree.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Batch:
    input_ids: Tensor                        # (B, P+R) long
    attention_mask: Tensor                   # (B, P+R) long, 1 = real token
    response_mask: Tensor                    # (B, R) float, 1 = generated token (incl. EOS)
    group_ids: Tensor                        # (B,) long, same id = same prompt (GRPO/RLOO groups)
    rollout_logprobs: Optional[Tensor] = None  # (B, R) log-probs as sampled by the rollout engine
    weight_version: Optional[Tensor] = None  # (B,) long, the oldest policy version among the sample's tokens
    token_version: Optional[Tensor] = None   # (B, R) long, version each response token was sampled under (-1: none)
    old_logprobs: Optional[Tensor] = None    # (B, R) trainer log-probs before the update
    ref_logprobs: Optional[Tensor] = None    # (B, R) reference policy log-probs
    values: Optional[Tensor] = None          # (B, R) critic values before the update
    scores: Optional[Tensor] = None          # (B,) sequence rewards
    token_rewards: Optional[Tensor] = None   # (B, R) shaped per-token rewards
    advantages: Optional[Tensor] = None      # (B, R)
    returns: Optional[Tensor] = None         # (B, R)

    # ---------------------------------------------------------------- shapes
    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_len

    @property
    def responses(self) -> Tensor:
        """(B, R) response token ids (padding where response_mask is 0)."""
        return self.input_ids[:, self.prompt_len:]

    def position_ids(self) -> Tensor:
        """(B, P+R) positions counting real tokens from 0, as vLLM does."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    # ---------------------------------------------------------------- slicing
    def _fields(self):
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]

    def index(self, idx) -> "Batch":
        """Rows `idx` (slice, index tensor or list) of every tensor field."""
        return Batch(**{k: (v[idx] if v is not None else None) for k, v in self._fields()})

    def chunks(self, n: int) -> list["Batch"]:
        """Split into n contiguous, equal parts (B must be divisible by n)."""
        if self.size % n:
            raise ValueError(f"batch of {self.size} does not split into {n} equal parts")
        step = self.size // n
        return [self.index(slice(i * step, (i + 1) * step)) for i in range(n)]

    def replace(self, **changes) -> "Batch":
        return dataclasses.replace(self, **changes)


def cat_rows(parts: list[Tensor]) -> Tensor:
    """Concatenate per-rank results along the batch dimension."""
    return torch.cat(parts, dim=0)
