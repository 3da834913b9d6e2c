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


def mse_prepared(x: Prepared) -> torch.Tensor:
    g = x.gray64
    d = g[:, :2] - g[:, 2:]
    return (d * d).mean(dim=(2, 3)).mean(dim=1)


def psnr_prepared(x: Prepared) -> torch.Tensor:
    return 10.0 * torch.log10(255.0**2 / mse_prepared(x))
