"""Token log-probabilities and entropies from LM logits, in float32, a chunk of tokens
at a time (vocabularies are 150k+ wide). Without autograd at most one chunk-sized
float32 copy is alive at a time. Under autograd logsumexp saves each chunk's float32,
temperature-scaled copy for the backward pass: up to one (B*T, V) float32 copy in
all, as much as a plain log_softmax keeps.

With top-k / top-p the log-probs are those of the distribution the rollout engine
sampled from: logits / T, then top-k, then top-p over the renormalised rest, then
renormalised over the kept tokens (vLLM's `processed_logprobs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK_TOKENS = 1024


@torch.no_grad()
def sampling_mask(logits: Tensor, top_k: int = -1, top_p: float = 1.0) -> Tensor:
    """True for tokens top-k / top-p sampling can never pick, as vLLM decides it.

    top-k keeps every token whose logit is >= the k-th largest (ties kept); top-p then
    keeps the smallest set of most likely tokens whose probability (renormalised after
    top-k) reaches top_p: a token is dropped when it and all less likely tokens hold at
    most 1 - top_p. The most likely token is always kept. top_k <= 0 and top_p >= 1 are off.
    Shape: logits (N, V) -> (N, V) bool.
    """
    drop = torch.zeros_like(logits, dtype=torch.bool)
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        drop |= logits < kth
    if top_p < 1.0:
        ascending, order = logits.masked_fill(drop, float("-inf")).sort(dim=-1)
        mass_up_to = ascending.softmax(dim=-1).cumsum(dim=-1)  # prob. of a token and all less likely
        drop_sorted = mass_up_to <= 1.0 - top_p
        drop_sorted[:, -1] = False
        drop |= torch.zeros_like(drop).scatter(-1, order, drop_sorted)
    return drop


def _chunks(logits: Tensor, temperature: float, top_k: int, top_p: float, keep: Tensor | None = None):
    """Yield (start, float32 (n, V) chunk of the flattened logits / T with the tokens
    top-k / top-p drop at -inf, except the `keep` (N,) token of each row)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat = logits.reshape(-1, logits.shape[-1])
    for start in range(0, flat.shape[0], _CHUNK_TOKENS):
        chunk = flat[start : start + _CHUNK_TOKENS].float()
        chunk = chunk / temperature if temperature != 1.0 else chunk
        if top_k > 0 or top_p < 1.0:
            drop = sampling_mask(chunk.detach(), top_k, top_p)
            if keep is not None:  # the sampled token: a bf16 engine may keep a boundary token fp32 drops
                drop.scatter_(-1, keep[start : start + chunk.shape[0]], False)
            chunk = chunk.masked_fill(drop, float("-inf"))
        yield start, chunk


def logprobs_from_logits(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0
) -> Tensor:
    """log softmax(logits / temperature)[label] in float32, over the tokens top-k / top-p
    keep (the label itself is always kept, so the result is finite).

    Dividing by the sampling temperature and renormalising over the kept tokens matches
    how vLLM sampled the tokens; otherwise the trainer's "old" logprobs differ from the
    rollout's, the first PPO ratio is not 1 and TIS weights are biased. Computed as
    gather - logsumexp (no log_softmax copy).
    Shape: logits (B, T, V), labels (B, T) long -> (B, T).
    """
    flat_labels = labels.reshape(-1, 1)
    out = []
    for start, chunk in _chunks(logits, temperature, top_k, top_p, keep=flat_labels):
        picked = chunk.gather(-1, flat_labels[start : start + chunk.shape[0]]).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    return torch.cat(out).reshape(labels.shape) if out else logits.new_zeros(labels.shape).float()


def entropy_from_logits(logits: Tensor, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0) -> Tensor:
    """Entropy of the sampling distribution softmax(logits / temperature) after top-k /
    top-p: H = logsumexp(z) - sum(softmax(z) * z) over the kept tokens, float32.

    Shape: logits (B, T, V) -> (B, T).
    """
    out = []
    for _, chunk in _chunks(logits, temperature, top_k, top_p):
        probs = torch.softmax(chunk, dim=-1)
        finite = chunk.masked_fill(torch.isinf(chunk), 0.0)  # dropped tokens: p = 0, and 0 * -inf is NaN
        out.append(torch.logsumexp(chunk, dim=-1) - (probs * finite).sum(-1))
    return (
        torch.cat(out).reshape(logits.shape[:-1])
        if out
        else logits.new_zeros(logits.shape[:-1]).float()
    )
