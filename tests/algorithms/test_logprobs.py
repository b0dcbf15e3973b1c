"""CPU-only. Chunked logprobs/entropy against the plain log_softmax formulas."""

import math

import pytest
import torch

import rlhf.algorithms.logprobs as lp
from rlhf.algorithms import entropy_from_logits, logprobs_from_logits, sampling_mask


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(lp, "_CHUNK_TOKENS", 4)  # exercise chunk boundaries on tiny inputs


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_matches_log_softmax(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 13, generator=g) * 3
    labels = torch.randint(0, 13, (3, 5), generator=g)
    reference = torch.log_softmax(logits / temperature, -1)
    expected = reference.gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels, temperature), expected)
    expected_h = -(reference.exp() * reference).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits, temperature), expected_h)


def test_gradient_flows_and_matches():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=g, requires_grad=True)
    labels = torch.randint(0, 7, (2, 3), generator=g)
    logprobs_from_logits(logits, labels, 0.7).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    torch.log_softmax(ref_logits / 0.7, -1).gather(-1, labels[..., None]).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_bf16_logits_are_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 11, generator=g).bfloat16()
    labels = torch.randint(0, 11, (2, 3), generator=g)
    out = logprobs_from_logits(logits, labels)
    assert out.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(out, expected)


def test_bad_temperature():
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), 0.0)


# ---------------------------------------------------------------- top-k / top-p (vLLM processed_logprobs)
# softmax([2, 1, 0.5, 0, -1]) = [.5630, .2071, .1256, .0762, .0280]
LOGITS = torch.tensor([[[2.0, 1.0, 0.5, 0.0, -1.0]]])


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


@pytest.mark.parametrize("top_k, top_p, kept", [
    (3, 1.0, [2.0, 1.0, 0.5]),
    (-1, 0.7, [2.0, 1.0]),            # dropped: ascending mass .028, .104, .230 <= 0.3
    (-1, 0.9, [2.0, 1.0, 0.5, 0.0]),  # only -1 (mass .028 <= 0.1)
    (4, 0.9, [2.0, 1.0, 0.5]),        # top-k first: renormalised over 4, 0.0 holds .078 <= 0.1
    (1, 1.0, [2.0]),
    (-1, 1e-6, [2.0]),                # the most likely token always stays
])
def test_top_k_top_p_logprobs_hand_computed(top_k, top_p, kept):
    labels = torch.tensor([[0]])
    got = logprobs_from_logits(LOGITS, labels, top_k=top_k, top_p=top_p)
    assert got.item() == pytest.approx(2.0 - _lse(*kept), abs=1e-6)
    assert sampling_mask(LOGITS[0], top_k, top_p).tolist() == [[x not in kept for x in LOGITS[0, 0].tolist()]]


def test_top_p_applies_after_temperature():
    # T = 2 flattens [2, 1, .5, 0, -1] to [1, .5, .25, 0, -.5]: p = [.375, .227, .177, .138, .084], so
    # top_p 0.7 drops -.5 and 0 (ascending mass .084, .221 <= .3) and keeps three tokens
    got = logprobs_from_logits(LOGITS, torch.tensor([[1]]), temperature=2.0, top_p=0.7)
    assert got.item() == pytest.approx(0.5 - _lse(1.0, 0.5, 0.25), abs=1e-6)


def test_sampled_token_outside_the_kept_set_stays_finite():
    # a bf16 engine can sample a token the fp32 trainer puts just outside the nucleus
    got = logprobs_from_logits(LOGITS, torch.tensor([[3]]), top_k=2)
    assert got.item() == pytest.approx(0.0 - _lse(2.0, 1.0, 0.0), abs=1e-6)


def test_top_k_top_p_entropy_and_gradient():
    logits = LOGITS.clone().requires_grad_()
    ent = entropy_from_logits(logits, top_k=2)
    p = torch.softmax(torch.tensor([2.0, 1.0]), -1)
    assert ent.item() == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    logprobs_from_logits(logits, torch.tensor([[1]]), top_k=2).sum().backward()
    # d/dz of z_1 - lse(z_0, z_1): 1 - p_1 at token 1, -p_0 at token 0, 0 for dropped tokens
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([-p[0], 1 - p[1], 0, 0, 0]))
    assert torch.isfinite(logits.grad).all()
