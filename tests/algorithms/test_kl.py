"""CPU-only. KL estimators (values and gradients) and KL controllers."""

import math

import pytest
import torch

from rlhf.algorithms import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    make_kl_controller,
)


def _grad(name, logp, ref):
    logp = logp.clone().requires_grad_()
    kl_penalty(name, logp, ref).sum().backward()
    return logp.grad


def test_values():
    logp, ref = torch.tensor([[-0.7]]), torch.tensor([[-1.2]])
    assert kl_penalty("k3", logp, ref).item() == pytest.approx(0.106531, abs=1e-6)
    assert kl_penalty("k1", logp, ref).item() == pytest.approx(0.5)
    assert kl_penalty("abs", ref, logp).item() == pytest.approx(0.5)
    assert kl_penalty("k2", logp, ref).item() == pytest.approx(0.125)


def test_k3_is_clamped_and_finite():
    logp, ref = torch.tensor([[0.0, -200.0]]), torch.tensor([[-200.0, 0.0]])
    kl = kl_penalty("k3", logp, ref)
    assert torch.isfinite(kl).all() and kl.abs().max() <= 10.0


def test_gradients():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(3, 4, generator=g) - 2, torch.randn(3, 4, generator=g) - 2
    torch.testing.assert_close(_grad("k1", logp, ref), torch.ones_like(logp))
    torch.testing.assert_close(_grad("k2", logp, ref), logp - ref)  # the log-ratio
    torch.testing.assert_close(_grad("k3", logp, ref), 1 - torch.exp(ref - logp))
    torch.testing.assert_close(_grad("k3", logp, logp), torch.zeros_like(logp))


def _expected_loss_grad(name, logits, ref):
    """Exact E_{x~pi}[grad_logits of the estimator as a loss], samples held fixed: the
    sum over the vocabulary weighted by the (detached) policy probabilities."""
    logits = logits.clone().requires_grad_()
    logp = torch.log_softmax(logits, -1)
    (logp.exp().detach() * kl_penalty(name, logp, ref)).sum().backward()
    return logits.grad


def _grad_of(fn, logits):
    logits = logits.clone().requires_grad_()
    fn(torch.log_softmax(logits, -1)).sum().backward()
    return logits.grad


def test_kl_loss_gradients_in_expectation():
    # Computed exactly over a small vocabulary instead of by sampling. Logits are mild
    # so no token hits the k3 clamp, which zeros the gradient where ref/pi > ~12.
    g = torch.Generator().manual_seed(0)
    logits = 0.5 * torch.randn(2, 50, generator=g)
    ref = torch.log_softmax(0.5 * torch.randn(2, 50, generator=g), -1)
    reverse = lambda logp: (logp.exp() * (logp - ref)).sum(-1)  # noqa: E731  KL(pi || ref)
    forward = lambda logp: (ref.exp() * (ref - logp)).sum(-1)  # noqa: E731  KL(ref || pi)
    k1, k2, k3 = (_expected_loss_grad(n, logits, ref) for n in ("k1", "k2", "k3"))
    torch.testing.assert_close(k1, torch.zeros_like(k1), atol=1e-6, rtol=0)  # why the config refuses it
    torch.testing.assert_close(k2, _grad_of(reverse, logits))
    torch.testing.assert_close(k3, _grad_of(forward, logits))
    # not zero, and not the reverse KL's gradient (the two KLs differ here)
    assert k3.abs().max() > 1e-2 and (k3 - _grad_of(reverse, logits)).abs().max() > 1e-3
    # the k3 *value* is an unbiased estimate of the reverse KL(pi || ref) under pi
    logp = torch.log_softmax(logits, -1)
    torch.testing.assert_close((logp.exp() * kl_penalty("k3", logp, ref)).sum(-1), reverse(logp))


@pytest.mark.parametrize("name", KL_ESTIMATORS.names())
def test_zero_when_equal(name):
    x = torch.randn(2, 3)
    assert (kl_penalty(name, x, x) == 0).all()


def test_adaptive_controller_reference_number():
    ctl = AdaptiveKLController(init_coef=0.001, target=0.1, horizon=10000)
    ctl.update(current_kl=0.3, n_steps=256)
    assert ctl.value == pytest.approx(0.00100512, rel=1e-9)


def test_adaptive_controller_decreases_below_target():
    ctl = make_kl_controller("adaptive", init_coef=0.1, target=0.1, horizon=100)
    ctl.update(current_kl=0.0, n_steps=10)
    assert ctl.value == pytest.approx(0.1 * (1 - 0.2 * 10 / 100))


def test_controllers_state_dict_round_trip():
    ctl = make_kl_controller("adaptive", init_coef=0.05, target=6.0, horizon=1000)
    ctl.update(12.0, 64)
    restored = AdaptiveKLController(init_coef=1.0, target=6.0, horizon=1000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = make_kl_controller("fixed", coef=0.02)
    fixed.update(100.0, 10)
    assert fixed.value == 0.02
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.02
    assert math.isfinite(restored.value)


def test_unknown_controller():
    with pytest.raises(KeyError, match="KL controller"):
        make_kl_controller("pid", coef=1.0)
