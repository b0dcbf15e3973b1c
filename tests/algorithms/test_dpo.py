"""CPU-only. DPO, cDPO and IPO losses against closed forms."""
import math

import pytest
import torch

from rlhf.algorithms import DPO_LOSSES, dpo_loss

# two pairs: policy/ref sequence log-probs of chosen (w) and rejected (l)
PW, PL = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
RW, RL = torch.tensor([-11.0, -4.5]), torch.tensor([-11.0, -4.0])
# h = (pw - rw) - (pl - rl): pair 0: 1 - (-1) = 2; pair 1: 0.5 - 1 = -0.5
H = [2.0, -0.5]


def softplus(x):
    return math.log1p(math.exp(x))


def test_sigmoid_dpo_closed_form_and_metrics():
    beta = 0.5
    loss, m = dpo_loss(PW, PL, RW, RL, beta=beta)
    assert loss.item() == pytest.approx(sum(softplus(-beta * h) for h in H) / 2, abs=1e-6)
    assert m["reward_acc"].item() == 0.5
    assert m["margin"].item() == pytest.approx(beta * sum(H) / 2, abs=1e-6)
    assert m["chosen_reward"].item() == pytest.approx(beta * (1 + 0.5) / 2, abs=1e-6)
    assert m["rejected_reward"].item() == pytest.approx(beta * (-1 + 1) / 2, abs=1e-6)


def test_label_smoothed_dpo():
    beta, eps = 0.1, 0.2
    loss, _ = dpo_loss(PW, PL, RW, RL, beta=beta, loss_type="cdpo", label_smoothing=eps)
    expected = sum((1 - eps) * softplus(-beta * h) + eps * softplus(beta * h) for h in H) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    plain, _ = dpo_loss(PW, PL, RW, RL, beta=beta, loss_type="cdpo")
    assert plain.item() == pytest.approx(dpo_loss(PW, PL, RW, RL, beta=beta)[0].item(), abs=1e-7)


def test_ipo():
    beta = 0.25  # target gap 1/(2 beta) = 2: pair 0 sits on it
    loss, _ = dpo_loss(PW, PL, RW, RL, beta=beta, loss_type="ipo")
    assert loss.item() == pytest.approx(((2 - 2) ** 2 + (-0.5 - 2) ** 2) / 2, abs=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    pw, pl = PW.clone().requires_grad_(True), PL.clone().requires_grad_(True)
    loss, _ = dpo_loss(pw, pl, RW, RL, beta=0.5)
    loss.backward()
    # d/dpw of softplus(-beta h) / 2 = -beta sigmoid(-beta h) / 2
    expected = torch.tensor([-0.5 * torch.sigmoid(torch.tensor(-0.5 * h)).item() / 2 for h in H])
    assert torch.allclose(pw.grad, expected, atol=1e-6) and torch.allclose(pl.grad, -expected, atol=1e-6)


def test_parts_with_a_global_normalizer_add_up():
    full, fm = dpo_loss(PW, PL, RW, RL, beta=0.3)
    parts = [dpo_loss(PW[i:i + 1], PL[i:i + 1], RW[i:i + 1], RL[i:i + 1], beta=0.3, normalizer=2) for i in range(2)]
    assert sum(p[0] for p in parts).item() == pytest.approx(full.item(), abs=1e-7)
    assert sum(p[1]["reward_acc"] for p in parts).item() == fm["reward_acc"].item()


def test_ties_count_as_wrong_and_bad_arguments_are_refused():
    z = torch.zeros(3)
    _, m = dpo_loss(z, z, z, z)
    assert m["reward_acc"].item() == 0.0
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(z, z, z, z, beta=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, loss_type="cdpo", label_smoothing=0.5)
    with pytest.raises(KeyError, match="DPO loss 'kto'"):
        dpo_loss(z, z, z, z, loss_type="kto")
    assert DPO_LOSSES.names() == ["cdpo", "ipo", "sigmoid"]
