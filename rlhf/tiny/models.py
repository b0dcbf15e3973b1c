"""Small Llama-architecture models built from configs, deterministically.

`policy`: a causal LM (~1M parameters) for the arithmetic task.
`scorer`: the same backbone with a one-output sequence-classification head; it is
the reward model's and the critic's starting point.
Both save with `save_pretrained` (safetensors) and load in transformers and vLLM.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class TinyArch:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 2      # head_dim 64: a size every vLLM attention backend supports
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512


def llama_config(vocab_size: int, pad_id: int, eos_id: int, bos_id: int, arch: TinyArch = TinyArch(), **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=bos_id,
        tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0,
        attention_bias=False, **asdict(arch), **extra)


def build_policy(config, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def build_scorer(config, seed: int):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    config.num_labels = 1
    return LlamaForSequenceClassification(config).float()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
