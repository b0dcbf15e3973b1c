"""A decoder-only transformer's sizes, read from its config.json and safetensors header
(no weights read), and what follows from them: parameter counts, FLOPs per token,
KV-cache bytes per token, LoRA adapter sizes.

A model path that is not on this machine (a GPU recipe's `/models/Qwen2.5-7B-Instruct`)
is looked up by its folder name in `PUBLISHED`, the architecture numbers of a few public
checkpoints (from their published config.json files).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path

DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}

# Published config.json numbers of checkpoints the GPU recipes name (Hugging Face model cards).
PUBLISHED = {
    "qwen2.5-0.5b-instruct": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                  tie_word_embeddings=True, attention_bias=True),
    "qwen2.5-7b-instruct": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                tie_word_embeddings=False, attention_bias=True),
}


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    counted_params: int | None = None   # from the safetensors header, when the weights are here

    # ------------------------------------------------------------------ parameters
    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attn + 3 * h * self.intermediate + 2 * h  # + gate/up/down, two RMSNorms

    @property
    def params(self) -> int:
        """All parameters of the causal LM (the header's count when read, else the formula)."""
        if self.counted_params is not None:
            return self.counted_params
        return self.formula_params()

    def formula_params(self) -> int:
        embed = self.vocab * self.hidden
        return embed + self.layers * self.layer_params() + self.hidden + (0 if self.tied else embed)

    @property
    def value_model_params(self) -> int:
        """The critic / reward model: the backbone with a 1-output head instead of the LM head."""
        return self.params - (0 if self.tied else self.vocab * self.hidden) + self.hidden + 1

    @property
    def matmul_params(self) -> int:
        """Parameters a token multiplies through (the embedding is a lookup; the LM head is not)."""
        return self.layers * self.layer_params() + self.vocab * self.hidden

    # ------------------------------------------------------------------ per token
    def forward_flops(self, context: float, lm_head: bool = True) -> float:
        """FLOPs of one token's forward at `context` tokens of attention span:
        2 x matmul params, plus QK^T and AV (2 x 2 x layers x context x heads x head_dim)."""
        dense = self.matmul_params - (0 if lm_head else self.vocab * self.hidden)
        return 2.0 * dense + 4.0 * self.layers * context * self.heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """Adapter parameters (A: r x in, B: out x r) on the targeted linear layers of every
        decoder layer ("all-linear": all of them; the output head never)."""
        h, q, kv, f = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                  "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}
        chosen = shapes if targets == ["all-linear"] else {k: v for k, v in shapes.items() if k in targets}
        return self.layers * sum(rank * (i + o) for i, o in chosen.values())


def from_config(config: dict, name: str = "model", counted_params: int | None = None) -> ModelShape:
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return ModelShape(
        name=name, hidden=hidden, intermediate=int(config["intermediate_size"]),
        layers=int(config["num_hidden_layers"]), heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
        tied=bool(config.get("tie_word_embeddings", False)),
        # Qwen2 has q/k/v biases by architecture; Llama declares attention_bias
        qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        counted_params=counted_params)


def safetensors_params(folder: Path) -> int | None:
    """Parameter count from the safetensors headers (8-byte length + JSON), no tensor read."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def config_dict(ref: str) -> dict:
    """The model's config.json (or its published architecture numbers)."""
    from rlhf.tiny import resolve

    path = Path(resolve(ref))
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    return {**PUBLISHED[path.name.lower()], "model_type": "qwen2"}


def load_shape(key: str, ref: str) -> ModelShape:
    """The shape of the model config key `key` names: a local HF folder (tiny:* refs are
    built on first use), or a published checkpoint known by its folder name."""
    from rlhf.config import ConfigError
    from rlhf.tiny import resolve

    path = Path(resolve(ref))
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        return from_config(config, path.name, safetensors_params(path))
    known = PUBLISHED.get(path.name.lower())
    if known is None:
        raise ConfigError(f"config key '{key}': {path} has no config.json here, and {path.name!r} is not one of "
                          f"the published architectures the planner knows ({', '.join(sorted(PUBLISHED))})")
    return from_config({**known, "model_type": "qwen2"}, path.name)


def with_params(shape: ModelShape, params: int | None) -> ModelShape:
    return replace(shape, counted_params=params)
