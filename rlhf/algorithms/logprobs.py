"""Token log-probabilities and entropies from LM logits, without a (B, T, V)
log-softmax copy: logits are processed in chunks of tokens, so at most one
chunk-sized float32 copy exists at a time (vocabularies are 150k+ wide)."""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK_TOKENS = 1024


def _chunks(logits: Tensor, temperature: float):
    """Yield float32, temperature-scaled (n, V) chunks of the flattened (B*T, V) logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat = logits.reshape(-1, logits.shape[-1])
    for start in range(0, flat.shape[0], _CHUNK_TOKENS):
        chunk = flat[start : start + _CHUNK_TOKENS].float()
        yield start, chunk / temperature if temperature != 1.0 else chunk


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[label], in float32.

    Dividing by the sampling temperature first matches how vLLM sampled the tokens;
    otherwise the trainer's "old" logprobs differ from the rollout's and the first
    PPO ratio is not 1. Computed as gather - logsumexp (no log_softmax copy).
    Shape: logits (B, T, V), labels (B, T) long -> (B, T).
    """
    flat_labels = labels.reshape(-1, 1)
    out = []
    for start, chunk in _chunks(logits, temperature):
        picked = chunk.gather(-1, flat_labels[start : start + chunk.shape[0]]).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    return torch.cat(out).reshape(labels.shape) if out else logits.new_zeros(labels.shape).float()


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature): H = logsumexp(z) - sum(softmax(z) * z), float32.

    Shape: logits (B, T, V) -> (B, T).
    """
    out = []
    for _, chunk in _chunks(logits, temperature):
        probs = torch.softmax(chunk, dim=-1)
        out.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(-1))
    return (
        torch.cat(out).reshape(logits.shape[:-1])
        if out
        else logits.new_zeros(logits.shape[:-1]).float()
    )
