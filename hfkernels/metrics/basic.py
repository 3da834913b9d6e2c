"""Pixel statistics on gray images 0..255, in float64: SD, MSE and PSNR.

- SD: population standard deviation of gray F.
- MSE = (mean((A - F)^2) + mean((B - F)^2)) / 2.
- PSNR = 10 log10(255^2 / MSE), ``+inf`` when MSE = 0 (docs/design.md, section 8.7).
"""
from __future__ import annotations

import torch

from ._prep import Prepared


def sd_prepared(x: Prepared) -> torch.Tensor:
    return x.gray64[:, 2].flatten(1).std(dim=1, correction=0)


def sd_moments(g: torch.Tensor) -> torch.Tensor:
    """(B, 3) float64 [count, mean, count * variance] of gray F, from g (B, 3, H, W) gray A, B, F
    (``Prepared.gray64``), to merge over row bands with :func:`merge_moments` (not raw sums:
    E[F^2] - E[F]^2 would lose the SD of a nearly flat image to cancellation)."""
    var, mean = torch.var_mean(g[:, 2].flatten(1), dim=1, correction=0)
    n = g.shape[-2] * g.shape[-1]
    return torch.stack([torch.full_like(mean, n), mean, var * n], dim=1)


def merge_moments(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The :func:`sd_moments` of two disjoint parts merged into those of their union (Chan et al.)."""
    n = s[:, 0] + t[:, 0]
    d = t[:, 1] - s[:, 1]
    mean = s[:, 1] + d * (t[:, 0] / n)
    return torch.stack([n, mean, s[:, 2] + t[:, 2] + d * d * (s[:, 0] * t[:, 0] / n)], dim=1)


def squared_error_sums(g: torch.Tensor) -> torch.Tensor:
    """(B, 2) float64 sums of (A - F)^2 and (B - F)^2 over g (B, 3, H, W) gray A, B, F
    (``Prepared.gray64``); row bands add up."""
    d = g[:, :2] - g[:, 2:]
    return (d * d).sum(dim=(2, 3))


def mse_from_sums(sums: torch.Tensor, pixels: int) -> torch.Tensor:
    return (sums / pixels).mean(dim=1)


def mse_prepared(x: Prepared) -> torch.Tensor:
    g = x.gray64
    return mse_from_sums(squared_error_sums(g), g.shape[-2] * g.shape[-1])


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(255.0**2 / mse)


def psnr_prepared(x: Prepared) -> torch.Tensor:
    return psnr_from_mse(mse_prepared(x))
