"""Per-token KL estimators and the KL-coefficient controllers.

Estimators follow J. Schulman, "Approximating KL divergence"
(http://joschu.net/blog/kl-approx.html), with samples drawn from the policy:
k1 is unbiased but high-variance and can be negative, k2 is low-variance but
biased, k3 is unbiased (as a value) and always >= 0.

Values and gradients differ. Used as a loss on tokens sampled from pi (on-policy,
samples held fixed), the expected gradient per visited state is: k1 -> 0 (E_pi[grad log pi]
= 0, so the config refuses it as kl.loss_estimator); k2 -> grad KL(pi || ref), the
reverse KL; k3 -> grad KL(ref || pi), the *forward* KL, although its value estimates the
reverse one (Tang & Munos 2025, arXiv:2506.09477). Neither accounts for how pi changes
which states are visited; a KL penalty in the reward does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms.registry import Registry

KL_ESTIMATORS = Registry("KL estimator")
KL_CONTROLLERS = Registry("KL controller")


def kl_penalty(name: str, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL(pi || ref) estimate with estimator `name`. Shape: (B, T) -> (B, T)."""
    return KL_ESTIMATORS.get(name)(logprobs, ref_logprobs)


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi - log ref. d k1 / d logp = 1. Shape: (B, T) -> (B, T)."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("abs")
def kl_abs(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """|log pi - log ref|. Shape: (B, T) -> (B, T)."""
    return (logprobs - ref_logprobs).abs()


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi - log ref)^2. d k2 / d logp = log-ratio. Shape: (B, T) -> (B, T)."""
    return 0.5 * (logprobs - ref_logprobs).square()


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(r) - r - 1 with r = log ref - log pi.

    d k3 / d logp = 1 - ref/pi. That coefficient has mean 0 under pi, but the loss
    gradient is (1 - ref/pi) * grad log pi, whose mean under pi is -E_ref[grad log pi]
    = grad KL(ref || pi): a k3 loss pulls pi towards ref along the forward KL (see the
    module doc). r is clamped to [-20, 20] and k3 to [-10, 10] because exp(r)
    overflows for tokens the reference finds very unlikely (clamped tokens get no gradient).
    Shape: (B, T) -> (B, T).
    """
    r = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(r) - r - 1.0, -10.0, 10.0)


@KL_CONTROLLERS.register("fixed")
class FixedKLController:
    """Constant KL coefficient."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@KL_CONTROLLERS.register("adaptive")
class AdaptiveKLController:
    """Proportional controller steering the measured KL towards `target`.

    Ziegler et al. 2019 (arXiv:1909.08593), eq. 2:
    e = clip(KL / target - 1, -0.2, 0.2); coef *= 1 + e * n_steps / horizon.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


def make_kl_controller(kind: str, **kwargs) -> FixedKLController | AdaptiveKLController:
    """`make_kl_controller("fixed", coef=0.05)` or
    `make_kl_controller("adaptive", init_coef=0.05, target=6.0, horizon=10000)`."""
    return KL_CONTROLLERS.get(kind)(**kwargs)
