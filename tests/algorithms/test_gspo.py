"""CPU-only. GSPO and GSPO-token (Zheng et al. 2025) against hand-computed values."""
import math

import pytest
import torch

from rlhf.algorithms import POLICY_LOSSES, masked_mean

# row 0: 3 valid tokens; row 1: 2 valid tokens (the third is padding with a wild value)
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]])
NEW = torch.tensor([[-0.7, -2.4, -0.5], [-1.5, -0.1, 50.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])


def test_sequence_ratio_is_the_length_normalised_geometric_mean():
    # s_0 = exp((0.3 - 0.4 + 0) / 3), s_1 = exp((0 + 0.1) / 2): the padded token is ignored
    s0, s1 = math.exp(-0.1 / 3), math.exp(0.1 / 2)
    loss, m = POLICY_LOSSES.get("gspo")(NEW, OLD, ADV, MASK, clip_low=0.2, clip_high=0.2)
    # nothing clipped at 0.2: L_i = -A_i s_i, mean over sequences
    assert loss.item() == pytest.approx((-1.0 * s0 + 2.0 * s1) / 2, abs=1e-6)
    assert m["seq_ratio_mean"].item() == pytest.approx((s0 + s1) / 2, abs=1e-6)
    assert m["pg_clipfrac"].item() == 0.0


def test_tight_clip_of_the_paper():
    s0, s1 = math.exp(-0.1 / 3), math.exp(0.1 / 2)
    loss, m = POLICY_LOSSES.get("gspo")(NEW, OLD, ADV, MASK, clip_low=3e-4, clip_high=4e-4)
    # row 0: A > 0, s_0 < 1 - 3e-4: unclipped term is the max (-s_0 > -(1 - 3e-4))
    # row 1: A < 0, s_1 > 1 + 4e-4: clipped term 2 * (1 + 4e-4) < 2 * s_1 -> max is unclipped
    assert loss.item() == pytest.approx((-s0 + 2 * s1) / 2, abs=1e-6)
    # flip the advantages: now both rows are clipped (the pessimistic bound picks the clip)
    loss, m = POLICY_LOSSES.get("gspo")(NEW, OLD, -ADV, MASK, clip_low=3e-4, clip_high=4e-4)
    assert loss.item() == pytest.approx(((1 - 3e-4) - 2 * (1 + 4e-4)) / 2, abs=1e-6)
    assert m["pg_clipfrac"].item() == pytest.approx(1.0)


def test_token_mean_aggregation_weighs_sequences_by_length():
    s0, s1 = math.exp(-0.1 / 3), math.exp(0.1 / 2)
    loss, _ = POLICY_LOSSES.get("gspo")(NEW, OLD, ADV, MASK, clip_low=0.2, clip_high=0.2, agg_mode="token-mean")
    assert loss.item() == pytest.approx((3 * -s0 + 2 * 2 * s1) / 5, abs=1e-6)


def test_gspo_token_has_the_sequence_ratio_as_value():
    s0, s1 = math.exp(-0.1 / 3), math.exp(0.1 / 2)
    # per-token advantages: L = mean_i mean_t (-A_it s_i)
    adv = torch.tensor([[1.0, 2.0, -1.0], [0.5, -2.0, 9.0]])
    loss, _ = POLICY_LOSSES.get("gspo_token")(NEW, OLD, adv, MASK, clip_low=0.2, clip_high=0.2)
    expected = (-(1 + 2 - 1) / 3 * s0 + -(0.5 - 2) / 2 * s1) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def _grad(name, new, adv, mode="seq-mean-token-mean", clip=(0.2, 0.2)):
    new = new.clone().requires_grad_(True)
    loss, _ = POLICY_LOSSES.get(name)(new, OLD, adv, MASK, clip_low=clip[0], clip_high=clip[1], agg_mode=mode)
    loss.backward()
    return loss.detach(), new.grad


@pytest.mark.parametrize("clip", [(0.2, 0.2), (3e-4, 4e-4)])
def test_gspo_token_gradient_equals_gspo_with_sequence_advantages(clip):
    loss_seq, grad_seq = _grad("gspo", NEW, ADV, clip=clip)
    loss_tok, grad_tok = _grad("gspo_token", NEW, ADV, clip=clip)
    assert loss_tok.item() == pytest.approx(loss_seq.item(), abs=1e-7)
    assert torch.allclose(grad_tok, grad_seq, atol=1e-7)
    assert grad_seq[1, 2] == 0  # padding gets no gradient


def test_gspo_gradient_by_hand():
    # unclipped: dL/dlogp_it = -A_i s_i / |y_i| / n_seqs on valid tokens
    s0, s1 = math.exp(-0.1 / 3), math.exp(0.1 / 2)
    _, grad = _grad("gspo", NEW, ADV)
    expected = torch.tensor([[-s0 / 3 / 2] * 3, [2 * s1 / 2 / 2] * 2 + [0.0]])
    assert torch.allclose(grad, expected, atol=1e-6)
    # a clipped sequence passes no gradient
    _, grad = _grad("gspo", NEW, -ADV, clip=(3e-4, 4e-4))
    assert torch.count_nonzero(grad) == 0


def test_per_token_advantages_make_the_variants_differ():
    adv = torch.tensor([[1.0, 3.0, -1.0], [0.5, -2.0, 0.0]])
    _, g_seq = _grad("gspo", NEW, adv)
    _, g_tok = _grad("gspo_token", NEW, adv)
    assert not torch.allclose(g_seq, g_tok)
    # gspo uses the row mean advantage 1 on row 0: every token gets the same gradient
    assert torch.allclose(g_seq[0], g_seq[0, :1].expand(3))
    assert g_tok[0, 1] == pytest.approx(3 * g_tok[0, 0].item())


def test_empty_rows_and_shards_sum_to_the_full_batch():
    g = torch.Generator().manual_seed(0)
    new, old = -torch.rand(6, 5, generator=g), -torch.rand(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    mask[-1] = 0
    seq_adv = torch.randn(6, generator=g)
    adv = seq_adv[:, None] * mask
    for name in ("gspo", "gspo_token"):
        fn = POLICY_LOSSES.get(name)
        full, _ = fn(new, old, adv, mask, clip_low=0.1, clip_high=0.1)
        n_seqs = (mask.sum(-1) > 0).sum()
        parts = sum(fn(new[s], old[s], adv[s], mask[s], clip_low=0.1, clip_high=0.1, global_seq_count=n_seqs)[0]
                    for s in (slice(0, 2), slice(2, 6)))
        assert parts.item() == pytest.approx(full.item(), abs=1e-6)
        # hand value: mean over the 5 non-empty rows of -A_i clip-bounded s_i
        s = torch.exp(masked_mean(new - old, mask, -1))
        per_seq = torch.maximum(-seq_adv * s, -seq_adv * s.clamp(0.9, 1.1))[mask.sum(-1) > 0]
        assert len(per_seq) == 5
        assert full.item() == pytest.approx(per_seq.mean().item(), abs=1e-6)


def test_dual_clip_is_refused():
    with pytest.raises(ValueError, match="dual_clip"):
        POLICY_LOSSES.get("gspo")(NEW, OLD, ADV, MASK, dual_clip=3.0)
