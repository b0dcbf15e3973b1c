"""Reductions over the valid tokens of a padded batch.

Masked positions are selected away with `torch.where` rather than multiplied by 0,
so arbitrary pad values (1e6, inf) under mask 0 never leak into the result.
All functions treat `mask` as 0/1 (bool, int or float).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over positions where `mask` is 1.

    Shape: x, mask (B, T) -> () if dim is None, else x reduced over `dim`.
    """
    x = _zero_masked(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over valid positions; 0 (not NaN) where nothing is valid.

    Shape: x, mask (B, T) -> () if dim is None, else x reduced over `dim`.
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all valid positions (Bessel-corrected if `unbiased`).

    Fewer than two valid elements give 0, so whitening such a batch yields 0, not NaN.
    Shape: x, mask (B, T) -> ().
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp_min(1), torch.zeros_like(var))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to unit variance (and zero mean if `shift_mean`) over valid positions.

    Masked positions are returned as 0. Shape: x, mask (B, T) -> (B, T).
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_masked(whitened, mask)
