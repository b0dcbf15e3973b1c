"""Bytes of each role's rank, pure arithmetic (no torch, no Ray).

Trainer states follow the ZeRO paper (Rajbhandari et al. 2020, section 3.1): mixed-precision
Adam keeps 2-byte weights and gradients and K = 12 bytes of fp32 state per parameter
(master weights, momentum, variance), 16 bytes in all; stage 1 partitions the 12 over the
data-parallel ranks, stage 2 also the gradients, stage 3 also the weights.
fp32 training (what "auto" picks on a CPU without native bf16): 4-byte weights and
gradients; DeepSpeed's ZeRO optimizers (stages 1-3) still keep an fp32 copy of their
partition (a clone, deepspeed/runtime/zero/stage_1_and_2.py), stage 0 steps the module's
own parameters (torch AdamW, no copy).
"""
from __future__ import annotations

from dataclasses import dataclass

GiB = float(1 << 30)


@dataclass(frozen=True)
class Item:
    """One thing in memory: `what` of `role` rank `rank`, `nbytes`, on the device ("device")
    or in the node's host memory ("host"); `phase`: "always", "generate" (engine awake) or
    "train" (trainers' activations)."""
    role: str
    rank: int
    what: str
    nbytes: float
    where: str = "device"
    phase: str = "always"


@dataclass(frozen=True)
class TrainerStates:
    """Per-rank bytes of a trainer's states (see the module docstring)."""
    weights: float
    gradients: float
    master: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.master + self.optimizer


def trainer_states(params: int, stage: int, world: int, mixed: bool, trainable: int | None = None) -> TrainerStates:
    """Bytes per rank for `params` parameters, `trainable` of them trained (LoRA: only the
    adapters have gradients and optimizer state; the frozen base is weights only).
    mixed: bf16/fp16 compute with fp32 master weights; else fp32 throughout."""
    trainable = params if trainable is None else trainable
    w = 2 if mixed else 4
    split = lambda nbytes, from_stage: nbytes / world if stage >= from_stage else nbytes  # noqa: E731
    master_bytes = 4 if (mixed or stage >= 1) else 0
    return TrainerStates(weights=split(w * params, 3), gradients=split(w * trainable, 2),
                         master=split(master_bytes * trainable, 1), optimizer=split(8 * trainable, 1))


def train_activation_bytes(shape, rows: int, width: int, dtype_bytes: int, checkpointing: bool,
                           lm_head: bool = True, keeps_scores: bool = False) -> float:
    """Activations a forward keeps for the backward, one micro-batch of `rows` x `width` tokens.

    Per token and layer (Llama/Qwen2 block): the two RMSNorms' inputs and outputs (4h),
    q and the attention output (2 x heads x head_dim), k and v (2 x kv_heads x head_dim), the MLP's
    gate, up, act(gate) and their product (4 x intermediate); `keeps_scores`: the attention
    probabilities too (heads x width: SDPA's math kernel, which CPUs use with a mask). With
    gradient checkpointing only each layer's input (h) is kept, plus one layer recomputed at
    a time. The LM head's logits add width x vocab x (dtype + two fp32 copies: the upcast
    and the log-softmax); a value head's output is negligible."""
    h, tokens = shape.hidden, rows * width
    per_layer = (4 * h + 2 * shape.heads * shape.head_dim + 2 * shape.kv_heads * shape.head_dim
                 + 4 * shape.intermediate + (shape.heads * width if keeps_scores else 0))
    layers = (shape.layers * h + per_layer) if checkpointing else shape.layers * per_layer
    logits = shape.vocab * (dtype_bytes + 8) if lm_head else 0
    return tokens * (layers * dtype_bytes + logits)


def infer_activation_bytes(shape, rows: int, width: int, dtype_bytes: int, lm_head: bool = True,
                           keeps_scores: bool = False) -> float:
    """A no-grad forward's peak: one layer's intermediates alive at a time (MLP: gate, up,
    product; attention scores when materialised) plus the logits and their fp32 log-softmax."""
    h, tokens = shape.hidden, rows * width
    layer = 2 * h + 3 * shape.intermediate + (shape.heads * width if keeps_scores else 0)
    logits = shape.vocab * (dtype_bytes + 8) if lm_head else 0
    return tokens * (layer * dtype_bytes + logits)


def kv_cache_bytes(shape, sequences: int, tokens_per_sequence: int, dtype_bytes: int) -> float:
    """KV cache for `sequences` of `tokens_per_sequence` tokens all resident at once."""
    return float(sequences) * tokens_per_sequence * shape.kv_bytes_per_token(dtype_bytes)


def zero_paper_bytes_per_param(stage: int, world: int) -> float:
    """The ZeRO paper's Figure 1 per-device bytes per parameter (mixed-precision Adam, K=12)."""
    return trainer_states(1, stage, world, mixed=True).total


def gib(nbytes: float) -> float:
    return nbytes / GiB
