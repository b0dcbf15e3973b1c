"""CPU-only. Chunked logprobs/entropy against the plain log_softmax formulas."""

import pytest
import torch

import rlhf.algorithms.logprobs as lp
from rlhf.algorithms import entropy_from_logits, logprobs_from_logits


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
