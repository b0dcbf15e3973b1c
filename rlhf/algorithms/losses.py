"""PPO policy and value losses, loss aggregation, entropy and KL loss terms.

Every loss takes a (B, T) per-token matrix down to a scalar through
`aggregate_loss`. Passing the *global* token/sequence counts (summed over all
micro-batches and ranks of one optimizer step) makes each shard return its share,
so summing shard losses (gradient accumulation + all-reduce) gives exactly the
full-batch loss whatever the shard sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms.kl import kl_penalty
from rlhf.algorithms.masked import masked_mean, masked_sum, masked_var
from rlhf.algorithms.registry import Registry

AGG_MODES = Registry("loss aggregation mode")
POLICY_LOSSES = Registry("policy loss")


def aggregate_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    *,
    global_token_count: int | Tensor | None = None,
    global_seq_count: int | Tensor | None = None,
    norm_length: int | None = None,
) -> Tensor:
    """Reduce a per-token loss to a scalar with aggregation `mode`.

    global_token_count: valid tokens over all shards (token-mean); default: this shard's.
    global_seq_count: sequences with >= 1 valid token over all shards (seq-* modes).
    norm_length: constant divisor of seq-mean-token-sum-norm; default T. Pass it
      explicitly if shards are padded to different T.
    Shape: loss_mat, mask (B, T) -> ().
    """
    return AGG_MODES.get(mode)(loss_mat, mask, global_token_count, global_seq_count, norm_length)


def _seq_count(mask: Tensor, global_seq_count: int | Tensor | None) -> Tensor | int:
    if global_seq_count is not None:
        return global_seq_count
    return (mask.sum(-1) > 0).sum().clamp_min(1)


@AGG_MODES.register("token-mean")
def _token_mean(loss_mat, mask, global_token_count, global_seq_count, norm_length):
    # Every token weighs the same, so long answers are not down-weighted (DAPO, Yu 2025).
    count = mask.sum().clamp_min(1) if global_token_count is None else global_token_count
    return masked_sum(loss_mat, mask) / count


@AGG_MODES.register("seq-mean-token-sum")
def _seq_mean_token_sum(loss_mat, mask, global_token_count, global_seq_count, norm_length):
    return masked_sum(loss_mat, mask, -1).sum() / _seq_count(mask, global_seq_count)


@AGG_MODES.register("seq-mean-token-mean")
def _seq_mean_token_mean(loss_mat, mask, global_token_count, global_seq_count, norm_length):
    # The original GRPO objective: each sequence weighs the same (Shao 2024, eq. 3).
    seq_loss = masked_sum(loss_mat, mask, -1) / mask.sum(-1).clamp_min(1)
    return seq_loss.sum() / _seq_count(mask, global_seq_count)


@AGG_MODES.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(loss_mat, mask, global_token_count, global_seq_count, norm_length):
    # Dr. GRPO (Liu 2025): a constant divisor instead of |o_i| removes the length bias.
    length = loss_mat.shape[-1] if norm_length is None else norm_length
    seq_loss = masked_sum(loss_mat, mask, -1) / length
    return seq_loss.sum() / _seq_count(mask, global_seq_count)


@POLICY_LOSSES.register("vanilla")
def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg_mode: str = "token-mean",
    global_token_count: int | Tensor | None = None,
    global_seq_count: int | Tensor | None = None,
    norm_length: int | None = None,
    is_weights: Tensor | None = None,
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv:1707.06347).

    L = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)).
    clip_high > clip_low is DAPO clip-higher (Yu 2025): more room for raising
    unlikely tokens keeps entropy from collapsing. dual_clip = c > 1 caps the loss of
    negative-advantage tokens at -c * A (Ye et al. 2020, arXiv:1912.09729), so a huge
    ratio on a bad token cannot dominate the batch. is_weights (B, T) multiply the
    per-token loss (truncated IS, see shaping.truncated_is_weights).
    Metrics (0-dim, masked means over this shard): pg_clipfrac (clip active),
    pg_clipfrac_lower (dual clip active), approx_kl (k1 of KL(old || new)).
    Shape: logprobs, old_logprobs, advantages, response_mask (B, T) -> ().
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    # Clamp before exp: a stale token with log-ratio 100 would otherwise give inf * 0 = NaN.
    log_ratio = torch.clamp(logprobs - old_logprobs, -log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    dual_clipped = torch.zeros_like(clipped)
    if dual_clip is not None:
        loss_cap = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (loss > loss_cap)
        loss = torch.where(dual_clipped, loss_cap, loss)
    if is_weights is not None:
        loss = loss * is_weights
    pg_loss = aggregate_loss(
        loss,
        response_mask,
        agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    metrics = {
        "pg_clipfrac": masked_mean(clipped.float(), response_mask).detach(),
        "pg_clipfrac_lower": masked_mean(dual_clipped.float(), response_mask).detach(),
        "approx_kl": masked_mean(-log_ratio, response_mask).detach(),
    }
    return pg_loss, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    *,
    clip: float | None = 0.2,
    agg_mode: str = "token-mean",
    global_token_count: int | Tensor | None = None,
    global_seq_count: int | Tensor | None = None,
    norm_length: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Value loss 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-clip).

    Value clipping as in the PPO reference implementation (openai/baselines ppo2);
    clip=None gives the plain squared error. Metric vf_clipfrac: fraction of tokens
    where the clipped error is the larger one.
    Shape: values, old_values, returns, response_mask (B, T) -> ().
    """
    err_unclipped = (values - returns).square()
    if clip is None:
        err_clipped = err_unclipped
    else:
        values_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clipped = (values_clipped - returns).square()
    loss = 0.5 * aggregate_loss(
        torch.maximum(err_unclipped, err_clipped),
        response_mask,
        agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    clipfrac = masked_mean((err_clipped > err_unclipped).float(), response_mask).detach()
    return loss, {"vf_clipfrac": clipfrac}


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[returns - values] / Var[returns] over valid tokens.

    1 = perfect critic, 0 = no better than a constant, < 0 = worse. Defined as 0
    when the returns are constant. Shape: (B, T) -> ().
    """
    var_returns = masked_var(returns, mask)
    ev = 1.0 - masked_var(returns - values, mask) / var_returns.clamp_min(1e-12)
    return torch.where(var_returns > 0, ev, torch.zeros_like(ev))


def entropy_loss(
    entropy: Tensor,
    mask: Tensor,
    *,
    agg_mode: str = "token-mean",
    global_token_count: int | Tensor | None = None,
    global_seq_count: int | Tensor | None = None,
    norm_length: int | None = None,
) -> Tensor:
    """Aggregated entropy (positive): the trainer *subtracts* coef * this for an entropy bonus.

    Shape: entropy, mask (B, T) -> ().
    """
    return aggregate_loss(
        entropy,
        mask,
        agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    estimator: str = "k3",
    *,
    agg_mode: str = "token-mean",
    global_token_count: int | Tensor | None = None,
    global_seq_count: int | Tensor | None = None,
    norm_length: int | None = None,
) -> Tensor:
    """KL(pi || ref) as a loss term, the GRPO alternative to a KL reward penalty
    (Shao et al. 2024 use k3). The trainer adds coef * this. Shape: (B, T) -> ().
    """
    return aggregate_loss(
        kl_penalty(estimator, logprobs, ref_logprobs),
        mask,
        agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )


def _sequence_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, clamp: float) -> Tensor:
    """log s_i = (1/|y_i|) sum_t mask * (log pi - log pi_old), clamped. Shape: (B, T) -> (B,)."""
    mean_log_ratio = masked_mean(logprobs - old_logprobs, mask, -1)
    return torch.clamp(mean_log_ratio, -clamp, clamp)


def _gspo_clip(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high)) and where the clip is active."""
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(loss_unclipped, loss_clipped), loss_clipped > loss_unclipped


def _gspo(logprobs, old_logprobs, advantages, response_mask, *, token_level, clip_low, clip_high, dual_clip,
          agg_mode, global_token_count, global_seq_count, norm_length, is_weights, log_ratio_clamp):
    if dual_clip is not None:
        raise ValueError("dual_clip is a token-level PPO clip; GSPO clips whole sequences (leave it unset)")
    mask = response_mask
    log_seq_ratio = _sequence_log_ratio(logprobs, old_logprobs, mask, log_ratio_clamp)  # (B,)
    if token_level:
        # value sg[s_i] on every token, gradient that of log pi_t: s_i * pi_t / sg[pi_t]
        ratio = torch.exp(log_seq_ratio.detach().unsqueeze(-1) + logprobs - logprobs.detach())
        adv = advantages
    else:
        ratio = torch.exp(log_seq_ratio).unsqueeze(-1)
        adv = masked_mean(advantages, mask, -1).unsqueeze(-1)  # A_i: the sequence's advantage
    loss, clipped = _gspo_clip(ratio, adv, clip_low, clip_high)
    loss = loss.expand_as(logprobs)
    if is_weights is not None:
        loss = loss * is_weights
    pg_loss = aggregate_loss(loss, mask, agg_mode, global_token_count=global_token_count,
                             global_seq_count=global_seq_count, norm_length=norm_length)
    has_tokens = mask.sum(-1) > 0
    metrics = {
        # fraction of tokens whose (sequence) ratio was clipped; gspo: = of sequences, length-weighted
        "pg_clipfrac": masked_mean(clipped.expand_as(logprobs).float(), mask).detach(),
        "pg_clipfrac_lower": torch.zeros((), device=logprobs.device),
        "approx_kl": masked_mean(-(logprobs - old_logprobs), mask).detach(),
        "seq_ratio_mean": masked_mean(torch.exp(log_seq_ratio), has_tokens.float()).detach(),
    }
    return pg_loss, metrics


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    agg_mode: str = "seq-mean-token-mean",
    global_token_count: int | Tensor | None = None,
    global_seq_count: int | Tensor | None = None,
    norm_length: int | None = None,
    is_weights: Tensor | None = None,
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: sequence-level clipped surrogate (Zheng et al. 2025, arXiv:2507.18071, eq. 5-7).

        s_i = (pi(y_i|x) / pi_old(y_i|x)) ** (1/|y_i|)
            = exp( (1/|y_i|) * sum_t m_it * (log pi_it - log pi_old_it) )
        L_i = max(-A_i * s_i, -A_i * clip(s_i, 1 - clip_low, 1 + clip_high))

    The length-normalised ratio stays near 1 whatever the length, so the paper clips it
    far tighter than a token ratio: clip_low = 3e-4, clip_high = 4e-4 (its defaults
    here; the run config's algorithm.clip_low / clip_high are passed). A_i is the
    masked mean of `advantages` over the row (the group-relative sequence advantage,
    which the estimators put on every token). L_i sits on each valid token of row i
    and `agg_mode` reduces it; "seq-mean-token-mean" (the default) gives the paper's
    mean over sequences of L_i. Rows with no valid token contribute nothing.
    Metrics: pg_clipfrac (valid tokens whose sequence was clipped), approx_kl,
    seq_ratio_mean (mean s_i over non-empty rows); pg_clipfrac_lower is 0 (no dual clip).
    Shape: logprobs, old_logprobs, advantages, response_mask (B, T) -> ().
    """
    return _gspo(logprobs, old_logprobs, advantages, response_mask, token_level=False, clip_low=clip_low,
                 clip_high=clip_high, dual_clip=dual_clip, agg_mode=agg_mode,
                 global_token_count=global_token_count, global_seq_count=global_seq_count,
                 norm_length=norm_length, is_weights=is_weights, log_ratio_clamp=log_ratio_clamp)


@POLICY_LOSSES.register("gspo_token")
def gspo_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    agg_mode: str = "seq-mean-token-mean",
    global_token_count: int | Tensor | None = None,
    global_seq_count: int | Tensor | None = None,
    norm_length: int | None = None,
    is_weights: Tensor | None = None,
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token (Zheng et al. 2025, arXiv:2507.18071, eq. 13-14): per-token advantages
    A_it with the sequence ratio's value.

        s_it = sg[s_i] * pi_it / sg[pi_it]        (value s_i, gradient s_i * grad log pi_it)
        L_it = max(-A_it * s_it, -A_it * clip(s_it, 1 - clip_low, 1 + clip_high))

    With the same advantage on every token of a sequence and "seq-mean-token-mean"
    aggregation its gradient equals GSPO's: (1/|y_i|) sum_t s_i grad log pi_it = grad s_i.
    Same arguments, metrics and shapes as `gspo_loss`.
    """
    return _gspo(logprobs, old_logprobs, advantages, response_mask, token_level=True, clip_low=clip_low,
                 clip_high=clip_high, dual_clip=dual_clip, agg_mode=agg_mode,
                 global_token_count=global_token_count, global_seq_count=global_seq_count,
                 norm_length=norm_length, is_weights=is_weights, log_ratio_clamp=log_ratio_clamp)
