"""CPU-only. Masked reductions against numpy on the valid elements."""

import numpy as np
import pytest
import torch

from rlhf.algorithms import masked_mean, masked_sum, masked_var, masked_whiten


def _batch(seed, b=3, t=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True
    mask[0, 1] = True
    return x, mask


@pytest.mark.parametrize("seed", range(5))
def test_against_numpy(seed):
    x, mask = _batch(seed)
    valid = x.numpy()[mask.numpy()]
    assert masked_sum(x, mask).item() == pytest.approx(valid.sum())
    assert masked_mean(x, mask).item() == pytest.approx(valid.mean())
    assert masked_var(x, mask).item() == pytest.approx(valid.var(ddof=1))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(valid.var())
    row_means = [x.numpy()[i][mask.numpy()[i]].mean() if mask[i].any() else 0.0 for i in range(3)]
    np.testing.assert_allclose(masked_mean(x, mask, dim=-1).numpy(), row_means)
    w = masked_whiten(x, mask).numpy()
    np.testing.assert_allclose(
        w[mask.numpy()], (valid - valid.mean()) / np.sqrt(valid.var(ddof=1) + 1e-8)
    )
    assert (w[~mask.numpy()] == 0).all()


def test_pad_values_do_not_leak():
    x, mask = _batch(0)
    padded = torch.where(mask, x, torch.tensor(float("inf"), dtype=x.dtype))
    for fn in (masked_sum, masked_mean, masked_var):
        assert fn(padded, mask).item() == pytest.approx(fn(x, mask).item())
    torch.testing.assert_close(masked_whiten(padded, mask), masked_whiten(x, mask))


def test_empty_and_single_element_are_finite():
    x = torch.tensor([[3.0, 4.0]])
    empty = torch.zeros(1, 2)
    assert masked_mean(x, empty).item() == 0.0
    one = torch.tensor([[1.0, 0.0]])
    assert masked_var(x, one).item() == 0.0
    assert torch.isfinite(masked_whiten(x, one)).all()


def test_whiten_without_shift_keeps_mean():
    x, mask = _batch(1)
    w = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(w, mask).item() == pytest.approx(masked_mean(x, mask).item())
