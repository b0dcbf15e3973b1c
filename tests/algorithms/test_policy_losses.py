"""CPU-only. Policy/value losses and aggregation: reference numbers, loop references,
shard invariance, and first-minibatch sanity."""

import pytest
import torch

from rlhf.algorithms import (
    AGG_MODES,
    POLICY_LOSSES,
    aggregate_loss,
    entropy_loss,
    explained_variance,
    kl_loss,
    logprobs_from_logits,
    ppo_clip_loss,
    value_loss,
)

OLD = torch.tensor([[-1, -2, -0.5], [-1.5, -0.2, -3]])
NEW = torch.tensor([[-0.7, -2.4, -0.5], [-0.3, -0.9, -3.1]])
ADV = torch.tensor([[1, -1, 0.5], [-2, 2, 1]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def agg_loop(loss, mask, mode, norm_length=None):
    """Plain-Python aggregation over the valid tokens of each row."""
    rows = [
        [loss[b, t].item() for t in range(loss.shape[1]) if mask[b, t]]
        for b in range(loss.shape[0])
    ]
    rows = [r for r in rows if r]
    if mode == "token-mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    per_seq = {
        "seq-mean-token-sum": lambda r: sum(r),
        "seq-mean-token-mean": lambda r: sum(r) / len(r),
        "seq-mean-token-sum-norm": lambda r: sum(r) / (norm_length or loss.shape[1]),
    }[mode]
    return sum(per_seq(r) for r in rows) / len(rows)


def random_loss(seed, b=6, t=5):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = (torch.arange(t) < torch.randint(1, t + 1, (b,), generator=g)[:, None]).double()
    mask = mask * (torch.rand(b, t, generator=g) > 0.2)
    mask[-1] = 0  # a fully masked row (e.g. filtered sample) must not count as a sequence
    return loss, mask


@pytest.mark.parametrize(
    "mode,expected",
    [("token-mean", 0.805366), ("seq-mean-token-sum", 2.013415), ("seq-mean-token-mean", 1.088374)],
)
def test_ppo_reference_numbers(mode, expected):
    fn = POLICY_LOSSES.get("vanilla")
    loss, metrics = fn(
        NEW, OLD, ADV, MASK, clip_low=0.2, clip_high=0.28, dual_clip=3.0, agg_mode=mode
    )
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert metrics["pg_clipfrac"].item() == pytest.approx(0.4)
    assert metrics["pg_clipfrac_lower"].item() == pytest.approx(0.2)
    assert metrics["approx_kl"].item() == pytest.approx(-0.08)
    assert all(v.dim() == 0 for v in metrics.values())


def test_value_loss_reference_number():
    values = torch.tensor([[0.5, 1.5, -0.2], [0, 2, 1]])
    old = torch.tensor([[0.2, 0.9, 0], [0.3, 1, 1]])
    returns = torch.tensor([[1.0, 1, 1], [0, 0.5, 0]])
    loss, metrics = value_loss(values, old, returns, MASK, clip=0.5)
    assert loss.item() == pytest.approx(0.419, abs=1e-5)
    assert metrics["vf_clipfrac"].item() == 0.0
    # a prediction pushed past the clip range with the target on its side is clipped
    loss, metrics = value_loss(
        torch.tensor([[2.0]]),
        torch.tensor([[0.0]]),
        torch.tensor([[3.0]]),
        torch.ones(1, 1),
        clip=0.5,
    )
    assert loss.item() == pytest.approx(0.5 * 2.5**2)
    assert metrics["vf_clipfrac"].item() == 1.0


@pytest.mark.parametrize("mode", AGG_MODES.names())
@pytest.mark.parametrize("seed", range(4))
def test_aggregation_matches_loop(mode, seed):
    loss, mask = random_loss(seed)
    assert aggregate_loss(loss, mask, mode).item() == pytest.approx(agg_loop(loss, mask, mode))
    assert aggregate_loss(loss, mask, mode, norm_length=9).item() == pytest.approx(
        agg_loop(loss, mask, mode, 9)
    )


@pytest.mark.parametrize("mode", AGG_MODES.names())
@pytest.mark.parametrize("seed", range(4))
def test_shards_sum_to_full_batch(mode, seed):
    # Micro-batches within a rank and ranks within a step are both row subsets of
    # the step's batch; with global counts the shard losses must add up exactly.
    loss, mask = random_loss(seed, b=8)
    full = aggregate_loss(loss, mask, mode)
    counts = dict(global_token_count=mask.sum(), global_seq_count=(mask.sum(-1) > 0).sum())
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
    for sizes in ([8], [4, 4], [1, 3, 2, 2], [1] * 8):
        shards = perm.split(sizes)
        total = sum(aggregate_loss(loss[i], mask[i], mode, **counts) for i in shards)
        torch.testing.assert_close(total, full)


@pytest.mark.parametrize("mode", AGG_MODES.names())
def test_policy_loss_shards_sum_to_full_batch(mode):
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(6, 4, generator=g) * 0.3 - 1, torch.randn(6, 4, generator=g) * 0.3 - 1
    adv = torch.randn(6, 4, generator=g)
    mask = torch.ones(6, 4)
    mask[2, 2:] = 0
    kw = dict(clip_high=0.28, dual_clip=3.0, agg_mode=mode)
    full, _ = ppo_clip_loss(logp, old, adv, mask, **kw)
    counts = dict(global_token_count=int(mask.sum()), global_seq_count=6)
    parts = [
        ppo_clip_loss(logp[s], old[s], adv[s], mask[s], **kw, **counts)[0]
        for s in (slice(0, 1), slice(1, 4), slice(4, 6))
    ]
    torch.testing.assert_close(sum(parts), full)


def test_first_minibatch_is_on_policy_at_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    old = logprobs_from_logits(logits, labels, temperature=0.7)
    new = logprobs_from_logits(logits.clone().requires_grad_(), labels, temperature=0.7)
    adv = torch.randn(3, 5, generator=g)
    loss, metrics = ppo_clip_loss(new, old, adv, mask, clip_high=0.28, dual_clip=3.0)
    assert metrics["approx_kl"].item() == 0.0
    assert metrics["pg_clipfrac"].item() == 0.0 and metrics["pg_clipfrac_lower"].item() == 0.0
    # ratio 1: the loss is -mean(A)
    assert loss.item() == pytest.approx(-(adv * mask).sum().item() / mask.sum().item(), abs=1e-6)


def test_padding_gets_no_gradient_and_no_effect():
    logp = NEW.clone().requires_grad_()
    loss, _ = ppo_clip_loss(logp, OLD, ADV, MASK, dual_clip=3.0)
    loss.backward()
    assert logp.grad[1, 2] == 0
    pad = ~MASK.bool()
    logp_pad = NEW.masked_fill(pad, 1e6).requires_grad_()
    loss_pad, metrics = ppo_clip_loss(
        logp_pad, OLD.masked_fill(pad, -1e6), ADV.masked_fill(pad, 1e6), MASK, dual_clip=3.0
    )
    loss_pad.backward()
    assert loss_pad.item() == pytest.approx(loss.item())
    assert torch.isfinite(logp_pad.grad).all() and logp_pad.grad[1, 2] == 0


def test_is_weights_scale_per_token_loss():
    w = torch.tensor([[1.0, 0.5, 2.0], [0.0, 1.0, 1.0]])
    loss_w, _ = ppo_clip_loss(NEW, OLD, ADV, MASK, is_weights=w, agg_mode="seq-mean-token-sum")
    one = torch.ones(1, 1)
    cells = [(b, t) for b in range(2) for t in range(3)]
    per_token = torch.stack(
        [
            ppo_clip_loss(NEW[b, t].view(1, 1), OLD[b, t].view(1, 1), ADV[b, t].view(1, 1), one)[0]
            for b, t in cells
        ]
    ).view(2, 3)
    assert loss_w.item() == pytest.approx((per_token * w * MASK).sum(-1).mean().item(), abs=1e-6)


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(NEW, OLD, ADV, MASK, dual_clip=1.0)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    mean = (returns * mask).sum() / mask.sum()
    assert explained_variance(
        torch.full_like(returns, mean.item()), returns, mask
    ).item() == pytest.approx(0.0, abs=1e-6)
    assert (
        explained_variance(returns, torch.ones_like(returns), mask).item() == 0.0
    )  # constant returns


def test_entropy_and_kl_loss_aggregate():
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 1e6]])
    assert entropy_loss(ent, MASK).item() == pytest.approx(3.0)
    logp, ref = torch.full((2, 3), -0.7), torch.full((2, 3), -1.2)
    assert kl_loss(logp, ref, MASK, "k3").item() == pytest.approx(0.106531, abs=1e-6)
    assert kl_loss(logp, ref, MASK, "k1", agg_mode="seq-mean-token-sum").item() == pytest.approx(
        0.5 * 2.5
    )
